package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/internal/testenv"
)

// smtpSink is a minimal SMTP server on loopback that keeps what it receives.
type smtpSink struct {
	ln   net.Listener
	mu   sync.Mutex
	msgs []string
}

func startSMTPSink(t *testing.T) *smtpSink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &smtpSink{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *smtpSink) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(c)
	fmt.Fprint(c, "220 sink ESMTP\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			fmt.Fprint(c, "250-sink\r\n250 8BITMIME\r\n")
		case strings.HasPrefix(cmd, "DATA"):
			fmt.Fprint(c, "354 go on\r\n")
			var b strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" || l == ".\n" {
					break
				}
				b.WriteString(l)
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, b.String())
			s.mu.Unlock()
			fmt.Fprint(c, "250 queued\r\n")
		case strings.HasPrefix(cmd, "QUIT"):
			fmt.Fprint(c, "221 bye\r\n")
			return
		default: // HELO, MAIL, RCPT, RSET, NOOP
			fmt.Fprint(c, "250 ok\r\n")
		}
	}
}

func (s *smtpSink) received(sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

// runnerProcs returns, for processes whose command line names cfg, their --runner= specs.
func runnerProcs(cfg string) map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), cfg) {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if spec, ok := strings.CutPrefix(a, "--runner="); ok {
				out[spec] = true
			}
		}
	}
	return out
}

// The promise of `qslice mailman import`, with the real Debian mailman3: the imported
// configuration passes `config check`, runs every runner of the installation under qslice (one
// process per slice, Mailman's names and counts), and a message injected with Mailman's own
// `mailman inject` flows through in, pipeline and out to the MTA.
func TestMailmanImportRunsEveryRunner(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Mailman's runners")
	}
	testenv.RequirePython(t, "mailman.core.initialize", "mailman3")
	const mailmanCLI, runnerProg = "/usr/bin/mailman", "/usr/lib/mailman3/bin/runner"
	for _, p := range []string{mailmanCLI, runnerProg} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s missing (install the Debian package mailman3): %v", p, err)
		}
	}
	dir := t.TempDir()
	sink := startSMTPSink(t)
	cfg := filepath.Join(dir, "mailman.cfg")
	ports := freePorts(t, 3) // Mailman's REST and LMTP runners, qslice's listener
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[mailman]
layout: qslicetest
site_owner: owner@example.com

[paths.qslicetest]
var_dir: %s/var
bin_dir: /usr/lib/mailman3/bin

[webservice]
port: %d

[mta]
incoming: mailman.mta.null.NullMTA
smtp_host: 127.0.0.1
smtp_port: %d
lmtp_host: 127.0.0.1
lmtp_port: %d

[runner.in]
sleep_time: 0.1s
[runner.pipeline]
sleep_time: 0.1s
[runner.out]
instances: 2
sleep_time: 0.1s
`, dir, ports[0], sink.ln.Addr().(*net.TCPAddr).Port, ports[1])), 0o644)

	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	mm := func(stdin string, args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, mailmanCLI, append([]string{"--run-as-root", "-C", cfg}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mailman %v: %v\n%s", args, err, out)
		}
	}
	mm("", "create", "test@example.com")
	mm("alice@example.org\nbob@example.org\n", "addmembers", "-", "test@example.com")

	qcfg := filepath.Join(dir, "qslice.yaml")
	if code, _, stderr := runCLI(t, "", "mailman", "import", cfg, "-o", qcfg, "--grace", "5s"); code != 0 {
		t.Fatalf("import: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "", "config", "check", qcfg); code != 0 {
		t.Fatalf("config check of the imported file: exit %d\n%s", code, stderr)
	}
	c, err := config.Load(qcfg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, q := range c.Queues {
		for s := range q.Slices {
			want[fmt.Sprintf("%s:%d:%d", q.Name, s, q.Slices)] = true
		}
	}
	// Mailman's 13 runners that are processes; out in 2 slices.
	if len(want) != 14 || !want["out:1:2"] || !want["rest:0:1"] || !want["task:0:1"] || want["shunt:0:1"] {
		t.Fatalf("imported runner slices %v", want)
	}

	// No control socket: the default path is one per machine, and another test's qslice may
	// serve it.
	f, err := os.OpenFile(qcfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\ncontrol: {socket: \"\"}\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	var logs strings.Builder
	var logMu sync.Mutex
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() {
		w := writerFunc(func(p []byte) (int, error) { logMu.Lock(); defer logMu.Unlock(); return logs.Write(p) })
		done <- run(runCtx, []string{"run", "--config", qcfg, "--listen", fmt.Sprintf("127.0.0.1:%d", ports[2])}, strings.NewReader(""), w, w)
	}()
	t.Cleanup(func() {
		stop()
		<-done
		if t.Failed() {
			logMu.Lock()
			t.Logf("qslice log:\n%s", logs.String())
			logMu.Unlock()
			logs, _ := filepath.Glob(filepath.Join(dir, "var", "logs", "*"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", filepath.Base(l), b)
			}
		}
	})
	started := time.Now()
	deadline := time.Now().Add(6 * time.Minute) // 14 Python processes start slowly on a loaded machine
	for {
		got := runnerProcs(cfg)
		missing := 0
		for spec := range want {
			if !got[spec] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("runner processes %v, want every one of %v", got, want)
		}
		select {
		case code := <-done:
			done <- code
			t.Fatalf("qslice run exited %d before every runner started", code)
		case <-time.After(200 * time.Millisecond):
		}
	}

	// Each runner logs "<name> runner started" once Python has imported Mailman and it scans.
	mmlog := filepath.Join(dir, "var", "logs", "mailman.log")
	for {
		b, _ := os.ReadFile(mmlog)
		n := 0
		for spec := range want {
			name, _, _ := strings.Cut(spec, ":")
			if strings.Count(string(b), ") "+name+" runner started.") >= c.Queues[slicesIndex(c, name)].Slices {
				n++
			}
		}
		if n == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d runner slices logged their start", n, len(want))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("every runner started %v after qslice started", time.Since(started).Round(time.Millisecond))
	msg := "From: alice@example.org\r\nTo: test@example.com\r\nSubject: through qslice\r\nMessage-ID: <qslice-import@example.org>\r\n\r\nhello\r\n"
	mm(msg, "inject", "-q", "in", "test@example.com")
	for !sink.received("Message-ID: <qslice-import@example.org>") {
		if time.Now().After(deadline) {
			t.Fatalf("the injected message never reached the MTA; queues: %v", queueCounts(filepath.Join(dir, "var", "queue")))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the injected post reached the MTA %v after qslice started", time.Since(started).Round(time.Millisecond))
	stop()
	select {
	case code := <-done:
		done <- code
		if code != 0 {
			t.Errorf("qslice run exited %d", code)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("qslice run did not stop")
	}
	if left := runnerProcs(cfg); len(left) != 0 {
		t.Errorf("runners left after qslice stopped: %v", left)
	}
}

func slicesIndex(c *config.Config, name string) int {
	for i, q := range c.Queues {
		if q.Name == name {
			return i
		}
	}
	return -1
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func queueCounts(dir string) map[string]int {
	m := map[string]int{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fs, _ := os.ReadDir(filepath.Join(dir, e.Name()))
		m[e.Name()] = len(fs)
	}
	return m
}
