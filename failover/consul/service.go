package consul

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
)

// The service instance and its TTL checks: registration with the node's Meta, the alive check
// the session is bound to, one check per queue carrying the worst health of its slices.

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
	err := c.call(ctx, failover.OpRegister, func(ctx context.Context) error {
		// Not ReplaceExistingChecks: it would also remove Consul's own maintenance check.
		return c.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx))
	})
	if err != nil {
		// The agent may have applied it (a lost answer, a timeout): its Meta is unknown now, so
		// the next healthy round registers again (else a live_since restored after a lapse
		// would equal regMeta and never replace the one the agent took).
		k.regMeta = nil
		k.regUnsureUntil = c.clk.Now().Add(2 * c.cfg.TTL)
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
	checks, err := c.agentChecks(ctx, failover.OpRegister, fmt.Sprintf("ServiceID == %q", c.serviceID))
	if err != nil {
		return
	}
	want := map[string]bool{c.aliveCheckID: true}
	for _, id := range c.queueCheckID {
		want[id] = true
	}
	for id := range checks {
		if strings.HasPrefix(id, c.serviceID+":queue:") && !want[id] {
			c.log.Info("removing the check of a queue no longer configured", "check", id)
			_ = c.call(ctx, failover.OpRegister, func(ctx context.Context) error {
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
	if qa, ok := c.health.(failover.QueueAvailability); ok {
		unavailable = qa.UnavailableQueues()
	}
	seen := map[failover.SliceID]bool{}
	var errs []error
	for _, q := range c.cfg.Queues {
		worst := failover.StatusPassing
		var bad []string
		for _, i := range processing[q.Name] {
			s := failover.SliceID{Queue: q.Name, Index: i}
			h := c.health.SliceHealth(s)
			if h.Status == "" {
				h.Status = failover.StatusPassing
			}
			if h.Status == failover.StatusCritical {
				seen[s] = true
				if _, ok := k.criticalFrom[s]; !ok {
					k.criticalFrom[s] = now
				}
			}
			if h.Status != failover.StatusPassing {
				bad = append(bad, fmt.Sprintf("slice %d %s: %s", i, h.Status, h.Output))
			}
			if severity(h.Status) > severity(worst) {
				worst = h.Status
			}
		}
		out := fmt.Sprintf("%d slices processed here: %s", len(processing[q.Name]), failover.FormatRanges(processing[q.Name]))
		if why, ok := unavailable[q.Name]; ok { // critical even when every slice is gone
			worst, bad = failover.StatusCritical, append(bad, why)
		}
		if len(bad) > 0 {
			out += "\n" + strings.Join(bad, "\n")
		}
		if err := c.call(ctx, failover.OpCheckTTL, func(ctx context.Context) error {
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
	case failover.StatusCritical:
		return 2
	case failover.StatusWarning:
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
