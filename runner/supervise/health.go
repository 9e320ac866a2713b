package supervise

import (
	"fmt"
	"time"
)

// HealthState is the health of one owned slice, named as Consul names check
// states.
type HealthState string

const (
	// HealthPassing: the slice's worker is running and not in a crash loop.
	HealthPassing HealthState = "passing"
	// HealthWarning: the worker is not running right now (not started yet,
	// or waiting out its restart backoff) but is not in a crash loop.
	HealthWarning HealthState = "warning"
	// HealthCritical: the worker is in a crash loop; the slice should move.
	HealthCritical HealthState = "critical"
)

// SliceHealth is the health of one slice with a human-readable reason (the
// output of its Consul check).
type SliceHealth struct {
	State  HealthState
	Reason string
}

// crashTracker decides crash loops from the times of unexpected exits. It is
// pure: the caller passes the clock readings.
type crashTracker struct {
	threshold int
	window    time.Duration
	exits     []time.Time // unexpected exits within window, oldest first
	critical  bool
	reason    string
}

// recordExit counts an unexpected exit at t, described by what.
func (c *crashTracker) recordExit(t time.Time, what string) {
	c.prune(t)
	c.exits = append(c.exits, t)
	if len(c.exits) >= c.threshold {
		c.critical = true
		c.reason = fmt.Sprintf("crash loop: worker exited %d times within %v; last: %s",
			len(c.exits), c.window, what)
	}
}

// prune forgets exits older than the window before now.
func (c *crashTracker) prune(now time.Time) {
	keep := c.exits[:0]
	for _, e := range c.exits {
		if now.Sub(e) < c.window {
			keep = append(keep, e)
		}
	}
	c.exits = keep
}

// stable forgets every exit and clears a crash loop: a worker ran for the
// stable period.
func (c *crashTracker) stable() {
	c.exits = c.exits[:0]
	c.critical = false
	c.reason = ""
}

// recentExits is the number of unexpected exits within the window before now.
func (c *crashTracker) recentExits(now time.Time) int {
	n := 0
	for _, e := range c.exits {
		if now.Sub(e) < c.window {
			n++
		}
	}
	return n
}
