package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/qslice/qslice/agent"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/fshealth"
)

// Binaries are the programs a cluster runs.
type Binaries struct {
	Qslice  string // the qslice command
	Handler string // cmd/qslice-chaos-handler
}

// Build compiles qslice and the ledger handler into dir with the go command found on PATH (or in
// GOROOT), from the module this package belongs to.
func Build(ctx context.Context, dir string) (Binaries, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", dir+string(filepath.Separator),
		"github.com/qslice/qslice/cmd/qslice", "github.com/qslice/qslice/chaos/cmd/qslice-chaos-handler")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("build qslice and the chaos handler: %w\n%s", err, out)
	}
	return Binaries{Qslice: filepath.Join(dir, "qslice"), Handler: filepath.Join(dir, "qslice-chaos-handler")}, nil
}

// BuildVersion compiles qslice alone, reporting version (its build_info and the version in its
// Consul service Meta), into dir as qslice-<version>: the binary of a rolling upgrade.
func BuildVersion(ctx context.Context, dir, version string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "qslice-"+version)
	cmd := exec.CommandContext(ctx, goBin, "build", "-ldflags", "-X github.com/qslice/qslice/internal/buildinfo.version="+version, "-o", out, "github.com/qslice/qslice/cmd/qslice")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build qslice %s: %w\n%s", version, err, b)
	}
	return out, nil
}

// ClusterConfig describes the nodes of a chaos cluster. Zero fields take the defaults of
// DefaultClusterConfig.
type ClusterConfig struct {
	Nodes  int // qslice processes
	Slices int // slices of the one queue, "in"
	// TTL, LockDelay and HoldDown go to every node's consul: section.
	TTL, LockDelay, HoldDown time.Duration
	Concurrency              int // handlers at once per node (worker processes with Worker)
	// Worker runs the ledger handler as persistent workers (handler.worker, in_flight 4) instead
	// of one exec per message. Faults then strike whenever they come: a node always has children.
	Worker       bool
	Work         time.Duration // how long the handler works per message
	PollInterval time.Duration // the runners' rescan period of an empty queue
	Bin          Binaries
	// Dir holds the queue, the configs, the ledgers and the logs; required.
	Dir string
	// FS, when set, puts the queue on a shared filesystem with one mount per node (a
	// glustertest bed): node i works the queue through NodeRoots[i], the harness (feeder and
	// final checks) through SharedRoot, and KindFSCut acts on node i's mount through FS.
	FS         FSBed
	SharedRoot string
	NodeRoots  []string
	// ShutdownGrace is every queue's shutdown_grace (default 20 s).
	ShutdownGrace time.Duration
	// FSHealth goes to every node's health.filesystem section when set (interval, timeout,
	// recover_after); zero fields keep qslice's defaults.
	FSHealth FSHealthConfig
	// ConsulAddr is host:port of the Consul HTTP API; required.
	ConsulAddr string
	// Name is the nodes' cluster: name (default "chaos").
	Name string
	// WatchLayout is every node's consul.watch_layout ("": qslice's default, prefix).
	WatchLayout string
	Log         *slog.Logger // the harness's own log; nil discards
}

// FSBed cuts and heals one node's mount of the shared filesystem.
type FSBed interface {
	Cut(node int) error
	Heal(node int) error
}

// FSHealthConfig is a node's health.filesystem section.
type FSHealthConfig struct {
	Interval, Timeout, RecoverAfter time.Duration
}

// EffectiveTimeout returns the filesystem timeout in effect (qslice's default when unset).
func (f FSHealthConfig) EffectiveTimeout() time.Duration {
	if f.Timeout == 0 {
		return fshealth.DefaultTimeout
	}
	return f.Timeout
}

