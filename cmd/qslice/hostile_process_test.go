package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/consultest"
	"github.com/qslice/qslice/internal/queuetest"
	"github.com/qslice/qslice/runner/queue"
)

// hostileMessages is how many good messages lie among the odd files.
const hostileMessages = 2000

// hostileMaxRSS bounds a node's peak resident memory (VmHWM) while it works a directory holding
// a 1 GiB sparse file, a link to /dev/zero and the rest: none of it is ever read, so a node stays
// near its idle size (tens of MiB); reading any of them whole would pass this at once.
const hostileMaxRSS = 256 << 20

// hostileGrace is shutdown_grace in the nodes' configuration; SIGTERM must stop a node within it
// plus a few seconds.
const hostileGrace = 2 * time.Second

// A real qslice process on a directory full of odd files (links to /dev/zero, to a secret file
// and to themselves, a FIFO, a socket, a directory, a device and a sparse 1 GiB file named like
// messages, a FIFO in flight, and a FIFO and a /dev/zero link in the probed lock directory) and a
// few thousand good messages. Node A handles part of them and is stopped by SIGTERM; node B
// takes over the same directory and finishes. Every good message is handled exactly once (a
// ledger the handler writes), every odd file is in bad/ with its reason, nothing outside is read,
// both stop on SIGTERM within shutdown_grace + 5 s, and neither's peak RSS passes hostileMaxRSS.
func TestHostileDirectoryRealProcess(t *testing.T) {
	bin := buildQslice(t)
	root := t.TempDir()
	in, shunt, bad, locks := filepath.Join(root, "in"), filepath.Join(root, "shunt"), filepath.Join(root, "bad"), filepath.Join(root, "locks")
	for _, d := range []string{in, shunt, bad, locks} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(secret, []byte("SECRET"), 0o600); err != nil {
		t.Fatal(err)
	}
	odd := queuetest.OddFiles(t, in, secret)
	stuck := "1600000001.0+" + strings.Repeat("9", 40) // a FIFO left in flight
	if err := syscall.Mkfifo(filepath.Join(in, stuck+queue.SuffixInFlight), 0o644); err != nil {
		t.Fatal(err)
	}
	odd[stuck] = "FIFO"
	if err := syscall.Mkfifo(filepath.Join(locks, "list-a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", filepath.Join(locks, "list-b")); err != nil {
		t.Fatal(err)
	}

	// The good messages, enqueued concurrently (group commit).
	d := queue.NewDir(in, shunt, bad)
	good := make(map[string]bool, hostileMessages)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < hostileMessages; i += 8 {
				n, err := d.Enqueue(queue.Meta{}, []byte(fmt.Sprintf("message %d", i)), time.Now())
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				good[n.Base] = true
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	ledger := filepath.Join(root, "ledger")
	config := func(node string) string {
		// The handler appends "<node> <message>" to the ledger (one small O_APPEND write) and
		// refuses a body with the secret in it; shell builtins only, one process per message.
		handler := `IFS= read -r b; case "$b" in *SECRET*) exit 3;; esac; printf '%s %s\n' "$NODE" "$QSLICE_MESSAGE_ID" >> "$LEDGER"`
		return writeConfig(t, t.TempDir(), fmt.Sprintf(`node: %s
listen: 127.0.0.1:%d
control: {socket: ""}  # the default path is one per machine: another test's qslice may serve it
probes: {interval: 1s, budget: 1s, lock_dirs: [%s]}
queues:
  - name: in
    dir: %s
    shunt_dir: %s
    bad_dir: %s
    slices: 4
    concurrency: 8
    poll_interval: 100ms
    shutdown_grace: %s
    max_message_bytes: 1048576
    handler:
      exec: ["sh", "-c", %q]
      env: {NODE: %s, LEDGER: %s}
`, node, freePorts(t, 1)[0], locks, in, shunt, bad, hostileGrace, handler, node, ledger))
	}
	handled := func() int {
		b, _ := os.ReadFile(ledger)
		return bytes.Count(b, []byte("\n"))
	}

	// Node A: until it handled a quarter, then SIGTERM.
	a := startNode(t, bin, config("a"))
	waitUntil(t, "node a handled a quarter", 3*time.Minute, func() bool { return handled() >= hostileMessages/4 })
	a.stop(t)

	// Node B on the same directory finishes the work, and agrees on every odd file.
	b := startNode(t, bin, config("b"))
	waitUntil(t, "every good message handled and every odd file in bad/", 5*time.Minute, func() bool {
		entries, _ := os.ReadDir(bad)
		psv := 0
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), queue.SuffixBad) {
				psv++
			}
		}
		return handled() >= hostileMessages && psv >= len(odd)
	})
	b.stop(t)

	// Exactly once, by one of the two nodes.
	f, err := os.Open(ledger)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]string{}
	byNode := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		node, id, _ := strings.Cut(sc.Text(), " ")
		if prev, dup := seen[id]; dup {
			t.Errorf("message %s handled twice (by %s and %s)", id, prev, node)
		}
		if !good[id] {
			t.Errorf("handled %q, which is not a good message", id)
		}
		seen[id] = node
		byNode[node]++
	}
	if len(seen) != len(good) {
		t.Errorf("%d of %d good messages handled", len(seen), len(good))
	}
	t.Logf("handled by node: %v; odd files: %d", byNode, len(odd))
	for base, want := range odd {
		why, err := os.ReadFile(filepath.Join(bad, base+queue.SuffixWhy))
		if err != nil || !strings.Contains(string(why), want) {
			t.Errorf("bad/%s: reason %s, %v; want it to name %q", base, why, err, want)
		}
	}
	if s, _ := os.ReadDir(shunt); len(s) != 0 {
		t.Errorf("shunted: %d files (the handler saw the secret?)", len(s))
	}
	if left, _ := os.ReadDir(in); len(left) != 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		t.Errorf("left in the queue: %v", names)
	}
	if got, _ := os.ReadFile(secret); string(got) != "SECRET" {
		t.Error("the file outside the configured directories changed")
	}
	if _, err := os.Lstat(filepath.Join(locks, "list-a")); err != nil {
		t.Errorf("the FIFO in the lock directory: %v (probes never touch it)", err)
	}
}

