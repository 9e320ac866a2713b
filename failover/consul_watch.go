package failover

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/qslice/qslice/internal/clock"
)

// The watches: one blocking query over the slice keys, one over the service's health. Each
// answer goes to the loop's inbox (the latest one wins) and wakes the loop.

func parseLockValue(b []byte) LockValue {
	var v LockValue
	if err := json.Unmarshal(b, &v); err != nil {
		return LockValue{Node: strings.TrimSpace(string(b))} // written by hand: a bare node name
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
	var snap *KVSnapshot
	c.blockingLoop(ctx, OpKVWatch, func(ctx context.Context, q *api.QueryOptions) (uint64, error) {
		pairs, meta, err := c.client.KV().List(c.prefix, q)
		if err != nil {
			return 0, err
		}
		snap = &KVSnapshot{Index: meta.LastIndex, Entries: map[SliceID]KVEntry{}}
		for _, p := range pairs {
			if s, ok := c.parseKey(p.Key); ok {
				snap.Entries[s] = KVEntry{Session: p.Session, Value: parseLockValue(p.Value), ModifyIndex: p.ModifyIndex, LockIndex: p.LockIndex}
			}
		}
		return meta.LastIndex, nil
	}, func(reset bool) {
		c.inbox.putKV(snap, reset)
		c.wakeLoop()
	})
}

func (c *ConsulCoordinator) watchMembers(ctx context.Context) {
	var ms []MemberInfo
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
			ms = append(ms, MemberInfo{Node: e.Service.Meta["node"], Live: entryLive(e), Draining: e.Service.Meta["draining"] == "true",
				Unavailable: parseQueueList(e.Service.Meta["unavailable"]), LiveSince: parseUnixMilli(e.Service.Meta["live_since"])})
		}
		return meta.LastIndex, nil
	}, func(bool) {
		c.inbox.putMembers(ms)
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

func (c *ConsulCoordinator) wakeLoop() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *ConsulCoordinator) knownQueue(q string) bool {
	for _, spec := range c.cfg.Queues {
		if spec.Name == q {
			return true
		}
	}
	return false
}
