package failover

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
	"github.com/qslice/qslice/internal/clock"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ServiceName is the Consul service every qslice node registers.
const ServiceName = "qslice"

const (
	// watchWait is the blocking-query wait. Consul answers at the latest after it (plus up to
	// wait/16 of jitter), so an idle watch costs one request per node every 5 minutes.
	watchWait = 5 * time.Minute
	// shutdownCallAttempts: after the loop, destroying the session and deregistering are each
	// tried this often (RequestTimeout each, with backoff); then Run gives up and returns the
	// error, and the TTL check and lock-delay take over.
	shutdownCallAttempts = 3
)

// ConsulCoordinator owns slices through Consul sessions and KV locks. It is the driver of a
// Machine: one goroutine (Run's loop) owns the Machine, feeds it the watches' answers, the
// keeper's lease, the assignee's releases and the operator's Drain/Undrain, and carries out what
// Ready says. Readers (Status, ValidUntil, FencingToken, the keeper) load immutable snapshots.
type ConsulCoordinator struct {
	cfg       ConsulConfig
	client    *api.Client
	transport *http.Transport // the client's; see resetConnections
	addr      string
	a         Assignee
	health    HealthSource
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

	inbox inbox                      // the watches' latest answers, for the loop
	lease atomic.Pointer[leaseState] // published by the keeper
	pub   atomic.Pointer[published]  // published by the loop

	mu       sync.Mutex // guards the fields below (Consul request bookkeeping) and watchGen
	errCount map[string]uint64
	failing  map[ConsulOp]error // op -> explained error, while failing
	outage   *outage            // nil unless a request failed and Consul has not been fine since
	watchGen chan struct{}      // closed by resetConnections: the watches' requests give up
	lastErr  string
}

// published is what the loop publishes after every round: immutable once stored.
type published struct {
	status     *Status            // without the Consul error counts and the lease, added by Status()
	processing map[string][]int   // slices handed to the assignee, by queue
	meta       map[string]string  // wanted service Meta, without live_since
	tokens     map[SliceID]uint64 // fencing token of each owned slice; see FencingToken
}

// inbox holds the latest answer of each watch until the loop takes it.
type inbox struct {
	mu       sync.Mutex
	kv       *KVSnapshot
	kvReset  bool
	kvFresh  bool
	members  []MemberInfo
	memFresh bool
}

func (b *inbox) putKV(s *KVSnapshot, reset bool) {
	b.mu.Lock()
	b.kv, b.kvReset, b.kvFresh = s, b.kvReset || reset, true
	b.mu.Unlock()
}

func (b *inbox) putMembers(ms []MemberInfo) {
	b.mu.Lock()
	b.members, b.memFresh = ms, true
	b.mu.Unlock()
}

// take returns the events waiting, KV first.
func (b *inbox) take(now time.Time) []Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	var evs []Event
	if b.kvFresh || b.kvReset {
		evs = append(evs, EvKV{Now: now, Snap: b.kv, Reset: b.kvReset})
		b.kvFresh, b.kvReset = false, false
	}
	if b.memFresh {
		evs = append(evs, EvMembers{Now: now, Members: b.members})
		b.memFresh = false
	}
	return evs
}

var _ Coordinator = (*ConsulCoordinator)(nil)

// NewConsul validates cfg (after defaults) and builds a coordinator; nothing talks to Consul
// before Run. health may be nil (always healthy), logger nil (discard), clk nil (the system clock).
func NewConsul(cfg ConsulConfig, a Assignee, health HealthSource, logger *slog.Logger, clk clock.Clock) (*ConsulCoordinator, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consul config: %w", err)
	}
	if a == nil {
		return nil, errors.New("consul coordinator: nil Assignee")
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
	c := &ConsulCoordinator{
		cfg: cfg, client: client, transport: transport, addr: acfg.Address, a: a, health: health, log: logger.With("component", "failover", "node", cfg.NodeID), clk: clk,
		prefix:       "qslice/" + cfg.Cluster + "/",
		serviceID:    "qslice-" + cfg.Cluster + "-" + cfg.NodeID,
		queueCheckID: map[string]string{},
		sessionName:  "qslice/" + cfg.Cluster + "/" + cfg.NodeID,
		wake:         make(chan struct{}, 1),
		metaDirty:    make(chan struct{}, 1),
		ctl:          make(chan ctlReq),
		released:     make(chan uint64),
		done:         make(chan struct{}),
		errCount:     map[string]uint64{},
		failing:      map[ConsulOp]error{},
		tp:           noop.NewTracerProvider(),
		watchGen:     make(chan struct{}),
	}
	c.aliveCheckID = c.serviceID + ":alive"
	for _, q := range cfg.Queues {
		c.queueCheckID[q.Name] = c.serviceID + ":queue:" + q.Name
	}
	c.lease.Store(&leaseState{})
	rd := NewMachine(cfg.MachineConfig(), nil, nil).Ready() // the Meta of a node holding nothing
	c.pub.Store(&published{status: &Status{Mode: "consul", NodeID: cfg.NodeID}, processing: map[string][]int{}, meta: rd.Meta})
	return c, nil
}