// DefaultClusterConfig: 3 nodes, 8 slices, TTL 2 s, lock-delay 1 s, hold-down 3 s (the shortest
// the config accepts with these: hold-down >= TTL), 2 handlers per node working 5 ms each.
var DefaultClusterConfig = ClusterConfig{
	Nodes: 3, Slices: 8, TTL: 2 * time.Second, LockDelay: time.Second, HoldDown: 3 * time.Second,
	Concurrency: 2, Work: 5 * time.Millisecond, PollInterval: 100 * time.Millisecond,
}

func (c ClusterConfig) withDefaults() ClusterConfig {
	d := DefaultClusterConfig
	if c.Nodes == 0 {
		c.Nodes = d.Nodes
	}
	if c.Slices == 0 {
		c.Slices = d.Slices
	}
	if c.TTL == 0 {
		c.TTL = d.TTL
	}
	if c.LockDelay == 0 {
		c.LockDelay = d.LockDelay
	}
	if c.HoldDown == 0 {
		c.HoldDown = max(d.HoldDown, c.TTL)
	}
	if c.Concurrency == 0 {
		c.Concurrency = d.Concurrency
	}
	if c.Work == 0 {
		c.Work = d.Work
	}
	if c.PollInterval == 0 {
		c.PollInterval = d.PollInterval
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 20 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Name == "" {
		c.Name = "chaos"
	}
	return c
}

// Timing is the nodes' failover timing: TTL, lock-delay and hold-down, and what the failover
// package derives from them (renew interval, request timeout, lease margin).
func (c ClusterConfig) Timing() failover.ConsulConfig {
	return failover.ConsulConfig{TTL: c.TTL, LockDelay: c.LockDelay, HoldDown: c.HoldDown}.WithDefaults()
}

// Lease is the longest a node may go on processing after its last renewal: min(TTL, LockDelay)
// minus the lease margin.
func (c ClusterConfig) Lease() time.Duration {
	t := c.Timing()
	return min(t.TTL, t.LockDelay) - t.LeaseMargin
}

// Cluster is a set of qslice processes on loopback sharing one queue directory and one Consul.
type Cluster struct {
	cfg      ClusterConfig
	log      *slog.Logger
	QueueDir string
	Nodes    []*Node
	client   *http.Client

	closeOnce sync.Once
}

// Node is one qslice node: a config file and, while it runs, one process (its own session).
type Node struct {
	Index  int
	Name   string
	Config string // config file
	Listen string // host:port of its HTTP API
	Ledger string // the handler's ledger file

	// proxy is the node's way to Consul (its consul.address): Cut and Heal act on it.
	proxy *cutProxy

	c           *Cluster
	mu          sync.Mutex
	bin         string   // the qslice binary it runs; "" for the cluster's (see SetBinary)
	proc        *process // nil when not running
	incarnation int
	paused      bool
	logs        []string // one log file per process started
}

type process struct {
	cmd    *exec.Cmd
	pid    int
	exited chan struct{}
}

// NewCluster writes one config per node; Start runs them.
func NewCluster(cfg ClusterConfig) (*Cluster, error) {
	cfg = cfg.withDefaults()
	if cfg.Dir == "" || cfg.ConsulAddr == "" || cfg.Bin.Qslice == "" || cfg.Bin.Handler == "" {
		return nil, errors.New("chaos cluster: Dir, ConsulAddr and Bin are required")
	}
	root := cfg.Dir
	if cfg.FS != nil {
		if cfg.SharedRoot == "" || len(cfg.NodeRoots) != cfg.Nodes {
			return nil, fmt.Errorf("chaos cluster: with FS, SharedRoot and one NodeRoots entry per node (%d) are required", cfg.Nodes)
		}
		root = cfg.SharedRoot
	}
	c := &Cluster{cfg: cfg, log: cfg.Log, QueueDir: filepath.Join(root, "queue", "in"),
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}}
	for _, d := range []string{c.QueueDir, filepath.Join(cfg.Dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("chaos cluster: %w", err)
		}
	}
	for i := 0; i < cfg.Nodes; i++ {
		n, err := c.newNode(i)
		if err != nil {
			c.closeProxies()
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	return c, nil
}

// newNode writes the config of node i, with its own proxy to Consul (started here; Close stops
// it).
func (c *Cluster) newNode(i int) (*Node, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	n := &Node{Index: i, Name: fmt.Sprintf("n%d", i+1), Listen: fmt.Sprintf("127.0.0.1:%d", port), c: c}
	n.Config = filepath.Join(c.cfg.Dir, "config-"+n.Name+".yaml")
	n.Ledger = filepath.Join(c.cfg.Dir, "ledger-"+n.Name+".log")
	if n.proxy, err = newCutProxy(c.cfg.ConsulAddr); err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	if err := c.writeConfig(n); err != nil {
		n.proxy.Close()
		return nil, err
	}
	return n, nil
}

func (c *Cluster) closeProxies() {
	for _, n := range c.Nodes {
		n.proxy.Close()
	}
}

// Config returns the configuration in use (with defaults).
func (c *Cluster) Config() ClusterConfig { return c.cfg }

// LedgerPaths lists every node's ledger file.
func (c *Cluster) LedgerPaths() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.Ledger)
	}
	return out
}

