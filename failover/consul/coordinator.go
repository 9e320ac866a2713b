package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// The Coordinator: construction (Consul client, TLS, names), the immutable snapshots readers
// load (Status, ValidUntil, FencingToken) and the control calls (Drain, Undrain).

// ServiceName is the Consul service every qslice node registers.
const ServiceName = "qslice"

// Coordinator owns slices through Consul sessions and KV locks. It is the driver of a
// Machine: one goroutine (Run's loop) owns the Machine, feeds it the watches' answers, the
// keeper's lease, the assignee's releases and the operator's Drain/Undrain, and carries out what
// Ready says. Readers (Status, ValidUntil, FencingToken, the keeper) load immutable snapshots.
type Coordinator struct {
	cfg       failover.ConsulConfig
	client    *api.Client
	transport *http.Transport // the client's; see resetConnections
	addr      string
	a         failover.Assignee
	health    failover.HealthSource
	log       *slog.Logger
	clk       clock.Clock
	tp        trace.TracerProvider // see SetTracer

	prefix       string // qslice/<cluster>/
	serviceID    string
	aliveCheckID string
	queueCheckID map[string]string
	sessionName  string

	wake      chan struct{} // loop wake-up, capacity 1
	metaDirty chan struct{} // keeper wake-up, capacity 1
	ctl       chan ctlReq
	released  chan uint64 // SetSlices generations whose channel closed
	running   atomic.Bool
	done      chan struct{} // closed when Run returns (after a start)
	// crashOnCancel (tests only) makes Run return at cancel without releasing anything, as if
	// the process died: nothing is renewed any more.
	crashOnCancel bool
	registered    atomic.Bool // the service was registered at least once
	// noMemberKey (tests only) makes the node behave as a qslice from before member keys.
	noMemberKey bool

	// Restart in place (restart.go); set before Run.
	prev  *failover.PreviousRun // the previous process's session to adopt, nil: start fresh
	store failover.RunStore     // where the session is recorded; nil: a stop hands off
	leave chan struct{}         // Leave: stop handing everything off, capacity 1
	rec   runRecord             // what store holds
	// runErr is what Run returned, readable once done is closed.
	runErr error

	inbox inbox                      // the watches' latest answers, for the loop
	lease atomic.Pointer[leaseState] // published by the keeper
	pub   atomic.Pointer[published]  // published by the loop
	// members is the membership watch's last answer, for MemberEntries (the status page).
	members       atomic.Pointer[memberAnswer]
	memberRefresh sync.Mutex // one MemberEntries read at a time (scoped layout)
	// memberHeld is the keeper's last write of the member key (memberkey.go).
	memberHeld atomic.Pointer[memberWrite]
	// sc runs the scoped layout's watches (scoped.go); nil in the prefix layout.
	sc *scoped

	mu       sync.Mutex // guards the fields below (Consul request bookkeeping) and watchGen
	errCount map[string]uint64
	failing  map[failover.ConsulOp]error // op -> explained error, while failing
	outage   *outage                     // nil unless a request failed and Consul has not been fine since
	watchGen chan struct{}               // closed by resetConnections: the watches' requests give up
	// abandoned holds when each blocking query given up by resetConnections ends on the agent
	// (its send time + watchWait + jitter): Consul 1.13 keeps running a query its client gave
	// up, its connection counted against limits.http_max_conns_per_client, until its wait ends.
	abandoned []time.Time
	keptOpen  int // requests resetConnections left running, over maxAbandoned, since the last log
	lastErr   string
}

// published is what the loop publishes after every round: immutable once stored.
type published struct {
	status     *failover.Status            // without the Consul error counts and the lease, added by failover.Status()
	processing map[string][]int            // slices handed to the assignee, by queue
	meta       map[string]string           // wanted service Meta, without live_since
	tokens     map[failover.SliceID]uint64 // fencing token of each owned slice; see FencingToken
}

var _ failover.Coordinator = (*Coordinator)(nil)

