package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/qslice/qslice/internal/testenv"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newTestDir(t testing.TB) *Dir {
	t.Helper()
	d := NewDir(filepath.Join(t.TempDir(), "in"), "", "")
	if err := d.Ensure(); err != nil {
		t.Fatal(err)
	}
	return d
}

// listDir returns the sorted entry names of dir.
func listDir(t testing.TB, dir string) []string {
	t.Helper()
	var names []string
	if err := ScanNames(dir, func(n string) error { names = append(names, n); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func wantFiles(t testing.TB, dir string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := listDir(t, dir); !slices.Equal(got, want) {
		t.Fatalf("%s holds %q, want %q", filepath.Base(dir), got, want)
	}
}

func readMeta(t testing.TB, path string) (Meta, []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, body, err := Decode(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m, body
}

func TestNewDirLayout(t *testing.T) {
	d := NewDir(filepath.Join("q", "in"), "", "")
	if d.ShuntDir != filepath.Join("q", "shunt") || d.BadDir != filepath.Join("q", "bad") {
		t.Fatalf("default layout: %+v", d)
	}
	d = NewDir("in", "s", "b")
	if d.ShuntDir != "s" || d.BadDir != "b" {
		t.Fatalf("explicit layout: %+v", d)
	}
}

func TestEnqueue(t *testing.T) {
	d := newTestDir(t)
	body := []byte("From: a@example.com\n\nhello\n")
	n, err := d.Enqueue(Meta{Lock: "lists/a", Extra: map[string]string{"listid": "a"}}, body, testNow)
	if err != nil {
		t.Fatal(err)
	}
	wantFiles(t, d.Path, n.Base+SuffixReady) // no temporary file left
	parsed, err := ParseName(n.Base + SuffixReady)
	if err != nil {
		t.Fatal(err)
	}
	if parsed != n {
		t.Fatalf("Enqueue returned %+v, the file name parses as %+v", n, parsed)
	}
	if !strings.HasPrefix(n.Base, FormatWhen(testNow)+"+") || !n.Time().Equal(testNow) {
		t.Fatalf("name %s does not carry the enqueue time %v", n.Base, testNow)
	}
	for _, k := range []int{1, 2, 7, 64, MaxSlices} {
		if SliceOf(parsed.Digest, k) != SliceOf(n.Digest, k) {
			t.Fatalf("slice of the file differs from the slice of the returned name")
		}
	}
	m, got := readMeta(t, filepath.Join(d.Path, n.FileName(SuffixReady)))
	if !bytes.Equal(got, body) || m.Lock != "lists/a" || m.Extra["listid"] != "a" || !m.Enqueued.Equal(testNow) || m.Attempts != 0 {
		t.Fatalf("payload %+v %q", m, got)
	}

	// Identical messages in the same instant get distinct names.
	n2, err := d.Enqueue(Meta{Lock: "lists/a", Extra: map[string]string{"listid": "a"}}, body, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if n2.Base == n.Base {
		t.Fatalf("two enqueues got the same name %s", n.Base)
	}
	// An explicit Enqueued time is kept.
	orig := testNow.Add(-time.Hour)
	n3, err := d.Enqueue(Meta{Enqueued: orig}, nil, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := readMeta(t, filepath.Join(d.Path, n3.FileName(SuffixReady))); !m.Enqueued.Equal(orig) {
		t.Fatalf("Enqueued = %v, want %v", m.Enqueued, orig)
	}
}

// TestEnqueueSpreadsOverSlices: digests of consecutive enqueues spread evenly over slices.
func TestEnqueueSpreadsOverSlices(t *testing.T) {
	d := newTestDir(t)
	const msgs, slices = 200, 4
	var count [slices]int
	for i := range msgs {
		n, err := d.Enqueue(Meta{}, []byte("same body"), testNow.Add(time.Duration(i)*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		count[SliceOf(n.Digest, slices)]++
	}
	for i, c := range count {
		if c < 20 { // binomial(200, 1/4): 50 ± 6.1; 20 is 4.9 sigma away
			t.Errorf("slice %d got %d of %d messages: %v", i, c, msgs, count)
		}
	}
}

func TestEnqueueConcurrent(t *testing.T) {
	d := newTestDir(t)
	const workers, each = 8, 10
	var mu sync.Mutex
	var names []string
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				n, err := d.Enqueue(Meta{}, fmt.Appendf(nil, "%d/%d", w, i), testNow)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				names = append(names, n.Base+SuffixReady)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	wantFiles(t, d.Path, names...)
	d.syncPath.mu.Lock()
	syncs := d.syncPath.done
	d.syncPath.mu.Unlock()
	if syncs < 1 || syncs > workers*each {
		t.Fatalf("%d directory syncs for %d enqueues", syncs, workers*each)
	}
	t.Logf("%d directory syncs for %d concurrent enqueues", syncs, workers*each)
}

// TestDirSyncerGroupCommit drives the group committer deterministically: callers that arrive while a
// sync is running must not count it as theirs (it may have read the directory before their rename),
// and all of them are covered by the one sync that starts after it.
func TestDirSyncerGroupCommit(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		var s dirSyncer
		s.mu.Lock()
		s.cond = sync.NewCond(&s.mu)
		s.running, s.started = true, 1 // sync #1 is in progress
		s.mu.Unlock()

		const callers = 8
		var returned atomic.Int32
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				if err := s.sync(dir); err != nil {
					t.Error(err)
				}
				returned.Add(1)
			})
		}
		synctest.Wait() // every caller is waiting on the condition variable
		if n := returned.Load(); n != 0 {
			t.Fatalf("%d callers returned while the sync that predates them was still running", n)
		}
		s.mu.Lock()
		s.running, s.done = false, 1 // sync #1 finishes
		s.cond.Broadcast()
		s.mu.Unlock()
		wg.Wait()
		if s.started != 2 || s.done != 2 || s.running {
			t.Fatalf("after %d grouped callers: started %d, done %d, running %v; want exactly one more sync", callers, s.started, s.done, s.running)
		}
	})
}

func TestDirSyncerErrors(t *testing.T) {
	var s dirSyncer
	missing := filepath.Join(t.TempDir(), "missing")
	if err := s.sync(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("sync of a missing directory: %v", err)
	}
	if err := s.sync(t.TempDir()); err != nil {
		t.Fatalf("sync after a failed one: %v", err)
	}
}

func enqueueN(t testing.TB, d *Dir, n int) []Name {
	t.Helper()
	var names []Name
	for i := range n {
		nm, err := d.Enqueue(Meta{}, fmt.Appendf(nil, "message %d", i), testNow.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, nm)
	}
	return names
}

// TestClaimRace: many runners claim the same files at once; each file is claimed exactly once and
// every other attempt gets ErrGone.
func TestClaimRace(t *testing.T) {
	d := newTestDir(t)
	const files, runners = 64, 8
	names := enqueueN(t, d, files)
	var wins [files]atomic.Int32
	var gone atomic.Int32
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := range runners {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 99))
			<-start
			for _, k := range r.Perm(files) {
				err := d.Claim(names[k])
				switch {
				case err == nil:
					wins[k].Add(1)
				case errors.Is(err, ErrGone):
					gone.Add(1)
				default:
					t.Errorf("claim: %v", err)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	var want []string
	for k := range wins {
		if w := wins[k].Load(); w != 1 {
			t.Errorf("%s claimed %d times", names[k].Base, w)
		}
		want = append(want, names[k].FileName(SuffixInFlight))
	}
	if g := gone.Load(); g != files*(runners-1) {
		t.Errorf("%d ErrGone, want %d", g, files*(runners-1))
	}
	wantFiles(t, d.Path, want...)
}

func TestClaimFinishRelease(t *testing.T) {
	d := newTestDir(t)
	names := enqueueN(t, d, 2)
	a, b := names[0], names[1]
	before, err := os.ReadFile(filepath.Join(d.Path, a.FileName(SuffixReady)))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := d.Claim(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Claim(a); !errors.Is(err, ErrGone) || !strings.Contains(err.Error(), a.Base) {
		t.Fatalf("second claim: %v, want ErrGone naming %s", err, a.Base)
	}
	data, err := d.ReadInFlight(a)
	if err != nil || !bytes.Equal(data, before) {
		t.Fatalf("ReadInFlight: %v; content changed by the claim", err)
	}

	if err := d.Finish(a); err != nil {
		t.Fatal(err)
	}
	if err := d.Release(b); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, d.Path, b.FileName(SuffixReady))
	if m, _ := readMeta(t, filepath.Join(d.Path, b.FileName(SuffixReady))); m.Attempts != 0 {
		t.Fatalf("Release counted an attempt: %d", m.Attempts)
	}

	// Operations on a file that is not there name it and say so.
	for op, err := range map[string]error{
		"finish":  d.Finish(a),
		"release": d.Release(a),
	} {
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), filepath.Join(d.Path, a.FileName(SuffixInFlight))) {
			t.Errorf("%s of a missing file: %v", op, err)
		}
	}
	if _, err := d.ReadInFlight(a); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), a.Base) {
		t.Errorf("ReadInFlight of a missing file: %v", err)
	}
}

