package failover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/retry"
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

// ConsulCoordinator owns slices through Consul sessions and KV locks.
type ConsulCoordinator struct {
	cfg       ConsulConfig
	client    *api.Client
	transport *http.Transport // the client's; see resetConnections
	addr      string
	a         Assignee
	health    HealthSource
	log       *slog.Logger
	clk       clock.Clock

	prefix       string // qslice/<cluster>/
	serviceID    string
	aliveCheckID string
	queueCheckID map[string]string
	sessionName  string

	wake      chan struct{} // loop wake-up, capacity 1
	metaDirty chan struct{} // keeper wake-up, capacity 1
	ctl       chan ctlReq
	released  chan releasedEvent
	running   atomic.Bool
	done      chan struct{} // closed when Run returns (after a start)
	// crashOnCancel (tests only) makes Run return at cancel without releasing anything, as if
	// the process died: nothing is renewed any more.
	crashOnCancel bool
	registered    atomic.Bool // the service was registered at least once

	mu         sync.Mutex
	lease      leaseState
	kvSnap     *kvSnapshot
	kvReset    bool
	memSnap    []memberEntry
	memFresh   bool
	meta       map[string]string // wanted service Meta
	processing map[string][]int  // slices handed to the assignee, by queue
	status     Status
	changes    map[string]uint64
	errCount   map[string]uint64
	failing    map[ConsulOp]error // op -> explained error, while failing
	outage     *outage            // nil unless a request failed and Consul has not been fine since
	tokens     map[SliceID]uint64 // fencing token of each owned slice; see FencingToken
	tracer     trace.Tracer       // see SetTracer
	watchGen   chan struct{}      // closed by resetConnections: the watches' requests give up
	lastErr    string
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
		released:     make(chan releasedEvent),
		done:         make(chan struct{}),
		changes:      map[string]uint64{},
		errCount:     map[string]uint64{},
		failing:      map[ConsulOp]error{},
		tracer:       noop.NewTracerProvider().Tracer(tracerName),
		watchGen:     make(chan struct{}),
		processing:   map[string][]int{},
	}
	c.aliveCheckID = c.serviceID + ":alive"
	for _, q := range cfg.Queues {
		c.queueCheckID[q.Name] = c.serviceID + ":queue:" + q.Name
	}
	c.meta = c.buildMeta(map[string][]int{}, false, nil)
	c.status = Status{Mode: "consul", NodeID: cfg.NodeID}
	return c, nil
}

// Config returns the configuration in use (with defaults applied).
func (c *ConsulCoordinator) Config() ConsulConfig { return c.cfg }

type alwaysHealthy struct{}

func (alwaysHealthy) NodeHealthy() error         { return nil }
func (alwaysHealthy) SliceHealth(SliceID) Health { return Health{Status: StatusPassing} }

// ValidUntil is the lease deadline: processing is safe strictly before it.
func (c *ConsulCoordinator) ValidUntil() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease.deadline
}

// Status returns a snapshot.
func (c *ConsulCoordinator) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Owned = slices.Clone(s.Owned)
	s.Slices = slices.Clone(s.Slices)
	s.OwnershipChanges = cloneCounts(c.changes)
	s.ConsulErrors = cloneCounts(c.errCount)
	s.ConsulError = c.lastErr
	now := c.clk.Now()
	s.LeaseValid = now.Before(c.lease.deadline)
	if s.LeaseValid {
		s.LeaseRemaining = c.lease.deadline.Sub(now)
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

// ---- inputs from the watches ----

type kvEntry struct {
	session     string
	value       lockValue
	modifyIndex uint64
	lockIndex   uint64
}

type kvSnapshot struct {
	index   uint64
	entries map[SliceID]kvEntry
}

type memberEntry struct {
	node     string
	live     bool
	draining bool
	// unavailable: queues the node cannot work (Meta unavailable, comma-separated).
	unavailable map[string]bool
	liveSince   time.Time // published by the node itself (Meta live_since); zero if absent
}

// lockValue is the JSON value of a slice key. While locked, Node is the owner; once released,
// Node is the last owner and Reason why it let go ("" when it lost the lock).
type lockValue struct {
	Node   string  `json:"node"`
	Reason string  `json:"reason,omitempty"`
	To     string  `json:"to,omitempty"`
	Avoid  []Avoid `json:"avoid,omitempty"`
}

func parseLockValue(b []byte) lockValue {
	var v lockValue
	if err := json.Unmarshal(b, &v); err != nil {
		return lockValue{Node: strings.TrimSpace(string(b))} // written by hand: a bare node name
	}
	return v
}

func (c *ConsulCoordinator) sliceKey(s SliceID) string {
	return c.prefix + "slices/" + s.Queue + "/" + strconv.Itoa(s.Index)
}

func (c *ConsulCoordinator) parseKey(key string) (SliceID, bool) {
	rest, ok := strings.CutPrefix(key, c.prefix+"slices/")
	if !ok {
		return SliceID{}, false
	}
	q, i, ok := strings.Cut(rest, "/")
	if !ok {
		return SliceID{}, false
	}
	n, err := strconv.Atoi(i)
	if err != nil || n < 0 {
		return SliceID{}, false
	}
	return SliceID{q, n}, true
}

// watchContext returns ctx, cancelled too by the next resetConnections.
func (c *ConsulCoordinator) watchContext(ctx context.Context) (context.Context, context.CancelFunc) {
	c.mu.Lock()
	gen := c.watchGen
	c.mu.Unlock()
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-gen:
			cancel()
		case <-wctx.Done():
		}
	}()
	return wctx, cancel
}

