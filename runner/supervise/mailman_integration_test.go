//go:build linux

package supervise

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The integration test runs GNU Mailman 3's own runner (Debian package
// mailman3) under the supervisor, for the out queue in 4 slices, and feeds it
// with Mailman's own switchboard.
//
// Messages carry the list-id of a list that does not exist, so the runner's
// base class takes them off the out queue, logs `<message-id> runner "out"
// shunting message for missing list` with its pid, and moves them to the
// shunt queue. That needs no MTA, no list and no database server (SQLite in
// the temporary directory), and the log line tells which runner process
// consumed which message.

// mailmanRunnerPath is where Debian installs the runner; QSLICE_MAILMAN_RUNNER
// overrides it.
const mailmanRunnerPath = "/usr/lib/mailman3/bin/runner"

const mailmanSlices = 4

// enqueueScript enqueues messages with Mailman's own Switchboard and prints
// "<filebase> <message-id>" for each.
const enqueueScript = `
import sys
from mailman.core.initialize import initialize
initialize(sys.argv[1])
from mailman.config import config
from mailman.email.message import Message
sb = config.switchboards[sys.argv[2]]
start, count = int(sys.argv[3]), int(sys.argv[4])
for i in range(start, start + count):
    msg = Message()
    msg['From'] = 'qslice-test@example.com'
    msg['To'] = 'nolist@example.com'
    msg['Message-ID'] = '<qslice-%d@example.com>' % i
    msg['Subject'] = 'qslice test %d' % i
    msg.set_payload('test message %d\n' % i)
    filebase = sb.enqueue(msg, listid='nolist.example.com')
    print(filebase, msg['message-id'], flush=True)
`

type mailmanEnv struct {
	runner  string
	python  string
	dir     string
	cfg     string
	queue   string // queue directory of out
	logFile string
	helper  string
}

func setupMailman(t *testing.T, instances int) *mailmanEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping the Mailman integration test in -short mode")
	}
	runner := os.Getenv("QSLICE_MAILMAN_RUNNER")
	if runner == "" {
		runner = mailmanRunnerPath
	}
	f, err := os.Open(runner)
	if err != nil {
		t.Skipf("GNU Mailman 3 runner not found (%v): install the Debian package mailman3 "+
			"or set QSLICE_MAILMAN_RUNNER to its bin/runner", err)
	}
	// The runner is a Python script; its interpreter is the one that can
	// import mailman, which the enqueue helper needs as well.
	first, _ := bufio.NewReader(f).ReadString('\n')
	f.Close()
	python := strings.TrimSpace(strings.TrimPrefix(first, "#!"))
	if !strings.HasPrefix(first, "#!") || strings.ContainsAny(python, " \t") {
		t.Skipf("cannot tell the Python interpreter of %s from its first line %q", runner, first)
	}
	if out, err := exec.Command(python, "-c", "import mailman.core.switchboard").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import mailman: %v\n%s", python, err, out)
	}
	dir := t.TempDir()
	e := &mailmanEnv{
		runner:  runner,
		python:  python,
		dir:     dir,
		cfg:     filepath.Join(dir, "mailman.cfg"),
		queue:   filepath.Join(dir, "var", "queue", "out"),
		logFile: filepath.Join(dir, "var", "logs", "mailman.log"),
		helper:  filepath.Join(dir, "enqueue.py"),
	}
	// The minimum: a layout whose var_dir (and so queue, log, lock, data
	// directories and the SQLite database) is under dir; `instances` is where
	// the runner takes its slice count from; a short sleep_time speeds up
	// the polling of the queue directory. `start: no`, which keeps Mailman's
	// master from starting these runners (docs/mailman.md), must not stop
	// the runner program itself.
	cfg := fmt.Sprintf(`[mailman]
layout: qslicetest

[paths.qslicetest]
var_dir: %s

[runner.out]
instances: %d
start: no
sleep_time: 0.1s
`, filepath.Join(dir, "var"), instances)
	if err := os.WriteFile(e.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.helper, []byte(enqueueScript), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// queued is one message in Mailman's out queue.
type queued struct {
	filebase string
	msgid    string
	slice    int
}

// enqueue adds count messages numbered from start.
func (e *mailmanEnv) enqueue(ctx context.Context, t *testing.T, start, count int) []queued {
	t.Helper()
	cmd := exec.CommandContext(ctx, e.python, e.helper, e.cfg, "out", strconv.Itoa(start), strconv.Itoa(count))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("enqueue with Mailman's switchboard: %v\n%s", err, stderr.String())
	}
	var qs []queued
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("enqueue helper printed %q", line)
		}
		qs = append(qs, queued{filebase: f[0], msgid: f[1], slice: sliceOfFilebase(t, f[0], mailmanSlices)})
	}
	if len(qs) != count {
		t.Fatalf("enqueued %d messages, want %d", len(qs), count)
	}
	return qs
}

