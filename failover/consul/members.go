package consul

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
)

// Membership: the watch over the service's health, whose answers become MemberInfos (who is
// live, draining, unavailable for which queues, live since when).

func (c *Coordinator) watchMembers(ctx context.Context) {
	var ms []failover.MemberInfo
	c.blockingLoop(ctx, failover.OpMemberWatch, func(ctx context.Context, q *api.QueryOptions) (uint64, error) {
		entries, meta, err := c.client.Health().Service(ServiceName, "", false, q)
		if err != nil {
			if ctx.Err() == nil { // not abandoned (resetConnections) nor stopping
				last := c.members.Load()
				c.members.Store(&memberAnswer{entries: last.entries, read: last.read, err: err})
			}
			return 0, err
		}
		c.members.Store(&memberAnswer{entries: entries, read: true})
		ms = ms[:0:0]
		for _, e := range entries {
			if e.Service == nil || e.Service.Meta["cluster"] != c.cfg.Cluster || e.Service.Meta["node"] == "" {
				continue
			}
			ms = append(ms, failover.MemberInfo{Node: e.Service.Meta["node"], Live: entryLive(e), Draining: e.Service.Meta["draining"] == "true",
				Unavailable: parseQueueList(e.Service.Meta["unavailable"]), LiveSince: parseUnixMilli(e.Service.Meta["live_since"])})
		}
		return meta.LastIndex, nil
	}, func(bool) bool {
		c.inbox.putMembers(ms)
		c.wakeLoop()
		return true
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
func (c *Coordinator) unavailableQueues() map[string]bool {
	qa, ok := c.health.(failover.QueueAvailability)
	if !ok {
		return nil
	}
	var out map[string]bool
	for q := range qa.UnavailableQueues() {
		if c.knownQueue(q) {
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

func (c *Coordinator) knownQueue(q string) bool {
	for _, spec := range c.cfg.Queues {
		if spec.Name == q {
			return true
		}
	}
	return false
}
