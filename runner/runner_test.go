package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/qslice/qslice/internal/testenv"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qslice/qslice/runner/queue"
)

// ledger records every handling of every message, to prove none was lost, none handled twice, and
// none by two handlers at once.
type ledger struct {
	mu      sync.Mutex
	running map[string]int
	handled map[string]int
	order   []string
	overlap []string
}

func newLedger() *ledger { return &ledger{running: map[string]int{}, handled: map[string]int{}} }

func (l *ledger) start(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running[id]++
	if l.running[id] > 1 {
		l.overlap = append(l.overlap, id)
	}
}

func (l *ledger) end(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running[id]--
	l.handled[id]++
	l.order = append(l.order, id)
}

func (l *ledger) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.handled)
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newTestDir(t testing.TB) *queue.Dir {
	root := t.TempDir()
	d := queue.NewDir(filepath.Join(root, "in"), "", "")
	if err := d.Ensure(); err != nil {
		t.Fatal(err)
	}
	return d
}

func enqueueN(t testing.TB, d *queue.Dir, n int, base time.Time) []queue.Name {
	names := make([]queue.Name, 0, n)
	for i := 0; i < n; i++ {
		nm, err := d.Enqueue(queue.Meta{}, []byte(fmt.Sprintf("message %d", i)), base.Add(time.Duration(i)*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, nm)
	}
	return names
}

func allSlices(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// startRunner runs r until the test ends and fails the test if Run returns an error.
func startRunner(t testing.TB, r *Runner) (stop func()) {
	return testenv.Start(t, "runner", 30*time.Second, r.Run).Stop
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dirFiles(t testing.TB, dir, suffix string) []string {
	var out []string
	if err := queue.ScanNames(dir, func(n string) error {
		if strings.HasSuffix(n, suffix) {
			out = append(out, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestProcessesOldestFirstAndRemovesOnlyAfterSuccess(t *testing.T) {
	d := newTestDir(t)
	base := time.Unix(1_700_000_000, 0)
	names := enqueueN(t, d, 50, base)
	// Enqueue order is age order; shuffle nothing: the directory order is arbitrary anyway.
	l := newLedger()
	var seenFile atomic.Bool
	seenFile.Store(true)
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		// While handling, the message is in flight, not ready, and not removed.
		if _, err := os.Stat(filepath.Join(d.Path, m.Name.FileName(queue.SuffixInFlight))); err != nil {
			seenFile.Store(false)
		}
		l.start(m.Name.Base)
		l.end(m.Name.Base)
		return nil
	})
	r, err := New(Config{Queue: "in", Dir: d, Slices: 4, Concurrency: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.SetSlices(allSlices(4))
	startRunner(t, r)
	waitFor(t, "all messages handled", 10*time.Second, func() bool { return l.count() == 50 })
	if !seenFile.Load() {
		t.Error("a handler ran while its in-flight file was missing")
	}
	for i, id := range l.order {
		if id != names[i].Base {
			t.Fatalf("handled #%d = %s, want %s (oldest first)", i, id, names[i].Base)
		}
	}
	waitFor(t, "queue empty", 5*time.Second, func() bool {
		return len(dirFiles(t, d.Path, ".pck")) == 0 && len(dirFiles(t, d.Path, ".bak")) == 0
	})
}

func TestOnlyOwnedSlicesAreProcessed(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 200, time.Unix(1_700_000_000, 0))
	var want int
	for _, n := range names {
		if s := queue.SliceOf(n.Digest, 8); s == 3 || s == 5 {
			want++
		}
	}
	var wrong, got atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		if m.Slice != 3 && m.Slice != 5 || queue.SliceOf(m.Name.Digest, 8) != m.Slice {
			wrong.Add(1)
		}
		got.Add(1)
		return nil
	})
	r, err := New(Config{Queue: "in", Dir: d, Slices: 8, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.SetSlices([]int{3, 5})
	startRunner(t, r)
	waitFor(t, "owned slices drained", 10*time.Second, func() bool { return got.Load() == int64(want) })
	if wrong.Load() != 0 {
		t.Fatalf("%d messages of slices not owned were handled", wrong.Load())
	}
	if left := len(dirFiles(t, d.Path, ".pck")); left != 200-want {
		t.Fatalf("%d ready files left, want %d (the other slices' messages)", left, 200-want)
	}
}

func TestFailureShuntsWithErrorOriginAndAttempts(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 3, time.Unix(1_700_000_000, 0))
	h := HandlerFunc(func(ctx context.Context, m *Message) error { return errors.New("list does not exist") })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "3 shunted", 10*time.Second, func() bool { return len(dirFiles(t, d.ShuntDir, ".pck")) == 3 })
	for _, f := range dirFiles(t, d.ShuntDir, ".pck") {
		data, err := os.ReadFile(filepath.Join(d.ShuntDir, f))
		if err != nil {
			t.Fatal(err)
		}
		m, body, err := queue.Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		if m.Origin != d.Path || m.Error != "list does not exist" || m.FailedAt.IsZero() || !bytes.HasPrefix(body, []byte("message ")) {
			t.Errorf("shunted %s: origin=%q error=%q failed_at=%v body=%q", f, m.Origin, m.Error, m.FailedAt, body)
		}
	}
	// The shunt copy is written before the in-flight file is removed.
	waitFor(t, "queue empty", 5*time.Second, func() bool { return len(dirFiles(t, d.Path, "")) == 0 })
}

func TestRetryThenSuccess(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	var calls atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		if c := calls.Add(1); c <= 2 {
			if m.Retry != int(c-1) {
				return fmt.Errorf("retry = %d on call %d", m.Retry, c)
			}
			return fmt.Errorf("smtp busy: %w", ErrRetry)
		}
		return nil
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond,
		Retry: RetryPolicy{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond, MaxElapsed: time.Minute}})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "3 calls and an empty queue", 10*time.Second, func() bool {
		return calls.Load() == 3 && len(dirFiles(t, d.Path, "")) == 0
	})
	if n := len(dirFiles(t, d.ShuntDir, "")); n != 0 {
		t.Errorf("%d files shunted, want none", n)
	}
}

func TestRetryExhaustedShunts(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	h := HandlerFunc(func(ctx context.Context, m *Message) error { return ErrRetry })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond,
		Retry: RetryPolicy{Initial: 5 * time.Millisecond, Max: 10 * time.Millisecond, MaxElapsed: 100 * time.Millisecond}})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "shunted", 10*time.Second, func() bool { return len(dirFiles(t, d.ShuntDir, ".pck")) == 1 })
	data, _ := os.ReadFile(filepath.Join(d.ShuntDir, dirFiles(t, d.ShuntDir, ".pck")[0]))
	m, _, err := queue.Decode(data)
	if err != nil || !strings.Contains(m.Error, "gave up after") {
		t.Fatalf("shunted error = %q, %v; want it to say it gave up", m.Error, err)
	}
}

