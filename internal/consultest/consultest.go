package consultest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// SkipMessage is the reason tests skip when no Consul binary is found.
const SkipMessage = "Consul not found: run scripts/build-consul.sh, then set QSLICE_CONSUL"

// EnvBinary names the environment variable holding the path of the Consul binary.
const EnvBinary = "QSLICE_CONSUL"

const (
	// readyTimeout bounds a start or restart: a single server elects itself in about 1.5 s on
	// an idle machine; CI machines under load are slower.
	readyTimeout = 30 * time.Second
	// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
	stopTimeout = 10 * time.Second
	pollEvery   = 50 * time.Millisecond
)

// Binary finds the Consul binary: $QSLICE_CONSUL, then `consul` on PATH, then the cache of
// scripts/build-consul.sh ($QSLICE_TOOLS_BIN, else $XDG_CACHE_HOME/qslice/bin, else
// ~/.cache/qslice/bin).
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s: not an executable file", EnvBinary, p)
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("QSLICE_TOOLS_BIN"); d != "" {
		dirs = append(dirs, d)
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		dirs = append(dirs, filepath.Join(d, "qslice", "bin"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(h, ".cache", "qslice", "bin"))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, "consul"); isExecutable(p) {
			return p, nil
		}
	}
	return "", errors.New(SkipMessage)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

type options struct {
	acl      bool
	logLevel string
}

// Option configures Start.
type Option func(*options)

// WithACL enables ACLs with default policy deny; Server.ManagementToken holds the initial
// management token (also used as the agent token so anti-entropy works).
func WithACL() Option { return func(o *options) { o.acl = true } }

// WithLogLevel sets Consul's log level (default "info"). The log is shown when the test fails.
func WithLogLevel(level string) Option { return func(o *options) { o.logLevel = level } }

// Server is a single-node Consul server (bootstrap, server mode, data in t.TempDir()) on
// loopback ports chosen free at Start. Stop and Restart keep the ports and the data dir, so a
// restart looks to clients like a real Consul restart: sessions and KV survive it.
type Server struct {
	t   testing.TB
	bin string
	dir string

	// HTTPAddr is host:port of the HTTP API.
	HTTPAddr string
	// ManagementToken is the initial management token ("" without ACLs).
	ManagementToken string
	// NodeName is the Consul node name of the agent.
	NodeName string

	cfgFile string
	logFile string

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd has exited
}

// Start runs a Consul server for the test and stops it at cleanup. It skips the test when no
// binary is found and fails it when Consul does not come up.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv(EnvBinary) != "" {
			// Set but wrong is a broken set-up, not a missing part: skipping would hide it.
			t.Fatal(err)
		}
		t.Skip(err.Error())
	}
	o := options{logLevel: "info"}
	for _, f := range opts {
		f(&o)
	}
	dir := t.TempDir()
	s := &Server{
		t: t, bin: bin, dir: dir,
		NodeName: "consultest",
		cfgFile:  filepath.Join(dir, "consul.json"),
		logFile:  filepath.Join(dir, "consul.log"),
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Logf("consultest: stop: %v", err)
		}
		if t.Failed() {
			s.dumpLog(60)
		}
	})
	// The ports are free when chosen, but another process may bind one before Consul does:
	// then Consul exits at start-up, and a new set of ports is tried (at most startTries times).
	for try := 1; ; try++ {
		err := s.startOnFreePorts(o)
		if err == nil {
			return s
		}
		if try >= startTries || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("consultest: %v", err)
		}
		t.Logf("consultest: a port was taken before Consul bound it; trying other ports: %v", err)
		if err := os.RemoveAll(filepath.Join(dir, "data")); err != nil {
			t.Fatalf("consultest: %v", err)
		}
	}
}

// startTries bounds Start's attempts with fresh ports.
const startTries = 3

