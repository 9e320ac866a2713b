package failover

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/qslice/qslice/internal/clock"
)

// StandaloneNode is the node name a Standalone coordinator reports.
const StandaloneNode = "standalone"

// Standalone owns every slice of every queue: the embedded default, without Consul. Its lease
// never ends.
type Standalone struct {
	queues     []QueueSpec
	a          Assignee
	validUntil time.Time

	clk      clock.Clock
	mu       sync.Mutex // serialises SetSlices calls with the state below
	running  bool
	stopped  bool
	draining bool
	assigned bool // the assignee has every slice
	since    time.Time
	changes  map[string]uint64
}

var _ Coordinator = (*Standalone)(nil)

// NewStandalone returns a coordinator that gives a every slice of queues while Run runs. clk
// nil is the system clock.
func NewStandalone(queues []QueueSpec, a Assignee, clk clock.Clock) *Standalone {
	if clk == nil {
		clk = clock.System{}
	}
	return &Standalone{
		queues:     queues,
		a:          a,
		clk:        clk,
		validUntil: clk.Now().Add(100 * 365 * 24 * time.Hour), // from System: carries a monotonic reading
		changes:    map[string]uint64{},
	}
}

// Run assigns every slice, waits for ctx, then narrows to nothing and waits until every slice
// is released.
func (s *Standalone) Run(ctx context.Context) error {
	if err := ValidateQueues(s.queues); err != nil {
		return fmt.Errorf("standalone: %w", err)
	}
	s.mu.Lock()
	if s.running || s.stopped {
		s.mu.Unlock()
		return ErrAlreadyRunning
	}
	s.running = true
	if !s.draining {
		s.assignAllLocked(ReasonAcquired)
	}
	s.mu.Unlock()

	<-ctx.Done()

	s.mu.Lock()
	chans := s.releaseAllLocked(ReasonReleased)
	s.running, s.stopped = false, true
	s.mu.Unlock()
	for _, ch := range chans {
		if ch != nil {
			<-ch // the runner bounds this with its own shutdown grace
		}
	}
	return nil
}

func (s *Standalone) assignAllLocked(reason string) {
	for _, q := range s.queues {
		all := make([]int, q.Slices)
		for i := range all {
			all[i] = i
		}
		s.a.SetSlices(q.Name, all)
		s.changes[reason] += uint64(q.Slices)
	}
	s.assigned, s.since = true, s.clk.Now()
}

func (s *Standalone) releaseAllLocked(reason string) []<-chan struct{} {
	if !s.assigned {
		return nil
	}
	var chans []<-chan struct{}
	for _, q := range s.queues {
		chans = append(chans, s.a.SetSlices(q.Name, nil))
		s.changes[reason] += uint64(q.Slices)
	}
	s.assigned = false
	return chans
}

// ValidUntil is far in the future.
func (s *Standalone) ValidUntil() time.Time { return s.validUntil }

// Drain stops processing every slice (there is nobody to give them to) and returns once all are
// released; the node takes none until Undrain.
func (s *Standalone) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	chans := s.releaseAllLocked(ReasonDrain)
	s.mu.Unlock()
	for _, ch := range chans {
		if ch == nil {
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("drain: %w", ctx.Err())
		}
	}
	return nil
}

// Undrain gives every slice back while Run runs.
func (s *Standalone) Undrain(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = false
	if s.running && !s.assigned {
		s.assignAllLocked(ReasonAcquired)
	}
	return nil
}

// Status reports every slice as owned while Run runs and the node is not drained.
func (s *Standalone) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		Mode: "standalone", NodeID: StandaloneNode, Draining: s.draining,
		LeaseValid: true, LeaseRemaining: time.Until(s.validUntil),
		OwnershipChanges: cloneCounts(s.changes), ConsulErrors: map[string]uint64{},
	}
	for _, q := range s.queues {
		for i := 0; i < q.Slices; i++ {
			id := SliceID{q.Name, i}
			ss := SliceStatus{Slice: id, Home: StandaloneNode, State: SliceFree}
			if s.assigned {
				ss.Owner, ss.State = StandaloneNode, SliceOwned
				st.Owned = append(st.Owned, OwnedSlice{Slice: id, Since: s.since, Processing: true})
			}
			st.Slices = append(st.Slices, ss)
		}
	}
	return st
}

func cloneCounts(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