// resetConnections runs when the lease lapses (Consul stopped answering in time) and when it is
// valid again. A blocking query (5 minutes) or a pooled keep-alive connection may sit on a
// connection that died without a reset (a partition that dropped packets, a firewall that lost
// its flow), including one opened during the outage: the watches would hear nothing for minutes
// after Consul is back. So the watches' requests are abandoned and sent again on fresh
// connections, and idle pooled connections are closed.
func (c *ConsulCoordinator) resetConnections() {
	c.mu.Lock()
	close(c.watchGen)
	c.watchGen = make(chan struct{})
	c.mu.Unlock()
	c.transport.CloseIdleConnections()
}

// blockingLoop runs fetch as a Consul blocking query forever, following the blocking-query
// rules: the index goes back to 0 when it moves backwards, is never left at 0, and the loop is
// rate-limited to one request per WatchMinInterval; errors back off exponentially with jitter.
func (c *ConsulCoordinator) blockingLoop(ctx context.Context, op ConsulOp, fetch func(ctx context.Context, q *api.QueryOptions) (uint64, error), publish func(reset bool)) {
	var index uint64
	// Backoff tops out at one TTL: after an outage the watches are back within a TTL of the keeper.
	b := c.newBackoff(c.cfg.WatchMinInterval, c.cfg.TTL)
	var last time.Time
	for ctx.Err() == nil {
		if !last.IsZero() {
			if d := c.cfg.WatchMinInterval - c.clk.Now().Sub(last); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-clock.After(c.clk, d):
				}
			}
		}
		last = c.clk.Now()
		var newIndex uint64
		gctx, stop := c.watchContext(ctx)
		err := c.call(gctx, op, func(ctx context.Context) error {
			var err error
			newIndex, err = fetch(ctx, (&api.QueryOptions{WaitIndex: index, WaitTime: watchWait}).WithContext(ctx))
			return err
		})
		abandoned := gctx.Err() != nil
		stop()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if abandoned {
				continue // resetConnections: ask again at once, on a new connection, same index
			}
			select {
			case <-ctx.Done():
				return
			case <-clock.After(c.clk, b.NextBackOff()):
			}
			continue
		}
		b.Reset()
		reset := false
		switch {
		case newIndex < index:
			// Consul's index went backwards: its state was reset (lost or restored). Start over.
			reset, index = true, 0
		case newIndex == 0:
			index = 1 // never block on 0: that would return at once, forever
		default:
			index = newIndex
		}
		publish(reset)
	}
}

func (c *ConsulCoordinator) watchKV(ctx context.Context) {
	var snap *kvSnapshot
	c.blockingLoop(ctx, OpKVWatch, func(ctx context.Context, q *api.QueryOptions) (uint64, error) {
		pairs, meta, err := c.client.KV().List(c.prefix, q)
		if err != nil {
			return 0, err
		}
		snap = &kvSnapshot{index: meta.LastIndex, entries: map[SliceID]kvEntry{}}
		for _, p := range pairs {
			if s, ok := c.parseKey(p.Key); ok {
				snap.entries[s] = kvEntry{session: p.Session, value: parseLockValue(p.Value), modifyIndex: p.ModifyIndex, lockIndex: p.LockIndex}
			}
		}
		return meta.LastIndex, nil
	}, func(reset bool) {
		c.mu.Lock()
		c.kvSnap = snap
		c.kvReset = c.kvReset || reset
		c.mu.Unlock()
		c.wakeLoop()
	})
}

func (c *ConsulCoordinator) watchMembers(ctx context.Context) {
	var ms []memberEntry
	c.blockingLoop(ctx, OpMemberWatch, func(ctx context.Context, q *api.QueryOptions) (uint64, error) {
		entries, meta, err := c.client.Health().Service(ServiceName, "", false, q)
		if err != nil {
			return 0, err
		}
		ms = ms[:0:0]
		for _, e := range entries {
			if e.Service == nil || e.Service.Meta["cluster"] != c.cfg.Cluster || e.Service.Meta["node"] == "" {
				continue
			}
			ms = append(ms, memberEntry{node: e.Service.Meta["node"], live: entryLive(e), draining: e.Service.Meta["draining"] == "true",
				unavailable: parseQueueList(e.Service.Meta["unavailable"]), liveSince: parseUnixMilli(e.Service.Meta["live_since"])})
		}
		return meta.LastIndex, nil
	}, func(bool) {
		c.mu.Lock()
		c.memSnap, c.memFresh = ms, true
		c.mu.Unlock()
		c.wakeLoop()
	})
}

// entryLive: the instance's alive check passes, every node-level check (serfHealth, node
// maintenance) passes, and the service is not in maintenance. The per-queue checks do not count:
// a failing worker must not take the node's other slices away.
func entryLive(e *api.ServiceEntry) bool {
	alive := false
	for _, ch := range e.Checks {
		switch {
		case ch.CheckID == e.Service.ID+":alive":
			alive = ch.Status == api.HealthPassing
		case ch.ServiceID == "" && ch.Status != api.HealthPassing:
			return false
		case strings.HasPrefix(ch.CheckID, "_service_maintenance:") && ch.Status == api.HealthCritical:
			return false
		}
	}
	return alive
}

