package consul

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
)

// The loop: Run's goroutine, the driver of the failover.Machine. It feeds the Machine every
// event (the keeper's lease, the watches' answers, the assignee's releases, Drain/Undrain,
// queue availability, time), carries out each Ready (SetSlices, transactions, sessions to
// destroy, connection resets) and reports every outcome back; at the end, finish.

// shutdownCallAttempts: after the loop, destroying the session and deregistering are each
// tried this often (RequestTimeout each, with backoff); then Run gives up and returns the
// error, and the TTL check and lock-delay take over.
const shutdownCallAttempts = 3

// Run registers the node, keeps its lease, watches the cluster and moves slices until ctx is
// cancelled; then it releases everything cleanly and returns. Consul failures never end Run.
func (c *Coordinator) Run(ctx context.Context) (err error) {
	if !c.running.CompareAndSwap(false, true) {
		return failover.ErrAlreadyRunning
	}
	defer func() { c.runErr = err; close(c.done) }()
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
	if c.cfg.WatchLayout == failover.LayoutScoped {
		c.sc = newScoped(c, inner) // before the keeper starts: it tells sc of its member key writes
	}
	k := &keeper{c: c}
	wg.Add(1)
	go func() { defer wg.Done(); k.run(inner) }()
	if c.sc != nil {
		wg.Add(1)
		go func() { defer wg.Done(); c.sc.run(inner) }()
	} else {
		wg.Add(2)
		go func() { defer wg.Done(); c.watchKV(inner) }()
		go func() { defer wg.Done(); c.watchMembers(inner) }()
	}

	m := failover.NewMachine(c.machineConfig(), c.log, c.tp)
	if c.prev != nil {
		// Adopted only if the keeper confirms it: the lease names it only then.
		m.Step(failover.EvAdopt{Now: c.clk.Now(), Session: c.prev.Session, Releasing: c.prev.Releasing})
	}
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
			// A stop for a restart keeps the session and locks when the next process can find
			// them (a store); without one nobody could adopt them, so they are handed off.
			m.Step(failover.EvStop{Now: c.clk.Now(), KeepLocks: c.store != nil})
		case <-c.leave:
			m.Step(failover.EvStop{Now: c.clk.Now()})
		case <-c.wake:
		case gen := <-c.released:
			m.Step(failover.EvAssigneeReleased{Now: c.clk.Now(), Gen: gen})
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

func (c *Coordinator) machineConfig() failover.MachineConfig { return c.cfg.MachineConfig() }

// driver carries out what the Machine decides. It lives in Run's goroutine.
type driver struct {
	c       *Coordinator
	m       *failover.Machine
	ctx     context.Context
	wg      *sync.WaitGroup
	lease   leaseState
	unavail map[string]bool
	waiters []chan error // pending Drain calls, buffered 1
}

func (d *driver) control(req ctlReq) {
	now := d.c.clk.Now()
	if !req.drain {
		d.m.Step(failover.EvUndrain{Now: now})
		for _, w := range d.waiters {
			w <- errors.New("drain: cancelled by Undrain")
		}
		d.waiters = nil
		req.reply <- nil
		return
	}
	d.m.Step(failover.EvDrain{Now: now})
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
		m.Step(failover.EvLease{Now: now, Session: l.session, Deadline: l.deadline, CriticalSince: l.criticalSince})
	}
	if c.sc != nil {
		for _, ev := range c.sc.take(now) {
			m.Step(ev)
		}
	}
	for _, ev := range c.inbox.take(now) {
		m.Step(ev)
	}
	if u := c.unavailableQueues(); !maps.Equal(u, d.unavail) {
		d.unavail = u
		m.Step(failover.EvUnavailable{Now: now, Queues: u})
	}
	m.Step(failover.EvTick{Now: now})
	acquireStart := now
	releaseFailed, acquireDone := false, false // each is tried at most until it fails once per wake-up
	for i := 0; ; i++ {
		rd := m.Ready()
		if !rd.HasWork() || i == maxRounds {
			d.finishRound(rd)
			if c.sc != nil {
				c.sc.update(m)
			}
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
		if len(rd.Release) > 0 && !releaseFailed {
			// Recorded before they are sent: if this process dies with one on its way, the next
			// one releases it again rather than process the slice (failover.EvAdopt).
			var ss []failover.SliceID
			for _, r := range rd.Release {
				ss = append(ss, r.Slice)
			}
			c.recordReleasing(true, ss...)
		}
		var answered []failover.SliceID
		for _, r := range rd.Release {
			if releaseFailed {
				break // retried at the next wake-up
			}
			res := c.releaseTxn(d.ctx, r)
			m.Step(res)
			releaseFailed = res.Err
			if !res.Err {
				answered = append(answered, r.Slice) // nothing of it is on its way any more
			}
		}
		if len(answered) > 0 {
			c.recordReleasing(false, answered...)
		}
		for _, a := range rd.Acquire {
			if acquireDone || c.clk.Now().Sub(acquireStart) > c.cfg.RenewInterval {
				// The rest waits for the next wake-up: the lease and the watches come first.
				acquireDone = true
				break
			}
			res := c.acquireTxn(d.ctx, a)
			m.Step(res)
			acquireDone = res.Err // backs off (failover.Machine.notBefore)
		}
		for _, id := range rd.DestroySessions {
			_ = c.call(d.ctx, failover.OpSessionDestroy, func(ctx context.Context) error {
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
			m.Step(failover.EvAssigned{Now: c.clk.Now(), Gen: p.gen, Pending: open})
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
func (d *driver) finishRound(rd failover.Ready) {
	d.c.publish(rd) // before waking Drain callers: they read failover.Status next
	if rd.DrainDone {
		for _, w := range d.waiters {
			w <- nil
		}
		d.waiters = nil
	}
}

// publish makes rd's snapshot what readers see, and tells the keeper when the Meta changed.
func (c *Coordinator) publish(rd failover.Ready) {
	old := c.pub.Load()
	c.pub.Store(&published{status: rd.Status, processing: rd.Processing, meta: rd.Meta, tokens: rd.Tokens})
	if old != nil && !maps.Equal(old.meta, rd.Meta) {
		select {
		case c.metaDirty <- struct{}{}:
		default:
		}
	}
}

func (c *Coordinator) publishTokens(tokens map[failover.SliceID]uint64) {
	p := *c.pub.Load()
	p.tokens = tokens
	c.pub.Store(&p)
}

// finish runs after the loop: every slice is released or DrainTimeout passed. It destroys the
// session (remaining locks go to lock-delay) and deregisters the service.
func (c *Coordinator) finish(m *failover.Machine) error {
	if m.KeepsLocks() {
		return c.finishForRestart(m)
	}
	var errs []error
	if held := m.HeldAtStop(); len(held) > 0 {
		errs = append(errs, fmt.Errorf("stop: %d slices not released within %s; they move after lock-delay", len(held), c.cfg.DrainTimeout))
		for _, s := range held {
			m.CountChange(s, c.cfg.NodeID, "", failover.ReasonReleased)
		}
	}
	session := c.lease.Load().session
	ctx := context.Background()
	try := func(op failover.ConsulOp, f func(ctx context.Context) error) {
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
		try(failover.OpSessionDestroy, func(ctx context.Context) error {
			_, err := c.client.Session().Destroy(session, (&api.WriteOptions{}).WithContext(ctx))
			return err
		})
	}
	if c.registered.Load() {
		try(failover.OpDeregister, func(ctx context.Context) error {
			return c.client.Agent().ServiceDeregisterOpts(c.serviceID, (&api.QueryOptions{}).WithContext(ctx))
		})
	}
	if c.store != nil && session != "" {
		if err := c.store.ForgetRun(); err != nil { // the next process has nothing to adopt
			errs = append(errs, err)
		}
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

// inbox holds the latest answer of each watch until the loop takes it.
type inbox struct {
	mu       sync.Mutex
	kv       *failover.KVSnapshot
	kvReset  bool
	kvFresh  bool
	members  []failover.MemberInfo
	memFresh bool
}

func (b *inbox) putKV(s *failover.KVSnapshot, reset bool) {
	b.mu.Lock()
	b.kv, b.kvReset, b.kvFresh = s, b.kvReset || reset, true
	b.mu.Unlock()
}

func (b *inbox) putMembers(ms []failover.MemberInfo) {
	b.mu.Lock()
	b.members, b.memFresh = ms, true
	b.mu.Unlock()
}

// take returns the events waiting, KV first.
func (b *inbox) take(now time.Time) []failover.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	var evs []failover.Event
	if b.kvFresh || b.kvReset {
		evs = append(evs, failover.EvKV{Now: now, Snap: b.kv, Reset: b.kvReset})
		b.kvFresh, b.kvReset = false, false
	}
	if b.memFresh {
		evs = append(evs, failover.EvMembers{Now: now, Members: b.members})
		b.memFresh = false
	}
	return evs
}