// nodeQueueDir is the queue directory as node n reaches it.
func (c *Cluster) nodeQueueDir(n *Node) string {
	if c.cfg.FS != nil {
		return filepath.Join(c.cfg.NodeRoots[n.Index], "queue", "in")
	}
	return c.QueueDir
}

func (c *Cluster) writeConfig(n *Node) error {
	fsh := map[string]any{}
	for k, d := range map[string]time.Duration{"interval": c.cfg.FSHealth.Interval, "timeout": c.cfg.FSHealth.Timeout, "recover_after": c.cfg.FSHealth.RecoverAfter} {
		if d > 0 {
			fsh[k] = d.String()
		}
	}
	cfg := map[string]any{
		"health":  map[string]any{"filesystem": fsh},
		"node":    n.Name,
		"cluster": c.cfg.Name,
		"listen":  n.Listen,
		"control": map[string]any{"socket": c.socketPath(n)}, // qslice drain uses it
		// The node's lock and the session a restart resumes (restart in place), per node: the
		// harness runs every node on this host.
		"state_dir": filepath.Join(c.cfg.Dir, "state-"+n.Name),
		"consul": map[string]any{
			"address": n.proxy.Addr(), "ttl": c.cfg.TTL.String(), "lock_delay": c.cfg.LockDelay.String(),
			"hold_down": c.cfg.HoldDown.String(), "watch_layout": c.cfg.WatchLayout,
		},
		"probes": map[string]any{"interval": "1s", "budget": "1s"},
		"queues": []any{map[string]any{
			"name": "in", "dir": c.nodeQueueDir(n), "slices": c.cfg.Slices, "concurrency": c.cfg.Concurrency,
			"poll_interval": c.cfg.PollInterval.String(), "shutdown_grace": c.cfg.ShutdownGrace.String(),
			"retry": map[string]any{"initial": "100ms", "max": "1s", "max_elapsed": "5m"},
			"handler": map[string]any{
				"exec":    []string{c.cfg.Bin.Handler},
				"timeout": "30s",
				"env":     map[string]string{"CHAOS_NODE": n.Name, "CHAOS_LEDGER": n.Ledger, "CHAOS_WORK": c.cfg.Work.String()},
			},
		}},
	}
	if c.cfg.Worker {
		h := cfg["queues"].([]any)[0].(map[string]any)["handler"].(map[string]any)
		delete(h, "exec")
		h["worker"], h["in_flight"] = []string{c.cfg.Bin.Handler, "-worker"}, 4
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("write config of %s: %w", n.Name, err)
	}
	if err := os.WriteFile(n.Config, b, 0o644); err != nil {
		return fmt.Errorf("write config of %s: %w", n.Name, err)
	}
	return nil
}