// parseQueueList reads Meta unavailable: "in,out" -> {in, out}; nil when empty.
func parseQueueList(s string) map[string]bool {
	if s == "" {
		return nil
	}
	out := map[string]bool{}
	for _, q := range strings.Split(s, ",") {
		if q != "" {
			out[q] = true
		}
	}
	return out
}

// unavailableQueues asks the health source (when it can say) which queues this node cannot work.
func (c *ConsulCoordinator) unavailableQueues() map[string]bool {
	qa, ok := c.health.(QueueAvailability)
	if !ok {
		return nil
	}
	var out map[string]bool
	for q := range qa.UnavailableQueues() {
		if c.known(SliceID{Queue: q}) {
			if out == nil {
				out = map[string]bool{}
			}
			out[q] = true
		}
	}
	return out
}

func parseUnixMilli(s string) time.Time {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func (c *ConsulCoordinator) wakeLoop() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *ConsulCoordinator) wantMeta() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.meta
}

func (c *ConsulCoordinator) processingSlices() map[string][]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.processing
}

// buildMeta is the loop's part of the service Meta; the keeper adds live_since.
func (c *ConsulCoordinator) buildMeta(owned map[string][]int, draining bool, unavailable map[string]bool) map[string]string {
	m := maps.Clone(c.cfg.ServiceMeta)
	if m == nil {
		m = map[string]string{}
	}
	maps.Copy(m, map[string]string{
		"unavailable": strings.Join(slices.Sorted(maps.Keys(unavailable)), ","),
		"cluster":     c.cfg.Cluster,
		"node":        c.cfg.NodeID,
		"version":     c.cfg.Version,
		"queues":      queuesMeta(c.cfg.Queues),
		"owned":       ownedMeta(c.cfg.Queues, owned),
		"draining":    strconv.FormatBool(draining),
	})
	return m
}

// APIClient is the Consul client the coordinator uses (the agent reads the members with it).
func (c *ConsulCoordinator) APIClient() *api.Client { return c.client }

// ---- the loop ----

type releasedEvent struct {
	ch     <-chan struct{}
	slices []SliceID
}

// held is a slice whose lock this node holds.
type held struct {
	session   string
	token     uint64 // ModifyIndex at acquisition: the fencing token
	lockIndex uint64
	since     time.Time
	value     lockValue
	handoff   *Move // set once the planner asked to hand it off; the lock goes once released
	// handoffSince is when handoff was set (for the hand-off span).
	handoffSince time.Time
}

type loopState struct {
	session    string
	leaseValid bool
	lapsedAt   time.Time // when the lease last lapsed; zero before the first lapse
	owned      map[SliceID]*held
	assigned   map[string]map[int]bool     // what the assignee currently has
	releasing  map[SliceID]<-chan struct{} // removed from the assignee, not yet released
	releasedAt map[SliceID]uint64          // ModifyIndex of our last release (stale-snapshot guard)
	destroyed  map[string]bool             // stale sessions already destroyed
	draining   bool
	// unavailable: queues this node cannot work now (QueueAvailability), published in Meta.
	unavailable map[string]bool
	stopping    bool
	stopBy      time.Time
	notBefore   time.Time             // acquisitions back off until then
	retryAt     map[SliceID]time.Time // a refused lock (held, lock-delay) is retried after one RenewInterval
	staleAt     map[SliceID]uint64    // KV snapshot index at which an acquisition found the key changed
	quarantine  time.Time             // no acquisitions until then (after a Consul state reset)
	waiters     []chan error          // pending Drain calls, buffered 1
	acqBackoff  backoff.BackOff
	kv          *kvSnapshot
	members     []memberEntry
	plan        Plan
}

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

	st := c.newLoopState()
	c.log.Info("failover coordinator starting", "consul", c.addr, "cluster", c.cfg.Cluster, "ttl", c.cfg.TTL,
		"lock_delay", c.cfg.LockDelay, "hold_down", c.cfg.HoldDown, "lease_margin", c.cfg.LeaseMargin)
	ctxDone := ctx.Done()
	for {
		now := c.clk.Now()
		if st.stopping && ((len(st.owned) == 0 && len(st.releasing) == 0) || !now.Before(st.stopBy)) {
			break
		}
		next := c.cfg.RenewInterval
		if d := c.leaseDeadline().Sub(now); st.leaseValid && d > 0 && d < next {
			next = d
		}
		select {
		case <-ctxDone:
			ctxDone = nil
			if c.crashOnCancel {
				stop()
				return nil
			}
			st.stopping, st.stopBy = true, now.Add(c.cfg.DrainTimeout)
			c.log.Info("stopping: releasing all slices", "drain_timeout", c.cfg.DrainTimeout)
		case <-c.wake:
		case ev := <-c.released:
			for _, s := range ev.slices {
				if st.releasing[s] == ev.ch {
					delete(st.releasing, s)
				}
			}
		case req := <-c.ctl:
			c.handleCtl(st, req)
		case <-clock.After(c.clk, next):
		}
		c.step(inner, st, &wg)
	}
	stop() // the keeper must not renew or re-create what finish removes
	return c.finish(st)
}

func (c *ConsulCoordinator) sessionID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease.session
}

func (c *ConsulCoordinator) leaseDeadline() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease.deadline
}

