package fshealth

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestJudge(t *testing.T) {
	const to, ra = 10 * time.Second, 30 * time.Second
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	cases := []struct {
		name   string
		o      Observations
		now    time.Time
		want   bool
		reason string
	}{
		{"no probe yet, within the bound", Observations{Start: t0}, at(10), true, ""},
		{"no probe ever answered", Observations{Start: t0, PendingFrom: at(0)}, at(11), false, "waiting for 11s"},
		{"good probes", Observations{Start: t0, LastGood: at(98), GoodSince: at(0)}, at(100), true, ""},
		{"a probe hangs, not yet beyond the bound", Observations{Start: t0, LastGood: at(90), PendingFrom: at(91)}, at(100), true, ""},
		{"a probe hangs beyond the bound", Observations{Start: t0, LastGood: at(89), PendingFrom: at(89)}, at(100), false, "not answering"},
		{"errors beyond the bound", Observations{Start: t0, LastGood: at(80), LastErr: syscall.ENOTCONN}, at(100), false, "transport endpoint is not connected"},
		{"errors within the bound", Observations{Start: t0, LastGood: at(95), LastErr: syscall.EIO}, at(100), true, ""},
		{"too slow", Observations{Start: t0, LastGood: at(80), LastTook: 12 * time.Second}, at(100), false, "too slow"},
		{"unavailable, answering for less than the hold-down",
			Observations{Start: t0, Unavailable: true, LastGood: at(99), GoodSince: at(80)}, at(100), false, "answering again for 20s"},
		{"unavailable, answering for the hold-down",
			Observations{Start: t0, Unavailable: true, LastGood: at(109), GoodSince: at(80)}, at(110), true, ""},
		{"unavailable, last probe failed", Observations{Start: t0, Unavailable: true, LastGood: at(99), LastErr: syscall.EIO}, at(100), false, "failing"},
		{"unavailable, hung again", Observations{Start: t0, Unavailable: true, LastGood: at(70), GoodSince: at(30), PendingFrom: at(70)}, at(100), false, "not answering"},
	}
	for _, c := range cases {
		got, reason := Judge(c.o, c.now, to, ra)
		if got != c.want || !strings.Contains(reason, c.reason) {
			t.Errorf("%s: Judge = %v %q, want %v containing %q", c.name, got, reason, c.want, c.reason)
		}
	}
}

// gate is a fake filesystem: probes answer at once until it is cut, then block until healed.
type gate struct {
	mu    sync.Mutex
	open  chan struct{}
	err   error
	calls int
}

func newGate() *gate { g := &gate{open: make(chan struct{})}; close(g.open); return g }

func (g *gate) probe(string, string) error {
	g.mu.Lock()
	ch, err := g.open, g.err
	g.calls++
	g.mu.Unlock()
	<-ch
	return err
}
func (g *gate) cut() { g.mu.Lock(); g.open = make(chan struct{}); g.mu.Unlock() }
func (g *gate) heal() {
	g.mu.Lock()
	close(g.open)
	g.mu.Unlock()
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if f() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestWatcherHangAndRecovery drives a watcher with a fake clock over a filesystem that hangs:
// unavailable once no probe answered for Timeout, one probe outstanding at a time, Run returns
// at once while a probe is stuck, available again only after RecoverAfter of good probes.
func TestWatcherHangAndRecovery(t *testing.T) {
	clk := clock.NewFake(t0)
	g := newGate()
	var changes []State
	var chMu sync.Mutex
	w, err := New(Config{Name: "in", Dir: "/nowhere", Node: "n1", Clock: clk, probe: g.probe,
		OnChange: func(s State) { chMu.Lock(); changes = append(changes, s); chMu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	// One interval: the tick fires, the loop starts a probe (unless one is outstanding) and
	// re-arms its timer, which Created reports.
	step := func() {
		clk.Advance(DefaultInterval)
		<-clk.Created()
	}
	<-clk.Created() // the first tick (at once): probe 1 starts
	<-clk.Created() // re-armed
	waitFor(t, "a probe to complete", func() bool { return w.State().Probes >= 1 })
	for i := 1; i < 5; i++ {
		want := uint64(i + 1)
		step()
		waitFor(t, "a probe to complete", func() bool { return w.State().Probes >= want })
	}
	if st := w.State(); !st.Available || st.Failures != 0 {
		t.Fatalf("healthy filesystem: %+v", st)
	}
	g.cut()
	cutAt := clk.Now()
	for clk.Now().Sub(cutAt) <= DefaultTimeout+DefaultInterval {
		step()
		w.State() // a reader judging first must not keep the flip from being told (OnChange)
	}
	st := w.State()
	if st.Available || !st.Hung || !strings.Contains(st.Reason, "not answering") {
		t.Fatalf("after %s of hang: %+v", clk.Now().Sub(cutAt), st)
	}
	calls := func() int { g.mu.Lock(); defer g.mu.Unlock(); return g.calls }
	waitFor(t, "the hung probe to start", func() bool { return calls() == 6 })
	step()
	if n := calls(); n != 6 {
		t.Errorf("%d probes started, want 6: one outstanding at a time", n)
	}
	chMu.Lock()
	if len(changes) != 1 || changes[0].Available {
		t.Errorf("OnChange calls: %+v, want one (unavailable)", changes)
	}
	chMu.Unlock()

	g.heal()
	waitFor(t, "the stuck probe to report", func() bool { return w.State().Probes >= 6 })
	healAt := clk.Now()
	for clk.Now().Sub(healAt) < DefaultRecoverAfter-DefaultInterval {
		n := w.State().Probes
		step()
		waitFor(t, "a probe to complete", func() bool { return w.State().Probes > n })
		if st := w.State(); st.Available {
			t.Fatalf("available again %s after the heal, before the hold-down %s", clk.Now().Sub(healAt), DefaultRecoverAfter)
		}
	}
	for i := 0; i < 3 && !w.State().Available; i++ {
		n := w.State().Probes
		step()
		waitFor(t, "a probe to complete", func() bool { return w.State().Probes > n })
	}
	if st := w.State(); !st.Available {
		t.Fatalf("not available %s after the heal: %+v", clk.Now().Sub(healAt), st)
	}

	// Run returns within stopWait even with a probe stuck in the filesystem.
	g.cut()
	step()
	time.Sleep(10 * time.Millisecond) // the probe goroutine parks in the gate; nothing asserted on it
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(stopWait + 10*time.Second):
		t.Fatal("Run did not return while a probe was stuck")
	}
	g.heal()
}

// A probe in flight when Run stops, on a filesystem that answers, is waited for, so that its
// canary does not stay in the queue directory.
func TestStopWaitsForAProbeInFlight(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	g := newGate()
	g.cut()
	var finished atomic.Bool
	probe := func(dir, canary string) error {
		g.probe(dir, canary)
		err := Probe(dir, canary)
		finished.Store(true)
		return err
	}
	w, err := New(Config{Name: "in", Dir: dir, Node: "n1", Clock: clk, probe: probe})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	<-clk.Created() // the first tick: a probe is in flight, parked in the gate
	waitFor(t, "the probe to start", func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.calls == 1 })
	cancel()
	time.AfterFunc(50*time.Millisecond, g.heal)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Error("Run returned before the probe in flight finished")
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Errorf("left in the directory: %v", names)
	}
}

// TestProbeRealDirectory: the probe succeeds on a directory, leaves no canary, and fails on a
// missing one with the operation named.
func TestProbeRealDirectory(t *testing.T) {
	dir := t.TempDir()
	canary := filepath.Join(dir, ".qslice-fscheck-n1.tmp")
	if err := Probe(dir, canary); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(canary); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("canary left behind: %v", err)
	}
	err := Probe(filepath.Join(dir, "missing"), canary)
	if err == nil || !strings.Contains(err.Error(), "stat") {
		t.Fatalf("probe of a missing directory: %v", err)
	}
	if err := os.Chmod(dir, 0o500); err == nil && os.Geteuid() != 0 {
		if err := Probe(dir, canary); err == nil || !strings.Contains(err.Error(), "create canary") {
			t.Fatalf("probe of a read-only directory: %v", err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "dir: must be set"},
		{Config{Dir: "/q", Timeout: -1}, "must not be negative"},
		{Config{Dir: "/q", Interval: 10 * time.Second, Timeout: 5 * time.Second}, "must be below timeout"},
	} {
		if _, err := New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want an error containing %q", c.cfg, err, c.want)
		}
	}
}

