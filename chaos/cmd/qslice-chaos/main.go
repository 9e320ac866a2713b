// Command qslice-chaos runs the chaos harness of package chaos outside `go test`: a long soak,
// the failover benchmark, or the restart-in-place benchmark.
//
//	go run ./chaos/cmd/qslice-chaos -nodes 3 -duration 10m -seed 1
//	go run ./chaos/cmd/qslice-chaos -bench failover -kills 10
//	go run ./chaos/cmd/qslice-chaos -bench restart -rounds 3 -shipped [-crash]
//
// It starts a real Consul (the binary of scripts/build-consul.sh, found as the tests find it:
// QSLICE_CONSUL, then PATH, then the build cache), builds qslice and the ledger handler, runs
// the nodes as processes on 127.0.0.1, and prints the figures. Every process it started is
// killed when it ends, also on SIGINT. Exit status: 0 when the ledger check passes (and, with
// -bench failover, the failover targets are met; with -bench restart, nothing moved and every
// node resumed its slices within 2 s of starting), 1 when not, 2 on bad usage.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/chaos"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/consultest"
	"github.com/qslice/qslice/internal/glustertest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qslice-chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		nodes     = fs.Int("nodes", 3, "qslice nodes")
		slices    = fs.Int("slices", 8, "slices of the queue")
		duration  = fs.Duration("duration", 10*time.Minute, "soak: inject faults of random kinds (all but blackhole) for this long")
		faults    = fs.String("faults", "", "soak: a bounded schedule instead of -duration, e.g. kill=3,pause=3,consul-restart=2,restart=2,drain=2,partition=2,blackhole=1")
		seed      = fs.Uint64("seed", 1, "seed of the fault schedule (and of the first benchmark victim)")
		rate      = fs.Float64("rate", 0, "messages per second (default 20 for a soak, 40 for the benchmark)")
		messages  = fs.Int("messages", 0, "soak: stop feeding after this many messages (0: when the faults end)")
		bench     = fs.String("bench", "", `"failover": measure failover, fail-back and paused-node takeover instead of a soak; "restart": restart every node in place, one at a time (a rolling upgrade), and measure how soon each resumes its slices`)
		rounds    = fs.Int("rounds", 3, "restart benchmark: restart every node this many times")
		crash     = fs.Bool("crash", false, "restart benchmark: SIGKILL qslice alone and start it at once (a crash restarted by systemd) instead of SIGTERM")
		kills     = fs.Int("kills", 10, "benchmark: SIGKILL rounds (each also measures the fail-back)")
		pauses    = fs.Int("pauses", -1, "benchmark: SIGSTOP rounds (default: as many as -kills)")
		stalls    = fs.Int("stalls", 3, "benchmark: rounds of a 1 s SIGSTOP (at most the stall the timing tolerates), which must move nothing")
		blips     = fs.Int("blips", 3, "benchmark: rounds of a cut off Consul as long as the timing tolerates, which must move nothing")
		ttl       = fs.Duration("ttl", 2*time.Second, "consul.ttl of every node")
		lockDelay = fs.Duration("lock-delay", time.Second, "consul.lock_delay of every node")
		holdDown  = fs.Duration("hold-down", 3*time.Second, "consul.hold_down of every node (>= ttl)")
		layout    = fs.String("watch-layout", "", `consul.watch_layout of every node: "prefix" or "scoped" (default: qslice's, prefix)`)
		shipped   = fs.Bool("shipped", false, "use qslice's shipped ttl, lock_delay and hold_down instead of -ttl, -lock-delay and -hold-down")
		work      = fs.Duration("work", 5*time.Millisecond, "how long the handler works per message")
		worker    = fs.Bool("worker", false, "run the ledger handler as persistent workers (handler.worker) instead of one exec per message")
		verbose   = fs.Bool("v", false, "log what the harness does")
		keep      = fs.Bool("keep", false, "keep the work directory (configs, ledgers, node logs) and print its path")
		gluster   = fs.Bool("gluster", false, "put the queue on a GlusterFS volume with one mount per node, each in a network namespace of its own (root; allows -faults fscut=N)")
		fsTimeout = fs.Duration("fs-timeout", 0, "health.filesystem.timeout of every node (0: qslice's default, 10s)")
		fsEvery   = fs.Duration("fs-interval", 0, "health.filesystem.interval of every node (0: qslice's default, 2s)")
		fsRecover = fs.Duration("fs-recover-after", 0, "health.filesystem.recover_after of every node (0: qslice's default, 30s)")
		fsHold    = fs.Duration("fs-hold", 0, "shortest hold of an fscut fault (0: 20s, below GlusterFS's 42s ping-timeout)")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "qslice-chaos: unexpected arguments %v\n", fs.Args())
		return 2
	}
	if *bench != "" && *bench != "failover" && *bench != "restart" {
		fmt.Fprintf(stderr, "qslice-chaos: -bench %q: only \"failover\" and \"restart\" are known\n", *bench)
		return 2
	}
	counts, err := chaos.ParseKinds(*faults)
	if err != nil {
		fmt.Fprintf(stderr, "qslice-chaos: -faults: %v\n", err)
		return 2
	}
	if *pauses < 0 {
		*pauses = *kills
	}
	if *shipped {
		*ttl, *lockDelay, *holdDown = failover.DefaultTTL, failover.DefaultLockDelay, failover.DefaultHoldDown
	}
	if *rate == 0 {
		*rate = 20
		if *bench != "" {
			*rate = 40
		}
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	tb := newMainTB(stderr)
	code := 1
	tb.run(func() {
		dir := tb.TempDir()
		if *keep {
			dir, err = os.MkdirTemp("", "qslice-chaos-")
			if err != nil {
				tb.Fatalf("work directory: %v", err)
			}
			tb.Cleanup(func() { fmt.Fprintf(stderr, "qslice-chaos: work directory kept: %s\n", dir) })
		}
		consul := consultest.Start(tb)
		bin, err := chaos.Build(ctx, dir)
		if err != nil {
			tb.Fatalf("%v", err)
		}
		ccfg := chaos.ClusterConfig{Nodes: *nodes, Slices: *slices, TTL: *ttl, LockDelay: *lockDelay,
			HoldDown: *holdDown, Work: *work, Worker: *worker, Bin: bin, Dir: dir, ConsulAddr: consul.HTTPAddr, Log: log, WatchLayout: *layout,
			FSHealth: chaos.FSHealthConfig{Interval: *fsEvery, Timeout: *fsTimeout, RecoverAfter: *fsRecover}}
		if *gluster {
			bed := glustertest.New(tb, glustertest.Options{Clients: *nodes + 1}) // the last mount is the harness's
			ccfg.FS, ccfg.SharedRoot, ccfg.NodeRoots = bed, bed.Mounts[*nodes], bed.Mounts[:*nodes]
		}
		cl, err := chaos.NewCluster(ccfg)
		if err != nil {
			tb.Fatalf("%v", err)
		}
		tb.Cleanup(cl.Close)
		if *bench == "restart" {
			bin2, err := chaos.BuildVersion(ctx, dir, "restart-bench-v2")
			if err != nil {
				tb.Fatalf("%v", err)
			}
			rep, err := chaos.RunRollingUpgrade(ctx, cl, chaos.UpgradeOptions{Binary: bin2, Version: "restart-bench-v2", Rate: *rate,
				Rounds: *rounds, Crash: *crash, Log: log})
			if err != nil {
				tb.Fatalf("%v", err)
			}
			code = printChecked(stdout, stderr, rep, rep.Check)
			if moves, _ := rep.Moves(); moves > 0 {
				fmt.Fprintf(stderr, "qslice-chaos: restarts in place moved slices %d times\n", moves)
				code = 1
			}
			// The target: a restarted node processes its own slices within 2 s of starting.
			if r := rep.Resumed(); r.N != len(rep.Restarts) || r.Max > chaos.RestartResumeTarget {
				fmt.Fprintf(stderr, "qslice-chaos: %d of %d restarts resumed their slices, the slowest after %s: target %s\n",
					r.N, len(rep.Restarts), r.Max.Round(time.Millisecond), chaos.RestartResumeTarget)
				code = 1
			}
			return
		}
		if *bench != "" {
			rep, err := chaos.RunBench(ctx, cl, chaos.BenchOptions{Kills: *kills, Pauses: *pauses, Stalls: *stalls, Blips: *blips,
				Rate: *rate, Seed: *seed, RoundTimeout: max(time.Minute, 2*(*holdDown)), Log: log})
			if err != nil {
				tb.Fatalf("%v", err)
			}
			code = printChecked(stdout, stderr, rep, rep.Check)
			for _, s := range []chaos.Stats{rep.Failover, rep.Paused} {
				if !rep.Meets(s) {
					code = 1
				}
			}
			if rep.Check.Churn.Spurious > 0 {
				fmt.Fprintf(stderr, "qslice-chaos: %d spurious moves\n", rep.Check.Churn.Spurious)
				code = 1
			}
			return
		}
		rep, err := chaos.RunSoak(ctx, cl, consul, chaos.SoakOptions{Seed: *seed, Faults: counts, Duration: *duration,
			Rate: *rate, Messages: *messages, FSHold: *fsHold, Log: log})
		if err != nil {
			tb.Fatalf("%v", err)
		}
		rep.Print(stdout)
		code = 0
		if err := rep.Err(); err != nil {
			fmt.Fprintf(stderr, "qslice-chaos: check failed: %v\n", err)
			code = 1
		}
	})
	tb.cleanup()
	if tb.Skipped() || tb.Failed() {
		return 1
	}
	return code
}

