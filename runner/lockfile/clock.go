package lockfile

import "github.com/qslice/qslice/internal/clock"

// Clock is the time source of a Lock: Now stamps expiries (file mtimes) and measures waits,
// NewTimer paces retries. Tests inject a fake one and advance it instead of sleeping.
type Clock = clock.Clock

// Timer is the part of *time.Timer a Lock uses.
type Timer = clock.Timer

// SystemClock returns the Clock backed by package time.
func SystemClock() Clock { return clock.System{} }
