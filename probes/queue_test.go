package probes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/queuetest"
	"github.com/qslice/qslice/internal/testenv"
	"github.com/qslice/qslice/runner/queue"
)

// t0 is the fake "now" of the tests: 2023-11-14T22:13:20Z.
var t0 = time.Unix(1700000000, 0)

// lastIn returns the last digest of slice i of n.
func lastIn(i, n int) string {
	_, hi := queue.SliceBounds(i, n)
	hi.Sub(hi, big.NewInt(1))
	return fmt.Sprintf("%040x", hi)
}

func writeFile(t testing.TB, dir, name string, size int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mkdirs(t testing.TB, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// buildQueue lays out a Mailman-style queue tree under root: queue/in with messages in slices 0, 1
// and 3 of 4, nothing ready in slice 2 but one message in flight, and shunt and bad siblings.
// It returns the config that probes it.
func buildQueue(t testing.TB, root string) QueueConfig {
	in := filepath.Join(root, "queue", "in")
	shunt := filepath.Join(root, "queue", "shunt")
	bad := filepath.Join(root, "queue", "bad")
	mkdirs(t, in, shunt, bad, filepath.Join(in, "subdir"))
	// slice 0: two ready, the older 100.5 s old, 10+20 bytes.
	writeFile(t, in, "1699999899.5+"+queuetest.DigestIn(0, 4, 0)+".pck", 10)
	writeFile(t, in, "1699999950.0+"+lastIn(0, 4)+".pck", 20)
	// slice 1: one ready, 40 s old, 300 bytes.
	writeFile(t, in, "1699999960.0+"+queuetest.DigestIn(1, 4, 0)+".pck", 300)
	// slice 2: one in flight.
	writeFile(t, in, "1699999000.0+"+queuetest.DigestIn(2, 4, 7)+".bak", 5)
	// slice 3: three ready, the oldest exactly one hour old, 1 byte each.
	writeFile(t, in, "1699996400.0+"+lastIn(3, 4)+".pck", 1)
	writeFile(t, in, "1699996500.25+"+queuetest.DigestIn(3, 4, 1)+".pck", 1)
	writeFile(t, in, "1699999999.0+"+queuetest.DigestIn(3, 4, 2)+".pck", 1)
	// Not ready: a message being written, foreign and malformed names, a .psv in the wrong place.
	writeFile(t, in, "1699999999.0+"+queuetest.DigestIn(0, 4, 9)+".pck.tmp", 50)
	writeFile(t, in, "README", 1)
	writeFile(t, in, "notatime+"+queuetest.DigestIn(0, 4, 3)+".pck", 1)
	writeFile(t, in, "1699999999.0+ABCDEF.pck", 1)
	writeFile(t, in, "1699999999.0+"+queuetest.DigestIn(1, 4, 3)+".psv", 1)
	// shunt: two ready and one being unshunted, plus a stray file.
	writeFile(t, shunt, "1699990000.0+"+queuetest.DigestIn(0, 4, 0)+".pck", 1)
	writeFile(t, shunt, "1699990001.0+"+queuetest.DigestIn(1, 4, 0)+".pck", 1)
	writeFile(t, shunt, "1699990002.0+"+queuetest.DigestIn(2, 4, 0)+".bak", 1)
	writeFile(t, shunt, "stray", 1)
	// bad: three preserved, with qslice's reason sidecars (not counted).
	for i := range 3 {
		base := fmt.Sprintf("169999000%d.0+%s", i, queuetest.DigestIn(i, 4, 0))
		writeFile(t, bad, base+".psv", 1)
		writeFile(t, bad, base+queue.SuffixWhy, 1)
	}
	return QueueConfig{Name: "in", Dir: in, Slices: 4, ShuntDir: shunt, BadDir: bad}
}

func TestScanQueueCountsEverything(t *testing.T) {
	cfg := buildQueue(t, t.TempDir())
	// An in-flight file's age is measured from its ctime, set by the claim (here: the creation).
	matches, _ := filepath.Glob(filepath.Join(cfg.Dir, "*.bak"))
	claimed := testenv.FileCtime(t, matches[0])
	now := claimed.Add(90 * time.Second)

	q := ScanQueue(context.Background(), cfg, clock.NewFake(now))
	if q.Err != nil || len(q.Errors) != 0 {
		t.Fatalf("Err = %v, Errors = %v", q.Err, q.Errors)
	}
	if !q.HasData || !q.At.Equal(now) || q.Duration != 0 {
		t.Errorf("HasData %v At %v Duration %v", q.HasData, q.At, q.Duration)
	}
	want := []struct {
		ready     int
		bytes     int64
		oldest    time.Time
		inFlight  int
		claimTime time.Time
	}{
		{2, 30, time.Unix(1699999899, 5e8), 0, time.Time{}},
		{1, 300, time.Unix(1699999960, 0), 0, time.Time{}},
		{0, 0, time.Time{}, 1, claimed},
		{3, 3, time.Unix(1699996400, 0), 0, time.Time{}},
	}
	if len(q.PerSlice) != 4 {
		t.Fatalf("PerSlice has %d slices, want 4", len(q.PerSlice))
	}
	for i, w := range want {
		s := q.PerSlice[i]
		if s.Ready != w.ready || s.Bytes != w.bytes || !s.OldestReady.Equal(w.oldest) ||
			s.InFlight != w.inFlight || !s.OldestClaim.Equal(w.claimTime) {
			t.Errorf("slice %d = %+v, want %+v", i, s, w)
		}
	}
	if got := q.PerSlice[3].OldestReadyAge(now); got != now.Sub(time.Unix(1699996400, 0)) {
		t.Errorf("slice 3 oldest age = %v", got)
	}
	if got := q.PerSlice[2].OldestInFlightAge(now); got != 90*time.Second {
		t.Errorf("slice 2 oldest in-flight age = %v, want 90s", got)
	}
	if got := q.PerSlice[2].OldestReadyAge(now); got != 0 {
		t.Errorf("empty slice age = %v, want 0", got)
	}
	if q.Ready != 6 || q.InFlight != 1 || q.Bytes != 333 || q.Temp != 1 {
		t.Errorf("totals ready %d in flight %d bytes %d temp %d", q.Ready, q.InFlight, q.Bytes, q.Temp)
	}
	// README, two malformed names, the .psv and the subdirectory.
	if q.Ignored != 5 || len(q.IgnoredSome) != MaxIgnoredSample {
		t.Errorf("Ignored = %d %q, want 5", q.Ignored, q.IgnoredSome)
	}
	if !q.HasShunt || q.Shunt != 3 || !q.HasBad || q.Bad != 3 {
		t.Errorf("shunt %v %d bad %v %d, want 3 and 3", q.HasShunt, q.Shunt, q.HasBad, q.Bad)
	}
	if ready, claim := q.Oldest(); !ready.Equal(time.Unix(1699996400, 0)) || !claim.Equal(claimed) {
		t.Errorf("Oldest() = %v, %v", ready, claim)
	}

	// Without bytes the counts are the same and no ready file is stat'ed.
	cfg.NoBytes = true
	q2 := ScanQueue(context.Background(), cfg, clock.NewFake(now))
	if q2.Err != nil || q2.Ready != 6 || q2.Bytes != 0 || q2.PerSlice[2].InFlight != 1 || !q2.PerSlice[2].OldestClaim.Equal(claimed) {
		t.Errorf("NoBytes scan: err %v ready %d bytes %d slice 2 %+v", q2.Err, q2.Ready, q2.Bytes, q2.PerSlice[2])
	}
}

func TestScanQueueNeverModifies(t *testing.T) {
	cfg := buildQueue(t, t.TempDir())
	before := listTree(t, filepath.Dir(cfg.Dir))
	ScanQueue(context.Background(), cfg, clock.NewFake(t0))
	if after := listTree(t, filepath.Dir(cfg.Dir)); after != before {
		t.Errorf("tree changed:\n%s\nbecame\n%s", before, after)
	}
}

func listTree(t *testing.T, root string) string {
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d %v %v\n", p, fi.Size(), fi.ModTime().UnixNano(), fi.Mode())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Every slice count from 1 to MaxSlices works, including ones that are not powers of two: the
// first and last digest of every slice land in it.
func TestScanQueueSliceCounts(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 64, 1000, queue.MaxSlices} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			dir := t.TempDir()
			probe := []int{0, n / 2, n - 1}
			for _, i := range probe {
				writeFile(t, dir, "1699999000.0+"+queuetest.DigestIn(i, n, 0)+".pck", 1)
				writeFile(t, dir, "1699999001.0+"+lastIn(i, n)+".pck", 1)
			}
			q := ScanQueue(context.Background(), QueueConfig{Name: "q", Dir: dir, Slices: n}, clock.NewFake(t0))
			if q.Err != nil {
				t.Fatal(q.Err)
			}
			if len(q.PerSlice) != n {
				t.Fatalf("%d slices, want %d", len(q.PerSlice), n)
			}
			want := map[int]int{}
			for _, i := range probe {
				want[i] = 2
			}
			for i, s := range q.PerSlice {
				if s.Ready != want[i] {
					t.Errorf("slice %d: %d ready, want %d", i, s.Ready, want[i])
				}
			}
		})
	}
	for _, n := range []int{0, -1, queue.MaxSlices + 1} {
		q := ScanQueue(context.Background(), QueueConfig{Name: "q", Dir: t.TempDir(), Slices: n}, clock.NewFake(t0))
		if q.Err == nil || q.HasData {
			t.Errorf("slices %d: Err = %v, want a validation error", n, q.Err)
		}
	}
}