// startOnFreePorts writes the configuration with newly chosen free ports and starts Consul.
func (s *Server) startOnFreePorts(o options) error {
	dir := s.dir
	ports, err := FreePorts(3)
	if err != nil {
		return err
	}
	s.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	cfg := map[string]any{
		"node_name":               s.NodeName,
		"datacenter":              "dc1",
		"data_dir":                filepath.Join(dir, "data"),
		"server":                  true,
		"bootstrap":               true,
		"bind_addr":               "127.0.0.1",
		"client_addr":             "127.0.0.1",
		"advertise_addr":          "127.0.0.1",
		"ports":                   map[string]int{"http": ports[0], "serf_lan": ports[1], "server": ports[2], "serf_wan": -1, "https": -1, "dns": -1, "grpc": -1},
		"performance":             map[string]int{"raft_multiplier": 1},
		// Tests run every node of a cluster against this one agent, all from 127.0.0.1, where each
		// node has a local agent of its own in production: Consul's default of 200 connections
		// per client address would count five nodes' blocking queries together, and a query its
		// client gave up holds its connection until its wait ends (Consul 1.13 does not stop it:
		// hashicorp/consul#8524). Five nodes of the scoped layout, one connection per watched
		// key, got 429s (TestScopedWatchLoadPerFailover on a loaded machine).
		"limits": map[string]int{"http_max_conns_per_client": 2000},
		"disable_update_check":    true,
		"log_level":               o.logLevel,
		"ui_config":               map[string]bool{"enabled": false},
		"connect":                 map[string]bool{"enabled": false},
		"leave_on_terminate":      false,
		"skip_leave_on_interrupt": true,
	}
	if o.acl {
		s.ManagementToken = "b1gs3cr3-0000-4000-8000-000000000001"
		cfg["acl"] = map[string]any{
			"enabled":        true,
			"default_policy": "deny",
			"down_policy":    "extend-cache",
			"tokens":         map[string]string{"initial_management": s.ManagementToken, "agent": s.ManagementToken},
		}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.cfgFile, b, 0o600); err != nil {
		return err
	}
	return s.start()
}

// FreePorts picks n free loopback ports (free for TCP and UDP: serf uses both) for a process
// started next to bind. They are taken below Linux's ephemeral range (32768-60999 by default),
// in 20000-31999, never from the kernel's :0: a port the kernel handed out for :0 goes back to
// that range once closed, and the next outgoing connection of any process (a Consul client of a
// test running beside this one) may take it as its local port and keep it for minutes, so that
// the bind fails. A port below the range is only taken by a process binding it by number.
// Another process may still bind one before the caller does: retry with new ports on "address
// already in use".
func FreePorts(n int) ([]int, error) {
	var ports []int
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for attempts := 0; len(ports) < n && attempts < 200; attempts++ {
		p := freePortLow + rand.IntN(freePortHigh-freePortLow+1)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // in use: try another
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			l.Close()
			continue
		}
		// Held until all n are chosen, so that no port is chosen twice.
		closers = append(closers, func() { l.Close(); u.Close() })
		ports = append(ports, p)
	}
	if len(ports) < n {
		return nil, fmt.Errorf("free port: %d of %d found in %d-%d", len(ports), n, freePortLow, freePortHigh)
	}
	return ports, nil
}

// FreePorts' range: below the ephemeral range, above the registered ports most services use.
const freePortLow, freePortHigh = 20000, 31999

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("consul already running")
	}
	logf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open consul log: %w", err)
	}
	cmd := exec.Command(s.bin, "agent", "-config-file", s.cfgFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exit := make(chan struct{})
	go func() { // owned by the Server: ends when the process exits, which Stop ensures
		_ = cmd.Wait()
		logf.Close()
		close(exit)
	}()
	s.cmd, s.exit = cmd, exit
	if err := s.waitReady(exit); err != nil {
		s.stopLocked()
		return err
	}
	return nil
}