// Config returns the configuration in use (with defaults applied).
func (c *ConsulCoordinator) Config() ConsulConfig { return c.cfg }

type alwaysHealthy struct{}

func (alwaysHealthy) NodeHealthy() error         { return nil }
func (alwaysHealthy) SliceHealth(SliceID) Health { return Health{Status: StatusPassing} }

// ValidUntil is the lease deadline: processing is safe strictly before it.
func (c *ConsulCoordinator) ValidUntil() time.Time { return c.lease.Load().deadline }

// Status returns a snapshot.
func (c *ConsulCoordinator) Status() Status {
	s := *c.pub.Load().status
	s.Owned = slices.Clone(s.Owned)
	s.Slices = slices.Clone(s.Slices)
	s.OwnershipChanges = cloneCounts(s.OwnershipChanges)
	c.mu.Lock()
	s.ConsulErrors = cloneCounts(c.errCount)
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

func cloneCounts(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

type ctlReq struct {
	drain bool
	// reply receives, once the request is applied, a channel that yields the drain's outcome
	// (nil when complete) for Drain, nil for Undrain.
	reply chan chan error
}

// Drain hands every slice to other nodes, waits until this node holds none, and keeps the node
// from taking any until Undrain. If ctx ends first, the drain stays in effect.
func (c *ConsulCoordinator) Drain(ctx context.Context) error {
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
		return fmt.Errorf("drain: %w", ErrNotRunning)
	}
}

// Undrain lets the node take slices again.
func (c *ConsulCoordinator) Undrain(ctx context.Context) error {
	_, err := c.control(ctx, false)
	return err
}

func (c *ConsulCoordinator) control(ctx context.Context, drain bool) (chan error, error) {
	op := "undrain"
	if drain {
		op = "drain"
	}
	if !c.running.Load() {
		return nil, fmt.Errorf("%s: %w", op, ErrNotRunning)
	}
	req := ctlReq{drain: drain, reply: make(chan chan error, 1)}
	select {
	case c.ctl <- req:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", op, ctx.Err())
	case <-c.done:
		return nil, fmt.Errorf("%s: %w", op, ErrNotRunning)
	}
	select {
	case ch := <-req.reply:
		return ch, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", op, ctx.Err())
	case <-c.done:
		return nil, fmt.Errorf("%s: %w", op, ErrNotRunning)
	}
}

// ---- the loop: the Machine's driver ----

// Run registers the node, keeps its lease, watches the cluster and moves slices until ctx is
// cancelled; then it releases everything cleanly and returns. Consul failures never end Run.
func (c *ConsulCoordinator) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer close(c.done)
	inner, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			wg.Wait()
		}
	}
	defer stop()
	k := &keeper{c: c}
	wg.Add(3)
	go func() { defer wg.Done(); k.run(inner) }()
	go func() { defer wg.Done(); c.watchKV(inner) }()
	go func() { defer wg.Done(); c.watchMembers(inner) }()

	m := NewMachine(c.machineConfig(), c.log, c.tp)
	d := &driver{c: c, m: m, ctx: inner, wg: &wg}
	c.log.Info("failover coordinator starting", "consul", c.addr, "cluster", c.cfg.Cluster, "ttl", c.cfg.TTL,
		"lock_delay", c.cfg.LockDelay, "hold_down", c.cfg.HoldDown, "lease_margin", c.cfg.LeaseMargin)
	ctxDone := ctx.Done()
	for !m.Stopped() {
		timer := c.clk.NewTimer(max(m.NextDeadline().Sub(c.clk.Now()), 0))
		select {
		case <-ctxDone:
			ctxDone = nil
			if c.crashOnCancel {
				timer.Stop()
				stop()
				return nil
			}
			m.Step(EvStop{Now: c.clk.Now()})
		case <-c.wake:
		case gen := <-c.released:
			m.Step(EvAssigneeReleased{Now: c.clk.Now(), Gen: gen})
		case req := <-c.ctl:
			d.control(req)
		case <-timer.C():
		}
		timer.Stop()
		d.round()
	}
	stop() // the keeper must not renew or re-create what finish removes
	return c.finish(m)
}