func TestShunt(t *testing.T) {
	d := newTestDir(t)
	n := enqueueN(t, d, 1)[0]
	if err := d.Claim(n); err != nil {
		t.Fatal(err)
	}
	m, body := readMeta(t, filepath.Join(d.Path, n.FileName(SuffixInFlight)))
	m.Attempts = 2
	failedAt := testNow.Add(time.Minute)
	if err := d.Shunt(n, m, body, errors.New("handler: list test.example.com: boom"), failedAt); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, d.Path)
	wantFiles(t, d.ShuntDir, n.FileName(SuffixReady))
	sm, sbody := readMeta(t, filepath.Join(d.ShuntDir, n.FileName(SuffixReady)))
	if !bytes.Equal(sbody, body) || sm.Origin != d.Path || sm.Error != "handler: list test.example.com: boom" ||
		sm.Attempts != 2 || !sm.FailedAt.Equal(failedAt) || !sm.Enqueued.Equal(m.Enqueued) {
		t.Fatalf("shunted payload %+v %q", sm, sbody)
	}
	// The shunted file is a ready message of the shunt queue: requeueing is a claim from there.
	sd := NewDir(d.ShuntDir, "", "")
	if err := sd.Claim(n); err != nil {
		t.Fatal(err)
	}
}

// TestRecoverAttempts: a message found in flight is requeued with one more attempt each time, and
// the third time it goes to bad/, byte for byte, with the reason beside it.
func TestRecoverAttempts(t *testing.T) {
	d := newTestDir(t)
	n := enqueueN(t, d, 1)[0]
	var last []byte
	for attempt := 1; attempt <= MaxAttempts; attempt++ {
		if err := d.Claim(n); err != nil {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
		var err error
		if last, err = d.ReadInFlight(n); err != nil {
			t.Fatal(err)
		}
		res, err := d.Recover(n, testNow)
		if err != nil {
			t.Fatalf("recover %d: %v", attempt, err)
		}
		if attempt < MaxAttempts {
			if res != Requeued {
				t.Fatalf("recover %d: %v, want Requeued", attempt, res)
			}
			wantFiles(t, d.Path, n.FileName(SuffixReady))
			m, body := readMeta(t, filepath.Join(d.Path, n.FileName(SuffixReady)))
			if m.Attempts != attempt || string(body) != "message 0" {
				t.Fatalf("after recover %d: attempts %d body %q", attempt, m.Attempts, body)
			}
			continue
		}
		if res != MovedBad {
			t.Fatalf("recover %d: %v, want MovedBad", attempt, res)
		}
	}
	wantFiles(t, d.Path)
	wantFiles(t, d.BadDir, n.FileName(SuffixBad), n.Base+SuffixWhy)
	moved, err := os.ReadFile(filepath.Join(d.BadDir, n.FileName(SuffixBad)))
	if err != nil || !bytes.Equal(moved, last) {
		t.Fatalf("bad file differs from the in-flight file (%v)", err)
	}
	why := readWhy(t, d, n)
	if why.Attempts != MaxAttempts || why.Origin != d.Path || !why.MovedAt.Equal(testNow) || !strings.Contains(why.Reason, fmt.Sprintf("%d times", MaxAttempts)) {
		t.Fatalf("reason %+v", why)
	}
	bn, err := ParseName(n.FileName(SuffixBad))
	if err != nil || bn.Suffix != SuffixBad {
		t.Fatalf("bad file name: %+v %v", bn, err)
	}
}

func readWhy(t *testing.T, d *Dir, n Name) BadReason {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(d.BadDir, n.Base+SuffixWhy))
	if err != nil {
		t.Fatal(err)
	}
	var why BadReason
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&why); err != nil {
		t.Fatalf("%s: %v", n.Base+SuffixWhy, err)
	}
	return why
}