// enqueueCovering enqueues batches of count until every slice in need has
// at least min messages (bounded: a slice gets a message with probability
// 1/4 each time).
func (e *mailmanEnv) enqueueCovering(ctx context.Context, t *testing.T, next *int, count, min int, need ...int) []queued {
	t.Helper()
	var all []queued
	for range 4 {
		all = append(all, e.enqueue(ctx, t, *next, count)...)
		*next += count
		per := make([]int, mailmanSlices)
		for _, q := range all {
			per[q.slice]++
		}
		if !slices.ContainsFunc(need, func(i int) bool { return per[i] < min }) {
			return all
		}
	}
	t.Fatalf("4 batches of %d messages did not put %d in each of slices %v", count, min, need)
	return nil
}

// sliceOfFilebase computes the slice of "<when>+<40 hex digits>" with
// qslice's formula: slice i of n is [floor(2^160*i/n), floor(2^160*(i+1)/n)).
func sliceOfFilebase(t *testing.T, filebase string, n int) int {
	t.Helper()
	_, hexDigest, ok := strings.Cut(filebase, "+")
	d, ok2 := new(big.Int).SetString(hexDigest, 16)
	if !ok || !ok2 || len(hexDigest) != 40 {
		t.Fatalf("not a Mailman queue file name: %q", filebase)
	}
	space := new(big.Int).Lsh(big.NewInt(1), 160)
	bound := func(i int) *big.Int {
		return new(big.Int).Div(new(big.Int).Mul(space, big.NewInt(int64(i))), big.NewInt(int64(n)))
	}
	for i := range n {
		if bound(i).Cmp(d) <= 0 && d.Cmp(bound(i+1)) < 0 {
			return i
		}
	}
	t.Fatalf("digest %s in no slice", hexDigest)
	return -1
}

// present returns the filebases in the out queue, ready (.pck) or in
// flight (.bak).
func (e *mailmanEnv) present(t *testing.T) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(e.queue)
	if err != nil {
		t.Fatalf("read queue: %v", err)
	}
	m := map[string]string{}
	for _, en := range entries {
		name := en.Name()
		if ext := filepath.Ext(name); ext == ".pck" || ext == ".bak" {
			m[strings.TrimSuffix(name, ext)] = ext
		}
	}
	return m
}

var shuntLine = regexp.MustCompile(`\((\d+)\) (<qslice-\d+@example\.com>) runner "out" shunting message for missing list`)

// consumers reads Mailman's log: message-id -> pids of the runners that
// consumed it.
func (e *mailmanEnv) consumers(t *testing.T) map[string][]int {
	t.Helper()
	b, err := os.ReadFile(e.logFile)
	if err != nil {
		return nil
	}
	m := map[string][]int{}
	for _, sub := range shuntLine.FindAllStringSubmatch(string(b), -1) {
		pid, _ := strconv.Atoi(sub[1])
		m[sub[2]] = append(m[sub[2]], pid)
	}
	return m
}

func (e *mailmanEnv) logText() string {
	b, _ := os.ReadFile(e.logFile)
	return string(b)
}

// pidSlices maps every worker pid the supervisor started to its slice.
func pidSlices(rec *recorder) map[int]int {
	m := map[int]int{}
	for _, r := range rec.records() {
		if r.Msg == "worker started" {
			m[int(r.Attrs["pid"].(int64))] = int(r.Attrs["slice"].(int64))
		}
	}
	return m
}