// waitReady polls until there is a leader and the agent's serfHealth check is in the catalog
// (sessions need it), or the process exits, or readyTimeout passes.
func (s *Server) waitReady(exit <-chan struct{}) error {
	c := s.Client(s.ManagementToken)
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var last error
	for ; time.Now().Before(deadline); <-tick.C {
		select {
		case <-exit:
			return fmt.Errorf("consul exited during start-up; log: %s", s.logTail(20))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		last = func() error {
			leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return err
			}
			if leader == "" {
				return errors.New("no leader yet")
			}
			checks, _, err := c.Health().Node(s.NodeName, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return err
			}
			for _, ch := range checks {
				if ch.CheckID == "serfHealth" && ch.Status == api.HealthPassing {
					return nil
				}
			}
			return errors.New("serfHealth not registered yet")
		}()
		cancel()
		if last == nil {
			return nil
		}
	}
	return fmt.Errorf("consul not ready after %s: %v; log: %s", readyTimeout, last, s.logTail(20))
}

// Stop terminates Consul (SIGTERM, SIGKILL after 10 s) and waits for it. Idempotent. The data
// dir and ports stay for Restart.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	if s.cmd == nil {
		return nil
	}
	cmd, exit := s.cmd, s.exit
	s.cmd, s.exit = nil, nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exit:
		return nil
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-exit
		return fmt.Errorf("consul did not stop within %s; killed", stopTimeout)
	}
}

// Kill stops Consul with SIGKILL, as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exit
	s.cmd, s.exit = nil, nil
}

// Restart starts Consul again on the same ports and data dir (stopping it first if it runs)
// and waits until it is ready.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.Stop(); err != nil {
		s.t.Logf("consultest: %v", err)
	}
	if err := s.start(); err != nil {
		s.t.Fatalf("consultest: restart: %v", err)
	}
}

// RestartLosingState restarts Consul on the same ports with its data dir emptied, as an agent
// in -dev mode (state in memory) or a server rebuilt from nothing restarts: KV, sessions and
// registrations are gone and the Raft index starts again low. It waits until Consul is ready.
func (s *Server) RestartLosingState() {
	s.t.Helper()
	if err := s.Stop(); err != nil {
		s.t.Logf("consultest: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(s.dir, "data")); err != nil {
		s.t.Fatalf("consultest: wipe the data dir: %v", err)
	}
	if err := s.start(); err != nil {
		s.t.Fatalf("consultest: restart: %v", err)
	}
}

// Running reports whether the Consul process runs.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Client returns an API client for this server with the given ACL token ("" for none).
func (s *Server) Client(token string) *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address = s.HTTPAddr
	cfg.Scheme = "http"
	cfg.Token = token
	cfg.TLSConfig = api.TLSConfig{}
	cfg.Transport.Proxy = nil // loopback only, whatever HTTP_PROXY says
	c, err := api.NewClient(cfg)
	if err != nil {
		s.t.Fatalf("consultest: client: %v", err)
	}
	return c
}

// Token creates an ACL token with a policy of the given rules (HCL) and returns its secret.
func (s *Server) Token(name, rules string) string {
	s.t.Helper()
	c := s.Client(s.ManagementToken)
	p, _, err := c.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		s.t.Fatalf("consultest: create policy %s: %v", name, err)
	}
	tok, _, err := c.ACL().TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	if err != nil {
		s.t.Fatalf("consultest: create token %s: %v", name, err)
	}
	return tok.SecretID
}

// LogTail returns the last n lines of Consul's log.
func (s *Server) logTail(n int) string {
	f, err := os.Open(s.logFile)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

func (s *Server) dumpLog(n int) {
	s.t.Logf("consultest: last %d lines of the Consul log:\n%s", n, s.logTail(n))
}

// WaitFor polls cond every 20 ms until it returns nil or timeout passes, then fails the test
// with cond's last error. Tests use it instead of sleeping.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for ; ; <-tick.C {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: still not true after %s: %v", what, timeout, err)
		}
	}
}
