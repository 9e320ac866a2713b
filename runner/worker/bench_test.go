package worker

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/queuetest"
	"github.com/qslice/qslice/internal/testenv"
	"github.com/qslice/qslice/runner"
	"github.com/qslice/qslice/runner/queue"
)

// benchRoots: tmpfs when present, and the normal disk (QSLICE_BENCH_DIR, else the temp dir).
func benchRoots() [][2]string {
	var roots [][2]string
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		roots = append(roots, [2]string{"tmpfs", "/dev/shm"})
	}
	disk := os.Getenv("QSLICE_BENCH_DIR")
	if disk == "" {
		disk = os.TempDir()
	}
	return append(roots, [2]string{"disk", disk})
}

// outcomes counts the runner's outcomes; anything but done fails the benchmark.
type outcomes struct {
	runner.NopObserver
	done, other atomic.Int64
}

func (o *outcomes) Handled(_ string, _ int, out runner.Outcome, _ time.Duration) {
	if out == runner.OutcomeDone {
		o.done.Add(1)
	} else {
		o.other.Add(1)
	}
}

// kind is one way of handling messages in the benchmark.
type kind struct {
	name        string
	n           int // messages (slow kinds get fewer)
	concurrency int // runner goroutines
	handler     func(b *testing.B) (runner.Handler, *Pool)
}