// New validates cfg (after defaults) and builds a coordinator; nothing talks to Consul
// before Run. health may be nil (always healthy), logger nil (discard), clk nil (the system clock).
func New(cfg failover.ConsulConfig, a failover.Assignee, health failover.HealthSource, logger *slog.Logger, clk clock.Clock) (*Coordinator, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consul config: %w", err)
	}
	if a == nil {
		return nil, errors.New("consul coordinator: nil failover.Assignee")
	}
	if health == nil {
		health = alwaysHealthy{}
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if clk == nil {
		clk = clock.System{}
	}
	acfg := api.DefaultConfig()
	if cfg.Address != "" {
		acfg.Address = cfg.Address
		if u, err := url.Parse(cfg.Address); err == nil && u.Host != "" && (u.Scheme == "http" || u.Scheme == "https") {
			acfg.Scheme, acfg.Address = u.Scheme, u.Host
		}
	}
	if cfg.Token != "" {
		acfg.Token = cfg.Token
	}
	t := cfg.TLS
	if t.CAFile != "" {
		acfg.TLSConfig.CAFile = t.CAFile
	}
	if t.CAPath != "" {
		acfg.TLSConfig.CAPath = t.CAPath
	}
	if t.CertFile != "" {
		acfg.TLSConfig.CertFile = t.CertFile
	}
	if t.KeyFile != "" {
		acfg.TLSConfig.KeyFile = t.KeyFile
	}
	if t.ServerName != "" {
		acfg.TLSConfig.Address = t.ServerName
	}
	if t.InsecureSkipVerify {
		acfg.TLSConfig.InsecureSkipVerify = true
	}
	if t.CAFile != "" || t.CertFile != "" {
		acfg.Scheme = "https"
	}
	// Our own pooled transport (api.NewClient adds the TLS settings to it), so that a lapsed
	// lease can drop its idle connections: see resetConnections.
	transport := cleanhttp.DefaultPooledTransport()
	acfg.Transport = transport
	client, err := api.NewClient(acfg)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", acfg.Address, err)
	}
	c := &Coordinator{
		cfg: cfg, client: client, transport: transport, addr: acfg.Address, a: a, health: health, log: logger.With("component", "failover", "node", cfg.NodeID), clk: clk,
		prefix:       "qslice/" + cfg.Cluster + "/",
		serviceID:    "qslice-" + cfg.Cluster + "-" + cfg.NodeID,
		queueCheckID: map[string]string{},
		sessionName:  "qslice/" + cfg.Cluster + "/" + cfg.NodeID,
		wake:         make(chan struct{}, 1),
		metaDirty:    make(chan struct{}, 1),
		ctl:          make(chan ctlReq),
		leave:        make(chan struct{}, 1),
		released:     make(chan uint64),
		done:         make(chan struct{}),
		errCount:     map[string]uint64{},
		failing:      map[failover.ConsulOp]error{},
		tp:           noop.NewTracerProvider(),
		watchGen:     make(chan struct{}),
	}
	c.aliveCheckID = c.serviceID + ":alive"
	for _, q := range cfg.Queues {
		c.queueCheckID[q.Name] = c.serviceID + ":queue:" + q.Name
	}
	c.lease.Store(&leaseState{})
	c.members.Store(&memberAnswer{})
	rd := failover.NewMachine(cfg.MachineConfig(), nil, nil).Ready() // the Meta of a node holding nothing
	c.pub.Store(&published{status: &failover.Status{Mode: "consul", NodeID: cfg.NodeID}, processing: map[string][]int{}, meta: rd.Meta})
	return c, nil
}

// Config returns the configuration in use (with defaults applied).
func (c *Coordinator) Config() failover.ConsulConfig { return c.cfg }

type alwaysHealthy struct{}

func (alwaysHealthy) NodeHealthy() error { return nil }
func (alwaysHealthy) SliceHealth(failover.SliceID) failover.Health {
	return failover.Health{Status: failover.StatusPassing}
}

// ValidUntil is the lease deadline: processing is safe strictly before it.
func (c *Coordinator) ValidUntil() time.Time { return c.lease.Load().deadline }

// Status returns a snapshot.
func (c *Coordinator) Status() failover.Status {
	s := *c.pub.Load().status
	s.Owned = slices.Clone(s.Owned)
	s.Slices = slices.Clone(s.Slices)
	if s.OwnershipChanges = maps.Clone(s.OwnershipChanges); s.OwnershipChanges == nil {
		s.OwnershipChanges = map[string]uint64{}
	}
	c.mu.Lock()
	s.ConsulErrors = maps.Clone(c.errCount) // never nil
	s.ConsulError = c.lastErr
	c.mu.Unlock()
	now := c.clk.Now()
	deadline := c.ValidUntil()
	s.LeaseValid = now.Before(deadline)
	if s.LeaseValid {
		s.LeaseRemaining = deadline.Sub(now)
	}
	return s
}

type ctlReq struct {
	drain bool
	// reply receives, once the request is applied, a channel that yields the drain's outcome
	// (nil when complete) for Drain, nil for Undrain.
	reply chan chan error
}