// Retries pass between the worker goroutines, and narrowings take them back while more are
// scheduled: every message is still handled once, none is lost. Under -race this also proves
// that a retry entry is touched only by whoever popped it off the heap (the retry and read
// paths used to set its timer after pushing it, where another worker or a narrowing could take
// it: a race, and a narrowing could Stop a nil timer).
func TestRetriesChangeHandsUnderNarrowing(t *testing.T) {
	d := newTestDir(t)
	const n, retries = 20, 4
	enqueueN(t, d, n, time.Unix(1_700_000_000, 0))
	var calls atomic.Int64
	var mu sync.Mutex
	handled := map[string]int{}
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		calls.Add(1)
		if m.Retry < retries {
			return fmt.Errorf("busy: %w", ErrRetry)
		}
		mu.Lock()
		handled[m.Name.Base]++
		mu.Unlock()
		return nil
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 4, Handler: h, Logger: testLogger(t), PollInterval: 5 * time.Millisecond,
		Retry: RetryPolicy{Initial: time.Millisecond, Max: 2 * time.Millisecond, MaxElapsed: time.Minute}})
	r.SetSlices([]int{0})
	startRunner(t, r)
	for range 5 {
		// Narrow once some retries are under way, wait for the release, widen again.
		from := calls.Load()
		waitFor(t, "retries under way", 10*time.Second, func() bool { return calls.Load() >= from+10 || len(dirFiles(t, d.Path, "")) == 0 })
		select {
		case <-r.SetSlices(nil):
		case <-time.After(10 * time.Second):
			t.Fatal("slice never released")
		}
		r.SetSlices([]int{0})
	}
	waitFor(t, "every message handled", 30*time.Second, func() bool { return len(dirFiles(t, d.Path, "")) == 0 })
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != n {
		t.Errorf("%d messages handled, want %d", len(handled), n)
	}
	for name, c := range handled {
		if c != 1 {
			t.Errorf("%s handled %d times", name, c)
		}
	}
	if got := dirFiles(t, d.ShuntDir, ""); len(got) != 0 {
		t.Errorf("shunted %v, want none", got)
	}
}

