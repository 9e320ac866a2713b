package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/exporters"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/consul"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/nodestate"
	"github.com/qslice/qslice/probes"
	"github.com/qslice/qslice/runner"
	"github.com/qslice/qslice/runner/supervise"
	workerpool "github.com/qslice/qslice/runner/worker"
)

// Mode selects what the agent runs.
type Mode int

const (
	// ModeRun runs qslice's own runners for queues with a handler, and supervises the queues with
	// supervise: (qslice run).
	ModeRun Mode = iota
	// ModeSidecar runs everything but qslice's own runners: queues with a handler are only observed
	// (qslice agent, for nodes whose workers are not qslice's own).
	ModeSidecar
)

// Options are what New needs besides the configuration.
type Options struct {
	Mode    Mode
	Version string
	// Revision is the VCS commit of the build (the revision label of qslice_build_info).
	Revision string
	Logger   *slog.Logger
	Tracer   trace.TracerProvider // nil: no tracing
	// Observer, when set, also receives every runner event (tests use it as a ledger).
	Observer runner.Observer
	// Handlers overrides the handler of a queue by name (embedding qslice as a library, tests).
	Handlers map[string]runner.Handler
	// Clock is the time source of the agent's decisions (slice health, probes, the Consul
	// coordinator); nil: the system clock.
	Clock clock.Clock
}

// worker is what a queue is worked by: a runner or a supervisor.
type worker interface {
	Run(ctx context.Context) error
	SetSlices([]int) <-chan struct{}
}

// Agent is one node.
type Agent struct {
	cfg    *config.Config
	opts   Options
	log    *slog.Logger
	coord  failover.Coordinator
	probe  *probes.Probe
	reg    *prometheus.Registry
	server *exporters.Server
	health *healthTracker
	fs     *fsWatch // filesystem health of the queues worked here
	// members has the cluster's service instances from Consul (nil when standalone): the Consul
	// coordinator's membership watch.
	members memberSource

	workers     map[string]worker // by queue, only the coordinated queues
	runners     map[string]*runner.Runner
	supervisors map[string]*supervise.Supervisor
	pools       map[string]*workerpool.Pool // queues with handler.worker

	// lock is the node's local lock in state_dir (nil without one), held until Run returns.
	lock *nodestate.Lock

	mu      sync.Mutex
	stopRun context.CancelFunc // ends Run (Leave)
	running bool
	failed  error // set when a component stopped unexpectedly: the node is unhealthy
}

// leaseProxy lets the runners, which must exist before the coordinator, ask it for the lease.
type leaseProxy struct{ coord *failover.Coordinator }

func (l leaseProxy) ValidUntil() time.Time { return (*l.coord).ValidUntil() }

// The Consul coordinator's tokens reach the handlers through leaseProxy.
var _ runner.Fencer = (*consul.Coordinator)(nil)

// FencingToken implements runner.Fencer when the coordinator has tokens (Consul), else 0.
func (l leaseProxy) FencingToken(q string, slice int) uint64 {
	if f, ok := (*l.coord).(runner.Fencer); ok {
		return f.FencingToken(q, slice)
	}
	return 0
}

// New builds a node from a validated configuration.
//
// With a state_dir it first takes the node's local lock: a second process of the same node
// fails here, before it binds anything. Run releases it when it returns.
func New(cfg *config.Config, opts Options) (*Agent, error) {
	lock, err := lockNode(cfg.StateDir, cfg.Node)
	if err != nil {
		return nil, err
	}
	a, err := newAgent(cfg, opts)
	if err != nil {
		lock.Release()
		return nil, err
	}
	a.lock = lock
	return a, nil
}

