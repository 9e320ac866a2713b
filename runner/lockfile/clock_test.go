package lockfile

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a manual Clock: time moves only in Advance, which fires due timers.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	created chan struct{} // one token per NewTimer, so tests can wait for a waiter to park
}

type fakeTimer struct {
	clock *fakeClock
	at    time.Time
	c     chan time.Time
	done  bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{
		now:     time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC),
		created: make(chan struct{}, 1024),
	}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &fakeTimer{clock: c, at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	select {
	case c.created <- struct{}{}:
	default:
	}
	return t
}

// Advance moves time forward and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.done:
		case !t.at.After(c.now):
			t.done = true
			t.c <- c.now
		default:
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

// waitTimer blocks until some goroutine has created a timer (is parked waiting), with a
// deadline in real time so that a broken test fails instead of hanging.
func (c *fakeClock) waitTimer(t testing.TB) {
	t.Helper()
	select {
	case <-c.created:
	case <-time.After(10 * time.Second):
		t.Fatal("no goroutine started waiting on the fake clock within 10s")
	}
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}