func (c *ConsulCoordinator) handleCtl(st *loopState, req ctlReq) {
	if !req.drain {
		if st.draining {
			c.log.Info("undrain: taking slices again")
		}
		st.draining = false
		for _, w := range st.waiters {
			w <- errors.New("drain: cancelled by Undrain")
		}
		st.waiters = nil
		req.reply <- nil
		return
	}
	if !st.draining {
		c.log.Info("drain: handing every slice to other nodes")
	}
	st.draining = true
	w := make(chan error, 1)
	st.waiters = append(st.waiters, w)
	req.reply <- w
}

// step brings the world one move closer to the plan. It never blocks on the assignee; it makes
// Consul calls bounded by RequestTimeout each.
func (c *ConsulCoordinator) step(ctx context.Context, st *loopState, wg *sync.WaitGroup) {
	now := c.clk.Now()
	c.mu.Lock()
	lease := c.lease
	if c.kvSnap != nil {
		st.kv = c.kvSnap
	}
	reset := c.kvReset
	c.kvReset = false
	if c.memFresh {
		st.members, c.memFresh = c.memSnap, false
	}
	c.mu.Unlock()

	if reset {
		st.quarantine = now.Add(max(c.cfg.TTL, c.cfg.LockDelay))
		c.log.Warn("consul KV index went backwards (state lost or restored): no acquisitions for one lease",
			"until", st.quarantine.Format(time.RFC3339))
	}

	// Session: a new one means every lock of the old one is gone.
	if lease.session != st.session {
		if st.session != "" {
			// This run's own ended session: a KV snapshot taken before its end still shows it
			// holding our locks, which is not a session "left by a previous run" to destroy.
			st.destroyed[st.session] = true
		}
		for s, h := range st.owned {
			if h.session != lease.session {
				c.lost(st, s, "", "session ended")
			}
		}
		st.session = lease.session
	}
	valid := lease.session != "" && now.Before(lease.deadline)
	if valid != st.leaseValid {
		st.leaseValid = valid
		if valid {
			c.log.Info("lease valid: processing owned slices", "owned", len(st.owned), "remaining", lease.deadline.Sub(now).Round(time.Millisecond))
			if !st.lapsedAt.IsZero() {
				c.traceLapse(st.lapsedAt, now, len(st.owned))
				c.resetConnections() // the watches asked again during the outage: ask once more
			}
		} else {
			st.lapsedAt = now
			c.resetConnections()
			c.log.Warn("lease lapsed: stopped processing all slices until Consul confirms the session again",
				"owned", len(st.owned), "has_session", lease.session != "")
		}
	}

	c.reconcileKV(ctx, st, now)

	if u := c.unavailableQueues(); !maps.Equal(u, st.unavailable) {
		c.log.Warn("queues this node cannot work changed: their slices go to other nodes", "unavailable", strings.Join(slices.Sorted(maps.Keys(u)), ","))
		st.unavailable = u
	}
	in := PlanInput{
		Self: c.cfg.NodeID, Now: now, HoldDown: c.cfg.HoldDown, SelfDraining: st.draining || st.stopping, SelfUnavailable: st.unavailable,
		StuckHandoff: c.cfg.StuckHandoff, StuckAfter: c.cfg.StuckAfter, Queues: c.cfg.Queues,
		Slices: c.sliceStates(st, lease.criticalSince),
	}
	for _, m := range st.members {
		if m.live {
			in.Members = append(in.Members, Member{Node: m.node, HealthySince: m.liveSince, Draining: m.draining, Unavailable: m.unavailable})
		}
	}
	st.plan = ComputePlan(in)
	for _, m := range st.plan.Release {
		if h := st.owned[m.Slice]; h != nil && h.handoff == nil {
			mv := m
			if st.stopping {
				mv.Reason = ReasonReleased
			}
			h.handoff, h.handoffSince = &mv, now
		}
	}
	if st.stopping { // even without a plan entry (e.g. no members seen), everything goes
		for s, h := range st.owned {
			if h.handoff == nil {
				h.handoff, h.handoffSince = &Move{Slice: s, From: c.cfg.NodeID, Reason: ReasonReleased}, now
			}
		}
	}
	c.syncAssignee(ctx, st, wg)
	c.releaseDrained(ctx, st, now)
	// Acquire only with a valid lease and a first KV snapshot (it carries the previous holder,
	// hence the reason, and the avoid list to carry over).
	if st.leaseValid && st.kv != nil && !st.draining && !st.stopping && !now.Before(st.notBefore) && !now.Before(st.quarantine) {
		c.acquire(ctx, st, now)
		c.syncAssignee(ctx, st, wg)
	}
	c.publish(st, now) // before waking Drain callers: they read Status next
	if (st.draining || st.stopping) && len(st.owned) == 0 && len(st.releasing) == 0 {
		for _, w := range st.waiters {
			w <- nil
		}
		st.waiters = nil
	}
}

// newLoopState returns the empty state of the coordinator's loop.
func (c *ConsulCoordinator) newLoopState() *loopState {
	st := &loopState{
		owned: map[SliceID]*held{}, assigned: map[string]map[int]bool{}, releasing: map[SliceID]<-chan struct{}{},
		releasedAt: map[SliceID]uint64{}, destroyed: map[string]bool{}, retryAt: map[SliceID]time.Time{}, staleAt: map[SliceID]uint64{},
		acqBackoff: c.newBackoff(c.cfg.RenewInterval/4, 4*c.cfg.RenewInterval),
	}
	for _, q := range c.cfg.Queues {
		st.assigned[q.Name] = map[int]bool{}
	}
	return st
}

