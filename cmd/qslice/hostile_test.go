package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/runner/queue"
)

// Enqueue refuses, with exit 2 and the reason, what a runner would refuse later.
func TestEnqueueRefusesWhatTheRunnerWould(t *testing.T) {
	dir := t.TempDir()
	big := strings.Repeat("x", queue.MaxHeader+1)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"lock key ..", []string{"--lock", ".."}, "lock key"},
		{"lock key with a slash", []string{"--lock", "a/b"}, "lock key"},
		{"absolute lock key", []string{"--lock", "/etc/passwd"}, "lock key"},
		{"lock key with NUL", []string{"--lock", "a\x00b"}, "lock key"},
		{"colliding meta keys", []string{"--meta", "a-b=1", "--meta", "a_b=2"}, `"a-b" and "a_b" collide`},
		{"meta key twice", []string{"--meta", "k=1", "--meta", "k=2"}, "given twice"},
		{"metadata over the header limit", []string{"--meta", "k=" + big}, "over the limit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"queue", "enqueue", dir}, c.args...)
			code, out, errOut := runCLI(t, "body", args...)
			if code != exitUsage || !strings.Contains(errOut, c.want) || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %.200q; want exit 2 naming %q", code, out, errOut, c.want)
			}
		})
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("refused enqueues left files: %v", left)
	}
	// What passes is accepted.
	if code, _, errOut := runCLI(t, "body", "queue", "enqueue", dir, "--lock", "list-a", "--meta", "a-b=1"); code != 0 {
		t.Errorf("a valid enqueue failed: %s", errOut)
	}
}

// ls, ls --why, show and requeue never follow a link nor block on a FIFO, and name what they
// refuse.
func TestCLINamesOddFilesWithoutFollowingOrBlocking(t *testing.T) {
	root := t.TempDir()
	shunt := filepath.Join(root, "shunt")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(shunt, 0o755))
	secret := filepath.Join(root, "secret")
	must(os.WriteFile(secret, []byte("SECRET"), 0o600))
	fifo := "1700000000.1+" + strings.Repeat("a", 40) + ".pck"
	link := "1700000000.2+" + strings.Repeat("b", 40) + ".pck"
	must(syscall.Mkfifo(filepath.Join(shunt, fifo), 0o644))
	must(os.Symlink(secret, filepath.Join(shunt, link)))

	done := make(chan struct{})
	var code int
	var out, errOut string
	go func() {
		defer close(done)
		code, out, errOut = runCLI(t, "", "queue", "ls", shunt, "--why", "--json")
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("queue ls --why blocked on a FIFO")
	}
	if code != 0 {
		t.Fatalf("ls: exit %d: %s", code, errOut)
	}
	var ents []lsEntry
	must(json.Unmarshal([]byte(out), &ents))
	got := map[string]string{}
	for _, e := range ents {
		got[e.Name] = e.Error
	}
	if !strings.Contains(got[fifo], "FIFO") || !strings.Contains(got[link], "symbolic link") {
		t.Errorf("ls --why: %v", got)
	}
	if strings.Contains(out, "SECRET") {
		t.Error("ls followed a link")
	}
	for _, f := range []string{fifo, link} {
		code, out, errOut := runCLI(t, "", "queue", "show", filepath.Join(shunt, f))
		if code == 0 || !strings.Contains(errOut, "not a regular file") || strings.Contains(out, "SECRET") {
			t.Errorf("show %s: exit %d, %q, %q", f, code, out, errOut)
		}
	}
	code, _, errOut = runCLI(t, "", "queue", "requeue", shunt, "--to", root)
	if code == 0 || !strings.Contains(errOut, "not a regular file") {
		t.Errorf("requeue: exit %d, %s", code, errOut)
	}
	if b, _ := os.ReadFile(secret); string(b) != "SECRET" {
		t.Error("the link's target changed")
	}
	if _, err := os.Lstat(filepath.Join(root, link)); err == nil {
		t.Error("requeue moved a link")
	}
}

var qsliceBin string

// buildQslice builds the qslice binary once per test run.
func buildQslice(t *testing.T) string {
	t.Helper()
	if qsliceBin != "" {
		return qsliceBin
	}
	dir, err := os.MkdirTemp("", "qslice-bin-")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "qslice")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	qsliceBin = bin
	return bin
}

// A CLI command blocked (here: enqueue reading a stdin that never ends) exits at once on SIGTERM
// or SIGINT, with 128 + the signal.
func TestCLIExitsAtOnceOnSignals(t *testing.T) {
	bin := buildQslice(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pw.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "queue", "enqueue", t.TempDir())
			cmd.Stdin = pr
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			pr.Close()
			// Wait until one of its threads is blocked in read(0, ...) of stdin: by then main
			// has installed its signal handling.
			waitBlockedReadingStdin(t, cmd.Process.Pid)
			sent := time.Now()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			err = cmd.Wait()
			took := time.Since(sent)
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 128+int(sig) {
				t.Fatalf("exit: %v, want code %d; stderr %s", err, 128+int(sig), stderr.String())
			}
			// "At once": a process that did not would wait for stdin's end, which never comes
			// (pw stays open), until ctx kills it after a minute. A bound well below that and
			// far above an exit's time on a loaded machine.
			if took > 30*time.Second {
				t.Errorf("took %s to exit after %s", took, sig)
			}
		})
	}
}

// waitBlockedReadingStdin polls /proc/PID/task/*/syscall until a thread is in read(2) on fd 0.
func waitBlockedReadingStdin(t *testing.T, pid int) {
	t.Helper()
	read := map[string]string{"amd64": "0", "arm64": "63", "386": "3", "arm": "3"}[runtime.GOARCH]
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", pid))
		for _, f := range tasks {
			b, _ := os.ReadFile(f)
			if fields := strings.Fields(string(b)); len(fields) > 1 && fields[0] == read && fields[1] == "0x0" {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d never blocked reading stdin", pid)
}