func TestScanQueueErrorsAreReported(t *testing.T) {
	root := t.TempDir()
	t.Run("missing", func(t *testing.T) {
		q := ScanQueue(context.Background(), QueueConfig{Name: "q", Dir: filepath.Join(root, "nope"), Slices: 1}, nil)
		if !errors.Is(q.Err, fs.ErrNotExist) || q.HasData {
			t.Fatalf("Err = %v", q.Err)
		}
		if !strings.Contains(q.Err.Error(), "nope") || !strings.Contains(q.Err.Error(), "check the path") {
			t.Errorf("error names neither the directory nor the remedy: %v", q.Err)
		}
	})
	t.Run("not a directory", func(t *testing.T) {
		writeFile(t, root, "file", 1)
		q := ScanQueue(context.Background(), QueueConfig{Name: "q", Dir: filepath.Join(root, "file"), Slices: 1}, nil)
		if q.Err == nil || !strings.Contains(q.Err.Error(), "not a directory") {
			t.Fatalf("Err = %v", q.Err)
		}
	})
	t.Run("missing shunt is not fatal", func(t *testing.T) {
		dir := filepath.Join(root, "in")
		mkdirs(t, dir)
		writeFile(t, dir, "1699999000.0+"+queuetest.DigestIn(0, 1, 0)+".pck", 1)
		q := ScanQueue(context.Background(), QueueConfig{Name: "q", Dir: dir, Slices: 1, ShuntDir: filepath.Join(root, "noshunt")}, nil)
		if q.Err != nil || q.Ready != 1 || q.HasShunt || len(q.Errors) != 1 || !errors.Is(q.Errors[0], fs.ErrNotExist) {
			t.Fatalf("Err %v ready %d HasShunt %v Errors %v", q.Err, q.Ready, q.HasShunt, q.Errors)
		}
	})
	t.Run("budget", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		q := ScanQueue(ctx, QueueConfig{Name: "q", Dir: root, Slices: 1}, nil)
		if !errors.Is(q.Err, ErrBudget) || !errors.Is(q.Err, context.Canceled) {
			t.Fatalf("Err = %v", q.Err)
		}
	})
}

