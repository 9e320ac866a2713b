package lockfile

// Interoperability with the real Python flufl.lock, run as python3 subprocesses on the same
// files. CI installs it (Debian package python3-flufl.lock, listed in .ci/apt-packages.txt).

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/testenv"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// pyFlufl drives flufl.lock. Modes (argv[1]), all on lock path argv[2]:
//
//	hold LIFETIME TIMEOUT   lock(), print {"event":"locked",...}, then obey stdin lines:
//	                        "state" prints is_locked (which, as in flufl, refreshes), "release"
//	                        unlocks and exits (printing "released" or, if it was lost, "lost").
//	try LIFETIME TIMEOUT    lock() with a timeout; exit 0 (after unlocking) or 3 on TimeOutError.
//	details                 print the details flufl.lock reads from the lock (host, pid).
//	loop N COUNTER LEDGER WHO   N times: lock, append "enter WHO", increment COUNTER by a
//	                        read-modify-write, append "exit WHO", unlock, think up to 10ms. It
//	                        starts on a line on stdin. Only flufl's pause between attempts is
//	                        shortened (it is no part of the protocol).
const pyFlufl = `
import json, os, random, sys, time
from datetime import timedelta
import flufl.lock._lockfile as lf
from flufl.lock import Lock, NotLockedError, TimeOutError

def out(**kw):
    print(json.dumps(kw), flush=True)

mode, path = sys.argv[1], sys.argv[2]
if mode in ("hold", "try"):
    l = Lock(path, lifetime=timedelta(seconds=float(sys.argv[3])))
    try:
        l.lock(timeout=timedelta(seconds=float(sys.argv[4])))
    except TimeOutError:
        out(event="timeout")
        sys.exit(3)
    out(event="locked", host=l.hostname, pid=os.getpid(), claim=l._claimfile,
        expires=os.stat(path).st_mtime)
    if mode == "try":
        l.unlock()
        sys.exit(0)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "state":
            out(event="state", is_locked=l.is_locked)
        elif cmd == "release":
            try:
                l.unlock()
                out(event="released")
            except NotLockedError:
                l.unlock(unconditionally=True)
                out(event="lost")
            break
elif mode == "details":
    l = Lock(path)
    host, pid, lockfile = l.details
    out(event="details", host=host, pid=pid, lockfile=lockfile)
elif mode == "loop":
    n, counter, ledger, who = int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
    lf.Lock._sleep = lambda self: time.sleep(random.random() * 0.02 + 0.001)
    l = Lock(path, lifetime=timedelta(seconds=120))
    out(event="ready")
    sys.stdin.readline()
    for i in range(n):
        l.lock(timeout=timedelta(seconds=120))
        with open(ledger, "a") as f:
            f.write("enter %s\n" % who)
        with open(counter) as f:
            v = int(f.read() or "0")
        time.sleep(random.random() * 0.003)
        with open(counter, "w") as f:
            f.write(str(v + 1))
        with open(ledger, "a") as f:
            f.write("exit %s\n" % who)
        l.unlock()
        time.sleep(random.random() * 0.01)  # think time, so that nobody re-takes the lock at once
    out(event="done")
`

type pyEvent struct {
	Event    string  `json:"event"`
	Host     string  `json:"host"`
	PID      int     `json:"pid"`
	Claim    string  `json:"claim"`
	Expires  float64 `json:"expires"`
	IsLocked bool    `json:"is_locked"`
}

// pyProc is a running flufl.lock script.
type pyProc struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan pyEvent
	stderr *strings.Builder
	done   chan error
}

func startPy(t testing.TB, python string, args ...string) *pyProc {
	t.Helper()
	cmd := exec.Command(python, append([]string{"-c", pyFlufl}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &pyProc{t: t, cmd: cmd, stdin: stdin, events: make(chan pyEvent, 16), stderr: &strings.Builder{}, done: make(chan error, 1)}
	cmd.Stderr = &lockedWriter{w: p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	scanDone := make(chan struct{})
	go func() { // owner: this pyProc; ends when the process closes stdout
		defer close(scanDone)
		defer close(p.events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev pyEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("python printed %q: %v", sc.Text(), err)
				continue
			}
			p.events <- ev
		}
	}()
	go func() { // owner: this pyProc; ends when the process exits
		<-scanDone
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *pyProc) next(want string, within time.Duration) pyEvent {
	p.t.Helper()
	select {
	case ev, ok := <-p.events:
		if !ok {
			p.t.Fatalf("python exited before %q: %s", want, p.stderr.String())
		}
		if ev.Event != want {
			p.t.Fatalf("python said %+v, want %q; stderr: %s", ev, want, p.stderr.String())
		}
		return ev
	case <-time.After(within):
		p.t.Fatalf("python did not say %q within %s; stderr: %s", want, within, p.stderr.String())
	}
	return pyEvent{}
}

func (p *pyProc) send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("write %q to python: %v", line, err)
	}
}

// exit waits for the process and returns its exit code.
func (p *pyProc) exit(within time.Duration) int {
	p.t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for Cleanup
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			p.t.Fatalf("python: %v", err)
		}
		return 0
	case <-time.After(within):
		p.t.Fatalf("python did not exit within %s; stderr: %s", within, p.stderr.String())
	}
	return -1
}

