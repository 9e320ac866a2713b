package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/probes"
	"github.com/qslice/qslice/runner"
	"github.com/qslice/qslice/runner/lockfile"
)

// healthTracker judges owned slices from the probe's snapshots and the runners' progress:
// warning when the oldest ready message is older than max_age, or when a non-empty backlog made
// no progress (nothing handled, the oldest message unchanged and the count not falling) for
// stall_after; critical ("stuck") after twice stall_after without progress. Supervised queues have no runner events; their progress shows in the snapshots.
type healthTracker struct {
	cfg   config.Health
	clk   clock.Clock
	probe *probes.Probe

	mu       sync.Mutex
	progress map[failover.SliceID]*sliceProgress
	faults   map[string]map[runner.FaultReason]*activeFault // by queue: the runner's disk faults
}

// activeFault is a disk fault of a queue's runner that has not cleared yet.
type activeFault struct {
	since time.Time
	err   string
}

type sliceProgress struct {
	seenAt     time.Time // snapshot last folded in
	ready      int
	oldest     time.Time
	lastChange time.Time
}

func newHealthTracker(cfg config.Health, clk clock.Clock) *healthTracker {
	return &healthTracker{cfg: cfg, clk: clk, progress: map[failover.SliceID]*sliceProgress{},
		faults: map[string]map[runner.FaultReason]*activeFault{}}
}

func (h *healthTracker) get(id failover.SliceID) *sliceProgress {
	p := h.progress[id]
	if p == nil {
		p = &sliceProgress{lastChange: h.clk.Now()}
		h.progress[id] = p
	}
	return p
}

// slice reports the health of one owned slice.
func (h *healthTracker) slice(id failover.SliceID) failover.Health {
	if f, ok := h.fault(id.Queue); ok {
		return f
	}
	snap := h.probe.Latest()
	if snap == nil {
		return failover.Health{Status: failover.StatusPassing, Output: "no scan yet"}
	}
	var qs *probes.QueueSnapshot
	for i := range snap.Queues {
		if snap.Queues[i].Config.Name == id.Queue {
			qs = &snap.Queues[i]
		}
	}
	if qs == nil || !qs.HasData || id.Index >= len(qs.PerSlice) {
		return failover.Health{Status: failover.StatusPassing, Output: "not scanned yet"}
	}
	st := qs.PerSlice[id.Index]
	now := h.clk.Now()
	h.mu.Lock()
	p := h.get(id)
	if qs.At.After(p.seenAt) {
		if st.Ready == 0 || st.Ready < p.ready || !st.OldestReady.Equal(p.oldest) {
			p.lastChange = qs.At
		}
		p.seenAt, p.ready, p.oldest = qs.At, st.Ready, st.OldestReady
	}
	stalledFor := now.Sub(p.lastChange)
	h.mu.Unlock()

	age := st.OldestReadyAge(qs.At)
	switch {
	case st.Ready > 0 && h.cfg.StallAfter > 0 && stalledFor > 2*h.cfg.StallAfter:
		// Stuck, not dead: the worker runs but nothing moves. Critical, so that with
		// consul.stuck_handoff the slice goes to a backup node.
		return failover.Health{Status: failover.StatusCritical, Output: fmt.Sprintf(
			"stuck: %d messages ready and no progress for %s (twice health.stall_after %s); oldest is %s old. Check the worker; with consul.stuck_handoff the slice moves to another node.",
			st.Ready, stalledFor.Round(100*time.Millisecond), h.cfg.StallAfter, age.Round(100*time.Millisecond))}
	case st.Ready > 0 && h.cfg.StallAfter > 0 && stalledFor > h.cfg.StallAfter:
		return failover.Health{Status: failover.StatusWarning, Output: fmt.Sprintf(
			"stalled: %d messages ready and no progress for %s (health.stall_after %s); oldest is %s old. Check the worker's logs.",
			st.Ready, stalledFor.Round(100*time.Millisecond), h.cfg.StallAfter, age.Round(100*time.Millisecond))}
	case st.Ready > 0 && h.cfg.MaxAge > 0 && age > h.cfg.MaxAge:
		return failover.Health{Status: failover.StatusWarning, Output: fmt.Sprintf(
			"backlog old: oldest of %d ready messages is %s old (health.max_age %s)", st.Ready, age.Round(time.Second), h.cfg.MaxAge)}
	}
	return failover.Health{Status: failover.StatusPassing, Output: fmt.Sprintf("%d ready, oldest %s", st.Ready, age.Round(time.Second))}
}

// Handled records progress (runner.Observer); the other events are not about progress.
func (h *healthTracker) Handled(q string, s int, o runner.Outcome, _ time.Duration) {
	if o == runner.OutcomeReleased {
		return
	}
	h.mu.Lock()
	h.get(failover.SliceID{Queue: q, Index: s}).lastChange = h.clk.Now()
	h.mu.Unlock()
}
func (h *healthTracker) LockWait(string, int, time.Duration, runner.LockResult) {}
func (h *healthTracker) LockHold(string, int, time.Duration)                    {}
func (h *healthTracker) Recovered(string, int, string)                          {}

// Fault records a disk fault of a queue's runner, or its end (err == nil).
func (h *healthTracker) Fault(q string, r runner.FaultReason, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.faults[q]
	if err == nil {
		delete(m, r)
		return
	}
	if m == nil {
		m = map[runner.FaultReason]*activeFault{}
		h.faults[q] = m
	}
	if f := m[r]; f != nil {
		f.err = err.Error()
		return
	}
	m[r] = &activeFault{since: h.clk.Now(), err: err.Error()}
}

// fault judges a queue's slices by the runner's disk faults: warning while one persists, critical
// once the oldest has lasted longer than health.stall_after (so that, in Consul mode, the slices
// can move to a node whose view of the disk works, and alerts fire).
func (h *healthTracker) fault(q string) (failover.Health, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var oldest *activeFault
	var reason runner.FaultReason
	for r, f := range h.faults[q] {
		if oldest == nil || f.since.Before(oldest.since) || f.since.Equal(oldest.since) && r < reason {
			oldest, reason = f, r
		}
	}
	if oldest == nil {
		return failover.Health{}, false
	}
	lasted := h.clk.Now().Sub(oldest.since)
	st := failover.StatusWarning
	if h.cfg.StallAfter > 0 && lasted > h.cfg.StallAfter {
		st = failover.StatusCritical
	}
	return failover.Health{Status: st, Output: fmt.Sprintf(
		"disk fault (%s) for %s: %s; retried with backoff, messages left in place (see the runbook QsliceRunnerDiskFault)",
		reason, lasted.Round(time.Second), oldest.err)}, true
}
func (h *healthTracker) Skipped(string, string) {}

// lockfileHosts returns inspection options naming this host as lock files spell it (Python's
// getfqdn and Go's os.Hostname can differ), so that dead local holders are recognised.
func lockfileHosts() lockfile.InspectOptions {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return lockfile.InspectOptions{LocalHosts: lockfile.LocalHostNames(ctx)}
}

// lockDirLabel names a lock directory for the "lock" label: its base name, made unique.
func lockDirLabel(dir string, i int) string {
	base := filepath.Base(dir)
	if base == "." || base == "/" || base == "" {
		base = "locks"
	}
	if i == 0 {
		return base
	}
	return fmt.Sprintf("%s-%d", base, i)
}
