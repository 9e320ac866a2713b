package failover

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/consultest"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// interval is one stretch during which a node may process a slice: from the SetSlices call that
// added it to the moment its release was reported (or the node's lease ended, for a crash).
type interval struct {
	node       string
	start, end time.Time // end zero: still open
}

// ledger records every interval of every slice over all nodes and finds overlaps: two nodes
// allowed to process one slice at the same instant.
type ledger struct {
	mu         sync.Mutex
	ivs        map[SliceID][]*interval
	violations []string
}

func newLedger() *ledger { return &ledger{ivs: map[SliceID][]*interval{}} }

func (l *ledger) start(s SliceID, node string, at time.Time) {
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

func (l *ledger) end(s SliceID, node string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, iv := range l.ivs[s] {
		if iv.node == node && iv.end.IsZero() {
			iv.end = at
		}
	}
}

// check fails the test on any overlap, including ones only visible after the fact (a crashed
// node's interval ends at its lease deadline).
func (l *ledger) check(t *testing.T) {
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

// firstStart is the earliest start of slice s by node at or after from (zero if none).
func (l *ledger) firstStart(s SliceID, node string, from time.Time) time.Time {
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

// fakeAssignee stands for a runner: it records SetSlices calls in the ledger, takes
// releaseDelay to "finish in-flight work" after a narrowing, and checks the coordinator only
// widens under a valid lease and never re-adds a slice it is still releasing.
type fakeAssignee struct {
	node         string
	l            *ledger
	releaseDelay time.Duration
	lease        atomic.Pointer[func() time.Time]

	mu      sync.Mutex
	sets    map[string]map[int]bool
	pending map[SliceID]bool
	calls   int
	dead    bool
	errs    []string
	wg      sync.WaitGroup
	stop    chan struct{}
}

func newFakeAssignee(node string, l *ledger) *fakeAssignee {
	return &fakeAssignee{node: node, l: l, releaseDelay: 30 * time.Millisecond,
		sets: map[string]map[int]bool{}, pending: map[SliceID]bool{}, stop: make(chan struct{})}
}

func (f *fakeAssignee) SetSlices(queue string, idx []int) <-chan struct{} {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	cur := f.sets[queue]
	next := map[int]bool{}
	for _, i := range idx {
		next[i] = true
	}
	var removed []SliceID
	for i := range cur {
		if !next[i] {
			removed = append(removed, SliceID{queue, i})
			f.pending[SliceID{queue, i}] = true
		}
	}
	for i := range next {
		if cur[i] {
			continue
		}
		s := SliceID{queue, i}
		if f.dead {
			f.errs = append(f.errs, fmt.Sprintf("%s: SetSlices after crash", s))
		}
		if f.pending[s] {
			f.errs = append(f.errs, fmt.Sprintf("%s re-added while still releasing", s))
		}
		if lp := f.lease.Load(); lp != nil && !now.Before((*lp)()) {
			f.errs = append(f.errs, fmt.Sprintf("%s added without a valid lease", s))
		}
		f.l.start(s, f.node, now)
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
			f.l.end(s, f.node, time.Now())
		}
		f.mu.Unlock()
		close(ch)
	}()
	return ch
}

// crash ends every interval at the lease deadline: the runner kills its handlers there.
func (f *fakeAssignee) crash(validUntil time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dead = true
	for q, set := range f.sets {
		for i := range set {
			f.l.end(SliceID{q, i}, f.node, validUntil)
		}
	}
	f.sets = map[string]map[int]bool{}
}

func (f *fakeAssignee) close() {
	close(f.stop)
	f.wg.Wait()
}

func (f *fakeAssignee) slices() []SliceID {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []SliceID
	for q, set := range f.sets {
		for i := range set {
			out = append(out, SliceID{q, i})
		}
	}
	sortSlices(out)
	return out
}

func (f *fakeAssignee) count() int { return len(f.slices()) }

func (f *fakeAssignee) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeAssignee) check(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.errs {
		t.Errorf("assignee %s: %s", f.node, e)
	}
}

type fakeHealth struct {
	mu    sync.Mutex
	err   error
	slice map[SliceID]Health
}

func (h *fakeHealth) NodeHealthy() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

func (h *fakeHealth) SliceHealth(s SliceID) Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	if v, ok := h.slice[s]; ok {
		return v
	}
	return Health{Status: StatusPassing}
}

