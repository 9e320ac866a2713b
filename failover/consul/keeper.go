package consul

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
)

// The keeper: one goroutine that keeps this node's lease. Every RenewInterval it confirms the
// session with a consistent read, (re-)registers the service when the Meta changed, passes the
// alive check and the queue checks (service.go), creates a session when there is none, and
// publishes the lease deadline (failover.LeaseDeadline) for the loop and ValidUntil.

// leaseState is what the keeper publishes to the loop and to ValidUntil.
type leaseState struct {
	session  string    // current session ID, "" when none
	deadline time.Time // lease deadline, zero when none
	// criticalSince: owned slices whose health is critical, and since when.
	criticalSince map[failover.SliceID]time.Time
}

// keeper owns the agent registration, the TTL checks and the session: one round every
// RenewInterval (sooner after an error, with backoff).
type keeper struct {
	c *Coordinator

	registered   bool
	regMeta      map[string]string // Meta last registered
	ttlSent      time.Time         // last successful pass of the alive check was sent
	confirmSent  time.Time         // last consistent read finding our session was sent
	session      string
	unhealthy    bool // logged state of failover.HealthSource.NodeHealthy
	criticalFrom map[failover.SliceID]time.Time
	// live is published in the Meta (live_since, Unix ms): when this node's current run of
	// good health began. It restarts when the process starts, and at the first passing round
	// after the session was lost, so every node sees the same hold-down for this node and a node
	// whose check flaps never looks settled; a lapse that the session survived does not end it
	// (failover.LiveStretch).
	live    failover.LiveStretch
	lastReg time.Time
	// regUnsureUntil: a registration failed recently; until then every healthy round registers
	// again. A request the client gave up on may still reach the agent later (queued while the
	// agent was starting) and overwrite a newer Meta, such as a live_since restored after a
	// lapse; regMeta cannot tell, so the Meta is re-asserted for a while.
	regUnsureUntil time.Time
	// adopting: session is the previous process's (Coordinator.SetRestart), not confirmed yet;
	// the lease names it only once it is, and the loop's Machine then adopts its locks.
	adopting bool
	// The member key (memberkey.go): the session and value last written, why the node is out.
	memberSession string
	memberWritten failover.MemberValue
	memberOut     string
	memberRefused bool
	created       string // the last session this process created (not adopted)
}

func (k *keeper) run(ctx context.Context) {
	c := k.c
	k.criticalFrom = map[failover.SliceID]time.Time{}
	k.live = failover.NewLiveStretch(c.clk.Now())
	if p := c.prev; p != nil {
		// The previous process's session, if the first round confirms it is ours and valid;
		// its live stretch goes on (a restart in place is no new start for the peers).
		k.session, k.live, k.adopting = p.Session, failover.NewLiveStretch(p.LiveSince), true
	}
	// Retries back off up to one RenewInterval only: the keeper's requests go to the local agent
	// and cost no more than its renewals, and after a cut heals the next pass must come soon
	// (ConsulConfig.CutTolerance).
	b := c.newBackoff(c.cfg.RenewInterval/4, c.cfg.RenewInterval)
	for {
		wait := c.cfg.RenewInterval
		if err := k.round(ctx); err != nil {
			wait = b.NextBackOff()
		} else {
			b.Reset()
		}
		next := clock.After(c.clk, wait)
	idle:
		for {
			select {
			case <-ctx.Done():
				return
			case <-next:
				break idle
			case <-c.metaDirty:
				// Owned slices changed: show it in the Meta soon, at most every RenewInterval/4.
				if !k.unhealthy && k.registered && !c.clk.Now().Before(k.lastReg.Add(c.cfg.RenewInterval/4)) {
					meta := maps.Clone(c.wantMeta())
					meta["live_since"] = strconv.FormatInt(k.live.Since().UnixMilli(), 10)
					if !maps.Equal(meta, k.regMeta) {
						_ = k.register(ctx, meta, true)
					}
					_ = k.writeMemberKey(ctx, meta, k.memberOut) // draining shows at once
				}
			}
		}
	}
}

