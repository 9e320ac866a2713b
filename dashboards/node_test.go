package dashboards

import (
	"context"
	"fmt"
	"github.com/qslice/qslice/internal/testenv"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/agent"
	"github.com/qslice/qslice/config"
)

// testNode is a real standalone qslice node (agent, probes, runners, supervisors, HTTP server)
// built from a configuration file in a temporary directory, running until the test ends.
type testNode struct {
	agent *agent.Agent
	dir   string // the directory of the configuration; its relative paths start here
	url   string // http://host:port of the agent's server
}

// startNode writes cfgYAML to a temporary directory, lets prepare fill that directory (queue
// files, locks) before the agent starts, then runs the agent until the test's cleanup.
func startNode(t *testing.T, cfgYAML string, prepare func(dir string)) *testNode {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "qslice.yaml")
	if err := os.WriteFile(path, []byte(cfgYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(path, []byte(cfgYAML))
	if err != nil {
		t.Fatalf("parse test config: %v", err)
	}
	if prepare != nil {
		prepare(dir)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := agent.New(cfg, agent.Options{Mode: agent.ModeRun, Version: "test", Logger: log})
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	bg := testenv.Start(t, "agent", 30*time.Second, a.Run) // shutdown grace of the test configs is 1s
	n := &testNode{agent: a, dir: dir, url: "http://" + a.Addr()}
	waitFor(t, 20*time.Second, "agent ready", func() (bool, string) {
		if exited, err := bg.Exited(); exited {
			t.Fatalf("agent stopped while starting: %v", err)
		}
		code, body := httpGet(t, n.url+"/readyz")
		return code == http.StatusOK, fmt.Sprintf("/readyz: %d %s", code, body)
	})
	return n
}

// testWriter sends the agent's warnings to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("agent: %s", strings.TrimSpace(string(p)))
	return len(p), nil
}

// waitFor polls cond every 100ms until it holds or the timeout passes; cond's text says what
// it saw, for the failure message.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last seen: %s", timeout, what, saw)
		}
		<-tick.C
	}
}

// httpGet returns the status code and body of a GET on loopback (0 and the error text if the
// request fails).
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(body)
}

// abandonFluflLock takes lock path with Python's flufl.lock and a lifetime of one second, and
// exits without releasing it, as a crashed Mailman process would: the lock expires a second
// later and counts as expired (breakable) once the clock slop has passed too.
func abandonFluflLock(t *testing.T, path string) {
	t.Helper()
	python := testenv.RequirePython(t, "flufl.lock", "python3-flufl.lock")
	const script = `
import os, sys
from datetime import timedelta
from flufl.lock import Lock
lock = Lock(sys.argv[1], lifetime=timedelta(seconds=1))
lock.lock(timeout=timedelta(seconds=10))
assert lock.is_locked
os._exit(0)  # no unlock, no finalizer: the lock stays behind
`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", script, path).CombinedOutput()
	if err != nil {
		t.Fatalf("flufl.lock %s: %v\n%s", path, err, out)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("flufl.lock left no lock file: %v", err)
	}
}
