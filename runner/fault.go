package runner

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/retry"
)

// FaultReason names a persistent problem of the shared disk, for the fault metric, slice health
// and logs. The set is fixed (bounded label values).
type FaultReason string

const (
	FaultScan    FaultReason = "scan"      // listing the queue directory failed
	FaultClaim   FaultReason = "claim"     // renaming a ready file to in flight failed (EACCES, EROFS, EIO, ...)
	FaultRead    FaultReason = "read"      // a claimed file could not be read (EACCES, EIO); it is retried
	FaultLockDir FaultReason = "lock_dir"  // the lock directory refused (EACCES, ENOSPC, EIO, a lock that is no regular file)
	FaultShunt   FaultReason = "shunt_dir" // writing the shunt copy failed; the message went back to ready
	FaultBad     FaultReason = "bad_dir"   // moving a message to bad/ failed; it went back to ready
	FaultRelease FaultReason = "release"   // giving a message back to ready failed; it stays in flight
)

// FaultReasons lists every reason, for metrics that start at zero.
var FaultReasons = []FaultReason{FaultScan, FaultClaim, FaultRead, FaultLockDir, FaultShunt, FaultBad, FaultRelease}

// DiskFault is an error of a step that must be retried later with the message left where it is,
// not counted against the message: the disk, not the message, is at fault.
type DiskFault struct {
	Reason FaultReason
	Err    error
}

func (e *DiskFault) Error() string { return fmt.Sprintf("%s: %v", e.Reason, e.Err) }
func (e *DiskFault) Unwrap() error { return e.Err }

// faultLogEvery is how often a persisting problem is logged again, with its repetition count.
const faultLogEvery = time.Minute

// newFaultBackoff is the pause after a disk fault: exponential from initial, capped at
// maxInterval, jittered ±50%, never giving up (the problem is surfaced instead: metric, health,
// log).
func newFaultBackoff(initial, maxInterval time.Duration, c clock.Clock) *backoff.ExponentialBackOff {
	return retry.New(retry.Policy{Initial: initial, Max: maxInterval, Jitter: 0.5}, c)
}

// faults tracks the runner's disk faults. A gating fault (everything but FaultRead, which is per
// message) stops the dispatcher from claiming until its backoff has passed: one failed attempt per
// backoff step, never a hot loop. Each distinct problem (reason and errno) is logged once when it
// starts, then at most once per faultLogEvery with how often it repeated, and once when it clears.
type faults struct {
	queue string
	log   *slog.Logger
	obs   Observer
	clock clock.Clock

	until  atomic.Int64 // UnixNano: no claims before this; 0: none pending
	nfault atomic.Int32 // len(active), so that clear without a fault costs one load

	mu     sync.Mutex
	bo     *backoff.ExponentialBackOff
	active map[FaultReason]*faultState
}

type faultState struct {
	key      string // what makes the problem distinct: the errno, else the message
	since    time.Time
	count    int // occurrences since it started
	logged   int // count when last logged
	loggedAt time.Time
}

func newFaults(queue string, log *slog.Logger, obs Observer, c clock.Clock, initial, maxInterval time.Duration) *faults {
	return &faults{queue: queue, log: log, obs: obs, clock: c, bo: newFaultBackoff(initial, maxInterval, c),
		active: map[FaultReason]*faultState{}}
}

func faultKey(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// report records one occurrence of a fault. A gating one pushes the next claim back by the next
// backoff step.
func (f *faults) report(reason FaultReason, err error) {
	now := f.clock.Now()
	key := faultKey(err)
	f.mu.Lock()
	st := f.active[reason]
	fresh := st == nil || st.key != key
	if fresh {
		st = &faultState{key: key, since: now}
		f.active[reason] = st
		f.nfault.Store(int32(len(f.active)))
	}
	st.count++
	var pause time.Duration
	if reason != FaultRead {
		pause = f.bo.NextBackOff()
		f.until.Store(now.Add(pause).UnixNano())
	}
	logNow := fresh || now.Sub(st.loggedAt) >= faultLogEvery
	repeated, since := st.count-st.logged, st.since
	if logNow {
		st.logged, st.loggedAt = st.count, now
	}
	f.mu.Unlock()
	f.obs.Fault(f.queue, reason, err)
	switch {
	case fresh:
		f.log.Error("disk fault; backing off and retrying (the messages stay where they are)", "fault", string(reason), "err", err, "retry_in", pause.Round(time.Millisecond))
	case logNow:
		f.log.Error("disk fault persists", "fault", string(reason), "err", err, "repeated", repeated, "since", since, "retry_in", pause.Round(time.Millisecond))
	}
}

// clear records that the step of reason succeeded. When no fault is left the backoff starts over.
func (f *faults) clear(reason FaultReason) {
	if f.nfault.Load() == 0 {
		return
	}
	f.mu.Lock()
	st := f.active[reason]
	if st == nil {
		f.mu.Unlock()
		return
	}
	delete(f.active, reason)
	f.nfault.Store(int32(len(f.active)))
	if len(f.active) == 0 {
		f.bo.Reset()
		f.until.Store(0)
	}
	now := f.clock.Now()
	f.mu.Unlock()
	f.obs.Fault(f.queue, reason, nil)
	f.log.Info("disk fault cleared", "fault", string(reason), "occurrences", st.count, "lasted", now.Sub(st.since).Round(time.Millisecond))
}

// progress records that a message was handled: the queue as a whole works, so the backoff
// starts over (a fault that stays is still surfaced until its own step succeeds). A fault of one
// file or one lock then costs that message one attempt per FaultMax (it is avoided meanwhile),
// not the whole queue a growing pause. One atomic load when there is no pause.
func (f *faults) progress() {
	if f.until.Load() == 0 {
		return
	}
	f.mu.Lock()
	f.bo.Reset()
	f.until.Store(0)
	f.mu.Unlock()
}

// wait returns how long claiming must still pause; 0 when it may go on. Without a fault it is
// one atomic load (it is on every claim's path).
func (f *faults) wait() time.Duration {
	u := f.until.Load()
	if u == 0 {
		return 0
	}
	return max(time.Unix(0, u).Sub(f.clock.Now()), 0)
}

// Faults returns the runner's active faults and when each started.
func (r *Runner) Faults() map[FaultReason]time.Time {
	r.faults.mu.Lock()
	defer r.faults.mu.Unlock()
	out := make(map[FaultReason]time.Time, len(r.faults.active))
	for k, v := range r.faults.active {
		out[k] = v.since
	}
	return out
}