func (c *ConsulCoordinator) machineConfig() MachineConfig { return c.cfg.MachineConfig() }

// driver carries out what the Machine decides. It lives in Run's goroutine.
type driver struct {
	c       *ConsulCoordinator
	m       *Machine
	ctx     context.Context
	wg      *sync.WaitGroup
	lease   leaseState
	unavail map[string]bool
	waiters []chan error // pending Drain calls, buffered 1
}

func (d *driver) control(req ctlReq) {
	now := d.c.clk.Now()
	if !req.drain {
		d.m.Step(EvUndrain{Now: now})
		for _, w := range d.waiters {
			w <- errors.New("drain: cancelled by Undrain")
		}
		d.waiters = nil
		req.reply <- nil
		return
	}
	d.m.Step(EvDrain{Now: now})
	w := make(chan error, 1)
	d.waiters = append(d.waiters, w)
	req.reply <- w
}

// maxRounds bounds the Ready rounds after one wake-up: a release follows a narrowing, a widening
// an acquisition; whatever is left waits for the next wake-up (at most RenewInterval).
const maxRounds = 4

// round feeds the Machine what changed (lease, watches, queue availability, time) and carries
// out its Ready until nothing is left to do.
func (d *driver) round() {
	c, m := d.c, d.m
	now := c.clk.Now()
	if l := c.lease.Load(); l.session != d.lease.session || !l.deadline.Equal(d.lease.deadline) || !maps.Equal(l.criticalSince, d.lease.criticalSince) {
		d.lease = *l
		m.Step(EvLease{Now: now, Session: l.session, Deadline: l.deadline, CriticalSince: l.criticalSince})
	}
	for _, ev := range c.inbox.take(now) {
		m.Step(ev)
	}
	if u := c.unavailableQueues(); !maps.Equal(u, d.unavail) {
		d.unavail = u
		m.Step(EvUnavailable{Now: now, Queues: u})
	}
	m.Step(EvTick{Now: now})
	acquireStart := now
	releaseFailed, acquireDone := false, false // each is tried at most until it fails once per wake-up
	for i := 0; ; i++ {
		rd := m.Ready()
		if !rd.HasWork() || i == maxRounds {
			d.finishRound(rd)
			return
		}
		c.publishTokens(rd.Tokens) // before SetSlices: a handler of a new slice asks for its token at once
		type pending struct {
			gen uint64
			ch  <-chan struct{}
		}
		var sets []pending
		for _, a := range rd.Assign {
			sets = append(sets, pending{a.Gen, c.a.SetSlices(a.Queue, a.Slices)})
		}
		for _, r := range rd.Release {
			if releaseFailed {
				break // retried at the next wake-up
			}
			res := c.releaseTxn(d.ctx, r)
			m.Step(res)
			releaseFailed = res.Err
		}
		for _, a := range rd.Acquire {
			if acquireDone || c.clk.Now().Sub(acquireStart) > c.cfg.RenewInterval {
				// The rest waits for the next wake-up: the lease and the watches come first.
				acquireDone = true
				break
			}
			res := c.acquireTxn(d.ctx, a)
			m.Step(res)
			acquireDone = res.Err // backs off (Machine.notBefore)
		}
		for _, id := range rd.DestroySessions {
			_ = c.call(d.ctx, OpSessionDestroy, func(ctx context.Context) error {
				_, err := c.client.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
				return err
			})
		}
		if rd.ResetConnections {
			c.resetConnections()
		}
		m.Advance(rd)
		for _, p := range sets {
			open := p.ch != nil
			if open {
				select {
				case <-p.ch:
					open = false
				default:
				}
			}
			m.Step(EvAssigned{Now: c.clk.Now(), Gen: p.gen, Pending: open})
			if open {
				d.waitReleased(p.gen, p.ch)
			}
		}
	}
}

