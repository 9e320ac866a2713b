package sdk

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/testenv"
	"github.com/qslice/qslice/runner/queue"
)

// buildBinaries compiles qslice and the example Go worker.
func buildBinaries(t *testing.T) (qslice, goworker string) {
	t.Helper()
	dir := t.TempDir()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", dir+string(filepath.Separator),
		"github.com/qslice/qslice/cmd/qslice", "github.com/qslice/qslice/examples/workers/goworker").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "qslice"), filepath.Join(dir, "goworker")
}

// readLedger returns how often each message id appears in a ledger file, and the worker pids seen.
func readLedger(t *testing.T, path string) (map[string]int, map[string]bool) {
	t.Helper()
	ids, pids := map[string]int{}, map[string]bool{}
	f, err := os.Open(path)
	if err != nil {
		return ids, pids
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, pid, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			t.Fatalf("ledger line %q", sc.Text())
		}
		ids[id]++
		pids[pid] = true
	}
	return ids, pids
}

// TestLibrariesUnderTheQsliceBinary: `qslice run` with a Python worker (sdk/python) and a Go worker
// (sdk/go/qsworker) handles every message exactly once, leaves the queues empty, and at SIGTERM
// stops every worker process before it exits 0.
func TestLibrariesUnderTheQsliceBinary(t *testing.T) {
	py := testenv.RequirePython(t, "json", "python3")
	qslice, goworker := buildBinaries(t)
	root := t.TempDir()
	lib, err := filepath.Abs("python")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "ledger_worker.py")
	os.WriteFile(script, []byte(`import os, sys
sys.path.insert(0, os.environ["QSLICE_WORKER_LIB"])
import qslice_worker
ledger = open(os.environ["WORKER_LEDGER"], "a", buffering=1)
pid = os.getpid()
def handle(m):
    assert m.body == b"payload " + m.meta["n"].encode(), m.body
    ledger.write("%s %d\n" % (m.message_id, pid))
qslice_worker.run(handle)
`), 0o644)
	const n = 300
	queues := map[string][]string{"py": {py, script}, "go": {goworker}}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "listen: 127.0.0.1:0\nqueues:\n")
	for name, cmd := range queues {
		fmt.Fprintf(&cfg, "  - name: %s\n    dir: %s\n    slices: 4\n    concurrency: 2\n    poll_interval: 20ms\n    handler:\n      worker: [%s]\n      in_flight: 8\n      env: {QSLICE_WORKER_LIB: %q, WORKER_LEDGER: %q}\n",
			name, filepath.Join(root, name, "in"), strings.Join(cmd, ", "), lib, filepath.Join(root, name+".ledger"))
		d := queue.NewDir(filepath.Join(root, name, "in"), "", "")
		if err := d.Ensure(); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if _, err := d.Enqueue(queue.Meta{Extra: map[string]string{"n": fmt.Sprint(i)}}, []byte(fmt.Sprintf("payload %d", i)), time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfgPath := filepath.Join(root, "qslice.yaml")
	os.WriteFile(cfgPath, []byte(cfg.String()), 0o644)
	if out, err := exec.Command(qslice, "config", "check", cfgPath).CombinedOutput(); err != nil || !strings.Contains(string(out), "handler.worker") {
		t.Fatalf("config check: %v\n%s", err, out)
	}
	cmd := exec.Command(qslice, "run", "--config", cfgPath)
	logPath := filepath.Join(root, "qslice.log")
	logf, _ := os.Create(logPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("qslice log:\n%s", b)
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for name := range queues {
		for {
			ids, _ := readLedger(t, filepath.Join(root, name+".ledger"))
			if len(ids) == n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue %s: %d of %d messages handled in 60 s", name, len(ids), n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Every message removed after its done answer.
	for name := range queues {
		for {
			left, _ := os.ReadDir(filepath.Join(root, name, "in"))
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue %s: %d files left", name, len(left))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if shunt, _ := os.ReadDir(filepath.Join(root, name, "shunt")); len(shunt) != 0 {
			t.Errorf("queue %s: %d messages shunted", name, len(shunt))
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("qslice exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("qslice did not exit within 30 s of SIGTERM")
	}
	for name := range queues {
		ids, pids := readLedger(t, filepath.Join(root, name+".ledger"))
		for id, c := range ids {
			if c != 1 {
				t.Errorf("queue %s: message %s handled %d times", name, id, c)
			}
		}
		if len(pids) == 0 || len(pids) > 2 {
			t.Errorf("queue %s: messages went to %d worker processes, want 1 or 2 (concurrency 2, long-lived)", name, len(pids))
		}
		for pid := range pids {
			var p int
			fmt.Sscan(pid, &p)
			if syscall.Kill(p, 0) == nil {
				t.Errorf("queue %s: worker %d still runs after qslice exited", name, p)
			}
		}
	}
}