// TestRecoverCorrupt: an in-flight file that is not an intact payload (here a Mailman pickle) goes to
// bad/ unchanged, with the decoding error as the reason.
func TestRecoverCorrupt(t *testing.T) {
	d := newTestDir(t)
	files, _ := filepath.Glob(filepath.Join("testdata", "mailman", "*.pck"))
	if len(files) == 0 {
		t.Fatal("no Mailman files in testdata")
	}
	pickle, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	n, err := ParseName(filepath.Base(files[0]))
	if err != nil {
		t.Fatal(err)
	}
	good := enqueueN(t, d, 1)[0]
	truncated, _ := os.ReadFile(filepath.Join(d.Path, good.FileName(SuffixReady)))
	if err := os.Remove(filepath.Join(d.Path, good.FileName(SuffixReady))); err != nil {
		t.Fatal(err)
	}
	truncated = truncated[:len(truncated)-1]
	for _, c := range []struct {
		n      Name
		data   []byte
		reason string
	}{
		{n, pickle, "not a qslice payload"},
		{good, truncated, "truncated"},
	} {
		if err := os.WriteFile(filepath.Join(d.Path, c.n.FileName(SuffixInFlight)), c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := d.Recover(c.n, testNow)
		if err != nil || res != MovedBad {
			t.Fatalf("Recover: %v %v, want MovedBad", res, err)
		}
		moved, err := os.ReadFile(filepath.Join(d.BadDir, c.n.FileName(SuffixBad)))
		if err != nil || !bytes.Equal(moved, c.data) {
			t.Fatalf("bad file is not the in-flight file byte for byte (%v)", err)
		}
		if why := readWhy(t, d, c.n); !strings.Contains(why.Reason, c.reason) || !strings.Contains(why.Reason, ErrCorrupt.Error()) {
			t.Fatalf("reason %q, want it to mention %q", why.Reason, c.reason)
		}
	}
	wantFiles(t, d.Path)
}

func TestRecoverAndMoveToBadGone(t *testing.T) {
	d := newTestDir(t)
	n := enqueueN(t, d, 1)[0]
	if _, err := d.Recover(n, testNow); !errors.Is(err, ErrGone) {
		t.Fatalf("Recover of a file not in flight: %v, want ErrGone", err)
	}
	if err := d.MoveToBad(n, SuffixInFlight, "test", 0, testNow); !errors.Is(err, ErrGone) {
		t.Fatalf("MoveToBad of a missing file: %v, want ErrGone", err)
	}
	wantFiles(t, d.BadDir) // no reason file left behind
	// A ready file can be moved to bad too.
	if err := d.MoveToBad(n, SuffixReady, "operator", 0, testNow); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, d.Path)
	wantFiles(t, d.BadDir, n.FileName(SuffixBad), n.Base+SuffixWhy)
}