func (h *fakeHealth) set(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = err
}

func (h *fakeHealth) setSlice(s SliceID, v Health) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.slice == nil {
		h.slice = map[SliceID]Health{}
	}
	h.slice[s] = v
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (b *syncBuffer) count(substr string) int { return strings.Count(b.String(), substr) }

// testNode is one coordinator with its fakes.
type testNode struct {
	id      string
	c       *ConsulCoordinator
	a       *fakeAssignee
	h       *fakeHealth
	logs    *syncBuffer
	spans   *tracetest.SpanRecorder // the coordinator's spans
	cancel  context.CancelFunc
	done    chan error
	started time.Time
	runErr  error
	stopped bool
}

var testQueues = []QueueSpec{{Name: "out", Slices: 8}, {Name: "in", Slices: 4}}

const totalTestSlices = 12

func testConfig(srv *consultest.Server, id string) ConsulConfig {
	return ConsulConfig{
		Cluster: "test", NodeID: id, Address: srv.HTTPAddr, Token: srv.ManagementToken,
		TTL: 2 * time.Second, LockDelay: time.Second, HoldDown: 3 * time.Second,
		Queues: testQueues, WatchMinInterval: 50 * time.Millisecond, DrainTimeout: 5 * time.Second,
		Version: "test",
	}
}

func startNode(t *testing.T, srv *consultest.Server, l *ledger, id string, mutate func(*ConsulConfig)) *testNode {
	t.Helper()
	return startNodeAs(t, srv, l, id, id, mutate)
}

// startNodeAs starts a coordinator with NodeID id whose assignee appears in the ledger as
// ledgerName (a restarted process of the same node is a different processor).
func startNodeAs(t *testing.T, srv *consultest.Server, l *ledger, id, ledgerName string, mutate func(*ConsulConfig)) *testNode {
	t.Helper()
	cfg := testConfig(srv, id)
	if mutate != nil {
		mutate(&cfg)
	}
	n := &testNode{id: id, a: newFakeAssignee(ledgerName, l), h: &fakeHealth{}, logs: &syncBuffer{}, done: make(chan error, 1)}
	logger := slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := NewConsul(cfg, n.a, n.h, logger, nil)
	if err != nil {
		t.Fatalf("NewConsul(%s): %v", id, err)
	}
	n.c = c
	n.spans = tracetest.NewSpanRecorder()
	c.SetTracer(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(n.spans)))
	vu := c.ValidUntil
	n.a.lease.Store(&vu)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.started = time.Now()
	go func() { n.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		n.stop(t)
		n.a.close()
		n.a.check(t)
		if t.Failed() {
			t.Logf("log of node %s:\n%s", id, n.logs.String())
		}
	})
	return n
}

// stop cancels Run and waits for it (bounded).
func (n *testNode) stop(t *testing.T) error {
	t.Helper()
	if n.stopped {
		return n.runErr
	}
	n.stopped = true
	n.cancel()
	select {
	case n.runErr = <-n.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("node %s: Run did not return within 20s of cancel", n.id)
	}
	return n.runErr
}

// crash makes the node stop renewing as if the process died; its work ends at its lease.
func (n *testNode) crash(t *testing.T) time.Time {
	t.Helper()
	n.c.crashOnCancel = true
	n.stopped = true
	n.cancel()
	select {
	case n.runErr = <-n.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("node %s: Run did not return after crash", n.id)
	}
	vu := n.c.ValidUntil()
	n.a.crash(vu)
	return vu
}

