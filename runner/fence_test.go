package runner

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// A handler stuck in the filesystem (it ignores cancellation, as a process in D state does) must
// not hold up the hand-off: Fence reports its slice released at once, claims nothing more, and
// when the handler finally returns its message is not settled here (it stays in flight for the
// next owner). After Unfence and a widening the message is recovered and handled.
func TestFenceReleasesAtOnceAndNeverSettlesAbandoned(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 3, time.Unix(1_700_000_000, 0))
	stuck := make(chan struct{})
	var handled, calls atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		if calls.Add(1) == 1 {
			<-stuck // blocked: deaf to ctx
			return nil
		}
		handled.Add(1)
		return nil
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "the first handler to start", 5*time.Second, func() bool { return calls.Load() == 1 })

	r.Fence("test: filesystem not answering")
	released := r.SetSlices(nil)
	// Unfenced, the release would wait for the stuck handler, which never returns by itself
	// (the shutdown grace is 30 s): 10 s tells the two apart on a loaded machine.
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("a fenced runner did not report its slice released within 10 s while a handler was stuck")
	}
	if got := r.StuckFiles(); len(got) != 1 || got[0] != names[0].Base {
		t.Fatalf("StuckFiles = %v, want [%s]", got, names[0].Base)
	}
	close(stuck) // the stuck handler returns "success" after the fence
	waitFor(t, "the stuck handler's goroutine to finish", 5*time.Second, func() bool { return len(r.StuckFiles()) == 0 })
	if got := dirFiles(t, d.Path, ".bak"); len(got) != 1 {
		t.Fatalf("in flight after the abandoned handler returned: %v, want its file left in flight", got)
	}
	if got := dirFiles(t, d.Path, ".pck"); len(got) != 2 {
		t.Fatalf("ready files: %v, want the 2 never claimed", got)
	}
	if calls.Load() != 1 {
		t.Fatalf("%d handlers ran while fenced", calls.Load())
	}

	r.Unfence()
	r.SetSlices([]int{0}) // the slice comes back: its in-flight file is recovered first
	waitFor(t, "all three messages handled after the slice came back", 10*time.Second, func() bool { return handled.Load() == 3 })
	waitFor(t, "an empty queue", 5*time.Second, func() bool {
		return len(dirFiles(t, d.Path, ".pck"))+len(dirFiles(t, d.Path, ".bak")) == 0
	})
}

// While fenced, a widening takes effect only after Unfence, and nothing is claimed meanwhile.
func TestFencedRunnerClaimsNothing(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 2, time.Unix(1_700_000_000, 0))
	var calls atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error { calls.Add(1); return nil })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 2, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.Fence("test")
	r.SetSlices(allSlices(2))
	startRunner(t, r)
	time.Sleep(200 * time.Millisecond) // a window for a wrong claim; the assertion is that none happens
	if calls.Load() != 0 || len(dirFiles(t, d.Path, ".bak")) != 0 {
		t.Fatalf("fenced runner claimed: %d handled, in flight %v", calls.Load(), dirFiles(t, d.Path, ".bak"))
	}
	r.Unfence()
	waitFor(t, "both messages handled after Unfence", 5*time.Second, func() bool { return calls.Load() == 2 })
}

// SIGTERM with a handler stuck in the filesystem: Run returns within the shutdown grace plus
// StuckSlack, and the stuck message stays in flight (not released, not removed).
func TestShutdownWithStuckHandlerIsBounded(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	stuck := make(chan struct{})
	defer close(stuck)
	started := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, m *Message) error { close(started); <-stuck; return nil })
	const grace = 300 * time.Millisecond
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond, ShutdownGrace: grace})
	r.SetSlices([]int{0})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-started
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < grace {
			t.Fatalf("Run returned after %s, before the shutdown grace %s", took, grace)
		}
	case <-time.After(grace + StuckSlack + 5*time.Second):
		t.Fatal("Run did not return with a handler stuck")
	}
	if got := dirFiles(t, d.Path, ".bak"); len(got) != 1 {
		t.Fatalf("in flight after the stuck shutdown: %v, want the stuck message left in flight", got)
	}
}
