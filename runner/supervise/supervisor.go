//go:build unix

package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"
)

// ErrAlreadyRun is returned by a second call of Run.
var ErrAlreadyRun = errors.New("supervisor: Run called twice")

// Option changes how New builds a Supervisor.
type Option func(*Supervisor)

// WithClock sets the clock (default RealClock).
func WithClock(c Clock) Option { return func(s *Supervisor) { s.clock = c } }

// Supervisor runs the workers of the owned slices of one queue. Its methods
// are safe for concurrent use.
type Supervisor struct {
	queue  string
	slices int
	cfg    Config
	log    *slog.Logger
	clock  Clock
	specs  []workerSpec // per slice
	early  bool         // reap leaders at once (no procfs)

	poke chan struct{} // wakes Run; capacity 1

	mu       sync.Mutex
	started  bool
	owned    []bool        // the set from the last SetSlices
	slots    map[int]*slot // at most one per slice: the invariant
	stats    []sliceStats  // per slice
	releases []*release
}

// slot is the life of one slice on this node, from widening to the end of
// its last worker. Its goroutine runs runSlot.
type slot struct {
	slice    int
	cancel   context.CancelFunc
	stopping bool
}

// release is one pending result of SetSlices.
type release struct {
	waiting map[*slot]struct{}
	done    chan struct{}
}

// sliceStats is what the supervisor knows of one slice; guarded by mu.
type sliceStats struct {
	seen      bool // owned at some time
	up        bool
	pid       int
	startedAt time.Time
	starts    uint64
	restarts  uint64
	crashes   uint64 // unexpected exits, failed starts included
	exited    bool
	lastExit  exitInfo
	lastAt    time.Time
	nextStart time.Time // when a restart is due; zero when none is
	tracker   crashTracker
}

// New builds the supervisor of queue, split into slices slices. cfg is
// completed with defaults and validated; logger nil discards the log.
func New(queue string, slices int, cfg Config, logger *slog.Logger, opts ...Option) (*Supervisor, error) {
	var errs []error
	if queue == "" {
		errs = append(errs, &FieldError{Field: "queue", Msg: "must not be empty"})
	}
	if slices < 1 {
		errs = append(errs, &FieldError{Field: "slices", Msg: "must be >= 1"})
	}
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("new supervisor for queue %q: %w", queue, err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.WithDefaults()
	s := &Supervisor{
		queue:  queue,
		slices: slices,
		cfg:    cfg,
		log:    logger.With("queue", queue),
		clock:  RealClock{},
		early:  !procfsUsable(),
		poke:   make(chan struct{}, 1),
		owned:  make([]bool, slices),
		slots:  make(map[int]*slot),
		stats:  make([]sliceStats, slices),
	}
	for _, o := range opts {
		o(s)
	}
	base := os.Environ()
	for i := range slices {
		spec, err := cfg.spec(vars{queue: queue, slice: i, slices: slices}, base)
		if err != nil {
			return nil, fmt.Errorf("new supervisor for queue %q: %w", queue, err)
		}
		s.specs = append(s.specs, spec)
		s.stats[i].tracker = crashTracker{threshold: cfg.CrashLoopThreshold, window: cfg.CrashLoopWindow}
	}
	return s, nil
}

// Queue returns the queue name.
func (s *Supervisor) Queue() string { return s.queue }

// Slices returns the slice count.
func (s *Supervisor) Slices() int { return s.slices }

// SetSlices makes owned the set of slices whose workers run (duplicates are
// ignored; numbers outside [0, slices) are logged and ignored). Workers of
// added slices start; workers of removed slices get the stop signal, Grace,
// then SIGKILL to their process group. The returned channel is closed once
// the worker of every removed slice is gone, process group included; at
// once when no worker had to stop. SetSlices may be called before Run
// (the workers start when Run does) and after it (nothing runs then).
func (s *Supervisor) SetSlices(owned []int) <-chan struct{} {
	want := make([]bool, s.slices)
	var invalid []int
	for _, i := range owned {
		if i < 0 || i >= s.slices {
			invalid = append(invalid, i)
			continue
		}
		want[i] = true
	}
	if len(invalid) > 0 {
		s.log.Error("set slices: ignoring slices out of range", "invalid", invalid, "slices", s.slices)
	}
	rel := &release{waiting: make(map[*slot]struct{}), done: make(chan struct{})}
	s.mu.Lock()
	for i := range s.slices {
		if s.owned[i] && !want[i] {
			if sl := s.slots[i]; sl != nil {
				// Stop now, not at Run's next turn: a slice removed and
				// added back at once still gets a new worker, and this
				// release still completes.
				sl.stopping = true
				sl.cancel()
				rel.waiting[sl] = struct{}{}
			}
		}
		if want[i] {
			s.stats[i].seen = true
		}
	}
	s.owned = want
	if len(rel.waiting) == 0 {
		close(rel.done)
	} else {
		s.releases = append(s.releases, rel)
	}
	s.mu.Unlock()
	s.wake()
	return rel.done
}

func (s *Supervisor) wake() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Run starts and stops workers as SetSlices asks until ctx is done, then
// stops every worker (stop signal, Grace, SIGKILL to the group) and returns
// nil once every worker's process group is gone. Run may be called once.
func (s *Supervisor) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return ErrAlreadyRun
	}
	s.started = true
	s.mu.Unlock()

	var wg sync.WaitGroup
	for {
		if ctx.Err() == nil {
			s.reconcile(ctx, &wg)
		}
		select {
		case <-ctx.Done():
			// Every slot's context derives from ctx: all are stopping.
			wg.Wait()
			return nil
		case <-s.poke:
		}
	}
}