// checkConsumed asserts that every message of qs was consumed exactly once,
// by a runner of its own slice.
func checkConsumed(t *testing.T, e *mailmanEnv, rec *recorder, qs []queued) {
	t.Helper()
	cons := e.consumers(t)
	owner := pidSlices(rec)
	for _, q := range qs {
		pids := cons[q.msgid]
		if len(pids) != 1 {
			t.Errorf("message %s (slice %d) consumed by pids %v, want exactly one runner", q.msgid, q.slice, pids)
			continue
		}
		got, ok := owner[pids[0]]
		if !ok || got != q.slice {
			t.Errorf("message %s of slice %d consumed by pid %d, a runner of slice %d (known %v)",
				q.msgid, q.slice, pids[0], got, ok)
		}
	}
}

// waitConsumed waits until none of qs is in the queue any more.
func waitConsumed(t *testing.T, e *mailmanEnv, qs []queued, what string) {
	t.Helper()
	waitFor(t, 90*time.Second, what, func() bool {
		p := e.present(t)
		for _, q := range qs {
			if _, ok := p[q.filebase]; ok {
				return false
			}
		}
		return true
	})
}

func bySlice(qs []queued, keep ...int) []queued {
	var out []queued
	for _, q := range qs {
		if slices.Contains(keep, q.slice) {
			out = append(out, q)
		}
	}
	return out
}