// TestPausedWatcherJudgesAfresh: a process paused past Timeout (SIGSTOP, a suspended VM) finds
// no recent successful probe when it resumes; that is its own silence, not the filesystem's, so
// it stays available. A filesystem that really hangs is still found Timeout after the resumption.
func TestPausedWatcherJudgesAfresh(t *testing.T) {
	for _, hung := range []bool{false, true} {
		clk := clock.NewFake(t0)
		g := newGate()
		var flips []State
		var mu sync.Mutex
		w, err := New(Config{Name: "in", Dir: "/nowhere", Node: "n1", Clock: clk, probe: g.probe,
			OnChange: func(s State) { mu.Lock(); flips = append(flips, s); mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		<-clk.Created()
		<-clk.Created()
		waitFor(t, "a probe to complete", func() bool { return w.State().Probes >= 1 })
		if hung {
			g.cut() // the next probe hangs: outstanding across the pause
		}
		clk.Advance(DefaultInterval)
		<-clk.Created()
		idle := func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.obs.PendingFrom.IsZero() }
		if hung {
			waitFor(t, "the hanging probe to start", func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.calls == 2 })
		} else {
			waitFor(t, "the probe to complete", idle)
		}
		// The pause: the clock jumps 3 timeouts while nothing of the process runs.
		clk.Advance(3 * DefaultTimeout)
		if st := w.State(); !st.Available {
			t.Fatalf("hung=%v: a reader just after the pause sees %+v", hung, st)
		}
		<-clk.Created() // the loop ran again
		if !hung {
			waitFor(t, "the probe to complete", idle)
		}
		if st := w.State(); !st.Available {
			t.Fatalf("hung=%v: unavailable right after a pause: %s", hung, st.Reason)
		}
		resumed := clk.Now()
		for clk.Now().Sub(resumed) <= DefaultTimeout+DefaultInterval {
			if st := w.State(); !st.Available && clk.Now().Sub(resumed) <= DefaultTimeout {
				t.Fatalf("hung=%v: unavailable %s after the resumption, before Timeout: %s", hung, clk.Now().Sub(resumed), st.Reason)
			}
			clk.Advance(DefaultInterval)
			<-clk.Created()
			if !hung {
				waitFor(t, "the probe to complete", idle)
			}
		}
		if st := w.State(); st.Available == hung {
			t.Fatalf("hung=%v: %s after the resumption: available=%v (%s)", hung, clk.Now().Sub(resumed), st.Available, st.Reason)
		}
		mu.Lock()
		if n := len(flips); (hung && n != 1) || (!hung && n != 0) {
			t.Errorf("hung=%v: %d availability changes told: %+v", hung, n, flips)
		}
		mu.Unlock()
		if hung {
			g.heal()
		}
		cancel()
		<-done
	}
}
