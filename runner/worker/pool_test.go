package worker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/qslice/qslice/internal/testenv"
	"github.com/qslice/qslice/runner"
	"github.com/qslice/qslice/runner/queue"
)

// env is one queue worked by a runner whose handler is a worker pool.
type env struct {
	t       *testing.T
	dir     *queue.Dir
	pool    *Pool
	runner  *runner.Runner
	metrics *Metrics
	record  string
	state   string
	lockDir string
	stop    func()
}

func pythonWorker(t *testing.T) []string {
	py := testenv.RequirePython(t, "json", "python3")
	return []string{py, "testdata/test_worker.py"}
}

func libDir(t testing.TB) string {
	d, err := filepath.Abs("../../sdk/python")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// start runs a pool of cmd and a runner over a fresh queue directory until the test ends. pc and
// rc adjust the configurations.
func start(t *testing.T, cmd []string, pc func(*Config), rc func(*runner.Config)) *env {
	root := t.TempDir()
	e := &env{t: t, dir: queue.NewDir(filepath.Join(root, "in"), "", ""), record: filepath.Join(root, "record.jsonl"),
		lockDir: filepath.Join(root, "locks")}
	if err := e.dir.Ensure(); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(e.lockDir, 0o755)
	state := filepath.Join(root, "state")
	os.MkdirAll(state, 0o755)
	e.state = state
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, []string{"in"})
	if err != nil {
		t.Fatal(err)
	}
	e.metrics = m
	cfg := Config{Queue: "in", Command: cmd, Workers: 2, InFlight: 4, Metrics: m, Logger: testLogger(t),
		RestartInitial: 20 * time.Millisecond, RestartMax: 200 * time.Millisecond, HandshakeTimeout: 30 * time.Second,
		Env: []string{"QSLICE_WORKER_LIB=" + libDir(t), "TEST_WORKER_STATE=" + state, "TEST_WORKER_RECORD=" + e.record,
			"TEST_WORKER_LOCKDIR=" + e.lockDir}}
	if pc != nil {
		pc(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.pool = p
	r, err := runner.New(func() runner.Config {
		c := runner.Config{Queue: "in", Dir: e.dir, Slices: 4, Concurrency: cfg.RunnerConcurrency(), Handler: p,
			Logger: testLogger(t), PollInterval: 10 * time.Millisecond, LockDir: e.lockDir, Lease: cfg.Lease,
			Retry: runner.RetryPolicy{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond, MaxElapsed: time.Minute}}
		if rc != nil {
			rc(&c)
		}
		return c
	}())
	if err != nil {
		t.Fatal(err)
	}
	e.runner = r
	r.SetSlices([]int{0, 1, 2, 3})
	poolCtx, stopPool := context.WithCancel(context.Background())
	runCtx, stopRunner := context.WithCancel(context.Background())
	poolDone := make(chan struct{})
	runDone := make(chan struct{})
	go func() { p.Run(poolCtx); close(poolDone) }()
	go func() { r.Run(runCtx); close(runDone) }()
	var once atomic.Bool
	e.stop = func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		stopRunner()
		<-runDone
		stopPool()
		<-poolDone
	}
	t.Cleanup(e.stop)
	return e
}

func (e *env) enqueue(bodies ...string) []queue.Name {
	e.t.Helper()
	var out []queue.Name
	for i, b := range bodies {
		n, err := e.dir.Enqueue(queue.Meta{}, []byte(b), time.Unix(1_700_000_000, int64(i)*1e6))
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

func (e *env) files(dir, suffix string) []string {
	var out []string
	queue.ScanNames(dir, func(n string) error {
		if strings.HasSuffix(n, suffix) {
			out = append(out, n)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func (e *env) exits(reason string) float64 {
	return testutil.ToFloat64(e.metrics.exits.WithLabelValues("in", reason))
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shunted returns the error recorded in each shunted message, by body.
func (e *env) shunted() map[string]string {
	out := map[string]string{}
	for _, f := range e.files(e.dir.ShuntDir, ".pck") {
		data, err := os.ReadFile(filepath.Join(e.dir.ShuntDir, f))
		if err != nil {
			e.t.Fatal(err)
		}
		m, body, err := queue.Decode(data)
		if err != nil {
			e.t.Fatal(err)
		}
		out[string(body)] = m.Error
	}
	return out
}

func (e *env) records() []map[string]any {
	f, err := os.Open(e.record)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// TestPythonWorkerAnswers: done removes, fail and exceptions shunt with the reason, retry with a
// delay comes back after it, stdout noise does not break the protocol.
func TestPythonWorkerAnswers(t *testing.T) {
	e := start(t, pythonWorker(t), nil, nil)
	// Both started first: the count of starts below is exact, and one worker alone may empty
	// the queue before the other's start is counted.
	waitFor(t, "both workers ready", 60*time.Second, func() bool { return e.pool.Ready() == 2 })
	t0 := time.Now()
	e.enqueue("ok", "fail:no such list", "exception:boom", "once:retry:0.4", "print", "ok")
	waitFor(t, "queue empty", 60*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	if took := time.Since(t0); took < 400*time.Millisecond {
		t.Errorf("done after %s; the retry asked for 0.4 s", took)
	}
	sh := e.shunted()
	if len(sh) != 2 || sh["fail:no such list"] != "no such list" || sh["exception:boom"] != "ValueError: boom" {
		t.Errorf("shunted = %v; want the fail reason and the exception", sh)
	}
	if n := e.exits(ExitProtocol) + e.exits(ExitDied); n != 0 {
		t.Errorf("%v worker crashes, want none", n)
	}
	if n := testutil.ToFloat64(e.metrics.starts.WithLabelValues("in")); n != 2 {
		t.Errorf("%v workers started, want 2 (concurrency)", n)
	}
}

// TestBodiesArriveWhole: bodies of every size, around the pipe's and the libraries' buffer sizes
// and far beyond them, many in flight on one worker at once, reach the worker byte for byte.
func TestBodiesArriveWhole(t *testing.T) {
	e := start(t, pythonWorker(t), func(c *Config) { c.Workers = 1; c.InFlight = 8 }, nil)
	want := map[string]string{} // message id -> sha256 of its body
	sizes := []int{0, 1, 4095, 4096, 65535, 65536, 65537, 200_000, 3 << 20}
	for i := range 40 {
		body := []byte("ok:")
		if n := sizes[i%len(sizes)]; n > 0 {
			body = append(body, bytes.Repeat([]byte{byte('a' + i%26), 0, '\n', 0xff}, n/4+1)[:n]...)
		}
		n, err := e.dir.Enqueue(queue.Meta{}, body, time.Unix(1_700_000_000, int64(i)*1e6))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		want[n.Base] = hex.EncodeToString(sum[:])
	}
	waitFor(t, "queue empty", 120*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	got := map[string]string{}
	for _, r := range e.records() {
		got[r["message_id"].(string)] = r["body_sha256"].(string)
	}
	for id, sum := range want {
		if got[id] != sum {
			t.Errorf("message %s: the worker got a body with sha256 %q, want %s", id, got[id], sum)
		}
	}
	if len(e.shunted()) != 0 || e.exits(ExitProtocol)+e.exits(ExitDied) != 0 {
		t.Errorf("shunted %v, %v worker crashes; want none", e.shunted(), e.exits(ExitProtocol)+e.exits(ExitDied))
	}
}

// TestAWorkerWaitingForInputIsNotStarved: qslice holds frames back while a worker has messages
// unanswered (so a busy worker gets them in one read); a worker that waits for more input before
// it answers still gets it (after holdMax), so every message is done without a timeout.
func TestAWorkerWaitingForInputIsNotStarved(t *testing.T) {
	e := start(t, pythonWorker(t), func(c *Config) {
		c.Workers = 1
		c.Env = append(c.Env, "TEST_WORKER_MODE=pairs")
	}, func(c *runner.Config) { c.HandlerTimeout = time.Minute })
	bodies := make([]string, 40)
	for i := range bodies {
		bodies[i] = "ok"
	}
	e.enqueue(bodies...)
	waitFor(t, "queue empty", 60*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	if len(e.shunted()) != 0 {
		t.Errorf("shunted %v, want nothing", e.shunted())
	}
	if n := e.exits(ExitTimeout) + e.exits(ExitProtocol) + e.exits(ExitDied); n != 0 {
		t.Errorf("%v workers ended, want none", n)
	}
}

// TestHeaderCarriesTheExecEnvironment: every variable an exec handler gets has its header field
// with the same value, and the message's lock file is held while the worker handles it.
func TestHeaderCarriesTheExecEnvironment(t *testing.T) {
	e := start(t, pythonWorker(t), nil, nil)
	n, err := e.dir.Enqueue(queue.Meta{Lock: "list-a", Extra: map[string]string{"list-id": "a.example.org"}}, []byte("ok"), time.Unix(1_700_000_000, 0))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "handled", 60*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	recs := e.records()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	r := recs[0]
	msg := &runner.Message{Queue: "in", Slice: queue.SliceOf(n.Digest, 4), Slices: 4, Name: n,
		Meta: queue.Meta{Lock: "list-a", Extra: map[string]string{"list-id": "a.example.org"}}}
	envVars := map[string]string{}
	for _, kv := range runner.Env(context.Background(), msg) {
		k, v, _ := strings.Cut(kv, "=")
		envVars[k] = v
	}
	field := map[string]string{"QSLICE_QUEUE": "queue", "QSLICE_SLICE": "slice", "QSLICE_SLICES": "slices",
		"QSLICE_MESSAGE_ID": "message_id", "QSLICE_ATTEMPTS": "attempts", "QSLICE_RETRY": "retry", "QSLICE_LOCK": "lock"}
	for k, f := range field {
		if got := fmt.Sprint(r[f]); got != envVars[k] {
			t.Errorf("header %s = %q, exec handler's %s = %q", f, got, k, envVars[k])
		}
	}
	if meta, _ := r["meta"].(map[string]any); meta["list-id"] != "a.example.org" {
		t.Errorf("meta = %v, want list-id", r["meta"])
	}
	for _, f := range []string{"enqueued", "lease_deadline"} {
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(r[f])); err != nil {
			t.Errorf("%s = %v: %v", f, r[f], err)
		}
	}
	if r["lock_held"] != true {
		t.Errorf("the lock file %q was not held while the worker handled the message", "list-a")
	}
}

// TestWorkerDeathRetriesEveryMessageInFlight: a worker that dies mid-message loses nothing: the
// messages in flight on it are retried, the death is counted, a new worker takes over.
func TestWorkerDeathRetriesEveryMessageInFlight(t *testing.T) {
	e := start(t, pythonWorker(t), func(c *Config) { c.Workers = 1 }, nil)
	bodies := []string{"sleep:0.05", "once:die", "sleep:0.05", "ok", "ok", "ok"}
	e.enqueue(bodies...)
	waitFor(t, "queue empty", 60*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	if len(e.shunted()) != 0 {
		t.Errorf("shunted %v, want nothing", e.shunted())
	}
	if e.exits(ExitDied) < 1 {
		t.Errorf("no worker death counted")
	}
	handled := map[string]bool{}
	for _, r := range e.records() {
		handled[r["message_id"].(string)] = true
	}
	if len(handled) != len(bodies) {
		t.Errorf("%d distinct messages reached a worker, want %d", len(handled), len(bodies))
	}
}

// TestGarbageIsAProtocolErrorAndRetried: a worker that writes something that is not a frame is
// killed, the error counted by kind, and the message retried on a new worker.
func TestGarbageIsAProtocolErrorAndRetried(t *testing.T) {
	e := start(t, pythonWorker(t), func(c *Config) { c.Workers = 1 }, nil)
	e.enqueue("once:garbage", "ok")
	waitFor(t, "queue empty", 60*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	if len(e.shunted()) != 0 {
		t.Errorf("shunted %v, want nothing", e.shunted())
	}
	if n := testutil.ToFloat64(e.metrics.protocol.WithLabelValues("in", ErrKindFrame)); n != 1 {
		t.Errorf("bad_frame protocol errors = %v, want 1", n)
	}
	if n := e.exits(ExitProtocol); n != 1 {
		t.Errorf("protocol_error exits = %v, want 1", n)
	}
}

// TestTimeoutKillsRestartsAndRetries: a message that outlives the handler timeout has its worker
// killed and restarted and is retried; one that always does is shunted after MaxKills.
func TestTimeoutKillsRestartsAndRetries(t *testing.T) {
	e := start(t, pythonWorker(t), func(c *Config) { c.Workers = 1; c.InFlight = 1 },
		func(c *runner.Config) { c.HandlerTimeout = 2 * time.Second })
	e.enqueue("once:sleep:30", "sleep:30")
	waitFor(t, "queue empty", 120*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	sh := e.shunted()
	if len(sh) != 1 || !strings.Contains(sh["sleep:30"], "ended 3 times") {
		t.Errorf("shunted = %v; want only sleep:30, after 3 kills", sh)
	}
	// The last kill's exit is counted by the worker's slot when the process is gone, which may
	// be after the message was shunted.
	waitFor(t, "the 4 timeout kills (1 + 3) counted", 10*time.Second, func() bool { return e.exits(ExitTimeout) >= 4 })
	pids := map[float64]bool{}
	for _, r := range e.records() {
		pids[r["pid"].(float64)] = true
	}
	if len(pids) < 4 {
		t.Errorf("messages went to %d worker processes, want a new one after each of the kills", len(pids))
	}
}

// TestCrashLoopMakesThePoolCritical: a worker that cannot start backs off and reports critical,
// and no message is lost meanwhile.
func TestCrashLoopMakesThePoolCritical(t *testing.T) {
	e := start(t, pythonWorker(t), func(c *Config) {
		c.Env = append(c.Env, "TEST_WORKER_MODE=exit")
		c.CrashLoop = 3
	}, nil)
	e.enqueue("ok", "ok")
	waitFor(t, "critical", 60*time.Second, func() bool { c, _ := e.pool.Health(); return c })
	_, why := e.pool.Health()
	if !strings.Contains(why, "crash loop") || !strings.Contains(why, "exit status 3") {
		t.Errorf("health reason %q: want the crash loop and the exit status", why)
	}
	if v := testutil.ToFloat64(e.metrics.loop.WithLabelValues("in")); v != 1 {
		t.Errorf("crash loop gauge = %v", v)
	}
	e.stop()
	left := len(e.files(e.dir.Path, ".pck")) + len(e.files(e.dir.Path, ".bak"))
	if left != 2 {
		t.Errorf("%d messages left in the queue, want both (never lost)", left)
	}
}

// TestCrashLoopEndsOnceAWorkerRuns: while a dependency is down the workers write garbage instead of
// ready: the pool reports a crash loop with the protocol error and counts the restarts; once the
// dependency is back a worker that runs StableAfter ends the crash loop, with no message needed
// (a node whose slices moved away because of the loop gets none).
func TestCrashLoopEndsOnceAWorkerRuns(t *testing.T) {
	down := filepath.Join(t.TempDir(), "database-down")
	os.WriteFile(down, nil, 0o644)
	e := start(t, pythonWorker(t), func(c *Config) {
		c.Workers = 1
		c.Env = append(c.Env, "TEST_WORKER_BROKEN_WHILE="+down)
		c.StableAfter = time.Second
	}, nil)
	waitFor(t, "critical", 60*time.Second, func() bool { c, _ := e.pool.Health(); return c })
	st := e.pool.Status()
	if !st.CrashLoop || !strings.Contains(st.CrashLoopReason, "crashes in a row") || len(st.Live) != 0 || st.Workers != 1 {
		t.Errorf("status in the crash loop: %+v", st)
	}
	if !strings.Contains(st.LastProtocolError, `"cannot connect to the database`) || st.LastProtocolErrorAt.IsZero() {
		t.Errorf("last protocol error %q at %v: want the worker's garbage named", st.LastProtocolError, st.LastProtocolErrorAt)
	}
	if st.Restarts < 2 {
		t.Errorf("%d restarts, want at least 2 (3 crashes)", st.Restarts)
	}
	os.Remove(down)
	waitFor(t, "the crash loop over", 60*time.Second, func() bool { c, _ := e.pool.Health(); return !c })
	st = e.pool.Status()
	if st.CrashLoop || len(st.Live) != 1 || st.Live[0] <= 0 {
		t.Errorf("status after the crash loop: %+v", st)
	}
	if v := testutil.ToFloat64(e.metrics.loop.WithLabelValues("in")); v != 0 {
		t.Errorf("crash loop gauge = %v after the loop ended", v)
	}
	if n := len(e.records()); n != 0 {
		t.Errorf("%d messages handled: the loop must end without any", n)
	}
}

// TestHandshakeRejectsAWrongVersion: the version mismatch is named.
func TestHandshakeRejectsAWrongVersion(t *testing.T) {
	e := start(t, pythonWorker(t), func(c *Config) { c.Env = append(c.Env, "TEST_WORKER_MODE=badversion") }, nil)
	waitFor(t, "critical", 60*time.Second, func() bool { c, _ := e.pool.Health(); return c })
	if _, why := e.pool.Health(); !strings.Contains(why, "version 99") {
		t.Errorf("health reason %q: want the version named", why)
	}
	if n := testutil.ToFloat64(e.metrics.protocol.WithLabelValues("in", ErrKindHandshake)); n < 1 {
		t.Errorf("handshake protocol errors = %v", n)
	}
}

type fakeLease struct{ until atomic.Int64 }

func (f *fakeLease) ValidUntil() time.Time { return time.Unix(0, f.until.Load()) }

// TestLeaseLapseStopsEveryWorker: when the lease lapses the worker handling a message is killed
// (its file left in flight for the next owner), no worker runs while it is lapsed, and workers
// come back when it is valid again.
func TestLeaseLapseStopsEveryWorker(t *testing.T) {
	l := &fakeLease{}
	l.until.Store(time.Now().Add(time.Hour).UnixNano())
	e := start(t, pythonWorker(t), func(c *Config) { c.Lease = l }, nil)
	// Both started before the lapse: the count of starts below is that of these two.
	waitFor(t, "both workers ready", 60*time.Second, func() bool { return e.pool.Ready() == 2 })
	e.enqueue("sleep:30")
	waitFor(t, "the worker handling it", 60*time.Second, func() bool { return len(e.records()) == 1 })
	pid := int(e.records()[0]["pid"].(float64))
	l.until.Store(time.Now().Add(-time.Second).UnixNano())
	waitFor(t, "the worker killed", 5*time.Second, func() bool { return syscall.Kill(pid, 0) != nil })
	waitFor(t, "no worker ready", 5*time.Second, func() bool { return e.pool.Ready() == 0 })
	if got := e.files(e.dir.Path, ".bak"); len(got) != 1 {
		t.Errorf("in flight = %v, want the message left for the next owner", got)
	}
	time.Sleep(300 * time.Millisecond) // a lapsed lease must not start workers: give it the chance
	if n := testutil.ToFloat64(e.metrics.starts.WithLabelValues("in")); n != 2 {
		t.Errorf("%v workers started while the lease was lapsed, want still the first 2", n)
	}
	l.until.Store(time.Now().Add(time.Hour).UnixNano())
	waitFor(t, "workers back", 60*time.Second, func() bool { return e.pool.Ready() == 2 })
}

// TestShutdownLeavesNoWorker: stopping the runner and the pool ends every worker process.
func TestShutdownLeavesNoWorker(t *testing.T) {
	e := start(t, pythonWorker(t), nil, nil)
	e.enqueue("ok", "ok", "ok")
	waitFor(t, "queue empty", 60*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	var pids []int
	for _, r := range e.records() {
		pids = append(pids, int(r["pid"].(float64)))
	}
	e.stop()
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("worker %d still runs after the pool stopped", pid)
		}
	}
	if n := e.exits(ExitStopped); n != 2 {
		t.Errorf("stopped exits = %v, want 2", n)
	}
}

// TestKilledWorkersTreeIsGoneBeforeTheRetry: a worker killed for a timeout takes the processes it
// started with it (its process group, runner/proctree), before its message is tried again.
func TestKilledWorkersTreeIsGoneBeforeTheRetry(t *testing.T) {
	e := start(t, pythonWorker(t), func(c *Config) { c.Workers = 1; c.InFlight = 1 },
		func(c *runner.Config) { c.HandlerTimeout = time.Second })
	n := e.enqueue("spawnsleep")
	waitFor(t, "queue empty", 120*time.Second, func() bool { return len(e.files(e.dir.Path, "")) == 0 })
	b, err := os.ReadFile(filepath.Join(e.state, n[0].Base+".child"))
	if err != nil {
		t.Fatal(err)
	}
	var child int
	fmt.Sscan(string(b), &child)
	if child == 0 || runs(child) {
		t.Errorf("the killed worker's child %d still runs", child)
	}
	if got := len(e.records()); got < 2 {
		t.Errorf("%d handlings, want at least 2 (killed ones and the retry)", got)
	}
}

// runs reports whether pid is a live process: a zombie (killed, not yet reaped by an init that
// may never reap it) runs no code, as runner/proctree counts it.
func runs(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// TestWorkerGetsTheSpansTraceparent: the message header carries the trace context of the
// runner's span of this handling, as TRACEPARENT does for exec handlers.
func TestWorkerGetsTheSpansTraceparent(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	e := start(t, pythonWorker(t), nil, func(c *runner.Config) { c.Tracer = tp })
	e.enqueue("ok")
	waitFor(t, "span ended", 60*time.Second, func() bool { return len(rec.Ended()) == 1 })
	recs := e.records()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	span := rec.Ended()[0]
	want := "00-" + span.SpanContext().TraceID().String() + "-" + span.SpanContext().SpanID().String() + "-01"
	if got := recs[0]["traceparent"]; got != want {
		t.Errorf("worker saw traceparent %v, want the span's %s", got, want)
	}
}
