package runner

import "time"

// Outcome is how the handling of one message ended.
type Outcome string

const (
	OutcomeDone     Outcome = "done"     // handler succeeded; the file was removed
	OutcomeRetry    Outcome = "retry"    // handler asked to retry later (exit 75 / ErrRetry)
	OutcomeShunted  Outcome = "shunted"  // handler failed; moved to the shunt queue
	OutcomeBad      Outcome = "bad"      // unreadable or exhausted; moved to bad/
	OutcomeReleased Outcome = "released" // given back unhandled (slice moved away, lease lost, shutdown)
)

// LockResult is how a wait for a message's lock file ended.
type LockResult string

const (
	LockAcquired LockResult = "acquired" // got it without breaking anything
	LockBroke    LockResult = "broke"    // got it after breaking an expired lock
	LockTimeout  LockResult = "timeout"  // gave up; the message is retried later
)

// Observer receives the runner's events, for metrics. Calls come from many goroutines at once and
// must not block. Label values are bounded: queue names from the config and slice indices.
type Observer interface {
	Handled(queue string, slice int, outcome Outcome, took time.Duration)
	LockWait(queue string, slice int, waited time.Duration, result LockResult)
	LockHold(queue string, slice int, held time.Duration)
	Recovered(queue string, slice int, result string) // "requeued" or "bad": in-flight files found when widening
	Skipped(queue string, reason string)              // foreign or malformed names met while scanning; "tmp_removed": a leftover *.tmp removed
	// Fault reports one occurrence of a disk fault (err != nil), or that it cleared (err == nil).
	Fault(queue string, reason FaultReason, err error)
}

// NopObserver ignores every event.
type NopObserver struct{}

func (NopObserver) Handled(string, int, Outcome, time.Duration)     {}
func (NopObserver) LockWait(string, int, time.Duration, LockResult) {}
func (NopObserver) LockHold(string, int, time.Duration)             {}
func (NopObserver) Recovered(string, int, string)                   {}
func (NopObserver) Skipped(string, string)                          {}
func (NopObserver) Fault(string, FaultReason, error)                {}
