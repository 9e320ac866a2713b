package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/fshealth"
)

// fsWatch is the node's view of its queue directories' filesystems: one fshealth.Watcher per
// queue worked here. When a queue's filesystem stops answering, its runner is fenced at once
// (no claim, handlers killed, in-flight messages abandoned to the next owner), the coordinator
// hands its slices off (failover.QueueAvailability) and the queue's slices and Consul check
// report critical; when it answers again for the hold-down, the runner is unfenced and the
// slices come back through the planner.
type fsWatch struct {
	watchers map[string]*fshealth.Watcher // by queue
	order    []string

	mu     sync.Mutex
	fencer map[string]fencer
}

// fencer is the part of runner.Runner that the watch drives.
type fencer interface {
	Fence(reason string)
	Unfence()
}

func newFSWatch(cfg *config.Config, a *Agent) (*fsWatch, error) {
	f := &fsWatch{watchers: map[string]*fshealth.Watcher{}, fencer: map[string]fencer{}}
	for _, q := range cfg.Queues {
		if _, ok := a.workers[q.Name]; !ok {
			continue // observed only: nothing to hand off
		}
		if q.Dir == "" {
			continue // a supervised worker without a queue directory: no filesystem to watch
		}
		name := q.Name
		w, err := fshealth.New(fshealth.Config{
			Name: name, Dir: q.Dir, Node: cfg.Node,
			Interval: cfg.Health.Filesystem.Interval, Timeout: cfg.Health.Filesystem.Timeout,
			RecoverAfter: cfg.Health.Filesystem.RecoverAfter,
			Logger:       a.log.With("component", "fshealth"),
			OnChange:     func(st fshealth.State) { f.changed(name, st) },
		})
		if err != nil {
			return nil, fmt.Errorf("queue %s: %w", name, err)
		}
		f.watchers[name] = w
		f.order = append(f.order, name)
		if r, ok := a.runners[name]; ok {
			f.fencer[name] = r
		}
	}
	sort.Strings(f.order)
	return f, nil
}

// changed fences or unfences the queue's runner; the coordinator learns it from
// UnavailableQueues on its next round.
func (f *fsWatch) changed(queue string, st fshealth.State) {
	f.mu.Lock()
	r := f.fencer[queue]
	f.mu.Unlock()
	if r == nil {
		return
	}
	if st.Available {
		r.Unfence()
	} else {
		r.Fence(st.Reason)
	}
}

// Run runs every watcher; each returns at once when ctx ends (a probe stuck in the filesystem
// is left behind, never joined).
func (f *fsWatch) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, w := range f.watchers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
	}
	wg.Wait()
	return nil
}

// States lists every watched queue's verdict, by queue name.
func (f *fsWatch) States() []fshealth.State {
	out := make([]fshealth.State, 0, len(f.order))
	for _, q := range f.order {
		out = append(out, f.watchers[q].State())
	}
	return out
}

// unavailable returns the queue's verdict when its filesystem is unavailable here.
func (f *fsWatch) unavailable(queue string) (fshealth.State, bool) {
	w, ok := f.watchers[queue]
	if !ok {
		return fshealth.State{}, false
	}
	st := w.State()
	return st, !st.Available
}

// UnavailableQueues implements failover.QueueAvailability.
func (a *Agent) UnavailableQueues() map[string]string {
	var out map[string]string
	for _, st := range a.fs.States() {
		if !st.Available {
			if out == nil {
				out = map[string]string{}
			}
			out[st.Name] = fmt.Sprintf("filesystem of %s unavailable on this node: %s", st.Dir, st.Reason)
		}
	}
	return out
}

var _ failover.QueueAvailability = (*Agent)(nil)

// fsSliceHealth is the slice health when its queue's filesystem is unavailable here.
func (a *Agent) fsSliceHealth(id failover.SliceID) (failover.Health, bool) {
	st, bad := a.fs.unavailable(id.Queue)
	if !bad {
		return failover.Health{}, false
	}
	return failover.Health{Status: failover.StatusCritical, Output: fmt.Sprintf(
		"filesystem of %s unavailable on this node: %s; not claiming, slices handed to nodes that can reach it (runbook: QsliceQueueFilesystemUnavailable)",
		st.Dir, st.Reason)}, true
}

// probeStopBound is how long a stopping node waits for the probe's scan to return: a scan
// blocked in a filesystem that does not answer is left behind (it ends with its system call).
const probeStopBound = 2 * time.Second

// leaveBehind runs run(ctx) and returns its result, except that once ctx ends it waits at most
// bound: a component blocked in the filesystem must not keep the node from stopping.
func leaveBehind(ctx context.Context, log *slog.Logger, what string, bound time.Duration, run func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		log.Warn("stopping without waiting for a component blocked in the filesystem", "component", what, "waited", bound)
		return nil
	}
}
