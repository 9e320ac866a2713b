//go:build linux

package supervise

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Worker scripts are bounded: every one ends by itself after at most 300s,
// long after any test would have stopped it.

func newTestSupervisor(t *testing.T, n int, cfg Config, opts ...Option) (*Supervisor, *recorder) {
	t.Helper()
	rec := newRecorder()
	s, err := New("out", n, cfg, slog.New(rec), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			rec.dump(t)
		}
	})
	return s, rec
}

func TestWidenStartsWorkers(t *testing.T) {
	dir := t.TempDir()
	for i := range 3 {
		if err := os.Mkdir(fileIn(dir, fmt.Sprintf("work-%d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{
		Command: sh(`echo "$$ {queue} {slice} {slices} $QSLICE_QUEUE $QSLICE_SLICE $QSLICE_SLICES $FOO $(basename "$(pwd)")" > "$OUT/start-{slice}.tmp" && ` +
			`mv "$OUT/start-{slice}.tmp" "$OUT/start-{slice}"; exec sleep 300`),
		Env: map[string]string{"OUT": dir, "FOO": "foo-{slice}"},
		Dir: fileIn(dir, "work-{slice}"),
	}
	s, _ := newTestSupervisor(t, 3, cfg)
	s.SetSlices([]int{0, 2}) // before Run: takes effect when Run starts
	r := startRun(t, s)

	waitFor(t, 10*time.Second, "workers of slices 0 and 2", func() bool {
		return len(lines(fileIn(dir, "start-0"))) == 1 && len(lines(fileIn(dir, "start-2"))) == 1
	})
	for _, i := range []int{0, 2} {
		f := strings.Fields(lines(fileIn(dir, fmt.Sprintf("start-%d", i)))[0])
		want := fmt.Sprintf("out %d 3 out %d 3 foo-%d work-%d", i, i, i, i)
		if got := strings.Join(f[1:], " "); got != want {
			t.Errorf("slice %d worker saw %q, want %q", i, got, want)
		}
		w, _ := workerOf(s.Snapshot(), i)
		if fmt.Sprint(w.PID) != f[0] || !w.Up || !w.Owned || w.StartsTotal != 1 || w.RestartsTotal != 0 {
			t.Errorf("slice %d snapshot = %+v, worker pid %s", i, w, f[0])
		}
	}
	if _, err := os.Stat(fileIn(dir, "start-1")); err == nil {
		t.Error("slice 1 has a worker but is not owned")
	}
	waitFor(t, 5*time.Second, "health passing", func() bool {
		h := s.Health()
		return len(h) == 2 && h[0].State == HealthPassing && h[2].State == HealthPassing
	})

	pid0 := s.Snapshot().Workers[0].PID
	if ch := s.SetSlices([]int{0, 1, 2}); !isClosed(ch) {
		t.Error("widening returned an open release channel")
	}
	waitFor(t, 10*time.Second, "worker of slice 1", func() bool { return len(lines(fileIn(dir, "start-1"))) == 1 })
	if got := s.Snapshot().Workers[0].PID; got != pid0 {
		t.Errorf("widening restarted slice 0: pid %d -> %d", pid0, got)
	}
	if err := r.stop(t, 30*time.Second); err != nil {
		t.Errorf("Run() = %v", err)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestNarrowStopsWithStopSignal(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{
		// The worker records the signal it got and exits 0; the grace is far
		// longer than the test, so a release proves the signal stopped it.
		// (The trap also SIGKILLs the child: a child forked just as the
		// signal arrives can catch it with the handler it inherited from sh,
		// and would then live until the grace is over.)
		Command: sh(`trap 'kill -9 $! 2>/dev/null; echo usr1 > "$OUT/sig-{slice}"; exit 0' USR1; ` +
			`echo $$ > "$OUT/pid-{slice}"; sleep 300 & wait`),
		Env:        map[string]string{"OUT": dir},
		StopSignal: syscall.SIGUSR1,
		Grace:      5 * time.Minute,
	}
	s, _ := newTestSupervisor(t, 2, cfg)
	startRun(t, s)
	s.SetSlices([]int{0, 1})
	waitFor(t, 10*time.Second, "both workers up", func() bool {
		snap := s.Snapshot()
		return len(snap.Workers) == 2 && snap.Workers[0].Up && snap.Workers[1].Up &&
			len(readInts(t, fileIn(dir, "pid-0"))) == 1 && len(readInts(t, fileIn(dir, "pid-1"))) == 1
	})
	pid1 := readInts(t, fileIn(dir, "pid-1"))[0]

	waitClosed(t, s.SetSlices([]int{0}), 30*time.Second, "release of slice 1")
	if pidExists(pid1) {
		t.Errorf("slice 1 released but its worker %d still exists", pid1)
	}
	if got := lines(fileIn(dir, "sig-1")); len(got) != 1 || got[0] != "usr1" {
		t.Errorf("slice 1 worker recorded %q, want the stop signal usr1", got)
	}
	if _, err := os.Stat(fileIn(dir, "sig-0")); err == nil {
		t.Error("slice 0 worker was signalled")
	}
	snap := s.Snapshot()
	w0, _ := workerOf(snap, 0)
	w1, _ := workerOf(snap, 1)
	if !w0.Up || !w0.Owned {
		t.Errorf("slice 0 = %+v, want up and owned", w0)
	}
	if w1.Up || w1.Owned || !w1.Exited || w1.LastExitCode != 0 || w1.UnexpectedExitsTotal != 0 || w1.RestartsTotal != 0 {
		t.Errorf("slice 1 = %+v, want stopped with exit 0 and no restart", w1)
	}
	if h := s.Health(); len(h) != 1 || h[0].State != HealthPassing {
		t.Errorf("Health() = %v, want only slice 0, passing", h)
	}
}

func TestNarrowKillsProcessGroupAfterGrace(t *testing.T) {
	const grace = 400 * time.Millisecond
	tests := []struct {
		name     string
		script   string
		wantCode int
	}{
		{
			// Leader and child both ignore SIGTERM: SIGKILL after the grace.
			name:     "leader and child ignore SIGTERM",
			script:   `trap '' TERM; sleep 300 & echo "$$ $!" > "$OUT/pids"; wait`,
			wantCode: 128 + int(syscall.SIGKILL),
		},
		{
			// The leader honours SIGTERM, its child does not: the slice is
			// released only when the child is gone, after the grace.
			name: "child outlives leader",
			// The pids are written once both traps are in place.
			script: `trap 'exit 0' TERM; (trap '' TERM; : > "$OUT/ready"; exec sleep 300) & ` +
				`i=0; while [ ! -e "$OUT/ready" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; ` +
				`echo "$$ $!" > "$OUT/pids"; wait`,
			wantCode: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{Command: sh(tt.script), Env: map[string]string{"OUT": dir}, Grace: grace}
			s, _ := newTestSupervisor(t, 1, cfg)
			startRun(t, s)
			s.SetSlices([]int{0})
			waitFor(t, 10*time.Second, "worker pids", func() bool { return len(readInts(t, fileIn(dir, "pids"))) == 2 })
			pids := readInts(t, fileIn(dir, "pids"))

			took := waitClosed(t, s.SetSlices(nil), 30*time.Second, "release")
			for _, p := range pids {
				if pidExists(p) {
					t.Errorf("released, but process %d of the worker's group still exists", p)
				}
			}
			if took < grace {
				t.Errorf("released after %v, before the grace period of %v", took, grace)
			}
			w, _ := workerOf(s.Snapshot(), 0)
			if w.Up || w.LastExitCode != tt.wantCode || w.UnexpectedExitsTotal != 0 {
				t.Errorf("snapshot = %+v, want down with exit code %d", w, tt.wantCode)
			}
		})
	}
}

func TestRestartAfterCrashWithBackoff(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	cfg := Config{
		Command:            sh(`echo $$ >> "$OUT/starts"; exit 3`),
		Env:                map[string]string{"OUT": dir},
		Grace:              time.Minute,
		RestartBackoff:     Backoff{Initial: time.Hour, Max: 8 * time.Hour, Multiplier: 2, Jitter: NoJitter},
		CrashLoopThreshold: 100,
		CrashLoopWindow:    10000 * time.Hour,
		StableAfter:        1000 * time.Hour,
	}
	s, _ := newTestSupervisor(t, 1, cfg, WithClock(clk))
	startRun(t, s)
	s.SetSlices([]int{0})

	// Each crash is followed by a restart delay of 1h, 2h, 4h, 8h, 8h (capped).
	for n, delay := range []time.Duration{time.Hour, 2 * time.Hour, 4 * time.Hour, 8 * time.Hour, 8 * time.Hour} {
		waitFor(t, 10*time.Second, fmt.Sprintf("crash %d and a %v backoff timer", n+1, delay), func() bool {
			w, _ := workerOf(s.Snapshot(), 0)
			return w.UnexpectedExitsTotal == uint64(n+1) && clk.hasPending(delay)
		})
		w, _ := workerOf(s.Snapshot(), 0)
		if w.StartsTotal != uint64(n+1) || w.RestartsTotal != uint64(n) || w.Up || w.LastExitCode != 3 {
			t.Fatalf("after crash %d: %+v", n+1, w)
		}
		if got := len(lines(fileIn(dir, "starts"))); got != n+1 {
			t.Fatalf("after crash %d the worker ran %d times", n+1, got)
		}
		h := s.Health()[0]
		if h.State != HealthWarning || !strings.Contains(h.Reason, "exit status 3") ||
			!strings.Contains(h.Reason, "restart in "+delay.String()) {
			t.Fatalf("health after crash %d = %+v", n+1, h)
		}
		// Short of the delay, nothing restarts: the timer is still pending.
		clk.Advance(delay - time.Minute)
		if !clk.hasPending(delay) || s.Snapshot().Workers[0].StartsTotal != uint64(n+1) {
			t.Fatalf("restarted before the backoff of %v was over", delay)
		}
		clk.Advance(time.Minute)
	}
	waitFor(t, 10*time.Second, "sixth start", func() bool { return s.Snapshot().Workers[0].StartsTotal == 6 })
}

func TestCrashLoopCriticalThenStable(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	cfg := Config{
		// Crashes on its first three starts, then runs.
		Command: sh(`echo $$ >> "$OUT/starts"; n=$(wc -l < "$OUT/starts"); ` +
			`if [ "$n" -le 3 ]; then echo "boom $n" >&2; exit 1; fi; exec sleep 300`),
		Env:                map[string]string{"OUT": dir},
		Grace:              time.Minute,
		RestartBackoff:     Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 1, Jitter: NoJitter},
		CrashLoopThreshold: 3,
		CrashLoopWindow:    10 * time.Hour,
		StableAfter:        5 * time.Hour,
	}
	s, rec := newTestSupervisor(t, 1, cfg, WithClock(clk))
	startRun(t, s)
	s.SetSlices([]int{0})
	for n := 1; n <= 3; n++ {
		waitFor(t, 10*time.Second, fmt.Sprintf("crash %d", n), func() bool {
			w, _ := workerOf(s.Snapshot(), 0)
			return w.UnexpectedExitsTotal == uint64(n) && clk.hasPending(time.Hour)
		})
		h := s.Health()[0]
		if n < 3 && h.State != HealthWarning {
			t.Fatalf("health after %d crashes = %+v, want warning", n, h)
		}
		if n == 3 {
			want := "crash loop: worker exited 3 times within 10h0m0s; last: exit status 1"
			if h.State != HealthCritical || h.Reason != want {
				t.Fatalf("health after 3 crashes = %+v, want critical %q", h, want)
			}
		}
		clk.Advance(time.Hour)
	}
	// The fourth worker runs; the slice stays critical until it has run
	// for StableAfter.
	waitFor(t, 10*time.Second, "fourth worker up with its stable timer", func() bool {
		w, _ := workerOf(s.Snapshot(), 0)
		return w.Up && w.StartsTotal == 4 && clk.hasPending(5*time.Hour)
	})
	if h := s.Health()[0]; h.State != HealthCritical {
		t.Fatalf("health of a restarted crash-looping worker = %+v, want still critical", h)
	}
	clk.Advance(5*time.Hour - time.Minute)
	if h := s.Health()[0]; h.State != HealthCritical {
		t.Fatalf("health before StableAfter = %+v, want critical", h)
	}
	clk.Advance(time.Minute)
	waitFor(t, 10*time.Second, "passing after a stable run", func() bool { return s.Health()[0].State == HealthPassing })
	w, _ := workerOf(s.Snapshot(), 0)
	if w.RestartsTotal != 3 || w.UnexpectedExitsTotal != 3 || w.LastExitCode != 1 {
		t.Errorf("snapshot = %+v", w)
	}
	// The crashing workers' stderr reached the log with its fields.
	var boom []string
	for _, r := range rec.records() {
		if r.Msg == "worker output" && r.Attrs["stream"] == "stderr" {
			boom = append(boom, r.Attrs["line"].(string))
			if r.Attrs["queue"] != "out" || r.Attrs["slice"] != int64(0) {
				t.Errorf("output record without queue/slice: %v", r.Attrs)
			}
		}
	}
	if !slices.Equal(boom, []string{"boom 1", "boom 2", "boom 3"}) {
		t.Errorf("stderr lines = %q", boom)
	}
}

func TestStartFailureCounts(t *testing.T) {
	clk := newFakeClock()
	cfg := Config{
		Command:            []string{"/nonexistent/qslice-worker"},
		RestartBackoff:     Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 1, Jitter: NoJitter},
		CrashLoopThreshold: 2,
		CrashLoopWindow:    10 * time.Hour,
	}
	s, _ := newTestSupervisor(t, 1, cfg, WithClock(clk))
	startRun(t, s)
	s.SetSlices([]int{0})
	waitFor(t, 10*time.Second, "first failed start", func() bool { return clk.hasPending(time.Hour) })
	clk.Advance(time.Hour)
	waitFor(t, 10*time.Second, "critical", func() bool { return s.Health()[0].State == HealthCritical })
	w, _ := workerOf(s.Snapshot(), 0)
	if w.LastExitCode != -1 || w.UnexpectedExitsTotal != 2 || w.RestartsTotal != 1 || w.Up ||
		!strings.Contains(w.Health.Reason, "no such file or directory") {
		t.Errorf("snapshot = %+v", w)
	}
}

func TestKilledWorkerComesBack(t *testing.T) {
	cfg := Config{
		Command:        []string{"sleep", "300"},
		RestartBackoff: Backoff{Initial: 10 * time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 1, Jitter: NoJitter},
	}
	s, _ := newTestSupervisor(t, 2, cfg)
	startRun(t, s)
	s.SetSlices([]int{0, 1})
	waitFor(t, 10*time.Second, "workers up", func() bool {
		snap := s.Snapshot()
		return len(snap.Workers) == 2 && snap.Workers[0].Up && snap.Workers[1].Up
	})
	old := s.Snapshot().Workers[1].PID
	other := s.Snapshot().Workers[0].PID
	if err := unix.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "slice 1 worker back", func() bool {
		w := s.Snapshot().Workers[1]
		return w.Up && w.PID != old
	})
	w := s.Snapshot().Workers[1]
	if w.RestartsTotal != 1 || w.UnexpectedExitsTotal != 1 || w.LastExitCode != 137 || w.LastExitSignal != "SIGKILL" {
		t.Errorf("slice 1 after SIGKILL = %+v", w)
	}
	if pidExists(old) {
		t.Errorf("killed worker %d still exists", old)
	}
	if got := s.Snapshot().Workers[0]; got.PID != other || got.RestartsTotal != 0 {
		t.Errorf("slice 0 was disturbed: %+v", got)
	}
}

func TestReaddWaitsForOldWorker(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{
		// The worker takes a while to stop, so that re-adding the slice
		// happens while the old worker is still there. (kill -9: see
		// TestNarrowStopsWithStopSignal.)
		Command: sh(`trap 'kill -9 $! 2>/dev/null; sleep 0.3; echo "stop $$" >> "$OUT/events"; exit 0' TERM; ` +
			`echo "start $$" >> "$OUT/events"; sleep 300 & wait`),
		Env:   map[string]string{"OUT": dir},
		Grace: time.Minute,
	}
	s, _ := newTestSupervisor(t, 1, cfg)
	startRun(t, s)
	s.SetSlices([]int{0})
	waitFor(t, 10*time.Second, "first worker", func() bool { return len(lines(fileIn(dir, "events"))) == 1 })
	released := s.SetSlices(nil)
	s.SetSlices([]int{0})
	waitClosed(t, released, 30*time.Second, "release of the first worker")
	waitFor(t, 10*time.Second, "second worker", func() bool { return len(lines(fileIn(dir, "events"))) == 3 })
	ev := lines(fileIn(dir, "events"))
	var a, b string
	if len(ev) != 3 || !strings.HasPrefix(ev[0], "start ") || ev[1] != "stop "+strings.TrimPrefix(ev[0], "start ") ||
		!strings.HasPrefix(ev[2], "start ") {
		t.Fatalf("events = %q, want start A, stop A, start B", ev)
	}
	a, b = strings.TrimPrefix(ev[0], "start "), strings.TrimPrefix(ev[2], "start ")
	if a == b {
		t.Errorf("events %q: one pid started twice", ev)
	}
	waitFor(t, 10*time.Second, "snapshot of the second worker", func() bool {
		return fmt.Sprint(s.Snapshot().Workers[0].PID) == b
	})
}

func TestCancelStopsEverything(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{
		// Even slices stop on SIGTERM; odd ones ignore it, children too.
		Command: sh(`if [ $(({slice} % 2)) = 1 ]; then trap '' TERM; fi; ` +
			`sleep 300 & c1=$!; sleep 300 & echo "$$ $c1 $!" > "$OUT/pids-{slice}"; wait`),
		Env:   map[string]string{"OUT": dir},
		Grace: 300 * time.Millisecond,
	}
	s, _ := newTestSupervisor(t, 4, cfg)
	r := startRun(t, s)
	s.SetSlices([]int{0, 1, 2, 3})
	var pids []int
	waitFor(t, 10*time.Second, "all workers", func() bool {
		pids = pids[:0]
		for i := range 4 {
			p := readInts(t, fileIn(dir, fmt.Sprintf("pids-%d", i)))
			if len(p) != 3 {
				return false
			}
			pids = append(pids, p...)
		}
		return true
	})
	for _, p := range pids {
		if !pidExists(p) {
			t.Fatalf("process %d is not running before cancel", p)
		}
	}
	start := time.Now()
	if err := r.stop(t, 30*time.Second); err != nil {
		t.Fatalf("Run() = %v", err)
	}
	took := time.Since(start)
	// Run returns only when every group is gone: nothing may be left now.
	for _, p := range pids {
		if pidExists(p) {
			t.Errorf("process %d still exists after Run returned", p)
		}
	}
	waitGonePids(t, 5*time.Second, pids...)
	if took < cfg.Grace {
		t.Errorf("Run returned after %v, before the grace of %v for the SIGTERM-ignoring workers", took, cfg.Grace)
	}
	for _, w := range s.Snapshot().Workers {
		if w.Up || w.PID != 0 {
			t.Errorf("after Run: %+v", w)
		}
	}
	// After Run, SetSlices has nothing to wait for.
	if !isClosed(s.SetSlices(nil)) {
		t.Error("SetSlices after Run returned an open channel")
	}
	if err := s.Run(t.Context()); !errors.Is(err, ErrAlreadyRun) {
		t.Errorf("second Run() = %v, want ErrAlreadyRun", err)
	}
}

func TestWorkerOutputLines(t *testing.T) {
	cfg := Config{
		Command:      sh(`echo out-line; echo err-line >&2; printf '%s\n' 0123456789abcdefXYZ; printf 'no-newline'; exec sleep 300`),
		MaxLineBytes: 16,
	}
	s, rec := newTestSupervisor(t, 4, cfg)
	startRun(t, s)
	s.SetSlices([]int{3})
	want := map[string]string{"out-line": "stdout", "err-line": "stderr", "0123456789abcdef": "stdout", "no-newline": "stdout"}
	var got map[string]record
	waitFor(t, 10*time.Second, "worker output", func() bool {
		got = map[string]record{}
		for _, r := range rec.records() {
			if r.Msg == "worker output" {
				got[r.Attrs["line"].(string)] = r
			}
		}
		return len(got) >= len(want)-1
	})
	// "no-newline" arrives at EOF only, which stopping brings; it is logged
	// before the slice is released.
	pid := s.Snapshot().Workers[0].PID
	waitClosed(t, s.SetSlices(nil), 30*time.Second, "release")
	got = map[string]record{}
	for _, r := range rec.records() {
		if r.Msg == "worker output" {
			got[r.Attrs["line"].(string)] = r
		}
	}
	for line, stream := range want {
		r, ok := got[line]
		if !ok {
			t.Errorf("line %q not logged; got %v", line, got)
			continue
		}
		if r.Attrs["stream"] != stream || r.Attrs["queue"] != "out" || r.Attrs["slice"] != int64(3) || r.Attrs["pid"] != int64(pid) {
			t.Errorf("line %q attrs = %v", line, r.Attrs)
		}
	}
	if d := got["0123456789abcdef"].Attrs["truncated_bytes"]; d != int64(3) {
		t.Errorf("truncated_bytes = %v, want 3", d)
	}
}

func TestSetSlicesOutOfRange(t *testing.T) {
	s, rec := newTestSupervisor(t, 2, Config{Command: []string{"sleep", "300"}})
	if !isClosed(s.SetSlices([]int{-1, 2, 1, 1})) {
		t.Fatal("release channel open")
	}
	h := s.Health()
	if len(h) != 1 || h[1].State != HealthWarning || h[1].Reason != "worker not running yet" {
		t.Errorf("Health() = %v", h)
	}
	found := false
	for _, r := range rec.records() {
		if r.Level == slog.LevelError && strings.Contains(r.Msg, "out of range") {
			found = fmt.Sprint(r.Attrs["invalid"]) == "[-1 2]"
		}
	}
	if !found {
		t.Errorf("no error logged for slices -1 and 2: %v", rec.records())
	}
}

func TestWorkerRunsAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("switching users needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	cfg := Config{
		Command: sh(`echo "ids $(id -u) $(id -g)"; exec sleep 300`),
		User:    "nobody",
	}
	s, rec := newTestSupervisor(t, 1, cfg)
	startRun(t, s)
	s.SetSlices([]int{0})
	want := fmt.Sprintf("ids %s %s", nobody.Uid, nobody.Gid)
	waitFor(t, 10*time.Second, "worker output "+want, func() bool {
		for _, r := range rec.records() {
			if r.Msg == "worker output" && r.Attrs["line"] == want {
				return true
			}
		}
		return false
	})
	// The stop signal still reaches a worker of another user.
	pid := s.Snapshot().Workers[0].PID
	waitClosed(t, s.SetSlices(nil), 30*time.Second, "release")
	if pidExists(pid) {
		t.Errorf("worker %d survived", pid)
	}
}
