package consul

import (
	"context"
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

// watchContext returns ctx, cancelled too by the next resetConnections.
func (c *Coordinator) watchContext(ctx context.Context) (context.Context, context.CancelFunc) {
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
func (c *Coordinator) resetConnections() {
	c.mu.Lock()
	close(c.watchGen)
	c.watchGen = make(chan struct{})
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
