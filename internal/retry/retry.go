// Package retry is the one way qslice builds exponential backoffs (github.com/cenkalti/backoff/v4):
// Consul calls, handler retries, worker restarts and lock-file waits all take a Policy and an
// injected clock, so tests drive them with internal/clock.Fake.
package retry

import (
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/qslice/qslice/internal/clock"
)

// Stop is what NextBackOff returns once MaxElapsed is used up.
const Stop = backoff.Stop

// Policy describes an exponential backoff: the n-th pause is Initial * Multiplier^n, capped at
// Max, randomised to [d*(1-Jitter), d*(1+Jitter)].
type Policy struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64       // 0 means 2
	Jitter     float64       // randomisation factor in [0, 1); 0 means none
	MaxElapsed time.Duration // 0 means never give up
}

// New builds the backoff of p, measuring elapsed time on c (nil: the system clock).
func New(p Policy, c clock.Clock) *backoff.ExponentialBackOff {
	if c == nil {
		c = clock.System{}
	}
	if p.Multiplier == 0 {
		p.Multiplier = 2
	}
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(p.Initial),
		backoff.WithMaxInterval(max(p.Max, p.Initial)),
		backoff.WithMultiplier(p.Multiplier),
		backoff.WithRandomizationFactor(p.Jitter),
		backoff.WithMaxElapsedTime(p.MaxElapsed),
		backoff.WithClockProvider(c),
	)
	b.Reset()
	return b
}
