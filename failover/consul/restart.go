package consul

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
)

// Restart in place (docs/failover.md). A stop for a restart (Run's context ends, with a store)
// narrows the assignee and keeps the session, its slice locks and the service registration; the
// next process of the node adopts the session if the keeper's first round confirms it (a
// consistent read finds it, named for this node, bound to its alive check and on the Consul node
// of the local agent), and steps the
// Machine's EvAdopt; its first KV snapshot then makes the locks ours with their tokens. The
// keeper passes the alive check from its first round on, so the session lives on if it was
// still valid. Leave is the stop that hands everything off.

var (
	_ failover.Restartable = (*Coordinator)(nil)
	_ failover.Leaver      = (*Coordinator)(nil)
)

// SetRestart sets what to adopt and where to record the session; call it before Run. The
// caller vouches for failover.EvAdopt's conditions (the node's local lock held, the previous
// run's handler process trees dead).
func (c *Coordinator) SetRestart(prev *failover.PreviousRun, store failover.RunStore) {
	if prev != nil && prev.Session == "" {
		prev = nil
	}
	c.prev, c.store = prev, store
	if prev != nil {
		// Kept until the adopted slices being released are released again: if this process
		// dies first, the next one must know too.
		c.rec.run = *prev
		c.rec.run.Releasing = slices.Clone(prev.Releasing)
	}
}

// Leave hands every slice to other nodes (in-flight messages first), destroys the session,
// deregisters the service, forgets the recorded session, makes Run return, and returns what
// Run returned.
func (c *Coordinator) Leave(ctx context.Context) error {
	if !c.running.Load() {
		return fmt.Errorf("leave: %w", failover.ErrNotRunning)
	}
	select {
	case c.leave <- struct{}{}:
	default: // asked already
	}
	select {
	case <-c.done:
		return c.runErr
	case <-ctx.Done():
		return fmt.Errorf("leave: %w", ctx.Err())
	}
}

// notAdoptable says why the previous process's session, which the keeper is adopting, cannot be
// (err and se are the first confirmation's outcome; agentNode and agentErr the local agent's
// node name, read when se was found), or "": adopt it, or (err) ask again. A session on another
// Consul node is bound to that agent's serfHealth and to the alive check registered there,
// which this process does not pass: a state directory copied to another machine, or an agent
// renamed.
func (k *keeper) notAdoptable(err error, se *api.SessionEntry, agentNode string, agentErr error) string {
	c := k.c
	switch {
	case !k.adopting || err != nil:
		return ""
	case se == nil:
		return "the previous session is gone: the process was down longer than the ttl, or the session was destroyed"
	case se.Name != c.sessionName:
		return fmt.Sprintf("session %s is named %q, not %q: not this node's", se.ID, se.Name, c.sessionName)
	case !slices.ContainsFunc(se.ServiceChecks, func(sc api.ServiceCheck) bool { return sc.ID == c.aliveCheckID }):
		return fmt.Sprintf("session %s is not bound to this node's check %s", se.ID, c.aliveCheckID)
	case agentErr != nil:
		return fmt.Sprintf("cannot tell whether session %s is on the local Consul agent's node: %v", se.ID, agentErr)
	case se.Node != agentNode:
		return fmt.Sprintf("session %s is on Consul node %q, not on the local agent's %q: the state directory comes from another machine, or the agent was renamed", se.ID, se.Node, agentNode)
	}
	return ""
}

// localAgentNode reads, once per adoption, the node name of the local Consul agent: the node its
// copy of this node's alive check names. (agent/self names it too, but needs agent:read, which
// the documented ACL policy does not grant; the checks need only service "qslice" read.) A stop
// for a restart keeps the registration, so the check is there whenever the session can be
// adopted: an agent without it never had it, or lost it, and then the session ended.
func (k *keeper) localAgentNode(ctx context.Context) (string, error) {
	c := k.c
	checks, err := c.agentChecks(ctx, failover.OpSessionInfo, "")
	switch {
	case err != nil:
		return "", fmt.Errorf("read the local agent's checks: %w", err)
	case checks[c.aliveCheckID] == nil || checks[c.aliveCheckID].Node == "":
		return "", fmt.Errorf("the local agent does not hold check %s: this node was not registered there", c.aliveCheckID)
	}
	return checks[c.aliveCheckID].Node, nil
}

// runRecord is what the store holds for the next process; the keeper (session, live_since)
// and the loop (slices being released) both update it, one at a time.
type runRecord struct {
	mu    sync.Mutex
	run   failover.PreviousRun
	saved bool
}

// record applies update to the record and saves it when it changed and names a session.
func (c *Coordinator) record(update func(r *failover.PreviousRun)) {
	if c.store == nil {
		return
	}
	rr := &c.rec
	rr.mu.Lock()
	defer rr.mu.Unlock()
	next := rr.run
	next.Releasing = slices.Clone(rr.run.Releasing)
	update(&next)
	if next.Session == "" || (rr.saved && next.Session == rr.run.Session && next.LiveSince.Equal(rr.run.LiveSince) && slices.Equal(next.Releasing, rr.run.Releasing)) {
		return
	}
	if err := c.store.SaveRun(next); err != nil {
		c.log.Warn("could not record the session for a restart in place: the next start may begin afresh", "err", err)
		return
	}
	rr.run, rr.saved = next, true
}

// saveRun records the session whenever it or live_since changed; a new session has nothing
// being released yet.
func (k *keeper) saveRun() {
	if k.session == "" || k.adopting {
		return
	}
	k.c.record(func(r *failover.PreviousRun) {
		if r.Session != k.session {
			r.Releasing = nil
		}
		r.Session, r.LiveSince = k.session, k.live.Since()
	})
}

// recordReleasing adds (before the releases are sent) or removes (once Consul answered) slices
// being handed off.
func (c *Coordinator) recordReleasing(add bool, ss ...failover.SliceID) {
	c.record(func(r *failover.PreviousRun) {
		for _, s := range ss {
			i := slices.Index(r.Releasing, s)
			switch {
			case add && i < 0:
				r.Releasing = append(r.Releasing, s)
			case !add && i >= 0:
				r.Releasing = slices.Delete(r.Releasing, i, i+1)
			}
		}
	})
}

// finishForRestart ends a stop for a restart: the assignee has let go of every slice; the
// session, the locks and the registration stay for the next process.
func (c *Coordinator) finishForRestart(m *failover.Machine) error {
	session := c.lease.Load().session
	c.lease.Store(&leaseState{})
	rd := m.Ready()
	st := *rd.Status
	held := len(st.Owned)
	st.Owned, st.OwnershipChanges = nil, m.Changes()
	c.pub.Store(&published{status: &st, processing: map[string][]int{}, meta: rd.Meta})
	c.log.Info("failover coordinator stopped for a restart: session, slice locks and registration kept for the next process of this node; if none comes, other nodes take the slices after ttl + lock_delay",
		"session", session, "slices_kept", held, "ttl", c.cfg.TTL, "lock_delay", c.cfg.LockDelay)
	return nil
}
