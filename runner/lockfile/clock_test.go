package lockfile

import (
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
)

// fakeClock is the shared manual clock, with the wait this package's tests need.
type fakeClock struct{ *clock.Fake }

func newFakeClock() *fakeClock {
	return &fakeClock{clock.NewFake(time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC))}
}

// waitTimer blocks until some goroutine has created a timer (is parked waiting), with a
// deadline in real time so that a broken test fails instead of hanging.
func (c *fakeClock) waitTimer(t testing.TB) {
	t.Helper()
	select {
	case <-c.Created():
	case <-time.After(10 * time.Second):
		t.Fatal("no goroutine started waiting on the fake clock within 10s")
	}
}
