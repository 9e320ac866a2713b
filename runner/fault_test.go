package runner

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

	"github.com/qslice/qslice/internal/queuetest"
	"github.com/qslice/qslice/internal/testenv"
	"github.com/qslice/qslice/runner/queue"
)

// faultObserver records disk faults and skips.
type faultObserver struct {
	NopObserver
	mu      sync.Mutex
	faults  map[FaultReason]int // occurrences
	active  map[FaultReason]bool
	skipped map[string]int
}

func newFaultObserver() *faultObserver {
	return &faultObserver{faults: map[FaultReason]int{}, active: map[FaultReason]bool{}, skipped: map[string]int{}}
}

func (o *faultObserver) Fault(_ string, r FaultReason, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.faults[r]++
	}
	o.active[r] = err != nil
}

func (o *faultObserver) Skipped(_ string, reason string) {
	o.mu.Lock()
	o.skipped[reason]++
	o.mu.Unlock()
}

func (o *faultObserver) get(r FaultReason) (int, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.faults[r], o.active[r]
}

func TestOddFilesGoToBadWithReasonNeverFollowedNorBlocking(t *testing.T) {
	d := newTestDir(t)
	d.MaxBytes = 1 << 20
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "shadow")
	must(t, os.WriteFile(secret, []byte("SECRET"), 0o600))
	good := enqueueN(t, d, 20, time.Unix(1_700_000_000, 0))
	odd := queuetest.OddFiles(t, d.Path, secret)
	// A FIFO left in flight by a "crashed" runner: recovery must not block on it either.
	inflight := "1600000001.0+" + strings.Repeat("9", 40)
	must(t, syscall.Mkfifo(filepath.Join(d.Path, inflight+queue.SuffixInFlight), 0o644))
	odd[inflight] = "FIFO"

	var mu sync.Mutex
	handled := map[string]int{}
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		mu.Lock()
		defer mu.Unlock()
		handled[m.Name.Base]++
		if strings.Contains(string(m.Body), "SECRET") {
			t.Errorf("handler got the content of a file outside the queue via %s", m.Name.Base)
		}
		return nil
	})
	// Concurrency 1: one blocked open would stop the queue.
	r, err := New(Config{Queue: "in", Dir: d, Slices: 1, Concurrency: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	must(t, err)
	r.SetSlices([]int{0})
	stop := startRunner(t, r)
	waitFor(t, "good messages handled and odd files in bad/", 20*time.Second, func() bool {
		mu.Lock()
		n := len(handled)
		mu.Unlock()
		return n == len(good) && len(dirFiles(t, d.BadDir, queue.SuffixBad)) == len(odd)
	})
	stop()
	for _, n := range good {
		if handled[n.Base] != 1 {
			t.Errorf("%s handled %d times", n.Base, handled[n.Base])
		}
	}
	for base, want := range odd {
		why, err := os.ReadFile(filepath.Join(d.BadDir, base+queue.SuffixWhy))
		if err != nil || !strings.Contains(string(why), want) {
			t.Errorf("bad/%s reason = %s, %v; want it to name %q", base, why, err, want)
		}
		// Moved as a name, never followed: a link in bad/ is still a link.
		if fi, err := os.Lstat(filepath.Join(d.BadDir, base+queue.SuffixBad)); err != nil {
			t.Errorf("bad/%s: %v", base, err)
		} else if want == "symbolic link" && fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("bad/%s is %v, want the link itself", base, fi.Mode())
		}
	}
	if b, _ := os.ReadFile(secret); string(b) != "SECRET" {
		t.Errorf("file outside the queue changed: %q", b)
	}
	if left := dirFiles(t, d.Path, ""); len(left) != 0 {
		t.Errorf("left in the queue: %v", left)
	}
}