func TestScanQueueVanishedFiles(t *testing.T) {
	dir := t.TempDir()
	for i := range 4 {
		writeFile(t, dir, fmt.Sprintf("1699999000.0+%s.pck", queuetest.DigestIn(0, 1, int64(i))), 1)
	}
	writeFile(t, dir, "1699999000.0+"+queuetest.DigestIn(0, 1, 9)+".bak", 1)
	// Between the listing and the stats, a runner claims one file and finishes another.
	hook := func([]dirEnt) {
		os.Rename(filepath.Join(dir, "1699999000.0+"+queuetest.DigestIn(0, 1, 0)+".pck"), filepath.Join(dir, "x.claimed"))
		os.Remove(filepath.Join(dir, "1699999000.0+"+queuetest.DigestIn(0, 1, 9)+".bak"))
	}
	q := scanQueueHook(context.Background(), QueueConfig{Name: "q", Dir: dir, Slices: 1}, clock.NewFake(t0), nil, hook)
	if q.Err != nil {
		t.Fatalf("vanishing files failed the scan: %v", q.Err)
	}
	if q.Ready != 3 || q.InFlight != 0 || q.Vanished != 2 {
		t.Errorf("ready %d in flight %d vanished %d, want 3 0 2", q.Ready, q.InFlight, q.Vanished)
	}
	if len(q.Errors) != 1 || !errors.Is(q.Errors[0], ErrVanished) {
		t.Errorf("Errors = %v, want one ErrVanished", q.Errors)
	}
}

