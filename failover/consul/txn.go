package consul

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
)

// The two KV transactions of a move. Each is one Consul request; its outcome goes back to the
// Machine as an event.

// acquireTxn runs check-index (or check-not-exists) + lock + get for req.
func (c *Coordinator) acquireTxn(ctx context.Context, req failover.AcquireReq) failover.EvAcquireResult {
	res := failover.EvAcquireResult{Start: c.clk.Now(), Req: req}
	key := c.sliceKey(req.Move.Slice)
	check := &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: key}
	if req.Exists {
		check = &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: req.CheckIndex}
	}
	body, _ := json.Marshal(req.Value)
	err := c.call(ctx, failover.OpAcquire, func(ctx context.Context) error {
		ok, resp, err := c.kvTxn(ctx, api.KVTxnOps{
			check,
			{Verb: api.KVLock, Key: key, Value: body, Session: req.Session},
			{Verb: api.KVGet, Key: key},
		})
		if err != nil {
			return err
		}
		if !ok {
			for _, e := range resp.Errors {
				res.Stale = res.Stale || e.OpIndex == 0 // the check, not the lock, failed
			}
			c.log.Debug("slice lock not granted", "slice", req.Move.Slice.String(), "why", txnErrors(resp.Errors), "stale_snapshot", res.Stale)
			return nil
		}
		// The get is the last result: check-not-exists returns none, so there may be 2 or 3.
		if n := len(resp.Results); n >= 2 && resp.Results[n-1] != nil {
			res.Granted, res.Token, res.LockIndex = true, resp.Results[n-1].ModifyIndex, resp.Results[n-1].LockIndex
		}
		return nil
	})
	res.Err = err != nil
	res.Now = c.clk.Now()
	return res
}

// releaseTxn runs unlock + get for req: the value says why and to whom the slice goes.
func (c *Coordinator) releaseTxn(ctx context.Context, req failover.ReleaseReq) failover.EvReleaseResult {
	res := failover.EvReleaseResult{Req: req}
	body, _ := json.Marshal(req.Value)
	err := c.call(ctx, failover.OpRelease, func(ctx context.Context) error {
		ok, resp, err := c.kvTxn(ctx, api.KVTxnOps{
			{Verb: api.KVUnlock, Key: c.sliceKey(req.Slice), Value: body, Session: req.Session},
			{Verb: api.KVGet, Key: c.sliceKey(req.Slice)},
		})
		if err != nil {
			return err
		}
		if !ok {
			res.Gone = true // not ours any more: the session was invalidated meanwhile
			return nil
		}
		if len(resp.Results) > 1 && resp.Results[1] != nil {
			res.Index = resp.Results[1].ModifyIndex
		}
		return nil
	})
	res.Err = err != nil
	res.Now = c.clk.Now()
	return res
}

// kvTxn runs ops as one transaction. A failed request is an error, and so is a transaction the
// ACLs refused (a 403, as for any other call); one that Consul rolled back because a check or a
// lock failed is not: ok is false and resp holds why.
func (c *Coordinator) kvTxn(ctx context.Context, ops api.KVTxnOps) (ok bool, resp *api.KVTxnResponse, err error) {
	ok, resp, _, err = c.client.KV().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, nil, err
	}
	if !ok {
		if perm := txnPermission(resp.Errors); perm != nil {
			return false, resp, perm
		}
	}
	return ok, resp, nil
}

func txnPermission(errs api.TxnErrors) error {
	for _, e := range errs {
		if strings.Contains(e.What, "Permission denied") || strings.Contains(e.What, "ACL not found") {
			return api.StatusError{Code: 403, Body: e.What}
		}
	}
	return nil
}

func txnErrors(errs api.TxnErrors) string {
	var s []string
	for _, e := range errs {
		s = append(s, e.What)
	}
	return strings.Join(s, "; ")
}