// drain fills dir with n messages and returns how long the runner took to handle them all. It
// verifies the work: every message reached the handler exactly once and was done, and the queue,
// shunt and bad directories are empty at the end.
func drain(b *testing.B, base string, k kind) (time.Duration, cpuUse) {
	dir := filepath.Join(base, k.name, "in")
	d := queue.NewDir(dir, "", "")
	if err := d.Ensure(); err != nil {
		b.Fatal(err)
	}
	queuetest.Fill(b, dir, k.n)
	h, pool := k.handler(b)
	var seen sync.Map
	var dups atomic.Int64
	counted := runner.HandlerFunc(func(ctx context.Context, m *runner.Message) error {
		err := h.Handle(ctx, m)
		if err == nil {
			if _, dup := seen.LoadOrStore(m.Name.Base, true); dup {
				dups.Add(1)
			}
		}
		return err
	})
	obs := &outcomes{}
	r, err := runner.New(runner.Config{Queue: "bench", Dir: d, Slices: 1, Concurrency: k.concurrency, Handler: counted,
		PollInterval: 5 * time.Millisecond, Observer: obs, HandlerTimeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	poolCtx, stopPool := context.WithCancel(context.Background())
	poolDone := make(chan struct{})
	if pool != nil {
		go func() { pool.Run(poolCtx); close(poolDone) }()
		deadline := time.Now().Add(time.Minute)
		for pool.Ready() < pool.cfg.Workers { // start-up is not part of the figure
			if time.Now().After(deadline) {
				b.Fatal("workers not ready within a minute")
			}
			time.Sleep(time.Millisecond)
		}
	} else {
		close(poolDone)
	}
	r.SetSlices([]int{0})
	self0, kids0, workers0 := rusage(syscall.RUSAGE_SELF), rusage(syscall.RUSAGE_CHILDREN), workerCPU(b, pool)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	t0 := time.Now()
	go func() { r.Run(ctx); close(ran) }()
	deadline := t0.Add(10 * time.Minute)
	for obs.done.Load()+obs.other.Load() < int64(k.n) {
		if time.Now().After(deadline) {
			b.Fatalf("%s: %d of %d handled in 10 minutes", k.name, obs.done.Load(), k.n)
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(t0)
	self1, workers1 := rusage(syscall.RUSAGE_SELF), workerCPU(b, pool)
	cancel()
	<-ran
	stopPool()
	<-poolDone
	cpu := cpuUse{engine: self1 - self0, handlers: rusage(syscall.RUSAGE_CHILDREN) - kids0}
	if pool != nil {
		cpu.handlers = workers1 - workers0 // without their start-up (an interpreter, a pyenv shim)
	}
	n := 0
	seen.Range(func(any, any) bool { n++; return true })
	if obs.other.Load() != 0 || dups.Load() != 0 || n != k.n || obs.done.Load() != int64(k.n) {
		b.Fatalf("%s: %d done, %d other outcomes, %d distinct messages handled, %d handled twice; want %d done exactly once",
			k.name, obs.done.Load(), obs.other.Load(), n, dups.Load(), k.n)
	}
	for _, sub := range []string{dir, d.ShuntDir, d.BadDir} {
		if ents, err := os.ReadDir(sub); err != nil && !os.IsNotExist(err) || len(ents) != 0 {
			b.Fatalf("%s: %s holds %d entries at the end (%v), want none", k.name, sub, len(ents), err)
		}
	}
	return took, cpu
}

// cpuUse is the CPU time (user and system) a drain cost: qslice's process (the engine, and the
// Go handler when that is the kind) and the handler processes (workers, exec handlers).
type cpuUse struct{ engine, handlers time.Duration }

// workerCPU returns the CPU time the pool's worker processes used so far (none may restart
// during a drain: that would be another outcome than done).
func workerCPU(b *testing.B, pool *Pool) time.Duration {
	if pool == nil {
		return 0
	}
	pool.mu.Lock()
	defer pool.mu.Unlock()
	var sum time.Duration
	for _, pr := range pool.procs {
		if pr == nil {
			b.Fatal("a worker is not ready")
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pr.pgid))
		if err != nil {
			b.Fatal(err)
		}
		// Fields after the command's closing parenthesis: state is 3, utime 14, stime 15 (in
		// USER_HZ ticks, 100 a second on Linux).
		f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
		for _, v := range f[11:13] {
			t, _ := strconv.ParseInt(v, 10, 64)
			sum += time.Duration(t) * 10 * time.Millisecond
		}
	}
	return sum
}

// buildGoWorker compiles examples/workers/goworker (the Go reference library's example, a no-op
// without $WORKER_LEDGER) into a temporary directory.
func buildGoWorker(b *testing.B) string {
	b.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(b.TempDir(), "goworker")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/qslice/qslice/examples/workers/goworker").CombinedOutput(); err != nil {
		b.Fatalf("build the Go worker: %v\n%s", err, out)
	}
	return bin
}

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHandlerKinds measures, in one run, on tmpfs and on disk, the messages per second of
// the engine with: a no-op Go handler (in process), a no-op Python persistent worker
// (sdk/python/qslice_worker.py), the example Go persistent worker (examples/workers/goworker on
// sdk/go/qsworker, built by the benchmark), a no-op Python exec handler, and the exec handler
// `true`. All use concurrency 2 (the workers: 2 processes with in_flight 16). Reported per file
// system: <kind>_msgs/s, the ratios pyworker/go, goworker/go and pyworker/pyexec, and the CPU
// time per message of qslice's process (<kind>_qslice_cpu_us/msg: the engine, and the Go handler)
// and of the handler processes (<kind>_handler_cpu_us/msg: the workers from the start of the
// drain, so without their start-up; the exec handlers whole). QSLICE_BENCH_FILES sets the message
// count of the fast kinds (default 50000); the exec kinds get 1/2500 (python3 starts ~30 times a
// second here) and 1/50 of it. QSLICE_BENCH_KINDS=go,pyworker runs only the named kinds (to
// profile one); QSLICE_BENCH_PYWORKER replaces the Python worker's command (a profiling wrapper,
// say).
//
//	QSLICE_BENCH_FILES=20000 go test -run '^$' -bench HandlerKinds -benchtime 1x ./runner/worker/
func BenchmarkHandlerKinds(b *testing.B) {
	py := testenv.RequirePython(b, "json", "python3")
	n := 50000
	if s := os.Getenv("QSLICE_BENCH_FILES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	lib, err := filepath.Abs("../../sdk/python/qslice_worker.py")
	if err != nil {
		b.Fatal(err)
	}
	noop := runner.HandlerFunc(func(context.Context, *runner.Message) error { return nil })
	cmd := []string{py, lib}
	if s := os.Getenv("QSLICE_BENCH_PYWORKER"); s != "" {
		cmd = strings.Fields(s)
	}
	poolCfg := Config{Queue: "bench", Command: cmd, Workers: 2, InFlight: 16}
	goCfg := poolCfg
	goCfg.Command = []string{buildGoWorker(b)}
	kinds := []kind{
		{"go", n, 2, func(*testing.B) (runner.Handler, *Pool) { return noop, nil }},
		{"pyworker", n, poolCfg.RunnerConcurrency(), func(b *testing.B) (runner.Handler, *Pool) {
			p, err := New(poolCfg)
			if err != nil {
				b.Fatal(err)
			}
			return p, p
		}},
		{"goworker", n, goCfg.RunnerConcurrency(), func(b *testing.B) (runner.Handler, *Pool) {
			p, err := New(goCfg)
			if err != nil {
				b.Fatal(err)
			}
			return p, p
		}},
		{"pyexec", max(n/2500, 10), 2, func(*testing.B) (runner.Handler, *Pool) {
			return &runner.ExecHandler{Command: []string{py, "-c", "import sys; sys.stdin.buffer.read()"}}, nil
		}},
		{"true", max(n/50, 20), 2, func(*testing.B) (runner.Handler, *Pool) {
			return &runner.ExecHandler{Command: []string{"true"}}, nil
		}},
	}
	if only := os.Getenv("QSLICE_BENCH_KINDS"); only != "" {
		kinds = slices.DeleteFunc(kinds, func(k kind) bool { return !slices.Contains(strings.Split(only, ","), k.name) })
	}
	for _, root := range benchRoots() {
		b.Run(root[0], func(b *testing.B) {
			rate, engineCPU, handlerCPU := map[string]float64{}, map[string]float64{}, map[string]float64{}
			for i := 0; i < b.N; i++ {
				base, err := os.MkdirTemp(root[1], "qslice-bench-kinds-")
				if err != nil {
					b.Fatal(err)
				}
				for _, k := range kinds {
					took, cpu := drain(b, base, k)
					rate[k.name] += float64(k.n) / took.Seconds() / float64(b.N)
					engineCPU[k.name] += float64(cpu.engine.Microseconds()) / float64(k.n) / float64(b.N)
					handlerCPU[k.name] += float64(cpu.handlers.Microseconds()) / float64(k.n) / float64(b.N)
				}
				os.RemoveAll(base)
			}
			for _, k := range kinds {
				b.ReportMetric(rate[k.name], k.name+"_msgs/s")
				b.ReportMetric(engineCPU[k.name], k.name+"_qslice_cpu_us/msg")
				b.ReportMetric(handlerCPU[k.name], k.name+"_handler_cpu_us/msg")
			}
			for _, r := range [][2]string{{"pyworker", "go"}, {"goworker", "go"}, {"pyworker", "pyexec"}} {
				if rate[r[0]] > 0 && rate[r[1]] > 0 {
					b.ReportMetric(rate[r[0]]/rate[r[1]], r[0]+"/"+r[1])
				}
			}
		})
	}
}

// BenchmarkPoolHandle measures the pool alone (no files): 32 goroutines hand QSLICE_BENCH_FILES
// (default 50000) messages per iteration to 2 no-op Python workers with in_flight 16, every one
// answered done. Reported: msgs/s.
func BenchmarkPoolHandle(b *testing.B) {
	py := testenv.RequirePython(b, "json", "python3")
	n := 50000
	if s := os.Getenv("QSLICE_BENCH_FILES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	lib, _ := filepath.Abs("../../sdk/python/qslice_worker.py")
	p, err := New(Config{Queue: "bench", Command: []string{py, lib}, Workers: 2, InFlight: 16})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(time.Minute); p.Ready() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("workers not ready within a minute")
		}
	}
	name, _ := queue.ParseName("1700000000.000001+" + strings.Repeat("ab", 20) + ".pck")
	var took time.Duration
	for i := 0; i < b.N; i++ {
		var next, failed atomic.Int64
		var wg sync.WaitGroup
		t0 := time.Now()
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := &runner.Message{Queue: "bench", Slices: 1, Name: name, Body: []byte("hello"), LeaseDeadline: time.Now().Add(time.Hour)}
				for next.Add(1) <= int64(n) {
					if err := p.Handle(context.Background(), m); err != nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		took += time.Since(t0)
		if failed.Load() != 0 {
			b.Fatalf("%d of %d messages not done", failed.Load(), n)
		}
	}
	b.ReportMetric(float64(n*b.N)/took.Seconds(), "msgs/s")
}
