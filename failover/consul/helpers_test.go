package consul

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/internal/consultest"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

type fakeHealth struct {
	mu    sync.Mutex
	err   error
	slice map[failover.SliceID]failover.Health
}

func (h *fakeHealth) NodeHealthy() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

func (h *fakeHealth) SliceHealth(s failover.SliceID) failover.Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	if v, ok := h.slice[s]; ok {
		return v
	}
	return failover.Health{Status: failover.StatusPassing}
}

func (h *fakeHealth) set(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = err
}

func (h *fakeHealth) setSlice(s failover.SliceID, v failover.Health) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.slice == nil {
		h.slice = map[failover.SliceID]failover.Health{}
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
	c       *Coordinator
	a       *failovertest.Assignee
	h       *fakeHealth
	logs    *syncBuffer
	spans   *tracetest.SpanRecorder // the coordinator's spans
	cancel  context.CancelFunc
	done    chan error
	started time.Time
	runErr  error
	stopped bool
}

var testQueues = []failover.QueueSpec{{Name: "out", Slices: 8}, {Name: "in", Slices: 4}}

const totalTestSlices = 12

func testConfig(srv *consultest.Server, id string) failover.ConsulConfig {
	return failover.ConsulConfig{
		Cluster: "test", NodeID: id, Address: srv.HTTPAddr, Token: srv.ManagementToken,
		TTL: 2 * time.Second, LockDelay: time.Second, HoldDown: 3 * time.Second,
		Queues: testQueues, WatchMinInterval: 50 * time.Millisecond, DrainTimeout: 5 * time.Second,
		Version: "test", WatchLayout: testLayout(),
	}
}

// testLayout is the watch layout the tests run with: QSLICE_TEST_WATCH_LAYOUT=scoped runs the
// whole package on the scoped layout (scripts/test.sh runs it both ways).
func testLayout() string {
	if l := os.Getenv("QSLICE_TEST_WATCH_LAYOUT"); l != "" {
		return l
	}
	return failover.LayoutPrefix
}

func startNode(t *testing.T, srv *consultest.Server, l *failovertest.Ledger, id string, mutate func(*failover.ConsulConfig)) *testNode {
	t.Helper()
	return startNodeAs(t, srv, l, id, id, mutate)
}

// startNodeAs starts a coordinator with NodeID id whose assignee appears in the ledger as
// ledgerName (a restarted process of the same node is a different processor).
// startNodeAs starts node id whose processing the ledger records as ledgerName; setup runs on
// the coordinator before Run.
func startNodeAs(t *testing.T, srv *consultest.Server, l *failovertest.Ledger, id, ledgerName string, mutate func(*failover.ConsulConfig), setup ...func(*Coordinator)) *testNode {
	t.Helper()
	cfg := testConfig(srv, id)
	if mutate != nil {
		mutate(&cfg)
	}
	n := &testNode{id: id, a: failovertest.NewAssignee(ledgerName, l), h: &fakeHealth{}, logs: &syncBuffer{}, done: make(chan error, 1)}
	logger := slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(cfg, n.a, n.h, logger, nil)
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	n.c = c
	n.spans = tracetest.NewSpanRecorder()
	c.SetTracer(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(n.spans)))
	for _, f := range setup {
		f(c)
	}
	vu := c.ValidUntil
	n.a.SetLease(vu)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.started = time.Now()
	go func() { n.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		n.stop(t)
		n.a.Close()
		n.a.Check(t)
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
	n.a.Crash(vu)
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

func allTestSlices() []failover.SliceID {
	var out []failover.SliceID
	for _, q := range testQueues {
		for i := 0; i < q.Slices; i++ {
			out = append(out, failover.SliceID{Queue: q.Name, Index: i})
		}
	}
	failovertest.SortSlices(out)
	return out
}

// waitSplit waits until the nodes together process every slice exactly once and each has
// exactly want[node] (nil: any non-empty share).
func waitSplit(t *testing.T, timeout time.Duration, what string, want map[*testNode][]failover.SliceID, nodes ...*testNode) {
	t.Helper()
	consultest.WaitFor(t, timeout, what, func() error {
		seen := map[failover.SliceID]string{}
		for _, n := range nodes {
			got := n.a.Slices()
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
func rendezvousSplit(nodes ...*testNode) map[*testNode][]failover.SliceID {
	out := map[*testNode][]failover.SliceID{}
	for _, n := range nodes {
		out[n] = []failover.SliceID{}
	}
	for _, s := range allTestSlices() {
		var best *testNode
		var bw uint64
		for _, n := range nodes {
			if w := failover.Rendezvous(s, n.id); best == nil || w > bw || (w == bw && n.id < best.id) {
				best, bw = n, w
			}
		}
		out[best] = append(out[best], s)
	}
	return out
}

// startSettledPair starts nodes a and b and waits until they hold the rendezvous split and
// process it.
func startSettledPair(t *testing.T, srv *consultest.Server, l *failovertest.Ledger) (a, b *testNode, want map[*testNode][]failover.SliceID) {
	t.Helper()
	a = startNode(t, srv, l, "a", nil)
	b = startNode(t, srv, l, "b", nil)
	want = rendezvousSplit(a, b)
	waitSplit(t, 25*time.Second, "rendezvous split", want, a, b)
	waitSettled(t, a)
	waitSettled(t, b)
	return a, b, want
}

// checkFirstStarts fails t for every slice of ss whose first handling on node after since
// started sooner than least after it: event says what happened at since, bound what least is.
func checkFirstStarts(t *testing.T, l *failovertest.Ledger, node string, ss []failover.SliceID, since time.Time, event string, least time.Duration, bound string) {
	t.Helper()
	for _, s := range ss {
		if d := l.FirstStart(s, node, since).Sub(since); d < least {
			t.Errorf("%s started %s %s after %s: earlier than %s (%s)", node, s, d, event, bound, least)
		}
	}
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

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
