//go:build linux

package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qslice/qslice/internal/clock"
)

// fakeClock is the shared manual clock, with this package's question about its timers.
type fakeClock struct{ *clock.Fake }

func newFakeClock() *fakeClock {
	return &fakeClock{clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))}
}

// hasPending reports whether a timer of duration d is waiting.
func (c *fakeClock) hasPending(d time.Duration) bool {
	return slices.Contains(c.Pending(), d)
}

// record is one captured log record with its attributes flattened.
type record struct {
	Level slog.Level
	Msg   string
	Attrs map[string]any
}

// recorder is a slog.Handler that keeps every record.
type recorder struct {
	mu    *sync.Mutex
	recs  *[]record
	attrs []slog.Attr
}

func newRecorder() *recorder {
	return &recorder{mu: new(sync.Mutex), recs: new([]record)}
}

func (h *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *recorder) Handle(_ context.Context, r slog.Record) error {
	rec := record{Level: r.Level, Msg: r.Message, Attrs: map[string]any{}}
	for _, a := range h.attrs {
		rec.Attrs[a.Key] = a.Value.Resolve().Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs[a.Key] = a.Value.Resolve().Any()
		return true
	})
	h.mu.Lock()
	*h.recs = append(*h.recs, rec)
	h.mu.Unlock()
	return nil
}

func (h *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{mu: h.mu, recs: h.recs, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *recorder) WithGroup(string) slog.Handler { return h }

func (h *recorder) records() []record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.recs)
}

func (h *recorder) dump(t *testing.T) {
	for _, r := range h.records() {
		t.Logf("%s %q %v", r.Level, r.Msg, r.Attrs)
	}
}

// waitFor polls cond every few milliseconds until it holds or timeout ends.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond) // poll interval, not a wait for an event
	}
}

// pidExists reports whether pid names a process that can still run: kill(pid,
// 0) succeeds and it is not a zombie. (Where init does not reap orphans, as in
// some containers, an exited orphan stays a zombie forever.)
func pidExists(pid int) bool {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	state, _, ok := parseStat(b)
	return !ok || (state != 'Z' && state != 'X')
}

// waitGonePids polls until none of pids exists.
func waitGonePids(t *testing.T, timeout time.Duration, pids ...int) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("pids %v to be gone", pids), func() bool {
		for _, p := range pids {
			if pidExists(p) {
				return false
			}
		}
		return true
	})
}

// running starts s.Run and stops it when the test ends.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func startRun(t *testing.T, s *Supervisor) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(60 * time.Second):
			t.Errorf("Run did not return within 60s of cancel")
		}
	})
	return r
}

// stop cancels Run and waits for it to return.
func (r *running) stop(t *testing.T, timeout time.Duration) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(timeout):
		t.Fatalf("Run did not return within %v of cancel", timeout)
		return nil
	}
}

// waitClosed waits for a release channel.
func waitClosed(t *testing.T, ch <-chan struct{}, timeout time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-ch:
		return time.Since(start)
	case <-time.After(timeout):
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
		return 0
	}
}

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

// readInts reads the whitespace-separated integers of a file, nil if it does
// not exist yet.
func readInts(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		out = append(out, n)
	}
	return out
}

func lines(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func fileIn(dir, name string) string { return filepath.Join(dir, name) }

func workerOf(snap Snapshot, slice int) (WorkerStats, bool) {
	for _, w := range snap.Workers {
		if w.Slice == slice {
			return w, true
		}
	}
	return WorkerStats{}, false
}
