package clock

import (
	"sync"
	"time"
)

// Fake is a manual Clock for tests: time moves only in Advance, which fires the timers that are
// due. A timer of a non-positive duration fires at once, as a time.Timer does.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	created chan struct{}
}

type fakeTimer struct {
	clock *Fake
	at    time.Time
	d     time.Duration
	ch    chan time.Time
	done  bool // fired or stopped
}

// NewFake returns a Fake clock reading start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start, created: make(chan struct{}, 1024)}
}

// Now returns the fake time.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires once Advance reaches now + d.
func (c *Fake) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &fakeTimer{clock: c, at: c.now.Add(d), d: d, ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.done = true
		t.ch <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	c.mu.Unlock()
	select {
	case c.created <- struct{}{}:
	default:
	}
	return t
}

// Created receives one token per NewTimer call (up to 1024 unread), so that a test can wait
// until a goroutine is parked on the clock.
func (c *Fake) Created() <-chan struct{} { return c.created }

// Advance moves the time forward by d and fires every timer that is due.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.done:
		case !t.at.After(c.now):
			t.done = true
			t.ch <- c.now
		default:
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

// Pending returns the durations the timers not yet fired nor stopped were created with.
func (c *Fake) Pending() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ds []time.Duration
	for _, t := range c.timers {
		if !t.done {
			ds = append(ds, t.d)
		}
	}
	return ds
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}
