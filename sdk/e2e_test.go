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
	// No control socket: the default path is one per machine, and another qslice (a test of
	// another package) may serve it.
	fmt.Fprintf(&cfg, "listen: 127.0.0.1:0\ncontrol: {socket: \"\"}\nqueues:\n")
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
			select {
			case err := <-exited:
				t.Fatalf("qslice exited (%v) with %d of %d messages of queue %s handled", err, len(ids), n, name)
			default:
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

// TestMailmanPckWorkerUnderQslice: .pck files written by Mailman 3's own Switchboard are handed
// whole (payload: raw) to examples/workers/mailman_pck_worker.py under `qslice run`, which archives
// each into its list's Maildir, once, and leaves the queue empty; a forged pickle is shunted.
func TestMailmanPckWorkerUnderQslice(t *testing.T) {
	py := testenv.RequirePython(t, "mailman.core.switchboard", "mailman3")
	qslice, _ := buildBinaries(t)
	root := t.TempDir()
	lib, _ := filepath.Abs("python")
	workerPath, _ := filepath.Abs("../examples/workers/mailman_pck_worker.py")
	qdir := filepath.Join(root, "queue", "archive")
	os.MkdirAll(qdir, 0o755)
	const n = 20
	enq := exec.Command(py, "-c", `
import email, sys
from mailman.core.switchboard import Switchboard
sb = Switchboard("archive", sys.argv[1])
for i in range(int(sys.argv[2])):
    msg = email.message_from_string("From: a@example.com\nTo: test@example.com\nSubject: number %d\n\nbody %d\n" % (i, i))
    sb.enqueue(msg, listid="test.example.com")
# A forged entry that names a function a queue entry never does.
import os, pickle
with open(os.path.join(sys.argv[1], "1700000000.5+" + "0" * 40 + ".pck"), "wb") as f:
    f.write(pickle.dumps(os.system) + pickle.dumps({}))
`, qdir, fmt.Sprint(n))
	if out, err := enq.CombinedOutput(); err != nil {
		t.Fatalf("Mailman enqueue: %v\n%s", err, out)
	}
	archives := filepath.Join(root, "archives")
	cfgPath := filepath.Join(root, "qslice.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`listen: 127.0.0.1:0
control: {socket: ""}  # the default path is one per machine
queues:
  - name: archive
    dir: %s
    slices: 2
    concurrency: 1
    poll_interval: 20ms
    handler:
      worker: [%s, %s]
      payload: raw
      env: {ARCHIVE_DIR: %q, QSLICE_WORKER_LIB: %q}
`, qdir, py, workerPath, archives, lib)), 0o644)
	cmd := exec.Command(qslice, "run", "--config", cfgPath)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("qslice log:\n%s", log.String())
		}
	}()
	box := filepath.Join(archives, "test.example.com", "new")
	deadline := time.Now().Add(90 * time.Second)
	for {
		got, _ := os.ReadDir(box)
		left, _ := os.ReadDir(qdir)
		if len(got) == n && len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d archived, %d files left in the queue after 90 s", len(got), n, len(left))
		}
		time.Sleep(50 * time.Millisecond)
	}
	subjects := map[string]bool{}
	ents, _ := os.ReadDir(box)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(box, e.Name()))
		for _, line := range strings.Split(string(b), "\n") {
			if s, ok := strings.CutPrefix(line, "Subject: "); ok {
				subjects[s] = true
			}
		}
		if !strings.Contains(string(b), "X-Mailman-Archived-At:") {
			t.Errorf("%s lacks the header the archive runner adds", e.Name())
		}
	}
	if len(subjects) != n {
		t.Errorf("%d distinct subjects archived, want %d", len(subjects), n)
	}
	shunted, _ := os.ReadDir(filepath.Join(root, "queue", "shunt"))
	if len(shunted) != 1 {
		t.Fatalf("%d files shunted, want the forged one", len(shunted))
	}
	b, _ := os.ReadFile(filepath.Join(root, "queue", "shunt", shunted[0].Name()))
	if !strings.Contains(string(b), "never does") {
		t.Errorf("the forged pickle's shunt record does not say why: %q", b)
	}
}