// reconcile starts a slot for every owned slice without one, and stops the
// slots of slices no longer owned. A slice whose old slot is still stopping
// gets its new slot when the old one is done (slotDone wakes Run).
func (s *Supervisor) reconcile(ctx context.Context, wg *sync.WaitGroup) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.slices {
		sl := s.slots[i]
		switch {
		case sl == nil && s.owned[i]:
			sctx, cancel := context.WithCancel(ctx)
			sl = &slot{slice: i, cancel: cancel}
			s.slots[i] = sl
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer cancel()
				s.runSlot(sctx, sl)
				s.slotDone(sl)
			}()
		case sl != nil && !s.owned[i] && !sl.stopping:
			sl.stopping = true
			sl.cancel()
		}
	}
}

// slotDone removes a finished slot and completes the releases it held up.
func (s *Supervisor) slotDone(sl *slot) {
	s.mu.Lock()
	if s.slots[sl.slice] == sl {
		delete(s.slots, sl.slice)
	}
	st := &s.stats[sl.slice]
	st.up = false
	st.pid = 0
	st.nextStart = time.Time{}
	keep := s.releases[:0]
	for _, r := range s.releases {
		delete(r.waiting, sl)
		if len(r.waiting) == 0 {
			close(r.done)
			continue
		}
		keep = append(keep, r)
	}
	clear(s.releases[len(keep):])
	s.releases = keep
	s.mu.Unlock()
	s.wake()
}

// Health returns the health of every owned slice.
func (s *Supervisor) Health() map[int]SliceHealth {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	h := make(map[int]SliceHealth)
	for i, own := range s.owned {
		if own {
			h[i] = s.stats[i].health(now)
		}
	}
	return h
}

func (st *sliceStats) health(now time.Time) SliceHealth {
	switch {
	case st.tracker.critical:
		return SliceHealth{State: HealthCritical, Reason: st.tracker.reason}
	case st.up:
		return SliceHealth{State: HealthPassing, Reason: fmt.Sprintf("worker running (pid %d)", st.pid)}
	case !st.nextStart.IsZero():
		wait := max(st.nextStart.Sub(now), 0)
		return SliceHealth{State: HealthWarning, Reason: fmt.Sprintf(
			"worker not running: %s; %d unexpected exits recently; restart in %v",
			st.lastExit.desc, st.tracker.recentExits(now), wait.Round(time.Millisecond))}
	default:
		return SliceHealth{State: HealthWarning, Reason: "worker not running yet"}
	}
}

// Snapshot is the state of a supervisor for metrics.
type Snapshot struct {
	Queue  string
	Slices int
	// Workers has one entry per slice that was ever owned, by slice.
	Workers []WorkerStats
}

// WorkerStats is the state of the worker of one slice. The counters are
// totals over the Supervisor's life and never go down.
type WorkerStats struct {
	Slice int
	Owned bool // in the last SetSlices
	Up    bool // a worker process runs (it may be stopping)
	PID   int  // of the running worker; 0 when none
	// StartedAt is when the running worker started.
	StartedAt time.Time
	// StartsTotal counts start attempts; RestartsTotal those after an
	// unexpected exit; UnexpectedExitsTotal exits nobody asked for, failed
	// starts included.
	StartsTotal          uint64
	RestartsTotal        uint64
	UnexpectedExitsTotal uint64
	// Exited tells whether a worker of this slice has ended; the Last
	// fields describe the last that did. LastExitCode is the exit status,
	// 128+N when signal N killed it, -1 when it could not start.
	Exited         bool
	LastExitCode   int
	LastExitSignal string
	LastExitReason string
	LastExitAt     time.Time
	// Health is meaningful for owned slices only.
	Health SliceHealth
}

// Snapshot returns the current state, a copy the caller may keep.
func (s *Supervisor) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	snap := Snapshot{Queue: s.queue, Slices: s.slices}
	for i := range s.stats {
		st := &s.stats[i]
		if !st.seen {
			continue
		}
		w := WorkerStats{
			Slice:                i,
			Owned:                s.owned[i],
			Up:                   st.up,
			PID:                  st.pid,
			StartedAt:            st.startedAt,
			StartsTotal:          st.starts,
			RestartsTotal:        st.restarts,
			UnexpectedExitsTotal: st.crashes,
			Exited:               st.exited,
			LastExitCode:         st.lastExit.code,
			LastExitSignal:       st.lastExit.signal,
			LastExitReason:       st.lastExit.desc,
			LastExitAt:           st.lastAt,
		}
		if !st.up {
			w.StartedAt = time.Time{}
		}
		if s.owned[i] {
			w.Health = st.health(now)
		}
		snap.Workers = append(snap.Workers, w)
	}
	sort.Slice(snap.Workers, func(a, b int) bool { return snap.Workers[a].Slice < snap.Workers[b].Slice })
	return snap
}
