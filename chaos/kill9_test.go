//go:build linux

package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/runner/queue"
)

// TestNoOverlapAfterKill9 proves, with the real binaries, that a handler's process tree dies
// with its handling when qslice itself is killed with SIGKILL (as the OOM killer does): the
// handler (CHAOS_CHILD=1) leaves the work and the commit to a child process, which outlives
// qslice and its own parent (Pdeathsig reaches the parent only). qslice is restarted at once; it
// must kill the survivors before it runs their messages again. The child writes a "tick" line
// every 20 ms while it works, so the ledger shows until when each handling ran: no earlier
// handling of a message may show any line after a later one started.
func TestNoOverlapAfterKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds qslice; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin, err := Build(ctx, filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	qdir := filepath.Join(dir, "q", "in")
	d := queue.NewDir(qdir, "", "")
	if err := d.Ensure(); err != nil {
		t.Fatal(err)
	}
	const messages = 2
	for i := range messages {
		if _, err := d.Enqueue(queue.Meta{}, []byte(fmt.Sprintf("message %d", i)), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	ledger := filepath.Join(dir, "ledger")
	cfg := filepath.Join(dir, "qslice.yaml")
	// No control socket: the default one is one per machine, and another package's test may run
	// a qslice on it meanwhile.
	err = os.WriteFile(cfg, []byte(fmt.Sprintf(`node: n1
listen: 127.0.0.1:0
control: {socket: ""}
queues:
  - name: in
    dir: %s
    slices: 2
    concurrency: %d
    poll_interval: 50ms
    handler:
      exec: [%s]
      timeout: 2m
      env: {CHAOS_NODE: n1, CHAOS_LEDGER: %s, CHAOS_WORK: 3s, CHAOS_CHILD: "1"}
`, qdir, messages, bin.Handler, ledger)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	start := func(name string) *exec.Cmd {
		log, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin.Qslice, "run", "--config", cfg)
		cmd.Stdout, cmd.Stderr = log, log
		// A session of its own, killed whole at the end whatever happens.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = signalSession(cmd.Process.Pid, syscall.SIGKILL)
			_ = waitSessionGone(cmd.Process.Pid, 10*time.Second)
			_ = cmd.Wait()
			log.Close()
			if t.Failed() {
				b, _ := os.ReadFile(log.Name())
				t.Logf("%s:\n%s", name, b)
			}
		})
		return cmd
	}

	first := start("first")
	// Wait until every message is being worked on by a child.
	var lines []ledgerLine
	if err := pollUntil(90*time.Second, func() error {
		lines = readTicks(t, ledger)
		if n := countKind(lines, "tick"); n < messages {
			return fmt.Errorf("%d handlings ticking, want %d", n, messages)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	died := time.Now().UnixNano()
	// The scene is set only if the children outlived qslice: they tick on after its death.
	if err := pollUntil(10*time.Second, func() error {
		outlived := map[int]bool{}
		for _, l := range readTicks(t, ledger) {
			if l.kind == "tick" && l.ns > died {
				outlived[l.pid] = true
			}
		}
		if len(outlived) == 0 {
			return errors.New("no handler child ticked after the SIGKILL of qslice: the test would prove nothing")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	start("second")
	if err := pollUntil(2*time.Minute, func() error {
		if n := countKind(readTicks(t, ledger), "end"); n < messages {
			return fmt.Errorf("%d messages committed, want %d", n, messages)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Per message, per handling (pid): first and last line; handlings in start order must not
	// overlap, and each message is committed exactly once.
	type handling struct {
		pid         int
		first, last int64
		ended       bool
	}
	byMsg := map[string][]*handling{}
	for _, l := range readTicks(t, ledger) {
		hs := byMsg[l.id]
		var h *handling
		for _, x := range hs {
			if x.pid == l.pid {
				h = x
			}
		}
		if h == nil {
			h = &handling{pid: l.pid, first: l.ns}
			byMsg[l.id] = append(hs, h)
		}
		h.last = max(h.last, l.ns)
		h.ended = h.ended || l.kind == "end"
	}
	if len(byMsg) != messages {
		t.Fatalf("ledger names %d messages, want %d", len(byMsg), messages)
	}
	for id, hs := range byMsg {
		ends := 0
		for i, h := range hs {
			if h.ended {
				ends++
			}
			if i > 0 && hs[i-1].last >= h.first {
				t.Errorf("message %s: handling by pid %d showed life %s after handling by pid %d started",
					id, hs[i-1].pid, time.Duration(hs[i-1].last-h.first), h.pid)
			}
		}
		if len(hs) < 2 || ends != 1 || hs[0].ended {
			t.Errorf("message %s: %d handlings, %d committed (first committed: %t); want the killed one uncommitted and one commit", id, len(hs), ends, hs[0].ended)
		}
	}
	for _, l := range lines {
		if running(l.pid) {
			t.Errorf("handler child %d of the killed qslice still runs", l.pid)
		}
	}
}

type ledgerLine struct {
	id, kind string
	ns       int64
	pid      int
}

// readTicks parses the ledger of a child handler: "<id> <node> <kind> <ns> slice=<s> pid=<pid>".
func readTicks(t *testing.T, path string) []ledgerLine {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []ledgerLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 6 {
			continue // a line being written
		}
		ns, err1 := strconv.ParseInt(fs[3], 10, 64)
		pid, err2 := strconv.Atoi(strings.TrimPrefix(fs[5], "pid="))
		if err1 != nil || err2 != nil {
			t.Fatalf("ledger line %q", sc.Text())
		}
		out = append(out, ledgerLine{id: fs[0], kind: fs[2], ns: ns, pid: pid})
	}
	return out
}

func countKind(ls []ledgerLine, kind string) int {
	seen := map[string]bool{}
	for _, l := range ls {
		if l.kind == kind {
			seen[l.id+" "+strconv.Itoa(l.pid)] = true
		}
	}
	return len(seen)
}

// running reports whether pid is a live process (not a zombie).
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