// TestHandlerTimeoutShunts: a handler that outlives HandlerTimeout is cancelled and its message
// shunted with the reason, not left in flight nor deleted.
func TestHandlerTimeoutShunts(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		select {
		case <-ctx.Done():
			return fmt.Errorf("killed: %w", context.Cause(ctx))
		case <-time.After(time.Minute):
			return nil
		}
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond,
		HandlerTimeout: 100 * time.Millisecond})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "shunted", 10*time.Second, func() bool { return len(dirFiles(t, d.ShuntDir, ".pck")) == 1 })
	data, _ := os.ReadFile(filepath.Join(d.ShuntDir, dirFiles(t, d.ShuntDir, ".pck")[0]))
	m, body, err := queue.Decode(data)
	if err != nil || !strings.Contains(m.Error, "handler timed out after 100ms") || string(body) != "message 0" {
		t.Fatalf("shunted error = %q, body %q, %v; want the timeout as the reason and the body intact", m.Error, body, err)
	}
	// The shunt copy is written before the in-flight file is removed.
	waitFor(t, "queue empty", 5*time.Second, func() bool { return len(dirFiles(t, d.Path, "")) == 0 })
}

func TestCorruptAndForeignFilesNeverCrashNorVanish(t *testing.T) {
	d := newTestDir(t)
	good := enqueueN(t, d, 2, time.Unix(1_700_000_000, 0))
	// A truncated native payload, a Mailman pickle, a foreign file, a malformed .pck name.
	trunc := "1700000001.5+" + strings.Repeat("a", 40)
	full, _ := os.ReadFile(filepath.Join(d.Path, good[0].FileName(".pck")))
	must(t, os.WriteFile(filepath.Join(d.Path, trunc+".pck"), full[:len(full)-3], 0o644))
	pickle := "1700000002.5+" + strings.Repeat("b", 40)
	must(t, os.WriteFile(filepath.Join(d.Path, pickle+".pck"), []byte("\x80\x04\x95garbage"), 0o644))
	must(t, os.WriteFile(filepath.Join(d.Path, "README"), []byte("hello"), 0o644))
	must(t, os.WriteFile(filepath.Join(d.Path, "not-a-name.pck"), []byte("x"), 0o644))
	var handled atomic.Int64
	var skipped atomic.Int64
	obs := &countingObserver{skipped: &skipped}
	h := HandlerFunc(func(ctx context.Context, m *Message) error { handled.Add(1); return nil })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond, Observer: obs})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "2 handled, 2 bad", 10*time.Second, func() bool {
		return handled.Load() == 2 && len(dirFiles(t, d.BadDir, ".psv")) == 2
	})
	for _, b := range []string{trunc, pickle} {
		why, err := os.ReadFile(filepath.Join(d.BadDir, b+queue.SuffixWhy))
		if err != nil || !strings.Contains(string(why), "unreadable payload") {
			t.Errorf("bad/%s reason = %q, %v", b, why, err)
		}
	}
	// The pickle is preserved byte for byte.
	if got, _ := os.ReadFile(filepath.Join(d.BadDir, pickle+".psv")); string(got) != "\x80\x04\x95garbage" {
		t.Errorf("bad copy of the pickle = %q", got)
	}
	for _, f := range []string{"README", "not-a-name.pck"} {
		if _, err := os.Stat(filepath.Join(d.Path, f)); err != nil {
			t.Errorf("foreign file %s: %v (must be left in place)", f, err)
		}
	}
	waitFor(t, "2 skipped files counted", 5*time.Second, func() bool { return skipped.Load() == 2 })
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type countingObserver struct {
	NopObserver
	skipped *atomic.Int64
}

func (o *countingObserver) Skipped(string, string) { o.skipped.Add(1) }

