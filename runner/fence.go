package runner

import (
	"errors"
	"sort"
)

// errFenced cancels the handlers of a runner whose queue's filesystem stopped answering.
var errFenced = errors.New("queue fenced: its filesystem does not answer on this node")

// Fence stops all work on the queue at once, for a filesystem that does not answer here:
//   - nothing is claimed from any slice until Unfence (the dispatcher does not even list the
//     directory);
//   - every running handler is cancelled (an exec handler's process group is killed);
//   - every message in flight here is abandoned: counted released at once, so that a narrowing
//     completes and the coordinator can hand the slice off without waiting for operations stuck
//     in the filesystem; and nothing this runner does afterwards settles it (no remove, shunt,
//     give-back or retry): it stays in flight for the next owner's recovery. A claim that lands
//     after the fence (it was blocked in the filesystem) is given back to ready at once, never
//     handled.
//
// What no process can undo: an operation already sent to the file server (a claim's rename, a
// finished message's unlink) may still be carried out when the server is reached again. See
// docs/failover.md ("Filesystem hangs") for what that means for handlers.
func (r *Runner) Fence(reason string) {
	r.mu.Lock()
	if r.fenced {
		r.mu.Unlock()
		return
	}
	r.fenced = true
	r.lease.cancel(errFenced)
	if r.abandoned == nil {
		r.abandoned = map[string]int{}
	}
	var names []string
	for base, s := range r.inflight {
		r.abandoned[base] = s
		r.count[s]--
		names = append(names, base)
	}
	clear(r.inflight)
	for _, e := range r.retries {
		// Waiting for a retry, not stuck: abandoned (left in flight) with no goroutine to return.
		e.timer.Stop()
		delete(r.abandoned, e.name.Base)
	}
	r.retries = r.retries[:0]
	r.notifyWaitersLocked()
	r.mu.Unlock()
	sort.Strings(names)
	r.log.Error("queue fenced: stopped claiming, cancelled running handlers; messages in flight are left for the next owner's recovery",
		"reason", reason, "abandoned", len(names), "files", names)
	r.poke()
}

// Unfence lets the runner claim again (from the slices it owns).
func (r *Runner) Unfence() {
	r.mu.Lock()
	was := r.fenced
	r.fenced = false
	stuck := len(r.abandoned)
	r.mu.Unlock()
	if was {
		r.log.Info("queue unfenced: claiming again", "still_stuck", stuck)
		r.poke()
	}
}

// Fenced reports whether the runner is fenced.
func (r *Runner) Fenced() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fenced
}

// abandonedNow reports whether the message was abandoned by a Fence (or a stuck shutdown):
// nothing may settle it here any more.
func (r *Runner) abandonedNow(base string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.abandoned[base]
	return ok
}

// StuckFiles lists the messages abandoned by a Fence whose goroutines have not returned yet
// (blocked in the filesystem).
func (r *Runner) StuckFiles() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.abandoned))
	for b := range r.abandoned {
		out = append(out, b)
	}
	sort.Strings(out)
	return out
}