func TestLockDirFaultBacksOffWithoutShuntingAndRecovers(t *testing.T) {
	for _, c := range []struct {
		name   string
		break_ func(lockDir string) error
	}{
		// The lock directory is not a directory (ENOTDIR on every create).
		{"not a directory", func(dir string) error { return os.WriteFile(dir, []byte("x"), 0o644) }},
		// A FIFO under the lock's own name: neither followed nor waited on.
		{"FIFO as lock file", func(dir string) error {
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			return syscall.Mkfifo(filepath.Join(dir, "list-a"), 0o644)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newTestDir(t)
			lockDir := filepath.Join(t.TempDir(), "locks")
			must(t, c.break_(lockDir))
			n, err := d.Enqueue(queue.Meta{Lock: "list-a"}, []byte("hello"), time.Unix(1_700_000_000, 0))
			must(t, err)
			var calls atomic.Int64
			h := HandlerFunc(func(ctx context.Context, m *Message) error { calls.Add(1); return nil })
			obs := newFaultObserver()
			r, err := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 5 * time.Millisecond,
				LockDir: lockDir, Observer: obs, FaultInitial: 50 * time.Millisecond, FaultMax: 200 * time.Millisecond})
			must(t, err)
			r.SetSlices([]int{0})
			start := time.Now()
			stop := startRunner(t, r)
			waitFor(t, "lock faults", 10*time.Second, func() bool { k, _ := obs.get(FaultLockDir); return k >= 3 })
			elapsed := time.Since(start)
			k, active := obs.get(FaultLockDir)
			// Backoff: at most one attempt per FaultInitial even without the growth; a hot loop
			// makes thousands.
			if limit := int(elapsed/(50*time.Millisecond)) + 2; k > limit {
				t.Errorf("%d lock faults in %s: not backing off (limit %d)", k, elapsed, limit)
			}
			if !active {
				t.Error("fault not active")
			}
			if _, ok := r.Faults()[FaultLockDir]; !ok {
				t.Error("Faults() does not report lock_dir")
			}
			if calls.Load() != 0 {
				t.Error("handler ran without its lock")
			}
			if s := dirFiles(t, d.ShuntDir, ""); len(s) != 0 {
				t.Errorf("shunted on a lock directory fault: %v", s)
			}
			// Repair: the message is handled once, the fault clears.
			must(t, os.RemoveAll(lockDir))
			must(t, os.Mkdir(lockDir, 0o755))
			waitFor(t, "handled after repair", 10*time.Second, func() bool { return calls.Load() == 1 })
			waitFor(t, "fault cleared", 5*time.Second, func() bool { _, a := obs.get(FaultLockDir); return !a })
			stop()
			if _, err := os.Stat(filepath.Join(d.Path, n.FileName(queue.SuffixReady))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("message still there after success: %v", err)
			}
		})
	}
}

func TestShuntDirFaultKeepsTheMessage(t *testing.T) {
	root := t.TempDir()
	d := queue.NewDir(filepath.Join(root, "in"), filepath.Join(root, "shunt"), filepath.Join(root, "bad"))
	must(t, os.MkdirAll(d.Path, 0o755))
	must(t, os.MkdirAll(d.BadDir, 0o755))
	must(t, os.WriteFile(d.ShuntDir, []byte("not a dir"), 0o644)) // ENOTDIR
	n := enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))[0]
	var calls atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error { calls.Add(1); return errors.New("boom") })
	obs := newFaultObserver()
	r, err := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 5 * time.Millisecond,
		Observer: obs, FaultInitial: 20 * time.Millisecond, FaultMax: 50 * time.Millisecond})
	must(t, err)
	r.SetSlices([]int{0})
	stop := startRunner(t, r)
	waitFor(t, "shunt faults", 10*time.Second, func() bool { k, _ := obs.get(FaultShunt); return k >= 2 })
	// Never lost: the message is ready or in flight in its queue.
	_, e1 := os.Lstat(filepath.Join(d.Path, n.FileName(queue.SuffixReady)))
	_, e2 := os.Lstat(filepath.Join(d.Path, n.FileName(queue.SuffixInFlight)))
	if e1 != nil && e2 != nil {
		t.Fatalf("message gone from the queue while the shunt directory is broken: %v, %v", e1, e2)
	}
	must(t, os.Remove(d.ShuntDir))
	must(t, os.Mkdir(d.ShuntDir, 0o755))
	waitFor(t, "shunted after repair", 10*time.Second, func() bool {
		return len(dirFiles(t, d.ShuntDir, queue.SuffixReady)) == 1 && len(dirFiles(t, d.Path, "")) == 0
	})
	waitFor(t, "fault cleared", 5*time.Second, func() bool { _, a := obs.get(FaultShunt); return !a })
	stop()
}

