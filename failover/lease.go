package failover

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/internal/clock"
)

// LeaseDeadline is D = min(tTTL + TTL, tConfirm + LockDelay) - margin (see the timing constants
// in config.go for why). Zero inputs mean "never happened": no lease.
func LeaseDeadline(ttlSent, confirmSent time.Time, ttl, lockDelay, margin time.Duration) time.Time {
	if ttlSent.IsZero() || confirmSent.IsZero() {
		return time.Time{}
	}
	d := ttlSent.Add(ttl)
	if c := confirmSent.Add(lockDelay); c.Before(d) {
		d = c
	}
	return d.Add(-margin)
}

// leaseState is what the keeper publishes to the loop and to ValidUntil.
type leaseState struct {
	session  string    // current session ID, "" when none
	deadline time.Time // lease deadline, zero when none
	// criticalSince: owned slices whose health is critical, and since when.
	criticalSince map[SliceID]time.Time
}

// keeper owns the agent registration, the TTL checks and the session: one round every
// RenewInterval (sooner after an error, with backoff).
type keeper struct {
	c *ConsulCoordinator

	registered   bool
	regMeta      map[string]string // Meta last registered
	ttlSent      time.Time         // last successful pass of the alive check was sent
	confirmSent  time.Time         // last consistent read finding our session was sent
	session      string
	unhealthy    bool // logged state of HealthSource.NodeHealthy
	criticalFrom map[SliceID]time.Time
	// liveSince is published in the Meta (live_since, Unix ms): when this node's current run of
	// good health began. It restarts when the process starts, and at the first passing round
	// after the session was lost, so every node sees the same hold-down for this node and a node
	// whose check flaps never looks settled.
	liveSince  time.Time
	freshSince bool // the session was lost: restart liveSince at the next healthy round
	lastReg    time.Time
}

