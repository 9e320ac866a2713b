// Package failovertest holds what tests of coordinators share: a Ledger of which node was
// allowed to process which slice when, which finds overlaps, and a fake Assignee (a runner
// stand-in) that records into it and checks the coordinator's promises to its assignee.
package failovertest

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
)

// interval is one stretch during which a node may process a slice: from the SetSlices call that
// added it to the moment its release was reported (or the node's lease ended, for a crash).
type interval struct {
	node       string
	start, end time.Time // end zero: still open
}

// Ledger records every interval of every slice over all nodes and finds overlaps: two nodes
// allowed to process one slice at the same instant.
type Ledger struct {
	mu         sync.Mutex
	ivs        map[failover.SliceID][]*interval
	violations []string
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{ivs: map[failover.SliceID][]*interval{}} }

// Start records that node may process s from at on; an overlap with another node is a violation.
func (l *Ledger) Start(s failover.SliceID, node string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, iv := range l.ivs[s] {
		if iv.node != node && (iv.end.IsZero() || at.Before(iv.end)) {
			l.violations = append(l.violations, fmt.Sprintf("slice %s given to %s at %s while %s still held it (since %s)",
				s, node, at.Format("15:04:05.000"), iv.node, iv.start.Format("15:04:05.000")))
		}
	}
	l.ivs[s] = append(l.ivs[s], &interval{node: node, start: at})
}

// End closes node's open interval of s at at.
func (l *Ledger) End(s failover.SliceID, node string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, iv := range l.ivs[s] {
		if iv.node == node && iv.end.IsZero() {
			iv.end = at
		}
	}
}

// Check fails the test on any overlap, including ones only visible after the fact (a crashed
// node's interval ends at its lease deadline).
func (l *Ledger) Check(t testing.TB) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	v := slices.Clone(l.violations)
	for s, ivs := range l.ivs {
		sorted := slices.Clone(ivs)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].start.Before(sorted[j].start) })
		for i := 1; i < len(sorted); i++ {
			p, n := sorted[i-1], sorted[i]
			if p.node != n.node && (p.end.IsZero() || n.start.Before(p.end)) {
				v = append(v, fmt.Sprintf("slice %s: %s [%s, %s) overlaps %s from %s", s, p.node,
					p.start.Format("15:04:05.000"), p.end.Format("15:04:05.000"), n.node, n.start.Format("15:04:05.000")))
			}
		}
	}
	for _, s := range v {
		t.Errorf("ledger: %s", s)
	}
}

// FirstStart is the earliest start of slice s by node at or after from (zero if none).
func (l *Ledger) FirstStart(s failover.SliceID, node string, from time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var best time.Time
	for _, iv := range l.ivs[s] {
		if iv.node == node && !iv.start.Before(from) && (best.IsZero() || iv.start.Before(best)) {
			best = iv.start
		}
	}
	return best
}

// Assignee stands for a runner: it records SetSlices calls in the Ledger, takes
// releaseDelay to "finish in-flight work" after a narrowing, and checks the coordinator only
// widens under a valid lease and never re-adds a slice it is still releasing.
type Assignee struct {
	node         string
	l            *Ledger
	releaseDelay time.Duration
	lease        atomic.Pointer[func() time.Time]

	mu      sync.Mutex
	sets    map[string]map[int]bool
	pending map[failover.SliceID]bool
	calls   int
	dead    bool
	errs    []string
	wg      sync.WaitGroup
	stop    chan struct{}
}

// NewAssignee returns an Assignee of node recording into l; a narrowing completes after 30 ms.
func NewAssignee(node string, l *Ledger) *Assignee {
	return &Assignee{node: node, l: l, releaseDelay: 30 * time.Millisecond,
		sets: map[string]map[int]bool{}, pending: map[failover.SliceID]bool{}, stop: make(chan struct{})}
}

// SetSlices implements failover.Assignee.
func (f *Assignee) SetSlices(queue string, idx []int) <-chan struct{} {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	cur := f.sets[queue]
	next := map[int]bool{}
	for _, i := range idx {
		next[i] = true
	}
	var removed []failover.SliceID
	for i := range cur {
		if !next[i] {
			removed = append(removed, failover.SliceID{Queue: queue, Index: i})
			f.pending[failover.SliceID{Queue: queue, Index: i}] = true
		}
	}
	for i := range next {
		if cur[i] {
			continue
		}
		s := failover.SliceID{Queue: queue, Index: i}
		if f.dead {
			f.errs = append(f.errs, fmt.Sprintf("%s: SetSlices after crash", s))
		}
		if f.pending[s] {
			f.errs = append(f.errs, fmt.Sprintf("%s re-added while still releasing", s))
		}
		if lp := f.lease.Load(); lp != nil && !now.Before((*lp)()) {
			f.errs = append(f.errs, fmt.Sprintf("%s added without a valid lease", s))
		}
		f.l.Start(s, f.node, now)
	}
	f.sets[queue] = next
	ch := make(chan struct{})
	if len(removed) == 0 {
		close(ch)
		return ch
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		select {
		case <-time.After(f.releaseDelay): // simulated in-flight work
		case <-f.stop:
		}
		f.mu.Lock()
		for _, s := range removed {
			delete(f.pending, s)
			f.l.End(s, f.node, time.Now())
		}
		f.mu.Unlock()
		close(ch)
	}()
	return ch
}

// Crash ends every interval at the lease deadline: the runner kills its handlers there.
func (f *Assignee) Crash(validUntil time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dead = true
	for q, set := range f.sets {
		for i := range set {
			f.l.End(failover.SliceID{Queue: q, Index: i}, f.node, validUntil)
		}
	}
	f.sets = map[string]map[int]bool{}
}

// Close ends the simulated in-flight work at once and waits for it.
func (f *Assignee) Close() {
	close(f.stop)
	f.wg.Wait()
}

// Slices lists the slices assigned now, by queue then index.
func (f *Assignee) Slices() []failover.SliceID {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []failover.SliceID
	for q, set := range f.sets {
		for i := range set {
			out = append(out, failover.SliceID{Queue: q, Index: i})
		}
	}
	SortSlices(out)
	return out
}

// Count is len(Slices()).
func (f *Assignee) Count() int { return len(f.Slices()) }

// CallCount is how often SetSlices was called.
func (f *Assignee) CallCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// Check fails the test on every broken promise the assignee saw.
func (f *Assignee) Check(t testing.TB) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.errs {
		t.Errorf("assignee %s: %s", f.node, e)
	}
}

// SetLease makes SetSlices check that every widening happens before validUntil().
func (f *Assignee) SetLease(validUntil func() time.Time) { f.lease.Store(&validUntil) }

// SortSlices sorts s by queue, then index.
func SortSlices(s []failover.SliceID) {
	slices.SortFunc(s, func(a, b failover.SliceID) int {
		return cmp.Or(cmp.Compare(a.Queue, b.Queue), cmp.Compare(a.Index, b.Index))
	})
}