// pollInspect polls Inspect until cond holds or 20s pass.
func pollInspect(t testing.TB, path string, opts InspectOptions, what string, cond func(Info) bool) Info {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		in, err := Inspect(path, time.Now(), opts)
		if err == nil && cond(in) {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen within 20s; last Inspect %+v, %v", what, in, err)
		}
		tm := time.NewTimer(5 * time.Millisecond)
		<-tm.C
	}
}

func TestInteropGoHoldsPythonWaits(t *testing.T) {
	py := testenv.RequirePython(t, "flufl.lock", "python3-flufl.lock")
	path := filepath.Join(t.TempDir(), "L")
	g := newTestLock(t, path, SystemClock(), func(o *Options) { o.Host = "node-go"; o.Lifetime = time.Minute })
	if _, err := g.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	// flufl.lock reads our lock's details.
	d := startPy(t, py, "details", path)
	if ev := d.next("details", 20*time.Second); ev.Host != "node-go" || ev.PID != os.Getpid() {
		t.Errorf("flufl.lock reads details %+v, want node-go pid %d", ev, os.Getpid())
	}
	// A Python waiter with a short timeout gives up; our lock is untouched.
	if code := startPy(t, py, "try", path, "15", "1").exit(30 * time.Second); code != 3 {
		t.Fatalf("python try with 1s timeout exited %d, want 3 (TimeOutError)", code)
	}
	if !g.IsLocked() {
		t.Fatal("we lost the lock to a waiting python")
	}
	// A patient Python waiter shows up in Inspect, then gets the lock once we release.
	p := startPy(t, py, "hold", path, "15", "60")
	pollInspect(t, path, InspectOptions{}, "python waiter", func(in Info) bool { return in.Waiters == 1 })
	if err := g.Unlock(); err != nil {
		t.Fatal(err)
	}
	ev := p.next("locked", 30*time.Second)
	if ok, err := g.TryLock(); ok || err != nil {
		t.Fatalf("TryLock while python holds = %v, %v", ok, err)
	}
	in := pollInspect(t, path, InspectOptions{}, "python holder", func(in Info) bool { return in.Held })
	if in.HolderHost != ev.Host || in.HolderPID != ev.PID || in.ClaimPath != ev.Claim {
		t.Errorf("Inspect %+v, python says %+v", in, ev)
	}
	p.send("release")
	p.next("released", 10*time.Second)
	if code := p.exit(10 * time.Second); code != 0 {
		t.Fatalf("python exited %d", code)
	}
}