// reconcileKV drops slices whose lock the last KV snapshot shows we lost, adopts locks our
// session holds that we did not know about (an acquisition whose answer was lost), and destroys
// sessions left by a previous run of this node.
func (c *ConsulCoordinator) reconcileKV(ctx context.Context, st *loopState, now time.Time) {
	if st.kv == nil {
		return
	}
	for s, h := range st.owned {
		if st.kv.index < h.token {
			continue // snapshot older than our acquisition
		}
		e, ok := st.kv.entries[s]
		if !ok || e.session != h.session {
			owner := ""
			if ok && e.session != "" {
				owner = e.value.Node
			}
			c.lost(st, s, owner, "lock no longer held by our session")
		}
	}
	for s, e := range st.kv.entries {
		if !c.known(s) {
			continue
		}
		switch {
		case e.session != "" && e.session == st.session && st.owned[s] == nil && e.modifyIndex > st.releasedAt[s] && st.releasing[s] == nil:
			st.owned[s] = &held{session: e.session, token: e.modifyIndex, lockIndex: e.lockIndex, since: now, value: e.value}
			c.changed(s, "", c.cfg.NodeID, ReasonAcquired)
		case e.session != "" && e.session != st.session && e.value.Node == c.cfg.NodeID && !st.destroyed[e.session]:
			st.destroyed[e.session] = true
			c.log.Warn("destroying a session left by a previous run of this node", "session", e.session, "slice", s.String())
			_ = c.call(ctx, OpSessionDestroy, func(ctx context.Context) error {
				_, err := c.client.Session().Destroy(e.session, (&api.WriteOptions{}).WithContext(ctx))
				return err
			})
		}
	}
}

func (c *ConsulCoordinator) known(s SliceID) bool {
	for _, q := range c.cfg.Queues {
		if q.Name == s.Queue {
			return s.Index < q.Slices
		}
	}
	return false
}

func (c *ConsulCoordinator) lost(st *loopState, s SliceID, to, why string) {
	delete(st.owned, s)
	c.traceLost(s, c.clk.Now(), why)
	c.log.Warn("slice lock lost", "slice", s.String(), "why", why)
	c.changed(s, c.cfg.NodeID, to, ReasonLeaseLost)
}

func (c *ConsulCoordinator) changed(s SliceID, from, to, reason string) {
	c.log.Info("slice ownership changed", "slice", s.String(), "from", from, "to", to, "reason", reason)
	c.mu.Lock()
	c.changes[reason]++
	c.mu.Unlock()
}

func (c *ConsulCoordinator) sliceStates(st *loopState, critical map[SliceID]time.Time) map[SliceID]SliceState {
	out := map[SliceID]SliceState{}
	if st.kv != nil {
		for s, e := range st.kv.entries {
			if e.session != "" {
				owner := e.value.Node
				if owner == c.cfg.NodeID && e.session != st.session {
					owner = "?" + owner // an older session of ours: held, but not by us
				}
				out[s] = SliceState{Owner: owner, Avoid: e.value.Avoid}
			} else {
				out[s] = SliceState{Prev: e.value.Node, PrevReason: e.value.Reason, Avoid: e.value.Avoid}
			}
		}
	}
	for s, h := range st.owned {
		ss := out[s]
		ss.Owner, ss.Prev, ss.PrevReason = c.cfg.NodeID, "", ""
		if ss.Avoid == nil {
			ss.Avoid = h.value.Avoid
		}
		ss.CriticalSince = critical[s]
		out[s] = ss
	}
	return out
}

// syncAssignee hands the assignee exactly the slices it may process: held, valid lease, not
// being handed off, not still releasing from an earlier narrowing.
func (c *ConsulCoordinator) syncAssignee(ctx context.Context, st *loopState, wg *sync.WaitGroup) {
	c.publishTokens(st) // before SetSlices: a handler of a new slice asks for its token at once
	for _, q := range c.cfg.Queues {
		var want []int
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			h := st.owned[s]
			if h != nil && h.handoff == nil && st.releasing[s] == nil && st.leaseValid && !st.stopping {
				want = append(want, i)
			}
		}
		cur := st.assigned[q.Name]
		same := len(cur) == len(want)
		for _, i := range want {
			same = same && cur[i]
		}
		if same {
			continue
		}
		var removed []SliceID
		next := map[int]bool{}
		for _, i := range want {
			next[i] = true
		}
		for i := range cur {
			if !next[i] {
				removed = append(removed, SliceID{q.Name, i})
			}
		}
		ch := c.a.SetSlices(q.Name, want)
		st.assigned[q.Name] = next
		if len(removed) == 0 {
			continue
		}
		if ch == nil {
			continue // an assignee that returns nil has nothing in flight
		}
		for _, s := range removed {
			st.releasing[s] = ch
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
			select {
			case c.released <- releasedEvent{ch: ch, slices: removed}:
			case <-ctx.Done():
			}
		}()
	}
}

