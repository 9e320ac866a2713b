package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/agent"
	"github.com/qslice/qslice/internal/consultest"
	"github.com/qslice/qslice/internal/testenv"
)

// runMainEnv makes the test binary behave as the qslice command (TestMain), so that a test can
// run a node as a process of its own and kill it.
const runMainEnv = "QSLICE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// startNodeProcess runs `qslice run --config cfgPath` as a process; the test's cleanup kills it.
func startNodeProcess(t *testing.T, cfgPath string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "run", "--config", cfgPath)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("log of %s:\n%s", cfgPath, logs.String())
		}
	})
	return cmd
}

// Two nodes in Consul: members lists both up with their metrics addresses; after one is killed
// (SIGKILL: its service stays registered while its alive check lapses) members shows it DOWN and
// exits 3, and status lists it among its problems.
func TestMembersShowsAKilledNodeDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Consul and two qslice processes")
	}
	srv := consultest.Start(t)
	noClientEnv(t)
	cfgs := map[string]string{}
	for _, node := range []string{"a", "b"} {
		cfgs[node] = writeConfig(t, t.TempDir(), fmt.Sprintf(`node: %s
cluster: members
listen: 127.0.0.1:0
control: {socket: %s}
consul: {address: %q, ttl: 2s, lock_delay: 1s, hold_down: 2s}
probes: {interval: 500ms, budget: 400ms}
queues:
  - {name: in, dir: q/in, slices: 4, poll_interval: 100ms, shutdown_grace: 1s, handler: {exec: [cat]}}
`, node, testenv.SocketPath(t, node+".sock"), srv.HTTPAddr))
	}
	startNodeProcess(t, cfgs["a"])
	b := startNodeProcess(t, cfgs["b"])

	var ms agent.Members
	pollMembers := func(what string, timeout time.Duration, ok func(code int, ms agent.Members) bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			code, out, stderr := runCLI(t, "", "members", "--json", "--config", cfgs["a"])
			ms = agent.Members{}
			if json.Unmarshal([]byte(out), &ms) == nil && ok(code, ms) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s: exit %d\n%s%s", what, code, out, stderr)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	pollMembers("both members up, sharing the 4 slices", 30*time.Second, func(code int, ms agent.Members) bool {
		owned := 0
		for _, m := range ms.Members {
			if m.State != agent.MemberUp || m.Lease != "passing" {
				return false
			}
			owned += m.SlicesOwned
		}
		return code == 0 && len(ms.Members) == 2 && owned == 4
	})
	for _, m := range ms.Members {
		if !strings.HasPrefix(m.Address, "127.0.0.1:") || m.Version == "" || m.LiveSince.IsZero() || m.SlicesHome == 0 ||
			len(m.Queues) != 1 || m.Queues[0].Queue != "in" || m.ThisNode != (m.Node == "a") {
			t.Errorf("member %+v: want its metrics address, version, live since, home slices and queue check", m)
		}
	}

	if err := b.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pollMembers("b down, exit 3", 30*time.Second, func(code int, ms agent.Members) bool {
		for _, m := range ms.Members {
			if m.Node == "b" && m.State == agent.MemberDown {
				return code == exitUnhealthy
			}
		}
		return false
	})
	code, out, _ := runCLI(t, "", "members", "--config", cfgs["a"])
	if code != exitUnhealthy || !strings.Contains(out, "member b is DOWN: alive check critical") {
		t.Errorf("members text: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "", "status", "--config", cfgs["a"])
	if code != exitUnhealthy || !strings.Contains(out, "problem: member b: down") {
		t.Errorf("status: exit %d, want 3 with member b in the problems\n%s", code, out)
	}
}
