package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/agent"
	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/internal/testenv"
)

// startAgent runs the node of the config file in process until the test ends.
func startAgent(t *testing.T, cfgPath string) *agent.Agent {
	t.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, agent.Options{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, "agent", 30*time.Second, a.Run)
	return a
}

// noClientEnv clears the variables the API client reads, so that only what a test sets counts.
func noClientEnv(t *testing.T) {
	for _, k := range []string{envConfig, envAddr, envCACert, envClientCert, envClientKey, envTLSServerName, envSSLVerify, envHTTPAuth, envHTTPAuthFile} {
		t.Setenv(k, "")
	}
}

func pollCLI(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last: %s", what, saw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// On the node, the CLI finds the agent through the configuration's control socket: status,
// members, drain and leave work with only --config, or with $QSLICE_CONFIG, or with --addr unix:PATH.
func TestCLIThroughControlSocket(t *testing.T) {
	noClientEnv(t)
	sock := testenv.SocketPath(t, "qslice.sock")
	cfgPath := writeConfig(t, t.TempDir(), fmt.Sprintf(`node: sock-node
listen: 127.0.0.1:0
control: {socket: %s}
probes: {interval: 200ms, budget: 150ms}
queues:
  - {name: in, dir: q/in, slices: 2, poll_interval: 20ms, shutdown_grace: 1s, handler: {exec: [cat]}}
`, sock))
	startAgent(t, cfgPath)
	pollCLI(t, "status exit 0 through the socket", func() (bool, string) {
		code, out, stderr := runCLI(t, "", "status", "--config", cfgPath)
		return code == 0 && strings.Contains(out, "sock-node"), out + stderr
	})
	code, out, stderr := runCLI(t, "", "drain", "--config", cfgPath)
	if code != 0 || !strings.Contains(out, "drained") {
		t.Fatalf("drain: %d %s %s", code, out, stderr)
	}
	t.Setenv(envConfig, cfgPath)
	code, out, _ = runCLI(t, "", "status", "--json")
	var st agent.Status
	// Drained standalone: its slices are unowned, which status reports (exit 3).
	if code != exitUnhealthy || json.Unmarshal([]byte(out), &st) != nil || !st.Draining {
		t.Fatalf("status --json with $QSLICE_CONFIG after drain: %d %s", code, out)
	}
	t.Setenv(envConfig, "")
	code, out, stderr = runCLI(t, "", "drain", "--undo", "--addr", "unix:"+sock)
	if code != 0 || !strings.Contains(out, "undrained") {
		t.Fatalf("drain --undo --addr unix: %d %s %s", code, out, stderr)
	}
	code, out, stderr = runCLI(t, "", "members", "--addr", "unix://"+sock)
	if code != 0 || !strings.Contains(out, "sock-node *") || !strings.Contains(out, "up") {
		t.Fatalf("members: %d %s %s", code, out, stderr)
	}
	// leave: the node hands everything off and stops; its socket answers no more.
	code, out, stderr = runCLI(t, "", "leave", "--config", cfgPath)
	if code != 0 || !strings.Contains(out, "left") {
		t.Fatalf("leave: %d %s %s", code, out, stderr)
	}
	pollCLI(t, "the node gone after leave", func() (bool, string) {
		code, out, stderr := runCLI(t, "", "status", "--config", cfgPath)
		return code == exitFailure && strings.Contains(stderr, "cannot reach the qslice agent"), out + stderr
	})
	// Nothing there: a clear error, exit 1.
	code, _, stderr = runCLI(t, "", "status", "--addr", "unix:"+filepath.Join(t.TempDir(), "none.sock"))
	if code != exitFailure || !strings.Contains(stderr, "cannot reach the qslice agent") {
		t.Errorf("status on a missing socket: %d %s", code, stderr)
	}
}

// A node whose listener has TLS and basic auth: status needs only --addr (no config anywhere)
// and the CA; credentials come from $QSLICE_HTTP_AUTH or a file, never a flag; drain works on
// TCP once control.tcp is on.
func TestCLIThroughTLSAndBasicAuth(t *testing.T) {
	noClientEnv(t)
	dir := t.TempDir()
	webCfg, _ := testenv.WebConfig(t, dir, "admin", "s3cret")
	ca := filepath.Join(dir, "cert.pem")
	cfgPath := writeConfig(t, t.TempDir(), fmt.Sprintf(`node: tls-node
listen: 127.0.0.1:0
web_config: %s
control: {socket: "", tcp: true}
probes: {interval: 200ms, budget: 150ms}
queues:
  - {name: in, dir: q/in, slices: 2, poll_interval: 20ms, shutdown_grace: 1s, handler: {exec: [cat]}}
`, webCfg))
	a := startAgent(t, cfgPath)
	addr := "https://" + a.Addr()

	code, _, stderr := runCLI(t, "", "status", "--addr", addr)
	if code != exitFailure || !strings.Contains(stderr, "--ca-file") {
		t.Errorf("status without the CA: %d %s; want exit 1 naming --ca-file", code, stderr)
	}
	code, _, stderr = runCLI(t, "", "status", "--addr", addr, "--ca-file", ca)
	if code != exitFailure || !strings.Contains(stderr, envHTTPAuth) {
		t.Errorf("status without credentials: %d %s; want exit 1 naming %s", code, stderr, envHTTPAuth)
	}
	t.Setenv(envHTTPAuth, "admin:wrong")
	code, _, stderr = runCLI(t, "", "status", "--addr", addr, "--ca-file", ca)
	if code != exitFailure || !strings.Contains(stderr, "refused the credentials") {
		t.Errorf("status with a wrong password: %d %s", code, stderr)
	}
	t.Setenv(envHTTPAuth, "admin:s3cret")
	pollCLI(t, "status through TLS + basic auth", func() (bool, string) {
		code, out, stderr := runCLI(t, "", "status", "--addr", addr, "--ca-file", ca)
		return code == 0 && strings.Contains(out, "tls-node"), out + stderr
	})
	// The consul-style environment alone: address, CA, and the password from a file.
	t.Setenv(envHTTPAuth, "")
	authFile := filepath.Join(dir, "auth")
	os.WriteFile(authFile, []byte("admin:s3cret\n"), 0o600)
	t.Setenv(envAddr, addr)
	t.Setenv(envCACert, ca)
	code, out, stderr := runCLI(t, "", "drain", "--http-auth-file", authFile)
	if code != 0 || !strings.Contains(out, "drained") {
		t.Fatalf("drain through TLS + basic auth: %d %s %s", code, out, stderr)
	}
	if !a.Status().Draining {
		t.Fatal("drain said done but the node is not draining")
	}
	t.Setenv(envHTTPAuthFile, authFile)
	if code, out, stderr := runCLI(t, "", "drain", "--undo"); code != 0 || !strings.Contains(out, "undrained") {
		t.Fatalf("undrain with $%s: %d %s %s", envHTTPAuthFile, code, out, stderr)
	}
	// There is no flag for the password.
	if code, _, stderr := runCLI(t, "", "status", "--password", "s3cret"); code != exitUsage {
		t.Errorf("--password accepted: %d %s", code, stderr)
	}
}

// Invalid log flags are usage errors (exit 2), as promslog's are, whatever the command.
func TestInvalidLogFlagsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"--log-level", "bogus", "run", "--config", "x.yaml"},
		{"--log-format", "xml", "run", "--config", "x.yaml"},
		{"status", "--log-level", "verbose"},
	} {
		code, _, stderr := runCLI(t, "", args...)
		if code != exitUsage || !strings.Contains(stderr, "want ") {
			t.Errorf("%v: exit %d %q, want 2 with the accepted values", args, code, stderr)
		}
	}
	for _, lvl := range []string{"debug", "info", "warn", "error"} {
		if code, _, stderr := runCLI(t, "", "--log-level", lvl, "--log-format", "json", "version"); code != 0 {
			t.Errorf("--log-level %s: %d %s", lvl, code, stderr)
		}
	}
}