// A file whose claim keeps failing (a directory sits under its in-flight name: rename gives
// EISDIR) is backed off and avoided; the queue's other files go on.
func TestClaimFaultBacksOffAndOtherFilesProceed(t *testing.T) {
	d := newTestDir(t)
	// Written elsewhere and moved in once the runner is active: recovery at widening would
	// (rightly) move the blocking directory to bad/ first.
	staging := queue.NewDir(filepath.Join(filepath.Dir(d.Path), "staging"), "", "")
	must(t, staging.Ensure())
	names := enqueueN(t, staging, 5, time.Unix(1_700_000_000, 0))
	blocker := filepath.Join(d.Path, names[0].FileName(queue.SuffixInFlight))
	var calls atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error { calls.Add(1); return nil })
	obs := newFaultObserver()
	r, err := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 5 * time.Millisecond,
		Observer: obs, FaultInitial: 20 * time.Millisecond, FaultMax: 300 * time.Millisecond})
	must(t, err)
	r.SetSlices([]int{0})
	stop := startRunner(t, r)
	waitFor(t, "slice active", 10*time.Second, func() bool { return len(r.Owned()) == 1 })
	must(t, os.MkdirAll(filepath.Join(blocker, "x"), 0o755))
	for _, n := range names {
		f := n.FileName(queue.SuffixReady)
		must(t, os.Rename(filepath.Join(staging.Path, f), filepath.Join(d.Path, f)))
	}
	start := time.Now()
	waitFor(t, "the other 4 handled", 10*time.Second, func() bool { return calls.Load() == 4 })
	time.Sleep(500 * time.Millisecond) // let it retry the blocked file a few times
	k, _ := obs.get(FaultClaim)
	elapsed := time.Since(start)
	if k == 0 {
		t.Error("no claim fault reported")
	}
	// The blocked file is avoided for FaultMax between attempts.
	if limit := int(elapsed/(300*time.Millisecond)) + 2; k > limit {
		t.Errorf("%d claim faults in %s: hot loop (limit %d)", k, elapsed, limit)
	}
	must(t, os.RemoveAll(blocker))
	waitFor(t, "handled after repair", 10*time.Second, func() bool { return calls.Load() == 5 })
	waitFor(t, "fault cleared", 5*time.Second, func() bool { _, a := obs.get(FaultClaim); return !a })
	stop()
}

func TestUnreadableFileIsRetriedThenBad(t *testing.T) {
	if testenv.Unprivileged(t) { // root reads mode-000 files
		return
	}
	d := newTestDir(t)
	n := enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))[0]
	must(t, os.Chmod(filepath.Join(d.Path, n.FileName(queue.SuffixReady)), 0))
	var calls atomic.Int64
	h := HandlerFunc(func(ctx context.Context, m *Message) error { calls.Add(1); return nil })
	obs := newFaultObserver()
	r, err := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 5 * time.Millisecond,
		Observer: obs, FaultInitial: 5 * time.Millisecond, FaultMax: 20 * time.Millisecond})
	must(t, err)
	r.SetSlices([]int{0})
	stop := startRunner(t, r)
	waitFor(t, "moved to bad", 10*time.Second, func() bool { return len(dirFiles(t, d.BadDir, queue.SuffixBad)) == 1 })
	stop()
	if k, active := obs.get(FaultRead); k != maxReadAttempts || active {
		t.Errorf("read faults = %d (active %v), want %d then cleared", k, active, maxReadAttempts)
	}
	why, _ := os.ReadFile(filepath.Join(d.BadDir, n.Base+queue.SuffixWhy))
	if !strings.Contains(string(why), "permission denied") || !strings.Contains(string(why), "attempts") {
		t.Errorf("reason = %s", why)
	}
}

