package failover

import (
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
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

// TestLiveStretchSurvivesALapseItsSessionSurvived pins live_since across lease lapses (docs/
// failover.md, "The state machine"): a lapse restarts it provisionally, a later confirmation of
// the same session brings the earlier stretch back (a Consul outage that kept every session
// leaves the settled nodes settled, so a restarted node still waits its hold-down), and a lost
// or replaced session starts a new stretch for good.
func TestLiveStretchSurvivesALapseItsSessionSurvived(t *testing.T) {
	const round = 500 * time.Millisecond
	type step func(clk *clock.Fake, l *LiveStretch)
	lapsed := func(s string) step {
		return func(clk *clock.Fake, l *LiveStretch) { l.Lapsed(s); l.Healthy(clk.Now()); clk.Advance(round) }
	}
	lapsedUnhealthy := func(s string) step {
		return func(clk *clock.Fake, l *LiveStretch) { l.Lapsed(s); clk.Advance(round) }
	}
	confirmed := func(s string) step {
		return func(clk *clock.Fake, l *LiveStretch) { l.Confirmed(s); l.Healthy(clk.Now()); clk.Advance(round) }
	}
	lost := func(clk *clock.Fake, l *LiveStretch) { l.Lost(); l.Healthy(clk.Now()); clk.Advance(round) }
	lostUnhealthy := func(clk *clock.Fake, l *LiveStretch) { l.Lost(); clk.Advance(round) }
	healthy := func(clk *clock.Fake, l *LiveStretch) { l.Healthy(clk.Now()); clk.Advance(round) }
	at := func(rounds int) time.Time { return t0.Add(time.Duration(rounds) * round) }

	for _, c := range []struct {
		name  string
		steps []step
		want  time.Time // Since after the steps
	}{
		{"healthy rounds keep the stretch", []step{healthy, confirmed("A"), healthy}, at(0)},
		{"a lapse restarts it provisionally", []step{healthy, lapsed("A"), lapsed("A")}, at(2)},
		{"the session survived the lapse: the stretch goes on", []step{healthy, lapsed("A"), lapsed("A"), lapsed("A"), confirmed("A")}, at(0)},
		{"a lapse while unhealthy, session survived", []step{healthy, lapsedUnhealthy("A"), confirmed("A"), healthy}, at(0)},
		{"the session was lost after the lapse: a new stretch", []step{healthy, lapsed("A"), lost, healthy, confirmed("B")}, at(2)},
		{"lost while unhealthy: the stretch starts at the next healthy round", []step{healthy, lapsed("A"), lostUnhealthy, lostUnhealthy, healthy}, at(4)},
		{"a lapse kept for another session restores nothing", []step{healthy, lapsed("A"), confirmed("B")}, at(1)},
		{"a second lapse keeps the stretch the first restored", []step{healthy, lapsed("A"), confirmed("A"), healthy, lapsed("A"), confirmed("A")}, at(0)},
		{"a new session's stretch is the one its lapse keeps", []step{healthy, lost, confirmed("B"), lapsed("B"), lapsed("B"), confirmed("B")}, at(1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := clock.NewFake(t0)
			l := NewLiveStretch(clk.Now())
			for _, s := range c.steps {
				s(clk, &l)
			}
			if got := l.Since(); !got.Equal(c.want) {
				t.Errorf("live_since %s after the steps, want %s", got.Sub(t0), c.want.Sub(t0))
			}
		})
	}
}
