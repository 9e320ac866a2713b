// Package clock is the injectable time source shared by qslice's packages: production code uses
// System, tests pass a fake that they advance instead of sleeping.
package clock

import (
	"context"
	"time"
)

// Clock is the time source: Now for readings (with a monotonic component from System), NewTimer to
// wait.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer that callers use.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// System is the Clock backed by package time.
type System struct{}

// Now returns time.Now().
func (System) Now() time.Time { return time.Now() }

// NewTimer returns a time.Timer.
func (System) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.t.C }
func (t systemTimer) Stop() bool          { return t.t.Stop() }

// Offset is the system clock shifted by D (D < 0: behind). Tests use it for a process whose
// clock is set wrong, where the waits must still be real ones (another process is involved).
type Offset struct{ D time.Duration }

// Now returns time.Now() shifted by D.
func (o Offset) Now() time.Time { return time.Now().Add(o.D) }

// NewTimer returns a time.Timer: durations do not depend on the offset.
func (Offset) NewTimer(d time.Duration) Timer { return System{}.NewTimer(d) }

// After returns a channel that receives the time once d has passed on c, like time.After.
func After(c Clock, d time.Duration) <-chan time.Time { return c.NewTimer(d).C() }

// Sleep waits for d on c, or until ctx ends; it reports whether the whole d passed.
func Sleep(ctx context.Context, c Clock, d time.Duration) bool {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}