// socketPath is node n's control socket: in the cluster's directory, or in the system's temp
// directory when that path would pass the 107 bytes a unix socket address holds.
func (c *Cluster) socketPath(n *Node) string {
	p := filepath.Join(c.cfg.Dir, n.Name+".sock")
	if len(p) > 100 {
		p = filepath.Join(os.TempDir(), fmt.Sprintf("qslice-chaos-%d-%s.sock", os.Getpid(), n.Name))
	}
	return p
}

// freePort picks a loopback port for a node's HTTP listener, which every incarnation of the node
// binds again. It is taken below Linux's ephemeral range (32768-60999 by default): a port the
// kernel handed out for :0 goes back to that range once closed, and the next outgoing
// connection of any process (a Consul client of a test running beside this one) may take it as
// its local port and keep it for minutes, so that the node's bind fails.
func freePort() (int, error) {
	for range 200 {
		p := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // in use: try another
		}
		l.Close()
		return p, nil
	}
	return 0, errors.New("free port: none found in 20000-31999")
}

// nodeEnv is the environment of a qslice process: nothing from the harness's own environment
// but PATH, HOME and TMPDIR, so that no CONSUL_* or OTEL_* variable changes what is tested.
func nodeEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// Start runs node n (which must not be running) and returns once its process started; it does not
// wait for the node to be ready.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		return fmt.Errorf("start %s: already running (pid %d)", n.Name, n.proc.pid)
	}
	n.incarnation++
	logPath := filepath.Join(n.c.cfg.Dir, "logs", fmt.Sprintf("%s.%d.log", n.Name, n.incarnation))
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	bin := n.c.cfg.Bin.Qslice
	if n.bin != "" {
		bin = n.bin
	}
	cmd := exec.Command(bin, "--log-format", "json", "run", "--config", n.Config)
	// Its own session: the harness signals the whole machine-like group of processes. Pdeathsig:
	// a harness that dies takes its nodes along.
	attr := &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if n.c.cfg.FS != nil {
		// On per-node mounts each node is a host of its own, by name too (a UTS namespace; the
		// harness runs as root there): what qslice records as "this host" (lock files, handler
		// process records) must not name the other nodes' processes, which may be blocked in
		// their own mount, as its own.
		attr.Cloneflags = syscall.CLONE_NEWUTS
		cmd = exec.Command("/bin/sh", append([]string{"-c", `hostname "$0" && exec "$@"`, "chaos-" + n.Name}, cmd.Args...)...)
		cmd.Path = "/bin/sh"
	}
	cmd.Env = nodeEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	p := &process{cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() { // owned by the node: ends when the process exits, which Kill and Close ensure
		_ = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	n.proc, n.paused = p, false
	n.logs = append(n.logs, logPath)
	n.c.log.Info("node started", "node", n.Name, "pid", p.pid, "incarnation", n.incarnation)
	return nil
}

// SetBinary makes the node's next Start run the qslice binary at path (an upgrade).
func (n *Node) SetBinary(path string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.bin = path
}

// Running reports whether the node's process runs (paused counts as running).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return false
	}
	select {
	case <-n.proc.exited:
		return false
	default:
		return true
	}
}

// Logs returns the log files of every process the node ran, oldest first.
func (n *Node) Logs() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.logs...)
}

// WaitBusy waits up to timeout for the node to run a handler (qslice has a child process), so
// that a fault strikes in the middle of a handling; it reports whether it saw one.
func (n *Node) WaitBusy(timeout time.Duration) bool {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return false
	}
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for ; time.Now().Before(deadline); <-t.C {
		if hasChildren(p.pid) {
			return true
		}
	}
	return false
}

// Kill SIGKILLs every process of the node's session and waits until they are gone. It returns
// when the kill has taken effect.
func (n *Node) Kill() error {
	p, err := n.running("kill")
	if err != nil {
		return err
	}
	return errors.Join(signalSession(p.pid, syscall.SIGKILL), n.reap(p, 10*time.Second))
}