func TestWideningRecoversInFlightFilesCountingAttempts(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 2, time.Unix(1_700_000_000, 0))
	// Both were claimed by a runner that crashed; the second one had crashed twice before.
	for _, n := range names {
		must(t, d.Claim(n))
	}
	for i := 0; i < queue.MaxAttempts-1; i++ {
		if _, err := d.Recover(names[1], time.Now()); err != nil {
			t.Fatal(err)
		}
		must(t, d.Claim(names[1]))
	}
	var got sync.Map
	h := HandlerFunc(func(ctx context.Context, m *Message) error { got.Store(m.Name.Base, m.Meta.Attempts); return nil })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	startRunner(t, r)
	r.SetSlices([]int{0})
	waitFor(t, "first handled, second in bad", 10*time.Second, func() bool {
		_, ok := got.Load(names[0].Base)
		return ok && len(dirFiles(t, d.BadDir, ".psv")) == 1
	})
	if a, _ := got.Load(names[0].Base); a != 1 {
		t.Errorf("attempts seen by the handler = %v, want 1", a)
	}
	if _, ok := got.Load(names[1].Base); ok {
		t.Errorf("a message past %d attempts was handled", queue.MaxAttempts)
	}
}

// TestSetSlicesRandomisedLedger moves slices between two runners on one directory at random while
// both process, under the protocol the failover coordinator follows: a slice is given to the new
// owner only after the old one reported it released. No message may be lost, handled twice, or
// handled by two handlers at once.
func TestSetSlicesRandomisedLedger(t *testing.T) {
	const slices, msgs = 16, 3000
	d := newTestDir(t)
	l := newLedger()
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		l.start(m.Name.Base)
		if rand.IntN(4) == 0 {
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
		}
		l.end(m.Name.Base)
		return nil
	})
	mk := func() *Runner {
		r, err := New(Config{Queue: "in", Dir: d, Slices: slices, Concurrency: 3, BatchSize: 64, Handler: h, Logger: testLogger(t), PollInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	rs := []*Runner{mk(), mk()}
	owner := make([]int, slices) // -1: none
	for s := range owner {
		owner[s] = s % 2
	}
	apply := func() {
		for i, r := range rs {
			var set []int
			for s, o := range owner {
				if o == i {
					set = append(set, s)
				}
			}
			<-r.SetSlices(set)
		}
	}
	apply()
	for _, r := range rs {
		startRunner(t, r)
	}
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		enqueueN(t, d, msgs, time.Now())
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	deadline := time.Now().Add(20 * time.Second)
	moves := 0
	for l.count() < msgs && time.Now().Before(deadline) {
		s := rng.IntN(slices)
		from := owner[s]
		to := rng.IntN(3) - 1 // -1, 0 or 1
		if to == from {
			continue
		}
		if from >= 0 {
			owner[s] = -1
			var set []int
			for x, o := range owner {
				if o == from {
					set = append(set, x)
				}
			}
			select {
			case <-rs[from].SetSlices(set):
			case <-time.After(10 * time.Second):
				t.Fatalf("slice %d never released by runner %d", s, from)
			}
		}
		owner[s] = to
		apply()
		moves++
		time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
	}
	// Finally give every slice to runner 0 so that everything gets handled.
	for s := range owner {
		owner[s] = 0
	}
	<-rs[1].SetSlices(nil)
	apply()
	<-feedDone
	waitFor(t, "every message handled", 30*time.Second, func() bool { return l.count() == msgs })
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.overlap) > 0 {
		t.Fatalf("%d messages handled by two handlers at once, e.g. %s", len(l.overlap), l.overlap[0])
	}
	for id, n := range l.handled {
		if n != 1 {
			t.Errorf("%s handled %d times", id, n)
		}
	}
	t.Logf("%d messages, %d slice moves", msgs, moves)
	if moves < 20 {
		t.Errorf("only %d slice moves: the test did not exercise SetSlices", moves)
	}
}

type fakeLease struct{ until atomic.Int64 }

func (f *fakeLease) ValidUntil() time.Time { return time.Unix(0, f.until.Load()) }

func TestLapsedLeaseStopsClaimingAndCancelsHandlers(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 3, time.Unix(1_700_000_000, 0))
	lease := &fakeLease{}
	lease.until.Store(time.Now().Add(time.Hour).UnixNano())
	started := make(chan string, 10)
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		started <- m.Name.Base
		<-ctx.Done()
		return ctx.Err()
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 1, Handler: h, Lease: lease, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices([]int{0})
	startRunner(t, r)
	first := <-started
	lease.until.Store(time.Now().Add(-time.Second).UnixNano())
	waitFor(t, "handler cancelled", 5*time.Second, func() bool { return r.InFlight()[0] == 0 })
	// The cancelled message stays in flight for the next owner; the others were not claimed.
	if _, err := os.Stat(filepath.Join(d.Path, first+".bak")); err != nil {
		t.Fatalf("fenced-off message: %v, want it left in flight", err)
	}
	select {
	case b := <-started:
		t.Fatalf("claimed %s after the lease lapsed", b)
	case <-time.After(200 * time.Millisecond):
	}
	if n := len(dirFiles(t, d.Path, ".pck")); n != len(names)-1 {
		t.Fatalf("%d ready, want %d", n, len(names)-1)
	}
}