// permissionsEnforced reports whether the file system refuses to create a file in a 0500
// directory; root (CAP_DAC_OVERRIDE) ignores the mode.
func permissionsEnforced(t *testing.T) bool {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o755)
	f, err := os.Create(filepath.Join(dir, "probe"))
	if err == nil {
		f.Close()
		return false
	}
	return true
}

// readOnly makes dir read-only (0500) until the test ends.
func readOnly(t *testing.T, dir string) {
	t.Helper()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) })
}

// TestPermissionErrors: a directory the runner may not write gives an error that names the path and
// wraps fs.ErrPermission, and leaves the message where it was.
func TestPermissionErrors(t *testing.T) {
	if testenv.Unprivileged(t) {
		return
	}
	if !permissionsEnforced(t) {
		t.Skipf("directory permissions are not enforced for uid %d (root or CAP_DAC_OVERRIDE): run as an ordinary user to test permission errors", os.Geteuid())
	}
	check := func(op string, err error, path string) {
		t.Helper()
		if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want a permission error naming %s", op, err, path)
		}
	}
	t.Run("enqueue", func(t *testing.T) {
		d := newTestDir(t)
		readOnly(t, d.Path)
		_, err := d.Enqueue(Meta{}, nil, testNow)
		check("enqueue", err, d.Path)
	})
	t.Run("claim", func(t *testing.T) {
		d := newTestDir(t)
		n := enqueueN(t, d, 1)[0]
		readOnly(t, d.Path)
		err := d.Claim(n)
		check("claim", err, d.Path)
		if errors.Is(err, ErrGone) {
			t.Errorf("claim: permission error reported as ErrGone")
		}
		wantFiles(t, d.Path, n.FileName(SuffixReady))
	})
	t.Run("finish", func(t *testing.T) {
		d := newTestDir(t)
		n := enqueueN(t, d, 1)[0]
		if err := d.Claim(n); err != nil {
			t.Fatal(err)
		}
		readOnly(t, d.Path)
		check("finish", d.Finish(n), d.Path)
		wantFiles(t, d.Path, n.FileName(SuffixInFlight))
	})
	t.Run("shunt", func(t *testing.T) {
		d := newTestDir(t)
		n := enqueueN(t, d, 1)[0]
		if err := d.Claim(n); err != nil {
			t.Fatal(err)
		}
		readOnly(t, d.ShuntDir)
		check("shunt", d.Shunt(n, Meta{}, nil, errors.New("boom"), testNow), d.ShuntDir)
		wantFiles(t, d.Path, n.FileName(SuffixInFlight))
	})
	t.Run("recover to bad", func(t *testing.T) {
		d := newTestDir(t)
		n := enqueueN(t, d, 1)[0]
		if err := d.Claim(n); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d.Path, n.FileName(SuffixInFlight)), []byte("garbage"), 0o644); err != nil {
			t.Fatal(err)
		}
		readOnly(t, d.BadDir)
		_, err := d.Recover(n, testNow)
		check("recover", err, d.BadDir)
		wantFiles(t, d.Path, n.FileName(SuffixInFlight))
	})
	t.Run("scan", func(t *testing.T) {
		d := newTestDir(t)
		if err := os.Chmod(d.Path, 0o000); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(d.Path, 0o755) })
		check("scan", ScanNames(d.Path, func(string) error { return nil }), d.Path)
	})
}

func TestEnsureError(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d := NewDir(filepath.Join(file, "in"), "", "")
	if err := d.Ensure(); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("Ensure under a regular file: %v, want an error naming the path", err)
	}
}

func TestScanNames(t *testing.T) {
	dir := t.TempDir()
	const files = 4096 + 300 // more than one Readdirnames chunk
	for i := range files {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	seen := make(map[string]int, files)
	if err := ScanNames(dir, func(n string) error { seen[n]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != files {
		t.Fatalf("saw %d names, want %d", len(seen), files)
	}
	for n, c := range seen {
		if c != 1 {
			t.Fatalf("%s seen %d times", n, c)
		}
	}
	stop := errors.New("stop")
	calls := 0
	if err := ScanNames(dir, func(string) error { calls++; return stop }); err != stop || calls != 1 {
		t.Fatalf("callback error: %v after %d calls, want it returned as is after 1", err, calls)
	}
	missing := filepath.Join(dir, "missing")
	if err := ScanNames(missing, func(string) error { return nil }); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("scan of a missing directory: %v", err)
	}
}