// Crash SIGKILLs the node's qslice process alone, as the OOM killer does: its handlers'
// processes may outlive it until the next process of the node kills them at its start
// (proctree.KillOrphans), or until their own Pdeathsig. It returns once qslice exited.
func (n *Node) Crash() error {
	p, err := n.running("crash")
	if err != nil {
		return err
	}
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("crash %s: %w", n.Name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("crash %s: pid %d did not exit within 10s of SIGKILL", n.Name, p.pid)
	}
	n.forget(p)
	return nil
}

// running returns the node's process, or an error saying that op found none.
func (n *Node) running(op string) (*process, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return nil, fmt.Errorf("%s %s: not running", op, n.Name)
	}
	return n.proc, nil
}

// forget records that p, the node's process unless another was started since, has exited.
func (n *Node) forget(p *process) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == p {
		n.proc, n.paused = nil, false
	}
}

// reap waits for the process to exit and its session to empty (handlers killed too).
func (n *Node) reap(p *process, timeout time.Duration) error {
	var err error
	select {
	case <-p.exited:
	case <-time.After(timeout):
		err = fmt.Errorf("%s (pid %d) did not exit within %s", n.Name, p.pid, timeout)
	}
	err = errors.Join(err, waitSessionGone(p.pid, 5*time.Second))
	n.forget(p)
	return err
}

// Pause SIGSTOPs every process of the node's session and returns once all are stopped.
func (n *Node) Pause() error {
	n.mu.Lock()
	p := n.proc
	n.paused = p != nil
	n.mu.Unlock()
	if p == nil {
		return fmt.Errorf("pause %s: not running", n.Name)
	}
	if err := signalSession(p.pid, syscall.SIGSTOP); err != nil {
		return err
	}
	return waitSessionStopped(p.pid, 5*time.Second)
}

// Resume SIGCONTs every process of the node's session.
func (n *Node) Resume() error {
	n.mu.Lock()
	p := n.proc
	n.paused = false
	n.mu.Unlock()
	if p == nil {
		return fmt.Errorf("resume %s: not running", n.Name)
	}
	return signalSession(p.pid, syscall.SIGCONT)
}

// Cut cuts the node off Consul while its processes run on: every connection of its proxy is
// closed, and new ones are closed as soon as they are accepted, until Heal. It returns once every
// open connection is closed.
func (n *Node) Cut() { n.proxy.Cut() }

// Blackhole cuts the node off Consul the harsh way while its processes run on: no byte passes
// on its open connections, and new ones are accepted and held silent, until Heal; the
// connections opened until then stay silent for good (see cutProxy). It returns how many open
// connections it silenced, once nothing is forwarded on any of them.
func (n *Node) Blackhole() (int, error) { return n.proxy.Blackhole() }

// Heal lets the node reach Consul again on new connections and returns how many it tried while
// cut off: refused (closed at once: cut, or over the proxy's bounds) and held silent
// (blackholed).
func (n *Node) Heal() (refused, held int) { return n.proxy.Heal() }

// Silent is how many of the node's connections to Consul its proxy holds silent.
func (n *Node) Silent() int { return n.proxy.Silent() }

// waitStatus polls the node's status (every 20 ms) until cond accepts it, up to timeout.
func (n *Node) waitStatus(ctx context.Context, timeout time.Duration, cond func(agent.Status) error) error {
	return pollUntil(timeout, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		st, err := n.Status(ctx)
		if err != nil {
			return err
		}
		return cond(st)
	})
}