func TestNarrowingWaitsForInFlight(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	release := make(chan struct{})
	started := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, m *Message) error { close(started); <-release; return nil })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices([]int{0})
	startRunner(t, r)
	<-started
	released := r.SetSlices(nil)
	select {
	case <-released:
		t.Fatal("slice reported released while its message was still being handled")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("slice never reported released")
	}
}

func TestShutdownReleasesRetryWaiting(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	var calls atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error { calls.Add(1); return ErrRetry })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond,
		Retry: RetryPolicy{Initial: time.Hour, Max: time.Hour, MaxElapsed: 10 * time.Hour}})
	r.SetSlices([]int{0})
	stop := startRunner(t, r)
	waitFor(t, "first attempt", 5*time.Second, func() bool { return calls.Load() == 1 })
	stop()
	if got := dirFiles(t, d.Path, ""); len(got) != 1 || !strings.HasSuffix(got[0], ".pck") {
		t.Fatalf("after shutdown the queue holds %v, want the message back as ready", got)
	}
}

var _ = io.Discard

func TestMessageLockIsHeldWhileHandling(t *testing.T) {
	d := newTestDir(t)
	lockDir := t.TempDir()
	for i := 0; i < 6; i++ {
		if _, err := d.Enqueue(queue.Meta{Lock: "list-a.lck"}, []byte("x"), time.Unix(1_700_000_000+int64(i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	var inside, maxInside atomic.Int64
	var locked atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		if _, err := os.Stat(filepath.Join(lockDir, "list-a.lck")); err == nil {
			locked.Add(1)
		}
		n := inside.Add(1)
		for {
			old := maxInside.Load()
			if n <= old || maxInside.CompareAndSwap(old, n) {
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
		inside.Add(-1)
		return nil
	})
	obs := &lockObserver{}
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 4, Handler: h, LockDir: lockDir, Observer: obs, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "all handled", 10*time.Second, func() bool { return obs.holds.Load() == 6 })
	if maxInside.Load() != 1 {
		t.Errorf("%d handlers ran at once under one lock", maxInside.Load())
	}
	if locked.Load() != 6 {
		t.Errorf("lock file existed during %d of 6 handlings", locked.Load())
	}
	if obs.waits.Load() != 6 {
		t.Errorf("%d lock waits observed, want 6", obs.waits.Load())
	}
	if _, err := os.Stat(filepath.Join(lockDir, "list-a.lck")); !os.IsNotExist(err) {
		t.Errorf("lock left behind: %v", err)
	}
}

type lockObserver struct {
	NopObserver
	waits, holds atomic.Int64
}

func (o *lockObserver) LockWait(string, int, time.Duration, LockResult) { o.waits.Add(1) }
func (o *lockObserver) LockHold(string, int, time.Duration)             { o.holds.Add(1) }

// Regression (chaos harness, SIGTERM of a node): stopping the runner let the lease watcher cancel
// every running handler at once, so shutdown_grace never applied and the message was released
// and handled again elsewhere. A running handler must be allowed to finish within the grace, and
// nothing new may be claimed once Run's context is cancelled.
func TestShutdownGraceLetsRunningHandlersFinish(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 3, time.Unix(1_700_000_000, 0))
	lease := &fakeLease{}
	lease.until.Store(time.Now().Add(time.Hour).UnixNano())
	started := make(chan string, 10)
	finish := make(chan struct{})
	var cancelled atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		started <- m.Name.Base
		select {
		case <-finish:
			return nil
		case <-ctx.Done():
			cancelled.Add(1)
			return ctx.Err()
		}
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 1, Handler: h, Lease: lease, Logger: testLogger(t),
		PollInterval: 10 * time.Millisecond, ShutdownGrace: 10 * time.Second})
	r.SetSlices([]int{0})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var returned error
	gotReturn := false
	t.Cleanup(func() {
		cancel()
		if !gotReturn {
			<-done
		}
	})
	first := <-started
	cancel()
	// Run must still be waiting for the handler: give the runner's watchers time to act.
	select {
	case returned = <-done:
		gotReturn = true
		close(finish)
		t.Fatalf("Run returned (%v) while a handler was running within the grace period", returned)
	case <-time.After(300 * time.Millisecond):
	}
	close(finish)
	select {
	case err := <-done:
		gotReturn = true
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the handler finished")
	}
	if n := cancelled.Load(); n != 0 {
		t.Fatalf("%d handlers cancelled during the shutdown grace", n)
	}
	if _, err := os.Stat(filepath.Join(d.Path, first+".bak")); !os.IsNotExist(err) {
		t.Fatalf("finished message %s still in flight (%v)", first, err)
	}
	if _, err := os.Stat(filepath.Join(d.Path, first+".pck")); !os.IsNotExist(err) {
		t.Fatalf("finished message %s released back to ready (%v)", first, err)
	}
	select {
	case b := <-started:
		t.Fatalf("claimed %s after Run's context was cancelled", b)
	default:
	}
	if n := len(dirFiles(t, d.Path, ".pck")); n != len(names)-1 {
		t.Fatalf("%d ready after shutdown, want %d", n, len(names)-1)
	}
}

