package consul

import (
	"context"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
)

// watchWait is the blocking-query wait. Consul answers at the latest after it (plus up to
// wait/16 of jitter), so an idle watch costs one request per node every 5 minutes.
const watchWait = 5 * time.Minute

// The blocking-query loop both watches run (kv.go, members.go): Consul's blocking-query rules,
// rate limit, backoff, and the reset of their connections when the lease lapses. Each answer
// goes to the loop's inbox (the latest one wins) and wakes the loop.

// maxAbandoned bounds the blocking queries given up by resetConnections that may still run on
// the agent. Consul 1.13 keeps a query its client gave up running until its wait (5 minutes)
// ends, its connection counted against the agent's limits.http_max_conns_per_client (200 by
// default; hashicorp/consul#8524), and a node answered 429 for every request once over it
// cannot renew its session. The scoped layout runs about 40 watches per node; each lapse of the
// lease gives them all up twice. 100 given up, the live watches and the keeper's requests stay
// under the default limit; a request over the budget is left running, and answers by its wait.
const maxAbandoned = 100

// watchContext returns ctx, cancelled too by the next resetConnections, within maxAbandoned.
func (c *Coordinator) watchContext(ctx context.Context) (context.Context, context.CancelFunc) {
	c.mu.Lock()
	gen := c.watchGen
	c.mu.Unlock()
	sent := c.clk.Now()
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-gen:
			if c.mayAbandon(sent) {
				cancel()
			}
		case <-wctx.Done():
		}
	}()
	return wctx, cancel
}

// mayAbandon reports whether a blocking query sent at sent may be given up, and counts it.
func (c *Coordinator) mayAbandon(sent time.Time) bool {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.abandoned = slices.DeleteFunc(c.abandoned, func(end time.Time) bool { return !end.After(now) })
	if len(c.abandoned) >= maxAbandoned {
		if c.keptOpen++; c.keptOpen == 1 {
			// Once per reset; a request left on a dead connection answers late (TCP keep-alive).
			c.log.Warn("left watch requests running instead of giving them up: the Consul agent still runs the ones given up before until their wait ends, and counts their connections against its limits.http_max_conns_per_client",
				"given_up_still_running", len(c.abandoned), "budget", maxAbandoned)
		}
		return false
	}
	c.abandoned = append(c.abandoned, sent.Add(watchWait+watchWait/16))
	return true
}

// resetConnections runs when the lease lapses (Consul stopped answering in time) and when it is
// valid again. A blocking query (5 minutes) or a pooled keep-alive connection may sit on a
// connection that died without a reset (a partition that dropped packets, a firewall that lost
// its flow), including one opened during the outage: the watches would hear nothing for minutes
// after Consul is back. So the watches' requests are abandoned and sent again on fresh
// connections, and idle pooled connections are closed.
func (c *Coordinator) resetConnections() {
	c.mu.Lock()
	close(c.watchGen)
	c.watchGen = make(chan struct{})
	c.keptOpen = 0
	c.mu.Unlock()
	c.transport.CloseIdleConnections()
}

// blockingLoop runs fetch as a Consul blocking query forever, following the blocking-query
// rules: the index goes back to 0 when it moves backwards, is never left at 0, and the loop is
// rate-limited to one request per WatchMinInterval; errors back off exponentially with jitter.
//
// After a failed or abandoned request the next one reads without an index (it answers at
// once): Consul may have restarted without its state, and it answers a query from an index it
// no longer reaches only when the wait ends (watchWait), however it changes meanwhile
// (failover/sim's cross-check shows it on a real Consul). The fresh answer's index, lower than
// the last, shows the reset.
//
// publish returns false when it dropped the answer (the scoped layout drops an answer sent
// before a reset it learnt of meanwhile): the next request then reads without an index.
func (c *Coordinator) blockingLoop(ctx context.Context, op failover.ConsulOp, fetch func(ctx context.Context, q *api.QueryOptions) (uint64, error), publish func(reset bool) bool) {
	var index uint64
	fresh := false // the last request failed or was abandoned: read without an index
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
			q := &api.QueryOptions{WaitIndex: index, WaitTime: watchWait}
			if fresh {
				q.WaitIndex = 0
			}
			newIndex, err = fetch(ctx, q.WithContext(ctx))
			return err
		})
		abandoned := gctx.Err() != nil
		stop()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fresh = true
			if abandoned {
				continue // resetConnections: ask again at once, on a new connection
			}
			select {
			case <-ctx.Done():
				return
			case <-clock.After(c.clk, b.NextBackOff()):
			}
			continue
		}
		b.Reset()
		fresh = false
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
		if !publish(reset) {
			fresh = true
		}
	}
}

func (c *Coordinator) wakeLoop() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}