func TestMailmanRunnerIntegration(t *testing.T) {
	e := setupMailman(t, mailmanSlices)
	// Under load (packages tested in parallel on a shared machine) the run takes over 4 minutes:
	// Python starts slowly. The bound is a safety net, not a performance check.
	ctx, cancel := context.WithTimeout(t.Context(), 9*time.Minute)
	defer cancel()

	rec := newRecorder()
	t.Cleanup(func() {
		if t.Failed() {
			rec.dump(t)
			t.Logf("mailman.log:\n%s", e.logText())
		}
	})
	cfg := Config{
		Command: []string{e.runner, "-C", e.cfg, "--runner={queue}:{slice}:{slices}"},
		Dir:     e.dir,
		Grace:   30 * time.Second,
		RestartBackoff: Backoff{Initial: 100 * time.Millisecond, Max: time.Second,
			Multiplier: 2, Jitter: NoJitter},
	}
	s, err := New("out", mailmanSlices, cfg, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}

	// Messages of every slice wait in the queue; the enqueue also creates
	// Mailman's database, before any runner starts.
	next := 0
	batchA := e.enqueueCovering(ctx, t, &next, 40, 2, 0, 1, 2, 3)

	// 1. Only slice 2 is owned: exactly its messages go, by its runner.
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- s.Run(runCtx) }()
	t.Cleanup(func() {
		stopRun()
		<-runDone
	})
	s.SetSlices([]int{2})
	waitConsumed(t, e, bySlice(batchA, 2), "slice 2's messages consumed by the slice 2 runner")
	left := e.present(t)
	for _, q := range bySlice(batchA, 0, 1, 3) {
		if left[q.filebase] != ".pck" {
			t.Errorf("message %s of unowned slice %d was taken (%q)", q.msgid, q.slice, left[q.filebase])
		}
	}
	checkConsumed(t, e, rec, bySlice(batchA, 2))

	// 2. Widening to all slices starts three more runners; each consumes
	// the messages of its own slice.
	if ch := s.SetSlices([]int{0, 1, 2, 3}); !isClosed(ch) {
		t.Error("widening returned an open channel")
	}
	waitConsumed(t, e, batchA, "every message consumed")
	checkConsumed(t, e, rec, batchA)
	snap := s.Snapshot()
	if len(snap.Workers) != 4 {
		t.Fatalf("snapshot: %+v", snap)
	}
	for _, w := range snap.Workers {
		if !w.Up || w.StartsTotal != 1 {
			t.Errorf("worker %+v, want up after one start", w)
		}
	}

	// 3. SIGKILL the runner of slice 1: it comes back and consumes again.
	killed := snap.Workers[1].PID
	if err := unix.Kill(killed, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "slice 1 runner restarted", func() bool {
		w := s.Snapshot().Workers[1]
		return w.Up && w.PID != killed && w.RestartsTotal == 1
	})
	if w := s.Snapshot().Workers[1]; w.LastExitCode != 137 || w.LastExitSignal != "SIGKILL" || w.UnexpectedExitsTotal != 1 {
		t.Errorf("slice 1 after SIGKILL: %+v", w)
	}
	batchB := e.enqueueCovering(ctx, t, &next, 12, 1, 1)
	waitConsumed(t, e, batchB, "batch B consumed")
	checkConsumed(t, e, rec, batchB)
	newPid := s.Snapshot().Workers[1].PID
	for _, q := range bySlice(batchB, 1) {
		if p := e.consumers(t)[q.msgid]; len(p) != 1 || p[0] != newPid {
			t.Errorf("slice 1 message %s consumed by %v, want the restarted runner %d", q.msgid, p, newPid)
		}
	}

	// 4. Narrow to slices 0 and 3: the runners of 1 and 2 stop gracefully
	// on SIGTERM (Mailman exits with status 15 then), and their messages
	// wait until the slices are owned again.
	before := s.Snapshot()
	stopped := []int{before.Workers[1].PID, before.Workers[2].PID}
	// A runner whose last file is gone may still be inside switchboard.finish; Mailman's SIGTERM
	// handler raises RunnerInterrupt wherever the runner is, and in finish that is caught as an
	// "Uncaught runner exception" that shunts the finished message a second time (Mailman's own
	// race, also under `mailman stop`). Stop them once they snooze.
	for _, p := range stopped {
		waitIdle(t, p, 60*time.Second)
	}
	took := waitClosed(t, s.SetSlices([]int{0, 3}), 60*time.Second, "release of slices 1 and 2")
	for _, p := range stopped {
		if pidExists(p) {
			t.Errorf("slice released but runner %d still exists", p)
		}
		if !strings.Contains(e.logText(), fmt.Sprintf("(%d) out runner caught SIGTERM.  Stopping.", p)) {
			t.Errorf("runner %d did not log a graceful SIGTERM stop", p)
		}
	}
	for _, i := range []int{1, 2} {
		if w := s.Snapshot().Workers[i]; w.Up || w.Owned || w.LastExitCode != 15 {
			t.Errorf("slice %d after narrowing: %+v", i, w)
		}
	}
	t.Logf("graceful stop of two Mailman runners took %v", took)
	batchC := e.enqueueCovering(ctx, t, &next, 20, 1, 0, 1, 2, 3)
	waitConsumed(t, e, bySlice(batchC, 0, 3), "batch C of slices 0 and 3 consumed")
	left = e.present(t)
	for _, q := range bySlice(batchC, 1, 2) {
		if left[q.filebase] != ".pck" {
			t.Errorf("message %s of released slice %d was taken", q.msgid, q.slice)
		}
	}
	s.SetSlices([]int{0, 1, 2, 3})
	waitConsumed(t, e, batchC, "batch C consumed after widening again")
	checkConsumed(t, e, rec, batchC)

	// 5. Cancelling Run stops every runner and leaves no process behind. As in 4, the runners
	// are stopped once they snooze: one still finishing its last file would log Mailman's
	// "Uncaught runner exception" at SIGTERM.
	var pids []int
	for pid := range pidSlices(rec) {
		pids = append(pids, pid)
	}
	for _, w := range s.Snapshot().Workers {
		waitIdle(t, w.PID, 60*time.Second)
	}
	stopRun()
	select {
	case err := <-runDone:
		runDone <- err
		if err != nil {
			t.Errorf("Run() = %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	waitGonePids(t, 10*time.Second, pids...)
	if strings.Contains(e.logText(), "Uncaught runner exception") {
		t.Error("a Mailman runner logged an uncaught exception")
	}
	total := len(batchA) + len(batchB) + len(batchC)
	if got := len(e.consumers(t)); got != total {
		t.Errorf("%d messages consumed, want %d", got, total)
	}
	t.Logf("%d messages consumed by %d Mailman runner processes, each by the runner of its slice", total, len(pids))
}

// TestMailmanInstancesSetting shows why `instances` in mailman.cfg must equal
// qslice's slice count: Mailman's runner takes its slice count from there and
// ignores the count on its command line.
func TestMailmanInstancesSetting(t *testing.T) {
	t.Run("count on the command line is ignored", func(t *testing.T) {
		e := setupMailman(t, 1) // instances: 1, but qslice runs slice 2 of 4
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		next := 0
		qs := e.enqueueCovering(ctx, t, &next, 20, 1, 0, 1, 3)
		rec := newRecorder()
		s, err := New("out", mailmanSlices, Config{
			Command: []string{e.runner, "-C", e.cfg, "--runner={queue}:{slice}:{slices}"},
			Dir:     e.dir,
		}, slog.New(rec))
		if err != nil {
			t.Fatal(err)
		}
		r := startRun(t, s)
		s.SetSlices([]int{2})
		// The runner of "slice 2 of 4" believes in one slice: it takes all.
		waitConsumed(t, e, qs, "all messages consumed by the only runner")
		pid := s.Snapshot().Workers[0].PID
		for _, q := range qs {
			if p := e.consumers(t)[q.msgid]; len(p) != 1 || p[0] != pid {
				t.Errorf("message %s of slice %d consumed by %v, want runner %d", q.msgid, q.slice, p, pid)
			}
		}
		if err := r.stop(t, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("instances must be a power of two", func(t *testing.T) {
		e := setupMailman(t, 3)
		rec := newRecorder()
		s, err := New("out", 3, Config{
			Command:            []string{e.runner, "-C", e.cfg, "--runner={queue}:{slice}:{slices}"},
			Dir:                e.dir,
			RestartBackoff:     Backoff{Initial: 50 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 1, Jitter: NoJitter},
			CrashLoopThreshold: 2,
		}, slog.New(rec))
		if err != nil {
			t.Fatal(err)
		}
		startRun(t, s)
		s.SetSlices([]int{1})
		waitFor(t, 90*time.Second, "slice 1 critical", func() bool { return s.Health()[1].State == HealthCritical })
		found := false
		for _, r := range rec.records() {
			if r.Msg == "worker output" && r.Attrs["stream"] == "stderr" &&
				r.Attrs["line"] == "AssertionError: Not a power of 2: 3" && r.Attrs["slice"] == int64(1) {
				found = true
			}
		}
		if !found {
			t.Errorf("Mailman's AssertionError not logged; health %+v", s.Health())
		}
		if w := s.Snapshot().Workers[0]; w.LastExitCode != 1 || w.UnexpectedExitsTotal < 2 {
			t.Errorf("snapshot %+v", w)
		}
	})
}

// waitIdle waits, up to timeout, until the Mailman runner pid snoozes between scans of its queue:
// its main thread sleeps in clock_nanosleep (read from /proc/PID/syscall), which Mailman's run
// loop calls only after a scan that found no file, so no switchboard.finish is under way. Where
// the syscall's number is not known here, until it used no CPU time for 300 ms in a row (which a
// runner waiting for a CPU on a loaded machine also shows).
func waitIdle(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	proc := "/proc/" + strconv.Itoa(pid)
	if nr, ok := map[string]string{"amd64": "230", "arm64": "115"}[runtime.GOARCH]; ok {
		waitFor(t, timeout, fmt.Sprintf("runner %d snoozing", pid), func() bool {
			b, err := os.ReadFile(proc + "/syscall")
			if err != nil {
				return os.IsNotExist(err) // gone: nothing to wait for
			}
			f := strings.Fields(string(b))
			return len(f) > 0 && f[0] == nr
		})
		return
	}
	cpu := func() string {
		b, err := os.ReadFile(proc + "/stat")
		if err != nil {
			return ""
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			return ""
		}
		return f[11] + " " + f[12] // utime, stime (fields 14 and 15)
	}
	last, since := cpu(), time.Now()
	waitFor(t, timeout, fmt.Sprintf("runner %d idle", pid), func() bool {
		if now := cpu(); now != last || now == "" {
			last, since = now, time.Now()
			return now == "" // gone: nothing to wait for
		}
		return time.Since(since) >= 300*time.Millisecond
	})
}