// Regression (chaos harness, Consul restart): after a lapse the lease came back valid before the
// lease watcher started a new generation, and a message claimed in that window ran under the
// cancelled generation: its handler was cancelled before it started and the file stayed in
// flight, with nobody to recover it while this node kept the slice. A claim must always run
// under a live generation.
func TestClaimAfterLapseBeforeWatcherRenewsRunsHandler(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	lease := &fakeLease{}
	lease.until.Store(time.Now().Add(time.Hour).UnixNano())
	var handled atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		handled.Add(1)
		return nil
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 1, Handler: h, Lease: lease, Logger: testLogger(t)})
	r.mu.Lock()
	r.owned[0] = true
	r.lease.cancel(errLeaseLost) // what watchLease does at a lapse; the lease is valid again now
	r.mu.Unlock()
	ctx := context.Background()
	r.process(ctx, ctx, item{name: names[0], slice: 0}, nil)
	if handled.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", handled.Load())
	}
	if got := dirFiles(t, d.Path, ""); len(got) != 0 {
		t.Fatalf("queue holds %v after the message was handled, want nothing", got)
	}
}

// Regression (chaos harness, SIGSTOP of a node): a handler that returned after the lease lapsed
// (the paused machine resumed it) had its file settled anyway, although another node may have
// recovered the file and be handling it under the same name. The file must be left in flight.
func TestHandlerReturningAfterLapseLeavesFileInFlight(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
	}{{"success", nil}, {"failure", errors.New("boom")}} {
		t.Run(c.name, func(t *testing.T) {
			d := newTestDir(t)
			names := enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
			lease := &fakeLease{}
			lease.until.Store(time.Now().Add(time.Hour).UnixNano())
			var sawDeadline time.Time
			h := HandlerFunc(func(ctx context.Context, m *Message) error {
				sawDeadline = m.LeaseDeadline
				lease.until.Store(time.Now().Add(-time.Second).UnixNano()) // paused past the lease
				return c.err
			})
			r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 1, Handler: h, Lease: lease, Logger: testLogger(t)})
			r.mu.Lock()
			r.owned[0] = true
			r.mu.Unlock()
			ctx := context.Background()
			want := lease.ValidUntil()
			r.process(ctx, ctx, item{name: names[0], slice: 0}, nil)
			if !sawDeadline.Equal(want) {
				t.Errorf("handler saw lease deadline %v, want %v", sawDeadline, want)
			}
			if got := dirFiles(t, d.Path, ""); len(got) != 1 || got[0] != names[0].Base+".bak" {
				t.Fatalf("queue holds %v, want only %s.bak (left for the next owner)", got, names[0].Base)
			}
			if got := dirFiles(t, d.ShuntDir, ""); len(got) != 0 {
				t.Fatalf("shunt holds %v after a lapse", got)
			}
			if n := r.InFlight()[0]; n != 0 {
				t.Fatalf("%d messages still counted in flight", n)
			}
		})
	}
}