func newAgent(cfg *config.Config, opts Options) (*Agent, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	a := &Agent{cfg: cfg, opts: opts, log: opts.Logger, workers: map[string]worker{},
		runners: map[string]*runner.Runner{}, supervisors: map[string]*supervise.Supervisor{}, pools: map[string]*workerpool.Pool{}}
	a.reg = exporters.NewRegistry(opts.Version, opts.Revision)

	var queueNames []string
	for _, q := range cfg.Queues {
		queueNames = append(queueNames, q.Name)
	}
	rm, err := exporters.NewRunnerMetrics(a.reg, queueNames)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	a.health = newHealthTracker(cfg.Health, opts.Clock)
	var obs runner.Observer = multiObserver{rm, a.health}
	if opts.Observer != nil {
		obs = multiObserver{rm, a.health, opts.Observer}
	}

	// Probes observe every queue, worked here or not, and every lock directory.
	pcfg := probes.Config{Interval: cfg.Probes.Interval, Timeout: cfg.Probes.Budget, Logger: a.log.With("component", "probe"), Clock: opts.Clock}
	lockDirs := map[string]bool{}
	for _, q := range cfg.Queues {
		if q.Dir == "" {
			continue // a supervised worker without a queue directory (Mailman's rest, lmtp, task)
		}
		rc := q.RunnerConfig()
		pcfg.Queues = append(pcfg.Queues, probes.QueueConfig{Name: q.Name, Dir: q.Dir, Slices: q.Slices, ShuntDir: rc.Dir.ShuntDir, BadDir: rc.Dir.BadDir, NoBytes: !cfg.Probes.Bytes, BytesMaxFiles: cfg.Probes.BytesMaxFiles})
		if q.LockDir != "" {
			lockDirs[q.LockDir] = true
		}
	}
	for _, d := range cfg.Probes.LockDirs {
		lockDirs[d] = true
	}
	localHosts := lockfileHosts()
	dirs := make([]string, 0, len(lockDirs))
	for d := range lockDirs {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for i, d := range dirs {
		pcfg.LockDirs = append(pcfg.LockDirs, probes.LockDirConfig{Name: lockDirLabel(d, i), Dir: d, Inspect: localHosts})
	}
	a.probe, err = probes.New(pcfg)
	if err != nil {
		return nil, err
	}
	a.health.probe = a.probe

	// Workers of the coordinated queues.
	if opts.Mode == ModeRun {
		if err := a.newPools(cfg.Queues); err != nil {
			return nil, err
		}
	}
	var coordinated []config.Queue
	for _, q := range cfg.Queues {
		switch {
		case q.Supervise != nil:
			sc, err := q.SuperviseConfig()
			if err != nil {
				return nil, fmt.Errorf("queue %s: supervise: %w", q.Name, err)
			}
			s, err := supervise.New(q.Name, q.Slices, sc, a.log.With("component", "supervise"), supervise.WithClock(opts.Clock))
			if err != nil {
				return nil, fmt.Errorf("queue %s: %w", q.Name, err)
			}
			a.supervisors[q.Name] = s
			a.workers[q.Name] = s
			coordinated = append(coordinated, q)
		case opts.Mode == ModeRun:
			rc := q.RunnerConfig()
			if h, ok := opts.Handlers[q.Name]; ok {
				rc.Handler = h
			}
			pool := a.pools[q.Name]
			if pool != nil {
				wc, _ := q.WorkerConfig()
				rc.Handler, rc.Concurrency = pool, wc.RunnerConcurrency()
			}
			if err := rc.Dir.Ensure(); err != nil {
				return nil, fmt.Errorf("queue %s: %w (check the path and its permissions)", q.Name, err)
			}
			if rc.LockDir != "" {
				if err := os.MkdirAll(rc.LockDir, 0o755); err != nil {
					return nil, fmt.Errorf("queue %s: lock_dir: %w (check the path and its permissions)", q.Name, err)
				}
			}
			rc.Lease = leaseProxy{&a.coord}
			rc.Observer = obs
			rc.Tracer = opts.Tracer
			rc.Clock = opts.Clock
			rc.Logger = a.log.With("component", "runner")
			r, err := runner.New(rc)
			if err != nil {
				return nil, err
			}
			a.runners[q.Name] = r
			a.workers[q.Name] = r
			if pool != nil {
				a.workers[q.Name] = workerQueue{r, pool}
			}
			coordinated = append(coordinated, q)
		}
	}
	if a.fs, err = newFSWatch(cfg, a); err != nil {
		return nil, err
	}
	// The HTTP server binds before the coordinator registers, which advertises its port.
	var listen []string
	if cfg.Listen != "" {
		listen = []string{cfg.Listen}
	}
	a.server, err = exporters.NewServer(exporters.ServerConfig{
		ListenAddresses: listen, WebConfigFile: cfg.WebConfig, Registry: a.reg,
		Ready: a.ready, Logger: a.log.With("component", "http"),
		ControlSocket: cfg.Control.Socket, ControlTCP: cfg.Control.TCP, AllowedHosts: allowedHosts(cfg),
	})
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			a.server.Close()
		}
	}()
	specs := make([]failover.QueueSpec, 0, len(coordinated))
	for _, q := range coordinated {
		specs = append(specs, failover.QueueSpec{Name: q.Name, Slices: q.Slices, Home: q.Home})
	}
	if cfg.Standalone() {
		a.coord = failover.NewStandalone(specs, assignee{a}, opts.Clock)
	} else {
		fc, err := cfg.FailoverConfig()
		if err != nil {
			return nil, err
		}
		fc.Queues = specs
		fc.Version = opts.Version
		if err := a.advertise(&fc); err != nil {
			return nil, err
		}
		c, err := consul.New(fc, assignee{a}, a, a.log, opts.Clock) // it names its own component
		if err != nil {
			return nil, err
		}
		c.SetTracer(opts.Tracer)
		a.coord = c
		a.members = c
	}

	slicesByQueue := map[string]int{}
	for _, q := range cfg.Queues {
		slicesByQueue[q.Name] = q.Slices
	}
	a.reg.MustRegister(exporters.NewCollector(exporters.CollectorOptions{
		Probe: a.probe, Ownership: ownership{a}, Coordinator: coordStatus{a}, Queues: slicesByQueue,
	}))
	a.reg.MustRegister(exporters.NewNodeCollector(a, 0))
	a.reg.MustRegister(exporters.NewFSCollector(a.fs.States))
	a.registerAPI()
	ok = true
	return a, nil
}