// round registers if needed, passes the checks and confirms the session; it returns the first
// error, after having tried every step that does not depend on it.
func (k *keeper) round(ctx context.Context) error {
	c := k.c
	healthErr := c.health.NodeHealthy()
	switch {
	case healthErr != nil && !k.unhealthy:
		k.unhealthy = true
		c.log.Warn("node unhealthy: no longer passing the TTL check, slices move away within one TTL", "err", healthErr, "ttl", c.cfg.TTL)
	case healthErr == nil && k.unhealthy:
		k.unhealthy = false
		c.log.Info("node healthy again: passing the TTL check")
	}

	var errs []error
	// Confirm the session first: if it is gone, live_since restarts and must reach the Meta
	// before the check passes again, or peers would see this node settled for a moment.
	if k.session != "" {
		sent := c.clk.Now()
		var se *api.SessionEntry
		err := c.call(ctx, failover.OpSessionInfo, func(ctx context.Context) error {
			var err error
			// RequireConsistent: a leader that has confirmed its leadership answers, so "found"
			// proves the session existed after sent (the lease argument relies on it).
			se, _, err = c.client.Session().Info(k.session, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
			return err
		})
		var agentNode string
		var agentErr error
		if k.adopting && err == nil && se != nil {
			if agentNode, agentErr = k.localAgentNode(ctx); ctx.Err() != nil {
				err = ctx.Err() // stopping: decide nothing
			}
		}
		if why := k.notAdoptable(err, se, agentNode, agentErr); why != "" {
			c.log.Info("restart in place: starting with a new session", "why", why, "previous_session", k.session)
			k.session, k.adopting = "", false
			k.live.Lost()
		}
		switch {
		case k.session == "":
		case err != nil:
			errs = append(errs, err)
			if !k.adopting && !c.clk.Now().Before(c.ValidUntil()) {
				// The lease lapsed: this node is not settled until it knows its session survived.
				// Passing the check with the old live_since would let peers hand slices back at
				// once when Consul answers again, before this node learns its session is gone.
				k.live.Lapsed(k.session)
			}
		case se == nil:
			c.log.Warn("session lost: Consul invalidated it (TTL check critical, node failed, or destroyed); its slices are gone",
				"session", k.session)
			k.session = ""
			k.live.Lost()
		default:
			// The session outlived the outage: this node kept its slices and its live stretch
			// (restarting live_since would make it look unsettled and, when every node lapsed
			// together, let a restarted node take its slices back without its hold-down).
			k.confirmSent = sent
			k.live.Confirmed(k.session)
			if k.adopting {
				k.adopting = false
				c.log.Info("restart in place: adopted the previous process's session; its slices are resumed, not moved",
					"session", k.session, "live_since", k.live.Since().Format(time.RFC3339Nano))
			}
		}
	}

	if healthErr == nil {
		k.live.Healthy(c.clk.Now()) // live again from the pass below, if the stretch restarted
	}
	meta := maps.Clone(c.wantMeta())
	meta["live_since"] = strconv.FormatInt(k.live.Since().UnixMilli(), 10)
	// Re-registration restarts the agent's TTL timers, so it is skipped while unhealthy: the
	// check must be allowed to lapse.
	if !k.registered || (healthErr == nil && (!maps.Equal(meta, k.regMeta) || c.clk.Now().Before(k.regUnsureUntil))) {
		if err := k.register(ctx, meta, healthErr == nil); err != nil {
			k.publish()
			return errors.Join(append(errs, err)...) // nothing else works without the registration
		}
	}

	if healthErr == nil {
		sent := c.clk.Now()
		if err := c.call(ctx, failover.OpCheckTTL, func(ctx context.Context) error {
			return c.client.Agent().UpdateTTLOpts(c.aliveCheckID, "ok", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx))
		}); err != nil {
			if unknownCheck(err) {
				k.registered = false // the agent lost our registration (restart without persistence)
			}
			errs = append(errs, err)
		} else {
			k.ttlSent = sent
		}
		errs = append(errs, k.passQueueChecks(ctx)...)
	}

	if k.session == "" && healthErr == nil { // Consul refuses a session bound to a critical check
		sent := c.clk.Now()
		var id string
		err := c.call(ctx, failover.OpSessionCreate, func(ctx context.Context) error {
			var err error
			id, _, err = c.client.Session().Create(&api.SessionEntry{
				Name:          c.sessionName,
				LockDelay:     c.cfg.LockDelay,
				Behavior:      api.SessionBehaviorRelease,
				NodeChecks:    []string{"serfHealth"},
				ServiceChecks: []api.ServiceCheck{{ID: c.aliveCheckID}},
			}, (&api.WriteOptions{}).WithContext(ctx))
			return err
		})
		if err != nil {
			errs = append(errs, err)
		} else {
			k.session, k.confirmSent, k.created = id, sent, id
			c.log.Info("session created", "session", id, "lock_delay", c.cfg.LockDelay)
			k.destroyStaleSessions(ctx, id)
		}
	}
	if k.session != "" && healthErr == nil {
		if err := k.writeMemberKey(ctx, meta, k.outReason(ctx)); err != nil {
			errs = append(errs, err)
		}
	}
	k.saveRun()
	k.publish()
	return errors.Join(errs...)
}

// destroyStaleSessions removes sessions a previous run of this node left on its agent: the new
// run passes the same alive check, so they would never end by themselves. Destroying one is
// safe even if it still held locks: that is one more invalidation, covered by lock-delay.
func (k *keeper) destroyStaleSessions(ctx context.Context, current string) {
	c := k.c
	var all []*api.SessionEntry
	err := c.call(ctx, failover.OpSessionCleanup, func(ctx context.Context) error {
		se, _, err := c.client.Session().Info(current, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil || se == nil {
			return err
		}
		all, _, err = c.client.Session().Node(se.Node, (&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return // best effort; the KV reconciliation also destroys stale sessions holding locks
	}
	for _, se := range all {
		if se.Name != c.sessionName || se.ID == current {
			continue
		}
		c.log.Warn("destroying a session left by a previous run of this node", "session", se.ID)
		_ = c.call(ctx, failover.OpSessionDestroy, func(ctx context.Context) error {
			_, err := c.client.Session().Destroy(se.ID, (&api.WriteOptions{}).WithContext(ctx))
			return err
		})
	}
}

func (k *keeper) publish() {
	c := k.c
	d := failover.LeaseDeadline(k.ttlSent, k.confirmSent, c.cfg.TTL, c.cfg.LockDelay, c.cfg.LeaseMargin)
	crit := make(map[failover.SliceID]time.Time, len(k.criticalFrom))
	for s, t := range k.criticalFrom {
		crit[s] = t
	}
	session := k.session
	if k.adopting {
		session, d = "", time.Time{} // the previous process's session is not ours before it is confirmed
	}
	old := c.lease.Load()
	changed := old.session != session || !old.deadline.Equal(d) || !maps.Equal(old.criticalSince, crit)
	c.lease.Store(&leaseState{session: session, deadline: d, criticalSince: crit})
	if changed {
		c.wakeLoop()
	}
}