// Regression (same scenario): a message waiting for a retry was released back to ready when its
// slice was narrowed after the lease lapsed, although another node may have recovered and
// claimed that file already.
func TestRetryWaitingNotReleasedAfterLapse(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	lease := &fakeLease{}
	lease.until.Store(time.Now().Add(time.Hour).UnixNano())
	h := HandlerFunc(func(ctx context.Context, m *Message) error { return ErrRetry })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 1, Handler: h, Lease: lease, Logger: testLogger(t),
		Retry: RetryPolicy{Initial: time.Hour, Max: time.Hour, MaxElapsed: 10 * time.Hour}})
	r.mu.Lock()
	r.owned[0] = true
	r.mu.Unlock()
	ctx := context.Background()
	r.process(ctx, ctx, item{name: names[0], slice: 0}, nil)
	if n := r.InFlight()[0]; n != 1 {
		t.Fatalf("%d in flight after the retry was scheduled, want 1", n)
	}
	lease.until.Store(time.Now().Add(-time.Second).UnixNano())
	select {
	case <-r.SetSlices(nil):
	case <-time.After(5 * time.Second):
		t.Fatal("narrowing never reported the slice released")
	}
	if got := dirFiles(t, d.Path, ""); len(got) != 1 || got[0] != names[0].Base+".bak" {
		t.Fatalf("queue holds %v, want only %s.bak (left for the next owner)", got, names[0].Base)
	}
}

// A claim that starts a new lease generation after a lapse (TestClaimAfterLapse...) must still
// see its handler cancelled when the lease lapses again, even if the lease watcher never saw the
// lease valid in between.
func TestLapseAfterClaimRenewedGenerationCancelsHandler(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	lease := &fakeLease{}
	lease.until.Store(time.Now().Add(-time.Second).UnixNano())
	cause := make(chan error, 1)
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		lease.until.Store(time.Now().Add(-time.Second).UnixNano()) // lapses again at once
		select {
		case <-ctx.Done():
			cause <- context.Cause(ctx)
			return ctx.Err()
		case <-time.After(5 * time.Second):
			cause <- nil
			return nil
		}
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 1, Handler: h, Lease: lease, Logger: testLogger(t)})
	r.mu.Lock()
	r.owned[0] = true
	r.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { defer close(watched); _ = r.watchLease(ctx) }()
	t.Cleanup(func() { cancel(); <-watched })
	waitFor(t, "the watcher to see the lapse", 5*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.lease.ctx.Err() != nil
	})
	lease.until.Store(time.Now().Add(time.Hour).UnixNano())
	r.process(ctx, ctx, item{name: names[0], slice: 0}, nil)
	if err := <-cause; !errors.Is(err, errLeaseLost) {
		t.Fatalf("handler ended with cause %v, want it cancelled by the second lapse", err)
	}
}

// fencedLease hands out a fencing token per slice, like the Consul coordinator (failover/consul).
type fencedLease struct{ tokens map[int]uint64 }

func (fencedLease) ValidUntil() time.Time { return farFuture }
func (f fencedLease) FencingToken(q string, slice int) uint64 {
	if q != "in" {
		return 0
	}
	return f.tokens[slice]
}

func TestHandlerSeesFencingToken(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 20, time.Unix(1_700_000_000, 0))
	lease := fencedLease{tokens: map[int]uint64{0: 101, 1: 202, 2: 303, 3: 404}}
	var mu sync.Mutex
	seen := map[string]uint64{}
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		mu.Lock()
		defer mu.Unlock()
		if want := lease.tokens[m.Slice]; m.FencingToken != want {
			t.Errorf("%s in slice %d: fencing token %d, want %d", m.Name.Base, m.Slice, m.FencingToken, want)
		}
		seen[m.Name.Base] = m.FencingToken
		return nil
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 4, Concurrency: 2, Handler: h, Lease: lease, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices([]int{0, 1, 2, 3})
	startRunner(t, r)
	waitFor(t, "all handled", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == len(names)
	})
}