// WaitLease polls the node's status until its lease is valid (or, with valid false, until it is
// not), up to timeout.
func (n *Node) WaitLease(ctx context.Context, valid bool, timeout time.Duration) error {
	err := n.waitStatus(ctx, timeout, func(st agent.Status) error {
		if st.LeaseValid != valid {
			return fmt.Errorf("lease_valid is %t (consul error: %q)", st.LeaseValid, st.ConsulError)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: waiting for lease_valid %t: %w", n.Name, valid, err)
	}
	return nil
}

// Stop sends SIGTERM to qslice (a clean stop: handlers finish, slices are handed off) and waits
// up to timeout; then it kills the session and says so.
func (n *Node) Stop(timeout time.Duration) error {
	n.mu.Lock()
	p := n.proc
	paused := n.paused
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	if paused {
		_ = signalSession(p.pid, syscall.SIGCONT)
	}
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s: %w", n.Name, err)
	}
	select {
	case <-p.exited:
		return n.reap(p, time.Second)
	case <-time.After(timeout):
		_ = signalSession(p.pid, syscall.SIGKILL)
		return errors.Join(fmt.Errorf("stop %s: no exit within %s of SIGTERM; killed", n.Name, timeout), n.reap(p, 10*time.Second))
	}
}

// CLI runs `qslice <args...> --config <node config>` and returns its output.
func (n *Node) CLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, n.c.cfg.Bin.Qslice, append(args, "--config", n.Config)...)
	cmd.Env = nodeEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("qslice %s on %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Status asks the node's agent for its status.
func (n *Node) Status(ctx context.Context) (agent.Status, error) {
	var st agent.Status
	body, err := n.get(ctx, "/api/status")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("status of %s: %w", n.Name, err)
	}
	return st, nil
}

// OwnershipChanges reads qslice_ownership_changes_total by reason from the node's /metrics.
func (n *Node) OwnershipChanges(ctx context.Context) (map[string]float64, error) {
	body, err := n.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	return parseOwnershipChanges(strings.NewReader(string(body)))
}

// Version reads the version label of qslice_build_info from the node's /metrics.
func (n *Node) Version(ctx context.Context) (string, error) {
	body, err := n.get(ctx, "/metrics")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "qslice_build_info{") {
			continue
		}
		for _, key := range []string{`{version="`, `,version="`} { // not goversion
			if _, rest, ok := strings.Cut(line, key); ok {
				v, _, _ := strings.Cut(rest, `"`)
				return v, nil
			}
		}
	}
	return "", fmt.Errorf("%s: no qslice_build_info with a version in /metrics", n.Name)
}

func parseOwnershipChanges(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	const name = "qslice_ownership_changes_total{"
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		labels, value, ok := strings.Cut(line[len(name):], "} ")
		if !ok {
			continue
		}
		reason := ""
		for _, l := range strings.Split(labels, ",") {
			if k, v, ok := strings.Cut(l, "="); ok && k == "reason" {
				reason = strings.Trim(v, `"`)
			}
		}
		f, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return nil, fmt.Errorf("parse metrics line %q: %w", line, err)
		}
		out[reason] += f
	}
	return out, sc.Err()
}

func (n *Node) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Listen+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s from %s: %w", path, n.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("get %s from %s: %w", path, n.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s from %s: %s", path, n.Name, resp.Status)
	}
	return body, nil
}

// StartAll starts every node that is not running.
func (c *Cluster) StartAll() error {
	for _, n := range c.Nodes {
		if !n.Running() {
			if err := n.Start(); err != nil {
				return err
			}
		}
	}
	return nil
}

// StopAll stops every node cleanly (SIGTERM), all at once, and waits.
func (c *Cluster) StopAll(timeout time.Duration) error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = n.Stop(timeout) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close kills every process of every node and waits for them, then stops the nodes' proxies to
// Consul. Idempotent; safe after StopAll.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		for _, n := range c.Nodes {
			n.mu.Lock()
			p := n.proc
			n.mu.Unlock()
			if p == nil {
				continue
			}
			_ = signalSession(p.pid, syscall.SIGCONT)
			_ = signalSession(p.pid, syscall.SIGKILL)
			_ = n.reap(p, 10*time.Second)
		}
		c.closeProxies()
	})
}