func TestInteropPythonHoldsGoWaits(t *testing.T) {
	py := testenv.RequirePython(t, "flufl.lock", "python3-flufl.lock")
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	p := startPy(t, py, "hold", path, "60", "10")
	ev := p.next("locked", 30*time.Second)

	// LocalHostNames knows the name flufl.lock writes for this host.
	local := LocalHostNames(context.Background())
	if !slices.Contains(local, ev.Host) {
		t.Errorf("LocalHostNames() = %q, flufl.lock writes %q", local, ev.Host)
	}
	// Go's Inspect reads the Python-held lock.
	in, err := Inspect(path, time.Now(), InspectOptions{LocalHosts: local})
	if err != nil {
		t.Fatal(err)
	}
	wantExp := time.Unix(0, int64(ev.Expires*1e9))
	if !in.Held || in.HolderHost != ev.Host || in.HolderPID != ev.PID || in.ClaimPath != ev.Claim ||
		in.Naming != Flufl || in.LinkCount != 2 || in.Anomaly != "" || in.Expired ||
		in.Expires.Sub(wantExp).Abs() > time.Millisecond || !in.HolderOnThisHost || in.HolderDeadOnThisHost {
		t.Errorf("Inspect of python's lock = %+v\npython says %+v (expires %v)", in, ev, wantExp)
	}
	if d := time.Until(in.Expires); d < 50*time.Second || d > 61*time.Second {
		t.Errorf("python's 60s lifetime read as expiring in %s", d)
	}

	g := newTestLock(t, path, SystemClock(), func(o *Options) { o.Host = "node-go"; o.RetryInterval = 20 * time.Millisecond })
	if ok, err := g.TryLock(); ok || err != nil {
		t.Fatalf("TryLock while python holds = %v, %v", ok, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = g.Lock(ctx)
	cancel()
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), fmt.Sprintf("host %s pid %d", ev.Host, ev.PID)) {
		t.Fatalf("Lock with 300ms timeout = %v, want ErrTimeout naming python's host and pid", err)
	}
	if names := dirNames(t, dir); len(names) != 2 {
		t.Errorf("after our timeout: %q, want only python's lock and claim", names)
	}

	type result struct {
		acq Acquired
		err error
	}
	done := make(chan result, 1)
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		acq, err := g.Lock(ctx)
		done <- result{acq, err}
	}()
	pollInspect(t, path, InspectOptions{}, "our waiting claim", func(in Info) bool { return in.Waiters == 1 })
	p.send("state")
	if ev := p.next("state", 10*time.Second); !ev.IsLocked {
		t.Fatal("python lost its lock while we waited")
	}
	p.send("release")
	p.next("released", 10*time.Second)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.acq.Broke || r.acq.Waited <= 0 {
		t.Errorf("Acquired = %+v, want a wait and no break", r.acq)
	}
	if !g.IsLocked() {
		t.Fatal("we do not hold the lock after python released it")
	}
	if code := p.exit(10 * time.Second); code != 0 {
		t.Fatalf("python exited %d", code)
	}
}

// Python breaks our expired lock, and we break Python's; neither side's later unlock removes
// the other's lock.
func TestInteropExpiredLocksAreBroken(t *testing.T) {
	py := testenv.RequirePython(t, "flufl.lock", "python3-flufl.lock")
	t.Run("go breaks python", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "L")
		// A negative lifetime stamps the lock a minute in the past: expired beyond the 10s slop.
		p := startPy(t, py, "hold", path, "-60", "10")
		pev := p.next("locked", 30*time.Second)
		g := newTestLock(t, path, SystemClock(), func(o *Options) { o.Host = "node-go" })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		acq, err := g.Lock(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !acq.Broke {
			t.Errorf("Acquired = %+v, want Broke", acq)
		}
		if _, err := os.Stat(pev.Claim); !os.IsNotExist(err) {
			t.Errorf("python's claim %s survived the break: %v", pev.Claim, err)
		}
		p.send("state")
		if ev := p.next("state", 10*time.Second); ev.IsLocked {
			t.Error("python still believes it holds the lock")
		}
		p.send("release")
		p.next("lost", 10*time.Second)
		p.exit(10 * time.Second)
		if !g.IsLocked() {
			t.Error("python's unlock removed our lock")
		}
	})
	for _, naming := range []Naming{Flufl, Mailman21} {
		t.Run("python breaks go "+naming.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "L")
			// Our clock runs an hour behind: the lock we stamp expired long ago for Python.
			g := newTestLock(t, path, clock.Offset{D: -time.Hour}, func(o *Options) { o.Host = "node-go"; o.Naming = naming })
			if _, err := g.Lock(context.Background()); err != nil {
				t.Fatal(err)
			}
			p := startPy(t, py, "hold", path, "60", "20")
			pev := p.next("locked", 30*time.Second)
			if g.IsLocked() {
				t.Error("IsLocked after python broke our lock")
			}
			if _, err := os.Stat(g.ClaimPath()); !os.IsNotExist(err) {
				t.Errorf("our claim survived python's break: %v", err)
			}
			if err := g.Unlock(); !errors.Is(err, ErrNotLocked) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", pev.PID)) {
				t.Errorf("Unlock of the broken lock = %v, want ErrNotLocked naming python", err)
			}
			p.send("state")
			if ev := p.next("state", 10*time.Second); !ev.IsLocked {
				t.Error("our Unlock removed python's lock")
			}
			p.send("release")
			p.next("released", 10*time.Second)
			p.exit(10 * time.Second)
		})
	}
}