// TestRetryAfterUsesTheHandlersDelay: a handler that asks for a retry after a delay is not handed the
// message again before it, and the retry counts as one.
func TestRetryAfterUsesTheHandlersDelay(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	var mu sync.Mutex
	var calls []time.Time
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, time.Now())
		if len(calls) == 1 {
			return RetryAfter(300*time.Millisecond, errors.New("mailbox busy"))
		}
		if m.Retry != 1 {
			return fmt.Errorf("retry = %d, want 1", m.Retry)
		}
		return nil
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond,
		Retry: RetryPolicy{Initial: time.Millisecond, Max: time.Millisecond, MaxElapsed: time.Minute}})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "2 calls and an empty queue", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) == 2 && len(dirFiles(t, d.Path, "")) == 0
	})
	if gap := calls[1].Sub(calls[0]); gap < 300*time.Millisecond {
		t.Errorf("retried after %s, want >= the 300ms the handler asked for", gap)
	}
	if n := len(dirFiles(t, d.ShuntDir, "")); n != 0 {
		t.Errorf("%d files shunted, want none", n)
	}
}

// TestRawPayloadsReachTheHandlerWhole: with RawPayloads a file that is not a native payload (a
// Mailman pickle) is handed over byte for byte; without, it goes to bad.
func TestRawPayloadsReachTheHandlerWhole(t *testing.T) {
	for _, raw := range []bool{true, false} {
		d := newTestDir(t)
		pickle := []byte("\x80\x04\x95 not a qslice payload")
		name := "1700000000.000001+" + strings.Repeat("ab", 20) + ".pck"
		must(t, os.WriteFile(filepath.Join(d.Path, name), pickle, 0o644))
		got := make(chan []byte, 1)
		h := HandlerFunc(func(ctx context.Context, m *Message) error { got <- bytes.Clone(m.Body); return nil })
		r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond, RawPayloads: raw})
		r.SetSlices([]int{0})
		stop := startRunner(t, r)
		if raw {
			select {
			case b := <-got:
				if !bytes.Equal(b, pickle) {
					t.Errorf("body %q, want the file %q", b, pickle)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("raw payload never reached the handler")
			}
			waitFor(t, "queue empty", 10*time.Second, func() bool { return len(dirFiles(t, d.Path, "")) == 0 })
		} else {
			waitFor(t, "moved to bad", 10*time.Second, func() bool { return len(dirFiles(t, d.BadDir, ".psv")) == 1 })
			if len(got) != 0 {
				t.Error("a foreign payload reached the handler without RawPayloads")
			}
		}
		stop()
	}
}

// TestWorkerRechecksOwnershipBeforeClaiming pins the rule that a worker claims a buffered message
// only while its slice is still owned: an item taken from the dispatcher's buffer after a
// narrowing (or after a scan made before it) must be left in place, unclaimed and unhandled.
// Deterministic: it hands the worker step such an item directly.
func TestWorkerRechecksOwnershipBeforeClaiming(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 64, time.Now().Add(-time.Minute))
	var handled atomic.Int32
	r, err := New(Config{Queue: "q", Dir: d, Slices: 2, Logger: testLogger(t),
		Handler: HandlerFunc(func(context.Context, *Message) error { handled.Add(1); return nil })})
	if err != nil {
		t.Fatal(err)
	}
	r.SetSlices([]int{0})
	ctx := context.Background()
	r.recoverPending(ctx) // what the dispatcher does before claiming from a widened slice
	var owned, foreign int
	for _, n := range names {
		slice := queue.SliceOf(n.Digest, 2)
		r.process(ctx, ctx, item{name: n, slice: slice}, nil)
		ready := fileExists(filepath.Join(d.Path, n.FileName(queue.SuffixReady)))
		switch {
		case slice == 1 && !ready:
			t.Fatalf("%s of slice 1, not owned, was claimed", n.Base)
		case slice == 1:
			foreign++
		case ready:
			t.Fatalf("%s of owned slice 0 was not handled", n.Base)
		default:
			owned++
		}
	}
	if owned == 0 || foreign == 0 || int(handled.Load()) != owned {
		t.Fatalf("owned %d, foreign %d, handled %d: want both slices represented and only the owned handled", owned, foreign, handled.Load())
	}
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