func TestLeftoverTmpFilesAreRemovedAndCounted(t *testing.T) {
	d := newTestDir(t)
	now := time.Now()
	old := now.Add(-3 * time.Hour)
	base := func(t0 time.Time, c string) string { return queue.FormatWhen(t0) + "+" + strings.Repeat(c, 40) }
	leftover := filepath.Join(d.Path, base(old, "a")+queue.SuffixTemp) // an enqueue that failed (ENOSPC)
	recovering := filepath.Join(d.Path, base(old, "b")+".bak.tmp")     // a recovery: old name, but written just now
	young := filepath.Join(d.Path, base(now, "c")+queue.SuffixTemp)    // being written
	foreign := filepath.Join(d.Path, "notes.tmp")                      // not ours
	for _, p := range []string{leftover, recovering, young, foreign} {
		must(t, os.WriteFile(p, []byte("x"), 0o644))
	}
	must(t, os.Chtimes(leftover, old, old))
	must(t, os.Chtimes(foreign, old, old))
	obs := newFaultObserver()
	r, err := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: HandlerFunc(func(context.Context, *Message) error { return nil }),
		Logger: testLogger(t), PollInterval: 5 * time.Millisecond, Observer: obs})
	must(t, err)
	r.SetSlices([]int{0})
	stop := startRunner(t, r)
	waitFor(t, "leftover removed", 10*time.Second, func() bool { _, err := os.Lstat(leftover); return err != nil })
	stop()
	for _, p := range []string{recovering, young, foreign} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: %v (must stay)", filepath.Base(p), err)
		}
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.skipped["tmp_removed"] != 1 {
		t.Errorf("tmp_removed counted %d times, want 1", obs.skipped["tmp_removed"])
	}
}

// A claimed file that its reader does not find at first (a network filesystem's client showing
// our own rename late) is read again after a pause, and handled once; one removed for good is
// given up after maxVanishedReads reads, nothing handled, and the runner goes on.
func TestClaimedFileNotFoundIsReadAgain(t *testing.T) {
	for _, back := range []bool{true, false} {
		name := map[bool]string{true: "shown late", false: "removed for good"}[back]
		t.Run(name, func(t *testing.T) {
			d := newTestDir(t)
			n := enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))[0]
			var calls atomic.Int64
			h := HandlerFunc(func(ctx context.Context, m *Message) error { calls.Add(1); return nil })
			obs := newFaultObserver()
			r, err := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 5 * time.Millisecond,
				Observer: obs, FaultInitial: 20 * time.Millisecond, FaultMax: 50 * time.Millisecond})
			must(t, err)
			inFlight := filepath.Join(d.Path, n.FileName(queue.SuffixInFlight))
			hidden := filepath.Join(t.TempDir(), "hidden")
			var reads atomic.Int64
			r.beforeRead = func(m queue.Name) {
				if m.Base != n.Base || reads.Add(1) != 1 {
					return
				}
				must(t, os.Rename(inFlight, hidden))
				if back {
					time.AfterFunc(30*time.Millisecond, func() { _ = os.Rename(hidden, inFlight) })
				}
			}
			r.SetSlices([]int{0})
			stop := startRunner(t, r)
			defer stop()
			if back {
				waitFor(t, "handled after the file showed up", 10*time.Second, func() bool { return calls.Load() == 1 })
				waitFor(t, "removed after success", 5*time.Second, func() bool { return len(dirFiles(t, d.Path, "")) == 0 })
			} else {
				waitFor(t, "given up", 10*time.Second, func() bool { return reads.Load() >= maxVanishedReads })
				later := enqueueN(t, d, 1, time.Unix(1_700_000_001, 0))[0]
				waitFor(t, "the next message handled", 10*time.Second, func() bool { return calls.Load() == 1 })
				if _, err := os.Lstat(filepath.Join(d.Path, later.FileName(queue.SuffixReady))); !os.IsNotExist(err) {
					t.Errorf("the next message is still ready: %v", err)
				}
				if got := reads.Load(); got != maxVanishedReads {
					t.Errorf("%d reads of the removed file, want %d", got, maxVanishedReads)
				}
			}
			if k, _ := obs.get(FaultRead); k == 0 {
				t.Error("no read fault reported while the file was not found")
			}
			waitFor(t, "read fault cleared", 5*time.Second, func() bool { _, a := obs.get(FaultRead); return !a })
			if back && calls.Load() != 1 {
				t.Errorf("handled %d times, want once", calls.Load())
			}
		})
	}
}
