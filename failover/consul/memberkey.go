package consul

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
)

// The member key qslice/<cluster>/members/<node>: the keeper holds it with the node's session and
// writes its state into it (failover.MemberValue). Consul releases it in the same write that
// ends the session, so in the scoped layout a peer that watches this one key learns that the
// node died, came back, drains or cannot work a queue. Both layouts write it, so that a cluster
// can move to the scoped layout once every node runs a version that does.

func (c *Coordinator) memberKey(node string) string { return c.prefix + "members/" + node }

func (c *Coordinator) inboxKey(node string) string { return c.prefix + "inbox/" + node }

// memberValue is what the member key must say now: the Meta's state and why the node must not
// count as live (out).
func (k *keeper) memberValue(meta map[string]string, out string) failover.MemberValue {
	return failover.MemberValue{LiveSince: k.live.Since().UnixMilli(), Draining: meta["draining"] == "true",
		Unavailable: meta["unavailable"], Out: out, Version: meta["version"]}
}

// outReason asks the local agent whether this node must not count as live although its session
// holds: what the prefix layout reads from the service's health (entryLive). On error it keeps
// the last answer.
func (k *keeper) outReason(ctx context.Context) string {
	c := k.c
	checks, err := c.agentChecks(ctx, failover.OpMemberKey, "")
	if err != nil {
		return k.memberOut
	}
	var why []string
	for _, ch := range checks {
		switch {
		case ch.CheckID == "_service_maintenance:"+c.serviceID && ch.Status == api.HealthCritical:
			why = append(why, "service in maintenance")
		case ch.ServiceID == "" && ch.Status != api.HealthPassing:
			why = append(why, "node check "+ch.CheckID+" is "+ch.Status)
		}
	}
	k.memberOut = strings.Join(why, "; ")
	return k.memberOut
}

// writeMemberKey holds the member key with the current session and the wanted value; it writes
// only when the session or the value changed. A key held by another session (a previous run of
// this node not destroyed yet, or a second process with this node's name) is logged and retried
// at the next round.
func (k *keeper) writeMemberKey(ctx context.Context, meta map[string]string, out string) error {
	c := k.c
	if k.session == "" || k.adopting || c.noMemberKey {
		return nil
	}
	v := k.memberValue(meta, out)
	if k.memberSession == k.session && v == k.memberWritten {
		return nil
	}
	body, _ := json.Marshal(v)
	fresh := k.memberSession != k.session && k.session == k.created
	if fresh && c.sc != nil {
		c.sc.freshWrite()
	}
	var ok bool
	err := c.call(ctx, failover.OpMemberKey, func(ctx context.Context) error {
		var err error
		ok, _, err = c.client.KV().Acquire(&api.KVPair{Key: c.memberKey(c.cfg.NodeID), Value: body, Session: k.session},
			(&api.WriteOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return err
	}
	if !ok {
		if !k.memberRefused {
			c.log.Warn("member key held by another session (a previous run of this node, or a second process named like it); retrying",
				"key", c.memberKey(c.cfg.NodeID))
		}
		k.memberRefused = true
		return nil
	}
	k.memberRefused = false
	k.memberSession, k.memberWritten = k.session, v
	c.memberHeld.Store(&memberWrite{session: k.session, value: v, fresh: fresh})
	return nil
}

// memberWrite is one write of the member key: a new one makes the scoped layout announce this
// node to its watch groups again (scoped.update).
type memberWrite struct {
	session string
	value   failover.MemberValue
	// fresh: the first write with a session this process created (not one it adopted): the
	// node's peers forgot it, and it holds nothing.
	fresh bool
}

// agentChecks lists the checks of the local Consul agent (filter: a Consul filter expression,
// "" for all), as Consul request op.
func (c *Coordinator) agentChecks(ctx context.Context, op failover.ConsulOp, filter string) (map[string]*api.AgentCheck, error) {
	var checks map[string]*api.AgentCheck
	err := c.call(ctx, op, func(ctx context.Context) error {
		var err error
		checks, err = c.client.Agent().ChecksWithFilterOpts(filter, (&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	return checks, err
}

// parseMember reads a member key's pair (nil: the key does not exist).
func (c *Coordinator) parseMember(node string, p *api.KVPair, index uint64) (failover.MemberRecord, bool) {
	if p == nil {
		return failover.MemberRecord{Info: failover.MemberInfo{Node: node}, ModifyIndex: index}, false
	}
	var v failover.MemberValue
	if err := json.Unmarshal(p.Value, &v); err != nil {
		v.Out = "member key value is not JSON" // written by hand: not a member
	}
	return failover.MemberRecord{Info: v.Info(node, p.Session != ""), ModifyIndex: p.ModifyIndex}, true
}

// memberNode is the node a member key names, "" for another key.
func (c *Coordinator) memberNode(key string) string {
	n, ok := strings.CutPrefix(key, c.prefix+"members/")
	if !ok || n == "" || strings.Contains(n, "/") {
		return ""
	}
	return n
}