// printChecked prints a benchmark's report on stdout and returns 0 when its ledger check
// passed, 1 (and why, on stderr) when not.
func printChecked(stdout, stderr io.Writer, rep interface{ Print(io.Writer) }, check *chaos.Report) int {
	rep.Print(stdout)
	if err := check.Err(); err != nil {
		fmt.Fprintf(stderr, "qslice-chaos: ledger check failed: %v\n", err)
		return 1
	}
	return 0
}

// mainTB lets internal/consultest, written for tests, run in this command: it implements the
// testing.TB methods consultest calls (the embedded nil TB panics for any other, which would be a
// bug to fix here). Fatal and Skip end the goroutine of run, as in a test.
type mainTB struct {
	testing.TB
	out io.Writer

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	skipped  bool
	temps    []string
}

func newMainTB(out io.Writer) *mainTB { return &mainTB{out: out} }

// run calls f on a goroutine of its own and waits, so that Fatal (runtime.Goexit) ends f only.
func (t *mainTB) run(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// cleanup runs the registered functions, last first, then removes the temporary directories.
func (t *mainTB) cleanup() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
	for _, d := range t.temps {
		_ = os.RemoveAll(d)
	}
}

func (t *mainTB) Helper()      {}
func (t *mainTB) Name() string { return "qslice-chaos" }
func (t *mainTB) Log(args ...any) {
	fmt.Fprintln(t.out, args...)
}
func (t *mainTB) Logf(format string, args ...any) {
	fmt.Fprintf(t.out, strings.TrimSuffix(format, "\n")+"\n", args...)
}
func (t *mainTB) Error(args ...any) { t.Fail(); t.Log(args...) }
func (t *mainTB) Errorf(format string, args ...any) {
	t.Fail()
	t.Logf(format, args...)
}
func (t *mainTB) Fatal(args ...any) { t.Error(args...); runtime.Goexit() }
func (t *mainTB) Fatalf(format string, args ...any) {
	t.Errorf("qslice-chaos: "+format, args...)
	runtime.Goexit()
}
func (t *mainTB) Fail()    { t.mu.Lock(); t.failed = true; t.mu.Unlock() }
func (t *mainTB) FailNow() { t.Fail(); runtime.Goexit() }
func (t *mainTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *mainTB) Skip(args ...any) {
	t.Log(append([]any{"qslice-chaos:"}, args...)...)
	t.SkipNow()
}
func (t *mainTB) Skipf(format string, args ...any) {
	t.Logf("qslice-chaos: "+format, args...)
	t.SkipNow()
}
func (t *mainTB) SkipNow() {
	t.mu.Lock()
	t.skipped = true
	t.mu.Unlock()
	runtime.Goexit()
}
func (t *mainTB) Skipped() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.skipped
}
func (t *mainTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *mainTB) TempDir() string {
	d, err := os.MkdirTemp("", "qslice-chaos-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.mu.Lock()
	t.temps = append(t.temps, d)
	t.mu.Unlock()
	return d
}
