package failover

import (
	"testing"
	"time"
)

func TestLeaseDeadline(t *testing.T) {
	const ttl, ld, m = 15 * time.Second, 10 * time.Second, 2 * time.Second
	cases := []struct {
		name           string
		ttlAt, confirm time.Time
		want           time.Time
	}{
		{"never passed", time.Time{}, t0, time.Time{}},
		{"never confirmed", t0, time.Time{}, time.Time{}},
		{"lock-delay binds", t0, t0, t0.Add(ld - m)},
		{"old TTL pass binds", t0, t0.Add(10 * time.Second), t0.Add(ttl - m)},
		{"old confirmation binds", t0.Add(10 * time.Second), t0, t0.Add(ld - m)},
	}
	for _, c := range cases {
		if got := LeaseDeadline(c.ttlAt, c.confirm, ttl, ld, m); !got.Equal(c.want) {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// TestLeaseArgument checks the inequality the safety argument rests on, over a grid of timings:
// whenever the session is invalidated (by the TTL or otherwise, never before the last
// confirmation), the earliest takeover is at least LeaseMargin after the deadline.
func TestLeaseArgument(t *testing.T) {
	checked := 0
	defer func() {
		if checked < 8 {
			t.Errorf("only %d valid timing combinations checked", checked)
		}
	}()
	for _, ttl := range []time.Duration{time.Second, 2 * time.Second, 15 * time.Second, time.Minute} {
		for _, ld := range []time.Duration{time.Second, 15 * time.Second, MaxLockDelay} {
			c := validConfig()
			c.TTL, c.LockDelay, c.HoldDown = ttl, ld, ttl
			c = c.WithDefaults()
			if err := c.Validate(); err != nil {
				continue
			}
			checked++
			for _, lag := range []time.Duration{0, c.RenewInterval, 5 * time.Second} {
				ttlAt, confirm := t0, t0.Add(lag)
				d := LeaseDeadline(ttlAt, confirm, c.TTL, c.LockDelay, c.LeaseMargin)
				// TTL path: invalidation no earlier than ttlAt + TTL.
				if take := ttlAt.Add(c.TTL + c.LockDelay); take.Before(d.Add(c.LeaseMargin)) {
					t.Errorf("ttl %s ld %s lag %s: TTL-path takeover %s before deadline+margin", ttl, ld, lag, take.Sub(d))
				}
				// Other invalidations: no earlier than the confirmation was sent.
				if take := confirm.Add(c.LockDelay); take.Before(d.Add(c.LeaseMargin)) {
					t.Errorf("ttl %s ld %s lag %s: takeover %s before deadline+margin", ttl, ld, lag, take.Sub(d))
				}
			}
			// Liveness: renewed every RenewInterval with answers within RequestTimeout, one round
			// lost, the lease never lapses.
			sent := t0
			d := LeaseDeadline(sent, sent, c.TTL, c.LockDelay, c.LeaseMargin)
			if next := sent.Add(2*c.RenewInterval + c.RequestTimeout); !next.Before(d) {
				t.Errorf("ttl %s ld %s: lease lapses before the renewal after a lost one", ttl, ld)
			}
		}
	}
}

func TestOwnedMeta(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 64}, {Name: "in", Slices: 8}, {Name: "bounces", Slices: 2}}
	if got := ownedMeta(qs, map[string][]int{"out": {7, 0, 1, 2, 3}, "in": {1, 2}}); got != "in:1-2 out:0-3,7" {
		t.Errorf("ownedMeta = %q", got)
	}
	if got := ownedMeta(qs, nil); got != "" {
		t.Errorf("ownedMeta(nil) = %q", got)
	}
	big := []QueueSpec{{Name: "out", Slices: 1024}}
	var every []int
	for i := 0; i < 1024; i += 2 {
		every = append(every, i)
	}
	if got := ownedMeta(big, map[string][]int{"out": every}); got != "out:512/1024" {
		t.Errorf("ownedMeta for a long list = %q, want the count form", got)
	}
}