// releaseDrained releases the lock of every handed-off slice the assignee has released.
func (c *ConsulCoordinator) releaseDrained(ctx context.Context, st *loopState, now time.Time) {
	keys := make([]SliceID, 0, len(st.owned))
	for s := range st.owned {
		keys = append(keys, s)
	}
	sortSlices(keys)
	for _, s := range keys {
		h := st.owned[s]
		if h.handoff == nil || st.assigned[s.Queue][s.Index] || st.releasing[s] != nil {
			continue
		}
		v := lockValue{Node: c.cfg.NodeID, Reason: h.handoff.Reason, To: h.handoff.To, Avoid: liveAvoid(h.value.Avoid, now)}
		if h.handoff.Reason == ReasonStuck {
			v.Avoid = append(v.Avoid, Avoid{Node: c.cfg.NodeID, Until: now.Add(c.cfg.HoldDown).Round(0)})
		}
		body, _ := json.Marshal(v)
		var idx uint64
		var gone bool
		err := c.call(ctx, OpRelease, func(ctx context.Context) error {
			ok, resp, _, err := c.client.KV().Txn(api.KVTxnOps{
				{Verb: api.KVUnlock, Key: c.sliceKey(s), Value: body, Session: h.session},
				{Verb: api.KVGet, Key: c.sliceKey(s)},
			}, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return err
			}
			if !ok {
				if perm := txnPermission(resp.Errors); perm != nil {
					return perm
				}
				gone = true // not ours any more: the session was invalidated meanwhile
				return nil
			}
			if len(resp.Results) > 1 && resp.Results[1] != nil {
				idx = resp.Results[1].ModifyIndex
			}
			return nil
		})
		if err != nil {
			return // retried at the next step
		}
		delete(st.owned, s)
		if gone {
			c.traceHandoff(s, h, c.clk.Now(), "lease_lost")
			c.changed(s, c.cfg.NodeID, "", ReasonLeaseLost)
			continue
		}
		st.releasedAt[s] = idx
		c.traceHandoff(s, h, c.clk.Now(), "released")
		c.changed(s, c.cfg.NodeID, h.handoff.To, h.handoff.Reason)
	}
}

func liveAvoid(av []Avoid, now time.Time) []Avoid {
	var out []Avoid
	for _, a := range av {
		if now.Before(a.Until) {
			out = append(out, a)
		}
	}
	return out
}

// acquire tries the planned acquisitions, for at most one RenewInterval.
func (c *ConsulCoordinator) acquire(ctx context.Context, st *loopState, now time.Time) {
	start := c.clk.Now()
	for _, m := range st.plan.Acquire {
		if c.clk.Now().Sub(start) > c.cfg.RenewInterval {
			return
		}
		if st.owned[m.Slice] != nil || st.releasing[m.Slice] != nil || now.Before(st.retryAt[m.Slice]) {
			continue
		}
		if idx, ok := st.staleAt[m.Slice]; ok && idx == st.kv.index {
			continue // the key changed after this snapshot: wait for the next one
		}
		// The move's previous owner and reason, and the avoid list carried over, come from the
		// snapshot: the lock is taken only if the key is still as the snapshot saw it, so they
		// are exact. A key changed meanwhile is retried once the watch has the new state.
		key := c.sliceKey(m.Slice)
		check := &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: key}
		prevEntry, seen := st.kv.entries[m.Slice]
		if seen {
			check = &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: prevEntry.modifyIndex}
		}
		v := lockValue{Node: c.cfg.NodeID, Avoid: liveAvoid(prevEntry.value.Avoid, now)}
		body, _ := json.Marshal(v)
		var got *api.KVPair
		var stale bool
		callStart := c.clk.Now()
		err := c.call(ctx, OpAcquire, func(ctx context.Context) error {
			ok, resp, _, err := c.client.KV().Txn(api.KVTxnOps{
				check,
				{Verb: api.KVLock, Key: key, Value: body, Session: st.session},
				{Verb: api.KVGet, Key: key},
			}, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return err
			}
			if !ok {
				if perm := txnPermission(resp.Errors); perm != nil {
					return perm
				}
				for _, e := range resp.Errors {
					stale = stale || e.OpIndex == 0 // the check, not the lock, failed
				}
				c.log.Debug("slice lock not granted", "slice", m.Slice.String(), "why", txnErrors(resp.Errors), "stale_snapshot", stale)
				return nil
			}
			if n := len(resp.Results); n == 3 {
				got = resp.Results[2]
			}
			return nil
		})
		if err != nil {
			st.notBefore = c.clk.Now().Add(st.acqBackoff.NextBackOff())
			return
		}
		st.acqBackoff.Reset()
		if got == nil && stale {
			st.staleAt[m.Slice] = st.kv.index
			continue
		}
		if got == nil {
			st.retryAt[m.Slice] = now.Add(c.cfg.RenewInterval)
			continue
		}
		delete(st.retryAt, m.Slice)
		delete(st.staleAt, m.Slice)
		st.owned[m.Slice] = &held{session: st.session, token: got.ModifyIndex, lockIndex: got.LockIndex, since: now, value: v}
		c.traceAcquire(m, callStart, c.clk.Now(), got.ModifyIndex)
		c.changed(m.Slice, m.From, c.cfg.NodeID, m.Reason)
	}
}

func txnPermission(errs api.TxnErrors) error {
	for _, e := range errs {
		if strings.Contains(e.What, "Permission denied") || strings.Contains(e.What, "ACL not found") {
			return api.StatusError{Code: 403, Body: e.What}
		}
	}
	return nil
}