type node struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

func startNode(t *testing.T, bin, config string) *node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	n := &node{cmd: exec.CommandContext(ctx, bin, "run", "--config", config), stderr: &syncBuffer{}, done: make(chan error, 1)}
	n.cmd.Stderr = n.stderr
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { err := n.cmd.Wait(); close(exited); n.done <- err }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			n.cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("node log (%s):\n%s", config, tail(n.stderr.String(), 60))
		}
	})
	return n
}

// stop sends SIGTERM and checks the node exits cleanly within shutdown_grace + 5 s, and that
// its peak RSS stayed under hostileMaxRSS.
func (n *node) stop(t *testing.T) {
	t.Helper()
	rss := peakRSS(t, n.cmd.Process.Pid)
	if rss > hostileMaxRSS {
		t.Errorf("peak RSS %d MiB, over the bound of %d MiB", rss>>20, hostileMaxRSS>>20)
	}
	t.Logf("peak RSS %d MiB (bound %d MiB)", rss>>20, hostileMaxRSS>>20)
	sent := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("node exited with %v after SIGTERM", err)
		}
		t.Logf("stopped %s after SIGTERM", time.Since(sent).Round(time.Millisecond))
	case <-time.After(hostileGrace + 5*time.Second):
		t.Fatalf("node still running %s after SIGTERM (shutdown_grace %s)", hostileGrace+5*time.Second, hostileGrace)
	}
}

// peakRSS is a process's VmHWM in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of pid %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// freePorts returns n distinct loopback ports, free a moment ago, for a process started next to
// bind: below the kernel's ephemeral range, so that no outgoing connection takes one meanwhile.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports, err := consultest.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
