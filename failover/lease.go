package failover

import "time"

// LeaseDeadline is D = min(tTTL + TTL, tConfirm + LockDelay) - margin (see the timing constants
// in config.go for why). Zero inputs mean "never happened": no lease.
func LeaseDeadline(ttlSent, confirmSent time.Time, ttl, lockDelay, margin time.Duration) time.Time {
	if ttlSent.IsZero() || confirmSent.IsZero() {
		return time.Time{}
	}
	d := ttlSent.Add(ttl)
	if c := confirmSent.Add(lockDelay); c.Before(d) {
		d = c
	}
	return d.Add(-margin)
}