// waitSettled waits until n has been up for a hold-down (3 s): from then on, a newcomer waits
// for its own hold-down instead of the cluster-boot rule (nobody settled: everybody counts).
func waitSettled(t *testing.T, n *testNode) {
	t.Helper()
	until := n.started.Add(3*time.Second + 100*time.Millisecond)
	consultest.WaitFor(t, 5*time.Second, "node "+n.id+" settled", func() error {
		if time.Now().Before(until) {
			return fmt.Errorf("up for %s", time.Since(n.started))
		}
		return nil
	})
}

func allTestSlices() []SliceID {
	var out []SliceID
	for _, q := range testQueues {
		for i := 0; i < q.Slices; i++ {
			out = append(out, SliceID{q.Name, i})
		}
	}
	sortSlices(out)
	return out
}

// waitSplit waits until the nodes together process every slice exactly once and each has
// exactly want[node] (nil: any non-empty share).
func waitSplit(t *testing.T, timeout time.Duration, what string, want map[*testNode][]SliceID, nodes ...*testNode) {
	t.Helper()
	consultest.WaitFor(t, timeout, what, func() error {
		seen := map[SliceID]string{}
		for _, n := range nodes {
			got := n.a.slices()
			for _, s := range got {
				if o, dup := seen[s]; dup {
					return fmt.Errorf("slice %s on %s and %s", s, o, n.id)
				}
				seen[s] = n.id
			}
			if w, ok := want[n]; ok && !slices.Equal(got, w) {
				return fmt.Errorf("node %s processes %v, want %v", n.id, got, w)
			}
		}
		if len(seen) != totalTestSlices {
			return fmt.Errorf("%d of %d slices processed", len(seen), totalTestSlices)
		}
		return nil
	})
}

// rendezvousSplit is the split the planner must reach once every node is settled.
func rendezvousSplit(nodes ...*testNode) map[*testNode][]SliceID {
	out := map[*testNode][]SliceID{}
	for _, n := range nodes {
		out[n] = []SliceID{}
	}
	for _, s := range allTestSlices() {
		var best *testNode
		var bw uint64
		for _, n := range nodes {
			if w := Rendezvous(s, n.id); best == nil || w > bw || (w == bw && n.id < best.id) {
				best, bw = n, w
			}
		}
		out[best] = append(out[best], s)
	}
	return out
}

// startSettledPair starts nodes a and b and waits until they hold the rendezvous split and
// process it.
func startSettledPair(t *testing.T, srv *consultest.Server, l *ledger) (a, b *testNode, want map[*testNode][]SliceID) {
	t.Helper()
	a = startNode(t, srv, l, "a", nil)
	b = startNode(t, srv, l, "b", nil)
	want = rendezvousSplit(a, b)
	waitSplit(t, 25*time.Second, "rendezvous split", want, a, b)
	waitSettled(t, a)
	waitSettled(t, b)
	return a, b, want
}

// endedSpans returns the node's finished spans called name, keyed by their
// messaging.destination.name/partition ("queue/slice"; "" for spans of no slice).
func (n *testNode) endedSpans(name string) map[string][]sdktrace.ReadOnlySpan {
	out := map[string][]sdktrace.ReadOnlySpan{}
	for _, sp := range n.spans.Ended() {
		if sp.Name() != name {
			continue
		}
		var q, slice string
		for _, a := range sp.Attributes() {
			switch a.Key {
			case "messaging.destination.name":
				q = a.Value.AsString()
			case "messaging.destination.partition.id":
				slice = a.Value.AsString()
			}
		}
		key := ""
		if q != "" {
			key = q + "/" + slice
		}
		out[key] = append(out[key], sp)
	}
	return out
}

// spanAttr returns the string form of attribute key of sp, "" when absent.
func spanAttr(sp sdktrace.ReadOnlySpan, key string) string {
	for _, a := range sp.Attributes() {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}