// Registry returns the agent's private Prometheus registry.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Coordinator returns the node's coordinator.
func (a *Agent) Coordinator() failover.Coordinator { return a.coord }

// Addr returns the HTTP server's first bound address.
func (a *Agent) Addr() string {
	if addrs := a.server.Addrs(); len(addrs) > 0 {
		return addrs[0].String()
	}
	return ""
}

// Run runs the node until ctx is cancelled or a component fails.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.running {
		a.mu.Unlock()
		return errors.New("agent already running")
	}
	a.running = true
	ctx, stop := context.WithCancel(ctx) // Leave ends it too
	defer stop()
	a.stopRun = stop
	a.mu.Unlock()
	defer a.lock.Release() // the next process of this node may start once this one is done

	mode := "standalone: this node owns every slice"
	if !a.cfg.Standalone() {
		mode = "consul: slices are shared with the other nodes of cluster " + a.cfg.Cluster
	}
	a.log.Info("qslice starting", "node", a.cfg.Node, "version", a.opts.Version, "mode", mode, "queues", len(a.cfg.Queues), "http", a.Addr())
	a.prepareRestart(ctx) // before the coordinator starts: what it may adopt

	// Workers and the coordinator stop together: on cancel a runner stops claiming, gives running
	// handlers shutdown_grace, then releases what is left; the coordinator narrows it to nothing
	// and waits for exactly that before it keeps the slice locks for the next process (a stop
	// for a restart) or lets them go (Leave, or no state_dir).
	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var wg errgroup.Group
	for name, w := range a.workers {
		wg.Go(func() error {
			err := w.Run(workCtx)
			if err != nil {
				a.fail(fmt.Errorf("queue %s: %w", name, err))
			} else if workCtx.Err() == nil {
				a.fail(fmt.Errorf("queue %s: worker stopped unexpectedly", name))
			}
			return err
		})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return leaveBehind(gctx, a.log, "probe", probeStopBound, a.probe.Run) })
	g.Go(func() error { return a.fs.Run(gctx) })
	g.Go(func() error { return a.server.Run(gctx) })
	g.Go(func() error { return a.coord.Run(gctx) })
	g.Go(func() error {
		// A failed worker stops the whole node (its slices must move to a healthy one).
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				if err := a.unhealthy(); err != nil {
					return err
				}
			}
		}
	})
	err := g.Wait()
	stopWork()
	werr := wg.Wait()
	if err == nil || errors.Is(err, context.Canceled) {
		err = werr
	}
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	a.log.Info("qslice stopped", "node", a.cfg.Node, "err", err)
	return err
}

func (a *Agent) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failed == nil {
		a.failed = err
	}
}

func (a *Agent) unhealthy() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failed
}

// NodeHealthy implements failover.HealthSource: the node's TTL check passes only while every
// component runs.
func (a *Agent) NodeHealthy() error { return a.unhealthy() }