// Ownership is the cluster's slice map as the running nodes see it.
type Ownership struct {
	Owner map[int]string // slice -> owner ("" when unowned)
	Home  map[int]string
	// Processing: slice -> the owner itself reports it processing (state owned).
	Processing map[int]bool
	// Owned: node -> slices it reports processing.
	Owned map[string][]int
	// ProcessedBy: slice -> the node that reports processing it; Homes: slice -> its home as
	// each running node sees it. Owner and Home are the first node's view, which may be stale
	// (a node whose watch hears nothing from Consul); these are every node's own word.
	ProcessedBy map[int]string
	Homes       map[int][]string
	// Held: node -> slices whose lock it holds by its own account, processed or not (its lease
	// lapsed: suspended; being handed off: releasing).
	Held map[string][]int
}

// Ownership asks every running, unpaused node for its status and combines them. It fails when a
// running node does not answer.
func (c *Cluster) Ownership(ctx context.Context) (Ownership, error) {
	o := Ownership{Owner: map[int]string{}, Home: map[int]string{}, Processing: map[int]bool{}, Owned: map[string][]int{},
		ProcessedBy: map[int]string{}, Homes: map[int][]string{}, Held: map[string][]int{}}
	seen := false
	for _, n := range c.Nodes {
		n.mu.Lock()
		skip := n.proc == nil || n.paused
		n.mu.Unlock()
		if skip {
			continue
		}
		st, err := n.Status(ctx)
		if err != nil {
			return o, err
		}
		for _, s := range st.Slices {
			if !seen {
				o.Owner[s.Slice], o.Home[s.Slice] = s.Owner, s.Home
			}
			o.Homes[s.Slice] = append(o.Homes[s.Slice], s.Home)
			if s.Owner == n.Name && (s.State == "owned" || s.State == "suspended" || s.State == "releasing") {
				o.Held[n.Name] = append(o.Held[n.Name], s.Slice)
			}
			if s.Owner == n.Name && s.State == "owned" {
				o.Processing[s.Slice] = true
				o.ProcessedBy[s.Slice] = n.Name
				o.Owned[n.Name] = append(o.Owned[n.Name], s.Slice)
			}
		}
		seen = true
	}
	if !seen {
		return o, errors.New("no node running")
	}
	return o, nil
}

// WaitRejoined polls until node n (running again after a fault) has a valid lease and, with
// home, ranks first for some slice in its own view: it is registered and sees itself a member,
// so that WaitOwned's convergence includes it. Without this, right after a restart the others
// converge on a cluster without n, and n's fail-backs come later, during whatever follows.
func (c *Cluster) WaitRejoined(ctx context.Context, n *Node, home bool, timeout time.Duration) error {
	return n.waitStatus(ctx, timeout, func(st agent.Status) error {
		if !st.LeaseValid {
			return fmt.Errorf("%s: no valid lease yet", n.Name)
		}
		if !home {
			return nil
		}
		for _, s := range st.Slices {
			if s.Home == n.Name {
				return nil
			}
		}
		return fmt.Errorf("%s: home of no slice in its own view yet", n.Name)
	})
}

// WaitOwned polls until every slice is processed by a running node (and, with converged, by its
// home node as every running node sees it, which also means every running node got its share
// after the hold-down), or timeout.
func (c *Cluster) WaitOwned(ctx context.Context, timeout time.Duration, converged bool) error {
	return pollUntil(timeout, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		o, err := c.Ownership(ctx)
		if err != nil {
			return err
		}
		for s := 0; s < c.cfg.Slices; s++ {
			if !o.Processing[s] {
				return fmt.Errorf("slice %d not processed (owner %q)", s, o.Owner[s])
			}
			if !converged {
				continue
			}
			for _, h := range o.Homes[s] {
				if h != o.ProcessedBy[s] {
					return fmt.Errorf("slice %d processed by %s, home %s (homes as the nodes see it: %v)", s, o.ProcessedBy[s], h, o.Homes[s])
				}
			}
		}
		return nil
	})
}
