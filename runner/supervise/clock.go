package supervise

import "github.com/qslice/qslice/internal/clock"

// Clock is the time source for the durations with meaning: grace, restart
// backoff, crash-loop window and stable run. Tests inject a fake one.
type Clock = clock.Clock

// Timer is the part of *time.Timer the supervisor uses.
type Timer = clock.Timer

// RealClock is the wall clock.
type RealClock = clock.System