// waitReleased reports when the assignee has released the slices removed by generation gen.
func (d *driver) waitReleased(gen uint64, ch <-chan struct{}) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		select {
		case <-ch:
		case <-d.ctx.Done():
			return
		}
		select {
		case d.c.released <- gen:
		case <-d.ctx.Done():
		}
	}()
}

// finishRound publishes the last Ready's snapshot and answers Drain callers once nothing is held.
func (d *driver) finishRound(rd Ready) {
	d.c.publish(rd) // before waking Drain callers: they read Status next
	if rd.DrainDone {
		for _, w := range d.waiters {
			w <- nil
		}
		d.waiters = nil
	}
}

// publish makes rd's snapshot what readers see, and tells the keeper when the Meta changed.
func (c *ConsulCoordinator) publish(rd Ready) {
	old := c.pub.Load()
	c.pub.Store(&published{status: rd.Status, processing: rd.Processing, meta: rd.Meta, tokens: rd.Tokens})
	if old != nil && !maps.Equal(old.meta, rd.Meta) {
		select {
		case c.metaDirty <- struct{}{}:
		default:
		}
	}
}

func (c *ConsulCoordinator) publishTokens(tokens map[SliceID]uint64) {
	p := *c.pub.Load()
	p.tokens = tokens
	c.pub.Store(&p)
}

// FencingToken returns the fencing token of slice index of queue q while this node holds its
// lock, else 0: the ModifyIndex of the slice's KV pair when this node acquired it. Consul's Raft
// index only grows, so whoever acquires the slice next gets a larger token: a system that keeps
// the largest token it has seen per slice can refuse the writes of an owner that lost the slice
// but still runs (after a pause, say).
func (c *ConsulCoordinator) FencingToken(q string, index int) uint64 {
	return c.pub.Load().tokens[SliceID{q, index}]
}

func (c *ConsulCoordinator) wantMeta() map[string]string { return c.pub.Load().meta }

func (c *ConsulCoordinator) processingSlices() map[string][]int { return c.pub.Load().processing }

// finish runs after the loop: every slice is released or DrainTimeout passed. It destroys the
// session (remaining locks go to lock-delay) and deregisters the service.
func (c *ConsulCoordinator) finish(m *Machine) error {
	var errs []error
	if held := m.HeldAtStop(); len(held) > 0 {
		errs = append(errs, fmt.Errorf("stop: %d slices not released within %s; they move after lock-delay", len(held), c.cfg.DrainTimeout))
		for _, s := range held {
			m.CountChange(s, c.cfg.NodeID, "", ReasonReleased)
		}
	}
	session := c.lease.Load().session
	ctx := context.Background()
	try := func(op ConsulOp, f func(ctx context.Context) error) {
		b := c.newBackoff(c.cfg.RequestTimeout/2, c.cfg.RequestTimeout)
		var err error
		for i := 0; i < shutdownCallAttempts; i++ {
			if i > 0 {
				<-clock.After(c.clk, b.NextBackOff())
			}
			if err = c.call(ctx, op, f); err == nil {
				return
			}
		}
		errs = append(errs, err)
	}
	if session != "" {
		try(OpSessionDestroy, func(ctx context.Context) error {
			_, err := c.client.Session().Destroy(session, (&api.WriteOptions{}).WithContext(ctx))
			return err
		})
	}
	if c.registered.Load() {
		try(OpDeregister, func(ctx context.Context) error {
			return c.client.Agent().ServiceDeregisterOpts(c.serviceID, (&api.QueryOptions{}).WithContext(ctx))
		})
	}
	c.lease.Store(&leaseState{})
	rd := m.Ready() // owned slices still held are gone with the session
	st := *rd.Status
	st.Owned, st.OwnershipChanges = nil, m.Changes()
	c.pub.Store(&published{status: &st, processing: map[string][]int{}, meta: rd.Meta})
	if err := errors.Join(errs...); err != nil {
		c.log.Warn("failover coordinator stopped uncleanly", "err", err)
		return err
	}
	c.log.Info("failover coordinator stopped: slices released, session destroyed, service deregistered")
	return nil
}

// APIClient is the Consul client the coordinator uses (the agent reads the members with it).
func (c *ConsulCoordinator) APIClient() *api.Client { return c.client }

func (c *ConsulCoordinator) sessionID() string { return c.lease.Load().session }