func txnErrors(errs api.TxnErrors) string {
	var s []string
	for _, e := range errs {
		s = append(s, e.What)
	}
	return strings.Join(s, "; ")
}

func sortSlices(s []SliceID) {
	sort.Slice(s, func(i, j int) bool {
		if s[i].Queue != s[j].Queue {
			return s[i].Queue < s[j].Queue
		}
		return s[i].Index < s[j].Index
	})
}

// publishTokens makes FencingToken answer for the slices owned now.
func (c *ConsulCoordinator) publishTokens(st *loopState) {
	tokens := make(map[SliceID]uint64, len(st.owned))
	for s, h := range st.owned {
		tokens[s] = h.token
	}
	c.mu.Lock()
	c.tokens = tokens
	c.mu.Unlock()
}

// FencingToken returns the fencing token of slice index of queue q while this node holds its
// lock, else 0: the ModifyIndex of the slice's KV pair when this node acquired it. Consul's Raft
// index only grows, so whoever acquires the slice next gets a larger token: a system that keeps
// the largest token it has seen per slice can refuse the writes of an owner that lost the slice
// but still runs (after a pause, say).
func (c *ConsulCoordinator) FencingToken(q string, index int) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tokens[SliceID{q, index}]
}

// publish updates the Status snapshot, the processing set the keeper reports on, and the Meta.
func (c *ConsulCoordinator) publish(st *loopState, now time.Time) {
	var owned []OwnedSlice
	ownedByQueue := map[string][]int{}
	processing := map[string][]int{}
	for s, h := range st.owned {
		p := st.assigned[s.Queue][s.Index]
		owned = append(owned, OwnedSlice{Slice: s, FencingToken: h.token, LockIndex: h.lockIndex, Since: h.since, Processing: p})
		ownedByQueue[s.Queue] = append(ownedByQueue[s.Queue], s.Index)
		if p {
			processing[s.Queue] = append(processing[s.Queue], s.Index)
		}
	}
	sort.Slice(owned, func(i, j int) bool {
		a, b := owned[i].Slice, owned[j].Slice
		return a.Queue < b.Queue || (a.Queue == b.Queue && a.Index < b.Index)
	})
	for q := range processing {
		slices.Sort(processing[q])
	}
	var all []SliceStatus
	for _, q := range c.cfg.Queues {
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			ss := SliceStatus{Slice: s, Home: st.plan.Home[s], State: SliceFree}
			if st.kv != nil {
				if e, ok := st.kv.entries[s]; ok && e.session != "" {
					ss.Owner, ss.State = e.value.Node, SliceHeld
				}
			}
			if h := st.owned[s]; h != nil {
				ss.Owner = c.cfg.NodeID
				switch {
				case st.assigned[s.Queue][s.Index]:
					ss.State = SliceOwned
				case h.handoff != nil || st.releasing[s] != nil:
					ss.State = SliceReleasing
				default:
					ss.State = SliceSuspended
				}
			}
			all = append(all, ss)
		}
	}
	c.publishTokens(st)
	meta := c.buildMeta(ownedByQueue, st.draining || st.stopping, st.unavailable)
	c.mu.Lock()
	c.status.Draining = st.draining
	c.status.Owned = owned
	c.status.Slices = all
	c.processing = processing
	dirty := !maps.Equal(meta, c.meta)
	c.meta = meta
	c.mu.Unlock()
	if dirty {
		select {
		case c.metaDirty <- struct{}{}:
		default:
		}
	}
}

// finish runs after the loop: every slice is released or DrainTimeout passed. It destroys the
// session (remaining locks go to lock-delay) and deregisters the service.
func (c *ConsulCoordinator) finish(st *loopState) error {
	var errs []error
	if n := len(st.owned); n > 0 {
		errs = append(errs, fmt.Errorf("stop: %d slices not released within %s; they move after lock-delay", n, c.cfg.DrainTimeout))
		for s := range st.owned {
			c.changed(s, c.cfg.NodeID, "", ReasonReleased)
		}
	}
	c.mu.Lock()
	session := c.lease.session
	c.mu.Unlock()
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
	c.mu.Lock()
	c.lease = leaseState{}
	c.status.Owned, c.processing = nil, map[string][]int{}
	c.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		c.log.Warn("failover coordinator stopped uncleanly", "err", err)
		return err
	}
	c.log.Info("failover coordinator stopped: slices released, session destroyed, service deregistered")
	return nil
}

// ---- calls and errors ----

func (c *ConsulCoordinator) newBackoff(initial, maxInterval time.Duration) backoff.BackOff {
	// Retry forever; the owner's context stops it.
	return retry.New(retry.Policy{Initial: max(initial, time.Millisecond), Max: maxInterval, Jitter: 0.5}, c.clk)
}

// requestTimeout is how long op may take: RequestTimeout, or for a blocking query its wait
// plus Consul's jitter (wait/16) plus RequestTimeout.
func (c *ConsulCoordinator) requestTimeout(op ConsulOp) time.Duration {
	if op.Blocking() {
		return watchWait + watchWait/16 + c.cfg.RequestTimeout
	}
	return c.cfg.RequestTimeout
}