func TestHint(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("open x: %w", fs.ErrNotExist), "check the path"},
		{&fs.PathError{Op: "open", Path: "x", Err: syscall.EACCES}, "sudo -u mailman"},
		{&fs.PathError{Op: "readdirent", Path: "x", Err: syscall.ESTALE}, "stale"},
		{fmt.Errorf("list x: %w", ErrBudget), "timeout"},
		{errors.New("other"), ""},
	} {
		if got := Hint(c.err); !strings.Contains(got, c.want) || (c.want == "" && got != "") {
			t.Errorf("Hint(%v) = %q, want it to contain %q", c.err, got, c.want)
		}
	}
}

// TestScanQueueProgress: the progress callback counts every name listed, rising chunk by chunk.
func TestScanQueueProgress(t *testing.T) {
	dir := t.TempDir()
	const files = 3000 // several getdents chunks
	for i := range files {
		writeFile(t, dir, fmt.Sprintf("1699999%03d.%d+%s.pck", i%1000, i, queuetest.DigestIn(i%4, 4, int64(i))), 0)
	}
	var calls []int
	q := ScanQueue(context.Background(), QueueConfig{Name: "q", Dir: dir, Slices: 4, NoBytes: true,
		Progress: func(n int) { calls = append(calls, n) }}, clock.NewFake(t0))
	if q.Err != nil {
		t.Fatal(q.Err)
	}
	if q.Ready != files {
		t.Fatalf("%d ready, want %d", q.Ready, files)
	}
	if len(calls) < 2 || calls[len(calls)-1] != files {
		t.Fatalf("progress calls %v: want several, the last = %d", calls, files)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i] <= calls[i-1] {
			t.Fatalf("progress went from %d to %d", calls[i-1], calls[i])
		}
	}
}

// TestScanQueueBytesCap: past BytesMaxFiles ready files a scan stops counting bytes, and says so;
// counts and ages stay complete; exactly at the cap the bytes are complete.
func TestScanQueueBytesCap(t *testing.T) {
	dir := t.TempDir()
	for i := range 10 {
		writeFile(t, dir, fmt.Sprintf("169999900%d.0+%s.pck", i, queuetest.DigestIn(i%2, 2, int64(i))), 100)
	}
	for _, c := range []struct {
		cap     int
		noBytes bool
		counted bool
		bytes   int64
	}{{0, false, true, 1000}, {10, false, true, 1000}, {9, false, false, 0}, {1, false, false, 0}, {0, true, false, 0}} {
		q := ScanQueue(context.Background(), QueueConfig{Name: "q", Dir: dir, Slices: 2, BytesMaxFiles: c.cap, NoBytes: c.noBytes}, clock.NewFake(t0))
		if q.Err != nil {
			t.Fatal(q.Err)
		}
		if q.BytesCounted != c.counted || q.Bytes != c.bytes || q.PerSlice[0].Bytes+q.PerSlice[1].Bytes != c.bytes {
			t.Errorf("cap %d, nobytes %v: counted %v, bytes %d (slices %d+%d), want %v, %d", c.cap, c.noBytes,
				q.BytesCounted, q.Bytes, q.PerSlice[0].Bytes, q.PerSlice[1].Bytes, c.counted, c.bytes)
		}
		if q.Ready != 10 || q.PerSlice[0].Ready != 5 || q.PerSlice[0].OldestReady.IsZero() {
			t.Errorf("cap %d: counts or ages incomplete: %d ready, slice 0 %+v", c.cap, q.Ready, q.PerSlice[0])
		}
	}
}

// TestScanQueueUnreadable: a directory the probe may not read gives a permission error with the
// remedy. Root reads any directory, so under root it runs as user nobody.
func TestScanQueueUnreadable(t *testing.T) {
	if testenv.Unprivileged(t) {
		return
	}
	root := t.TempDir()
	dir := filepath.Join(root, "locked")
	mkdirs(t, dir)
	os.Chmod(dir, 0)
	defer os.Chmod(dir, 0o755)
	q := ScanQueue(context.Background(), QueueConfig{Name: "q", Dir: dir, Slices: 1}, nil)
	if !errors.Is(q.Err, fs.ErrPermission) || !strings.Contains(q.Err.Error(), "sudo -u mailman") {
		t.Fatalf("Err = %v", q.Err)
	}
}