// Two Python processes and two Go Locks contend for one lock; each critical section appends
// "enter"/"exit" to a ledger and increments a counter by read-modify-write. Mutual exclusion
// means a ledger of strictly paired lines and no lost increment.
func TestInteropMutualExclusion(t *testing.T) {
	py := testenv.RequirePython(t, "flufl.lock", "python3-flufl.lock")
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	counter := filepath.Join(dir, "counter")
	ledger := filepath.Join(dir, "ledger")
	if err := os.WriteFile(counter, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	const rounds = 25
	var procs []*pyProc
	for _, who := range []string{"py1", "py2"} {
		procs = append(procs, startPy(t, py, "loop", path, strconv.Itoa(rounds), counter, ledger, who))
	}
	for _, p := range procs {
		p.next("ready", 30*time.Second)
	}
	for _, p := range procs {
		p.send("go")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	errc := make(chan error, 2)
	for _, who := range []string{"go1", "go2"} {
		l := newTestLock(t, path, SystemClock(), func(o *Options) { o.Host = "node-go"; o.RetryInterval = 20 * time.Millisecond })
		go func() { errc <- goRounds(ctx, l, rounds, counter, ledger, who) }()
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		p.next("done", 120*time.Second)
		if code := p.exit(10 * time.Second); code != 0 {
			t.Fatalf("python exited %d: %s", code, p.stderr.String())
		}
	}
	if got := strings.TrimSpace(mustRead(t, counter)); got != strconv.Itoa(4*rounds) {
		t.Errorf("counter = %s, want %d: increments were lost, so two held the lock at once", got, 4*rounds)
	}
	lines := strings.Split(strings.TrimSpace(mustRead(t, ledger)), "\n")
	if len(lines) != 8*rounds {
		t.Errorf("ledger has %d lines, want %d", len(lines), 8*rounds)
	}
	switches := 0
	for i := 0; i+1 < len(lines); i += 2 {
		enter, exit := lines[i], lines[i+1]
		who, ok := strings.CutPrefix(enter, "enter ")
		if !ok || exit != "exit "+who {
			t.Fatalf("ledger lines %d-%d: %q then %q: critical sections overlapped", i+1, i+2, enter, exit)
		}
		if i > 0 && strings.TrimPrefix(lines[i-2], "enter ")[:2] != who[:2] {
			switches++
		}
	}
	t.Logf("%d hand-overs between Go and Python in %d critical sections", switches, 4*rounds)
	if switches == 0 {
		t.Error("Go and Python never alternated: the test exercised no cross-language contention")
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"counter", "ledger"}) {
		t.Errorf("left in the directory: %q", names)
	}
}

func goRounds(ctx context.Context, l *Lock, n int, counter, ledger, who string) error {
	for range n {
		if _, err := l.Lock(ctx); err != nil {
			return err
		}
		if err := appendLine(ledger, "enter "+who); err != nil {
			return err
		}
		b, err := os.ReadFile(counter)
		if err != nil {
			return err
		}
		v, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return err
		}
		if err := os.WriteFile(counter, []byte(strconv.Itoa(v+1)), 0o644); err != nil {
			return err
		}
		if err := appendLine(ledger, "exit "+who); err != nil {
			return err
		}
		if err := l.Unlock(); err != nil {
			return err
		}
		// Think time like the Python side's (not a wait for anything): without it one Go Lock
		// re-takes the lock at once, round after round, and Python rarely gets a turn.
		think := time.NewTimer(time.Duration(rand.Int64N(int64(10 * time.Millisecond))))
		select {
		case <-think.C:
		case <-ctx.Done():
			think.Stop()
			return ctx.Err()
		}
	}
	return nil
}

func appendLine(name, line string) error {
	f, err := os.OpenFile(name, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// A flufl.lock holder killed without unlocking leaves a stale lock: Inspect says its holder is
// dead on this host, and it is still not broken before it expires.
func TestInteropKilledPythonHolder(t *testing.T) {
	py := testenv.RequirePython(t, "flufl.lock", "python3-flufl.lock")
	path := filepath.Join(t.TempDir(), "L")
	p := startPy(t, py, "hold", path, "60", "10")
	ev := p.next("locked", 30*time.Second)
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.exit(10 * time.Second)
	in, err := Inspect(path, time.Now(), InspectOptions{LocalHosts: LocalHostNames(context.Background())})
	if err != nil {
		t.Fatal(err)
	}
	if !in.Held || in.HolderPID != ev.PID || !in.HolderDeadOnThisHost || in.Expired || in.Waiters != 0 {
		t.Errorf("Inspect of a killed holder's lock = %+v", in)
	}
	g := newTestLock(t, path, SystemClock(), nil)
	if ok, err := g.TryLock(); ok || err != nil {
		t.Errorf("TryLock on an unexpired stale lock = %v, %v; want false (it is broken only after expiry + slop)", ok, err)
	}
}