// call runs one Consul request with RequestTimeout (blocking queries set their own), counts and
// explains failures, and logs each change of Consul's state once.
func (c *ConsulCoordinator) call(ctx context.Context, op ConsulOp, f func(ctx context.Context) error) error {
	rctx, cancel := context.WithTimeout(ctx, c.requestTimeout(op))
	err := f(rctx)
	cancel()
	if err == nil {
		c.noteOK(op)
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err() // we are stopping; not Consul's fault
	}
	err = c.explain(op, err)
	c.noteErr(op, err)
	return err
}

// outage is one stretch of failing Consul requests, for logging. A restarting Consul flaps: the
// agent answers before the servers elect a leader, requests sent during the election time out
// after others succeeded, the agent is slow while it syncs. So an outage ends only once every
// request has succeeded for one TTL, and each problem is logged once per outage.
type outage struct {
	start      time.Time
	problems   map[string]bool // ConsulError.Problem values already logged
	clearSince time.Time       // when the last failing request recovered; zero while one fails
}

// noteOK clears op's failure and every "Consul unavailable" failure: Consul answered. Failures
// such as a denied permission stay until their own operation succeeds. "consul answers again"
// is logged once per outage, after nothing failed for one TTL.
func (c *ConsulCoordinator) noteOK(op ConsulOp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.outage == nil {
		return
	}
	delete(c.failing, op)
	for o, f := range c.failing {
		if errors.Is(f, ErrConsulUnavailable) {
			delete(c.failing, o)
		}
	}
	if len(c.failing) > 0 {
		return
	}
	c.lastErr = ""
	now := c.clk.Now()
	if c.outage.clearSince.IsZero() {
		c.outage.clearSince = now
	}
	if now.Sub(c.outage.clearSince) >= c.cfg.TTL {
		c.log.Info("consul answers again", "consul", c.addr,
			"outage", c.outage.clearSince.Sub(c.outage.start).Round(time.Millisecond), "fine_for", now.Sub(c.outage.clearSince).Round(time.Millisecond))
		c.outage = nil
	}
}

// noteErr counts a failure, keeps it as the current state, and logs it when its problem is new
// in this outage.
func (c *ConsulCoordinator) noteErr(op ConsulOp, err error) {
	problem := err.Error()
	if ce := (*ConsulError)(nil); errors.As(err, &ce) {
		problem = ce.Problem
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errCount[op.String()]++
	c.failing[op] = err
	c.lastErr = err.Error()
	if c.outage == nil {
		c.outage = &outage{start: c.clk.Now(), problems: map[string]bool{}}
	}
	c.outage.clearSince = time.Time{}
	if !c.outage.problems[problem] {
		c.outage.problems[problem] = true
		c.log.Error("consul request failing; retrying with backoff", "op", op, "err", err)
	}
}

// ConsulError explains a failed Consul request and says what to do.
type ConsulError struct {
	Op      string // what we were doing
	Addr    string
	Problem string // "permission denied", "unreachable", ...
	Hint    string
	Kind    error // ErrPermissionDenied, ErrConsulUnavailable or nil
	Err     error // the client's error
}

func (e *ConsulError) Error() string {
	s := fmt.Sprintf("%s: consul at %s: %s", e.Op, e.Addr, e.Problem)
	if e.Hint != "" {
		s += ": " + e.Hint
	}
	var se api.StatusError
	if errors.As(e.Err, &se) && se.Body != "" {
		s += " (consul said: " + se.Body + ")"
	} else if e.Err != nil && e.Kind != nil {
		s += " (" + e.Err.Error() + ")"
	}
	return s
}

func (e *ConsulError) Unwrap() []error {
	if e.Kind == nil {
		return []error{e.Err}
	}
	return []error{e.Kind, e.Err}
}

func (c *ConsulCoordinator) explain(op ConsulOp, err error) error {
	e := &ConsulError{Op: op.Description(), Addr: c.addr, Err: err}
	var se api.StatusError
	var ne net.Error
	msg := err.Error()
	switch {
	case errors.As(err, &se) && (se.Code == 403 || strings.Contains(se.Body, "Permission denied") || strings.Contains(se.Body, "ACL not found")):
		e.Problem, e.Kind = "permission denied", ErrPermissionDenied
		e.Hint = "check the ACL token (CONSUL_HTTP_TOKEN or consul.token)"
	case errors.As(err, &se) && (strings.Contains(se.Body, "No cluster leader") || strings.Contains(se.Body, "leadership lost") || se.Code == 503):
		e.Problem, e.Kind = "no cluster leader", ErrConsulUnavailable
		e.Hint = "Consul servers are electing a leader or lost quorum; retrying"
	case errors.As(err, &se) && se.Code == 429:
		e.Problem, e.Kind = "rate limited", ErrConsulUnavailable
		e.Hint = "raise the agent's http rate limit (limits.http_max_conns_per_client)"
	case errors.As(err, &se):
		e.Problem = fmt.Sprintf("unexpected response %d", se.Code)
	case strings.Contains(msg, "x509:") || strings.Contains(msg, "tls:") || strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		e.Problem, e.Kind = "TLS failure", ErrConsulUnavailable
		e.Hint = "check consul.tls (CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_HTTP_SSL)"
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		e.Problem, e.Kind = "timed out", ErrConsulUnavailable
		e.Hint = fmt.Sprintf("no answer within %s; Consul is slow or unreachable", c.requestTimeout(op))
	default:
		e.Problem, e.Kind = "unreachable", ErrConsulUnavailable
		e.Hint = "is the Consul agent running? check CONSUL_HTTP_ADDR or consul.address"
	}
	return e
}