// Drain hands every slice to other nodes, waits until this node holds none, and keeps the node
// from taking any until Undrain. If ctx ends first, the drain stays in effect.
func (c *Coordinator) Drain(ctx context.Context) error {
	res, err := c.control(ctx, true)
	if err != nil {
		return err
	}
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return fmt.Errorf("drain: %w", ctx.Err())
	case <-c.done:
		return fmt.Errorf("drain: %w", failover.ErrNotRunning)
	}
}

// Undrain lets the node take slices again.
func (c *Coordinator) Undrain(ctx context.Context) error {
	_, err := c.control(ctx, false)
	return err
}

func (c *Coordinator) control(ctx context.Context, drain bool) (chan error, error) {
	op := "undrain"
	if drain {
		op = "drain"
	}
	if !c.running.Load() {
		return nil, fmt.Errorf("%s: %w", op, failover.ErrNotRunning)
	}
	req := ctlReq{drain: drain, reply: make(chan chan error, 1)}
	select {
	case c.ctl <- req:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", op, ctx.Err())
	case <-c.done:
		return nil, fmt.Errorf("%s: %w", op, failover.ErrNotRunning)
	}
	select {
	case ch := <-req.reply:
		return ch, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", op, ctx.Err())
	case <-c.done:
		return nil, fmt.Errorf("%s: %w", op, failover.ErrNotRunning)
	}
}

// FencingToken returns the fencing token of slice index of queue q while this node holds its
// lock, else 0: the ModifyIndex of the slice's KV pair when this node acquired it. Consul's Raft
// index only grows, so whoever acquires the slice next gets a larger token: a system that keeps
// the largest token it has seen per slice can refuse the writes of an owner that lost the slice
// but still runs (after a pause, say).
func (c *Coordinator) FencingToken(q string, index int) uint64 {
	return c.pub.Load().tokens[failover.SliceID{Queue: q, Index: index}]
}

func (c *Coordinator) wantMeta() map[string]string { return c.pub.Load().meta }

func (c *Coordinator) processingSlices() map[string][]int { return c.pub.Load().processing }

// memberAnswer is what MemberEntries returns: immutable once stored.
type memberAnswer struct {
	entries []*api.ServiceEntry
	read    bool
	err     error
	at      time.Time // when it was read (scoped layout: see MemberEntries)
}

// memberEntriesMaxAge: in the scoped layout nothing watches the service's health, so
// MemberEntries reads it again when its last answer is older than this (at most once per
// this interval, however many readers ask).
const memberEntriesMaxAge = 2 * time.Second

// MemberEntries returns the last answer of the membership watch (every instance of the qslice
// service, of every cluster, with its checks), whether one has arrived, and the watch's error
// while its requests fail (the entries are then the last ones read). The status page reads the
// members from here instead of watching Consul a second time: each watch answer is the whole
// service health, and a failover changes it several times.
//
// In the scoped layout no watch reads the service's health (a full read does, every
// FullReadInterval): MemberEntries then reads it itself when the last answer is older than
// memberEntriesMaxAge, so the status page and `qslice members` show the present.
func (c *Coordinator) MemberEntries() (entries []*api.ServiceEntry, read bool, err error) {
	a := c.members.Load()
	if c.cfg.WatchLayout == failover.LayoutScoped && c.running.Load() && c.clk.Now().Sub(a.at) > memberEntriesMaxAge && c.memberRefresh.TryLock() {
		if a = c.members.Load(); c.clk.Now().Sub(a.at) > memberEntriesMaxAge {
			c.readMemberEntries(context.Background())
		}
		c.memberRefresh.Unlock()
		a = c.members.Load()
	}
	return a.entries, a.read, a.err
}

// readMemberEntries reads the service's health once for MemberEntries.
func (c *Coordinator) readMemberEntries(ctx context.Context) {
	var entries []*api.ServiceEntry
	err := c.call(ctx, failover.OpFullRead, func(ctx context.Context) error {
		var err error
		entries, _, err = c.client.Health().Service(ServiceName, "", false, (&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	last := c.members.Load()
	if err != nil {
		c.members.Store(&memberAnswer{entries: last.entries, read: last.read, err: err, at: c.clk.Now()})
		return
	}
	c.members.Store(&memberAnswer{entries: entries, read: true, at: c.clk.Now()})
}

func (c *Coordinator) sessionID() string { return c.lease.Load().session }

// SetTracer makes the coordinator record its spans with tp; call it before Run. Without it the
// coordinator records nothing.
func (c *Coordinator) SetTracer(tp trace.TracerProvider) {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	c.tp = tp
}
