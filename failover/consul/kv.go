package consul

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
)

// The slice locks in KV: their keys, their values, and the watch over all of them (one
// recursive blocking query over qslice/<cluster>/), whose answers become KVSnapshots.

func parseLockValue(b []byte) failover.LockValue {
	var v failover.LockValue
	if err := json.Unmarshal(b, &v); err != nil {
		return failover.LockValue{Node: strings.TrimSpace(string(b))} // written by hand: a bare node name
	}
	return v
}

func (c *Coordinator) sliceKey(s failover.SliceID) string {
	return c.prefix + "slices/" + s.Queue + "/" + strconv.Itoa(s.Index)
}

func (c *Coordinator) parseKey(key string) (failover.SliceID, bool) {
	rest, ok := strings.CutPrefix(key, c.prefix+"slices/")
	if !ok {
		return failover.SliceID{}, false
	}
	q, i, ok := strings.Cut(rest, "/")
	if !ok {
		return failover.SliceID{}, false
	}
	n, err := strconv.Atoi(i)
	if err != nil || n < 0 {
		return failover.SliceID{}, false
	}
	return failover.SliceID{Queue: q, Index: n}, true
}

func (c *Coordinator) watchKV(ctx context.Context) {
	var snap *failover.KVSnapshot
	c.blockingLoop(ctx, failover.OpKVWatch, func(ctx context.Context, q *api.QueryOptions) (uint64, error) {
		pairs, meta, err := c.client.KV().List(c.prefix, q)
		if err != nil {
			return 0, err
		}
		snap = &failover.KVSnapshot{Index: meta.LastIndex, Entries: map[failover.SliceID]failover.KVEntry{}}
		for _, p := range pairs {
			if s, ok := c.parseKey(p.Key); ok {
				snap.Entries[s] = failover.KVEntry{Session: p.Session, Value: parseLockValue(p.Value), ModifyIndex: p.ModifyIndex, LockIndex: p.LockIndex}
			}
		}
		return meta.LastIndex, nil
	}, func(reset bool) bool {
		c.inbox.putKV(snap, reset)
		c.wakeLoop()
		return true
	})
}