// SliceHealth implements failover.HealthSource.
func (a *Agent) SliceHealth(id failover.SliceID) failover.Health {
	if h, ok := a.fsSliceHealth(id); ok {
		return h
	}
	if h, critical := a.poolHealth(id.Queue); critical {
		return h
	}
	if s, ok := a.supervisors[id.Queue]; ok {
		if h, ok := s.Health()[id.Index]; ok && h.State == supervise.HealthCritical {
			return failover.Health{Status: failover.StatusCritical, Output: h.Reason}
		}
	}
	return a.health.slice(id)
}

var _ failover.HealthSource = (*Agent)(nil)

// NodeInfo implements exporters.NodeSource.
func (a *Agent) NodeInfo() exporters.NodeInfo {
	st := a.coord.Status()
	mode := st.Mode
	if mode == "" {
		mode = "standalone"
	}
	n := exporters.NodeInfo{Node: a.cfg.Node, Cluster: a.cfg.Cluster, Mode: mode, Draining: st.Draining,
		QueueSlices: make(map[string]int, len(a.cfg.Queues))}
	for _, q := range a.cfg.Queues {
		n.QueueSlices[q.Name] = q.Slices
	}
	for _, o := range st.Owned {
		if o.Processing {
			n.Health = append(n.Health, exporters.SliceHealth{Queue: o.Slice.Queue, Slice: o.Slice.Index, State: a.SliceHealth(o.Slice).Status})
		}
	}
	names := make([]string, 0, len(a.supervisors))
	for q := range a.supervisors {
		names = append(names, q)
	}
	sort.Strings(names)
	for _, q := range names {
		n.Workers = append(n.Workers, a.supervisors[q].Snapshot())
	}
	return n
}

func (a *Agent) ready() error {
	if err := a.unhealthy(); err != nil {
		return err
	}
	return a.probe.Ready()
}

// assignee routes the coordinator's SetSlices to the queue's worker.
type assignee struct{ a *Agent }

func (x assignee) SetSlices(q string, s []int) <-chan struct{} {
	if w, ok := x.a.workers[q]; ok {
		return w.SetSlices(s)
	}
	done := make(chan struct{})
	close(done)
	return done
}

// ownership reports the owned slices for the exporters, from the coordinator's view.
type ownership struct{ a *Agent }

func (o ownership) Owned() map[string][]int {
	out := map[string][]int{}
	for _, s := range o.a.coord.Status().Owned {
		if s.Processing {
			out[s.Slice.Queue] = append(out[s.Slice.Queue], s.Slice.Index)
		}
	}
	for q := range out {
		slices.Sort(out[q])
	}
	return out
}

// coordStatus adapts failover.Status to what the exporters need.
type coordStatus struct{ a *Agent }

func (c coordStatus) Status() exporters.CoordinatorStatus {
	st := c.a.coord.Status()
	out := exporters.CoordinatorStatus{LeaseValid: st.LeaseValid, LeaseRemaining: st.LeaseRemaining,
		LeaseForever: st.Mode != "consul", ConsulErrors: st.ConsulErrors, OwnershipChanges: st.OwnershipChanges}
	for _, s := range st.Slices {
		out.Owners = append(out.Owners, exporters.SliceOwner{Queue: s.Slice.Queue, Slice: s.Slice.Index, Node: s.Owner})
	}
	return out
}

// multiObserver fans runner events out.
type multiObserver []runner.Observer

func (m multiObserver) Handled(q string, s int, o runner.Outcome, d time.Duration) {
	for _, x := range m {
		x.Handled(q, s, o, d)
	}
}
func (m multiObserver) LockWait(q string, s int, d time.Duration, r runner.LockResult) {
	for _, x := range m {
		x.LockWait(q, s, d, r)
	}
}
func (m multiObserver) LockHold(q string, s int, d time.Duration) {
	for _, x := range m {
		x.LockHold(q, s, d)
	}
}
func (m multiObserver) Recovered(q string, s int, r string) {
	for _, x := range m {
		x.Recovered(q, s, r)
	}
}
func (m multiObserver) Skipped(q string, r string) {
	for _, x := range m {
		x.Skipped(q, r)
	}
}
func (m multiObserver) Fault(q string, r runner.FaultReason, err error) {
	for _, x := range m {
		x.Fault(q, r, err)
	}
}