func (k *keeper) run(ctx context.Context) {
	c := k.c
	k.criticalFrom = map[SliceID]time.Time{}
	k.liveSince = c.clk.Now()
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
					meta["live_since"] = strconv.FormatInt(k.liveSince.UnixMilli(), 10)
					if !maps.Equal(meta, k.regMeta) {
						_ = k.register(ctx, meta, true)
					}
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
		err := c.call(ctx, OpSessionInfo, func(ctx context.Context) error {
			var err error
			// RequireConsistent: a leader that has confirmed its leadership answers, so "found"
			// proves the session existed after sent (the lease argument relies on it).
			se, _, err = c.client.Session().Info(k.session, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
			return err
		})
		switch {
		case err != nil:
			errs = append(errs, err)
			if !c.clk.Now().Before(c.ValidUntil()) {
				// The lease lapsed: this node is not settled, whatever becomes of its session.
				// Passing the check with the old live_since would let peers hand slices back at
				// once when Consul answers again, before this node learns its session is gone.
				k.freshSince = true
			}
		case se == nil:
			c.log.Warn("session lost: Consul invalidated it (TTL check critical, node failed, or destroyed); its slices are gone",
				"session", k.session)
			k.session = ""
			k.freshSince = true
		default:
			// The session outlived the outage: this node kept its slices and its live stretch
			// (restarting live_since would make it look unsettled and give its slices away).
			k.confirmSent, k.freshSince = sent, false
		}
	}

	if k.freshSince && healthErr == nil {
		k.liveSince, k.freshSince = c.clk.Now(), false // live again from the pass below
	}
	meta := maps.Clone(c.wantMeta())
	meta["live_since"] = strconv.FormatInt(k.liveSince.UnixMilli(), 10)
	// Re-registration restarts the agent's TTL timers, so it is skipped while unhealthy: the
	// check must be allowed to lapse.
	if !k.registered || (healthErr == nil && !maps.Equal(meta, k.regMeta)) {
		if err := k.register(ctx, meta, healthErr == nil); err != nil {
			k.publish()
			return errors.Join(append(errs, err)...) // nothing else works without the registration
		}
	}

	if healthErr == nil {
		sent := c.clk.Now()
		if err := c.call(ctx, OpCheckTTL, func(ctx context.Context) error {
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
		err := c.call(ctx, OpSessionCreate, func(ctx context.Context) error {
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
			k.session, k.confirmSent = id, sent
			c.log.Info("session created", "session", id, "lock_delay", c.cfg.LockDelay)
			k.destroyStaleSessions(ctx, id)
		}
	}
	k.publish()
	return errors.Join(errs...)
}

// destroyStaleSessions removes sessions a previous run of this node left on its agent: the new
// run passes the same alive check, so they would never end by themselves. Destroying one is
// safe even if it still held locks: that is one more invalidation, covered by lock-delay.
func (k *keeper) destroyStaleSessions(ctx context.Context, current string) {
	c := k.c
	var all []*api.SessionEntry
	err := c.call(ctx, OpSessionCleanup, func(ctx context.Context) error {
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
		_ = c.call(ctx, OpSessionDestroy, func(ctx context.Context) error {
			_, err := c.client.Session().Destroy(se.ID, (&api.WriteOptions{}).WithContext(ctx))
			return err
		})
	}
}

func (k *keeper) publish() {
	c := k.c
	d := LeaseDeadline(k.ttlSent, k.confirmSent, c.cfg.TTL, c.cfg.LockDelay, c.cfg.LeaseMargin)
	crit := make(map[SliceID]time.Time, len(k.criticalFrom))
	for s, t := range k.criticalFrom {
		crit[s] = t
	}
	old := c.lease.Load()
	changed := old.session != k.session || !old.deadline.Equal(d) || !maps.Equal(old.criticalSince, crit)
	c.lease.Store(&leaseState{session: k.session, deadline: d, criticalSince: crit})
	if changed {
		c.wakeLoop()
	}
}

func (k *keeper) register(ctx context.Context, meta map[string]string, healthy bool) error {
	c := k.c
	status := api.HealthCritical
	if healthy {
		status = api.HealthPassing
	}
	checks := api.AgentServiceChecks{{
		CheckID:                        c.aliveCheckID,
		Name:                           "qslice node alive",
		Notes:                          "Passed by qslice while the node is healthy; the node's slice locks are bound to it.",
		TTL:                            c.cfg.TTL.String(),
		Status:                         status,
		DeregisterCriticalServiceAfter: c.cfg.DeregisterCriticalServiceAfter.String(),
	}}
	for _, q := range c.cfg.Queues {
		checks = append(checks, &api.AgentServiceCheck{
			CheckID: c.queueCheckID[q.Name],
			Name:    "qslice queue " + q.Name,
			Notes:   "Worst health of the slices of this queue owned by the node.",
			TTL:     c.cfg.TTL.String(),
			Status:  api.HealthPassing,
		})
	}
	reg := &api.AgentServiceRegistration{
		ID:      c.serviceID,
		Name:    ServiceName,
		Tags:    append([]string{"cluster-" + c.cfg.Cluster}, c.cfg.ServiceTags...),
		Address: c.cfg.ServiceAddress,
		Port:    c.cfg.ServicePort,
		Meta:    meta,
		Checks:  checks,
	}
	err := c.call(ctx, OpRegister, func(ctx context.Context) error {
		// Not ReplaceExistingChecks: it would also remove Consul's own maintenance check.
		return c.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx))
	})
	if err != nil {
		return err
	}
	if !c.registered.Load() {
		c.log.Info("service registered", "service_id", c.serviceID, "check", c.aliveCheckID)
		k.removeStaleQueueChecks(ctx)
	}
	k.registered, k.regMeta, k.lastReg = true, meta, c.clk.Now()
	c.registered.Store(true)
	return nil
}

// removeStaleQueueChecks deregisters queue checks of queues no longer configured (left by an
// earlier run with another configuration). Best effort: a stale check only shows in the UI.
func (k *keeper) removeStaleQueueChecks(ctx context.Context) {
	c := k.c
	var checks map[string]*api.AgentCheck
	if err := c.call(ctx, OpRegister, func(ctx context.Context) error {
		var err error
		checks, err = c.client.Agent().ChecksWithFilterOpts(fmt.Sprintf("ServiceID == %q", c.serviceID), (&api.QueryOptions{}).WithContext(ctx))
		return err
	}); err != nil {
		return
	}
	want := map[string]bool{c.aliveCheckID: true}
	for _, id := range c.queueCheckID {
		want[id] = true
	}
	for id := range checks {
		if strings.HasPrefix(id, c.serviceID+":queue:") && !want[id] {
			c.log.Info("removing the check of a queue no longer configured", "check", id)
			_ = c.call(ctx, OpRegister, func(ctx context.Context) error {
				return c.client.Agent().CheckDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
			})
		}
	}
}

// passQueueChecks sets each queue's check to the worst health of its processed slices and
// tracks since when each slice has been critical.
func (k *keeper) passQueueChecks(ctx context.Context) []error {
	c := k.c
	now := c.clk.Now()
	processing := c.processingSlices()
	var unavailable map[string]string
	if qa, ok := c.health.(QueueAvailability); ok {
		unavailable = qa.UnavailableQueues()
	}
	seen := map[SliceID]bool{}
	var errs []error
	for _, q := range c.cfg.Queues {
		worst := StatusPassing
		var bad []string
		for _, i := range processing[q.Name] {
			s := SliceID{q.Name, i}
			h := c.health.SliceHealth(s)
			if h.Status == "" {
				h.Status = StatusPassing
			}
			if h.Status == StatusCritical {
				seen[s] = true
				if _, ok := k.criticalFrom[s]; !ok {
					k.criticalFrom[s] = now
				}
			}
			if h.Status != StatusPassing {
				bad = append(bad, fmt.Sprintf("slice %d %s: %s", i, h.Status, h.Output))
			}
			if severity(h.Status) > severity(worst) {
				worst = h.Status
			}
		}
		out := fmt.Sprintf("%d slices processed here: %s", len(processing[q.Name]), FormatRanges(processing[q.Name]))
		if why, ok := unavailable[q.Name]; ok { // critical even when every slice is gone
			worst, bad = StatusCritical, append(bad, why)
		}
		if len(bad) > 0 {
			out += "\n" + strings.Join(bad, "\n")
		}
		if err := c.call(ctx, OpCheckTTL, func(ctx context.Context) error {
			return c.client.Agent().UpdateTTLOpts(c.queueCheckID[q.Name], out, worst, (&api.QueryOptions{}).WithContext(ctx))
		}); err != nil {
			errs = append(errs, err)
			if unknownCheck(err) {
				k.registered = false
			}
		}
	}
	for s := range k.criticalFrom {
		if !seen[s] {
			delete(k.criticalFrom, s)
		}
	}
	return errs
}

func severity(status string) int {
	switch status {
	case StatusCritical:
		return 2
	case StatusWarning:
		return 1
	default:
		return 0
	}
}

// unknownCheck reports whether the agent does not know the check (it lost our registration).
func unknownCheck(err error) bool {
	var se api.StatusError
	if !errors.As(err, &se) {
		return false
	}
	return se.Code == 404 || strings.Contains(se.Body, "does not have associated TTL") || strings.Contains(se.Body, "Unknown check")
}

// ownedMeta renders owned slices for the service Meta: "in:1-2 out:0-3,7", or, when that would
// not fit in a Meta value, per-queue counts "in:2/8 out:5/64".
func ownedMeta(queues []QueueSpec, owned map[string][]int) string {
	var parts, counts []string
	names := make([]string, 0, len(queues))
	spec := map[string]int{}
	for _, q := range queues {
		names = append(names, q.Name)
		spec[q.Name] = q.Slices
	}
	slices.Sort(names)
	for _, n := range names {
		if len(owned[n]) == 0 {
			continue
		}
		parts = append(parts, n+":"+FormatRanges(owned[n]))
		counts = append(counts, fmt.Sprintf("%s:%d/%d", n, len(owned[n]), spec[n]))
	}
	if s := strings.Join(parts, " "); len(s) <= metaValueMaxLen {
		return s
	}
	return strings.Join(counts, " ")
}
