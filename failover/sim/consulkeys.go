package sim

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/qslice/qslice/failover"
)

// The keys of the scoped watch layout in the model of Consul, and single-key blocking queries:
//
//   - member keys qslice/<c>/members/<node>, held with the node's session: the end of the
//     session releases them in the same step as its slice locks, with the lock-delay (the key
//     stays, without a session: the member is not live);
//   - inbox keys qslice/<c>/inbox/<node>, held by no session, written with check-and-set
//     (cas=0: only if absent) and deleted with check-and-set;
//   - a blocking query on one key answers only when that key changes: its index is the key's
//     ModifyIndex, or, for a missing key, the KV table's highest index (what Consul 1.13's
//     kvsGetTxn answers); a query from an index above it (after a state loss) waits.

// keyKind is what a kvKey names.
type keyKind uint8

const (
	keySlice keyKind = iota
	keyMember
	keyInbox
)

// kvKey is one key a single-key blocking query can watch.
type kvKey struct {
	kind  keyKind
	slice failover.SliceID // keySlice
	node  string           // keyMember, keyInbox
}

func sliceKey(s failover.SliceID) kvKey { return kvKey{kind: keySlice, slice: s} }
func memberKey(n string) kvKey          { return kvKey{kind: keyMember, node: n} }
func inboxKey(n string) kvKey           { return kvKey{kind: keyInbox, node: n} }

// path is the key's name in Consul (cluster "prod", as the watch-cost model names it).
func (k kvKey) path() string {
	switch k.kind {
	case keySlice:
		return fmt.Sprintf("qslice/prod/slices/%s/%d", k.slice.Queue, k.slice.Index)
	case keyMember:
		return "qslice/prod/members/" + k.node
	default:
		return "qslice/prod/inbox/" + k.node
	}
}

func compareKeys(a, b kvKey) int {
	return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.slice.Queue, b.slice.Queue), cmp.Compare(a.slice.Index, b.slice.Index),
		cmp.Compare(a.node, b.node))
}

type memberPair struct {
	session      string
	value        failover.MemberValue
	modify, lock uint64
	size         int // bytes of the pair in a KV answer
}

type inboxPair struct {
	value  failover.InboxValue
	modify uint64
	size   int
}

// pairBytes is the size of one pair in Consul's JSON answer to a KV read (as api.KVPair
// encodes it, the session a UUID).
func pairBytes(k kvKey, value any, held bool, modify, lock uint64) int {
	v, _ := json.Marshal(value)
	p := api.KVPair{Key: k.path(), Value: v, CreateIndex: modify, ModifyIndex: modify, LockIndex: lock}
	if held {
		p.Session = "5f0a6ac0-1f5e-49a6-9f79-3d1fa1a1b6c1"
	}
	b, _ := json.Marshal(p)
	return len(b)
}

func (c *consul) notify(k kvKey) {
	if c.keyChanged != nil {
		c.keyChanged(k)
	}
}

// allKeys lists every key there is, sorted.
func (c *consul) allKeys() []kvKey {
	var out []kvKey
	for _, s := range sortedKeys(c.kv) {
		out = append(out, sliceKey(s))
	}
	for _, n := range slices.Sorted(maps.Keys(c.memberKeys)) {
		out = append(out, memberKey(n))
	}
	for _, n := range slices.Sorted(maps.Keys(c.inboxKeys)) {
		out = append(out, inboxKey(n))
	}
	return out
}

// releaseMemberKeys releases the member keys session id held, with its lock-delay (called
// from invalidate: the same step that releases its slice locks).
func (c *consul) releaseMemberKeys(id string, lockDelay time.Duration) {
	for _, n := range slices.Sorted(maps.Keys(c.memberKeys)) {
		p := c.memberKeys[n]
		if p.session != id {
			continue
		}
		c.index++
		p.session, p.modify = "", c.index
		p.size = pairBytes(memberKey(n), p.value, false, p.modify, p.lock)
		if c.memberDelay == nil {
			c.memberDelay = map[string]time.Time{}
		}
		c.memberDelay[n] = c.now.Add(lockDelay)
		c.notify(memberKey(n))
	}
}

// lockMember is the keeper's write of its member key: acquire with its session. Refused (ok
// false) when the session does not exist, another session holds the key, or within the
// lock-delay of the session that last held it. The holder writing the same value again writes
// nothing. index is the key's ModifyIndex; fresh: the session did not hold it before.
func (c *consul) lockMember(node, session string, v failover.MemberValue) (index uint64, fresh, ok bool) {
	p := c.memberKeys[node]
	switch {
	case c.sessions[session] == nil, p != nil && p.session != "" && p.session != session, c.now.Before(c.memberDelay[node]):
		return 0, false, false
	case p != nil && p.session == session && p.value == v:
		return p.modify, false, true
	}
	if p == nil {
		p = &memberPair{}
		c.memberKeys[node] = p
	}
	fresh = p.session != session
	c.index++
	if fresh {
		p.lock++
	}
	p.session, p.value, p.modify = session, v, c.index
	p.size = pairBytes(memberKey(node), v, true, p.modify, p.lock)
	c.notify(memberKey(node))
	return p.modify, fresh, true
}

// keyAnswer is one answer of a single-key read.
type keyAnswer struct {
	exists bool
	index  uint64 // the key's ModifyIndex, or the KV table's index when it is missing
	modify uint64
	bytes  int // the JSON answer (0 for a missing key: a 404 without a body)
	slice  failover.KVEntry
	member failover.MemberRecord
	inbox  failover.InboxValue
}

// answerIndex is the index a read of k answers with.
func (c *consul) answerIndex(k kvKey) uint64 {
	switch k.kind {
	case keySlice:
		if p := c.kv[k.slice]; p != nil {
			return p.modify
		}
	case keyMember:
		if p := c.memberKeys[k.node]; p != nil {
			return p.modify
		}
	case keyInbox:
		if p := c.inboxKeys[k.node]; p != nil {
			return p.modify
		}
	}
	return c.index
}

// get reads one key.
func (c *consul) get(k kvKey) keyAnswer {
	a := keyAnswer{index: c.answerIndex(k)}
	switch k.kind {
	case keySlice:
		if p := c.kv[k.slice]; p != nil {
			a.exists, a.modify, a.bytes = true, p.modify, 2+p.size
			a.slice = failover.KVEntry{Session: p.session, Value: p.value, ModifyIndex: p.modify, LockIndex: p.lock}
		}
	case keyMember:
		a.member = failover.MemberRecord{Info: failover.MemberInfo{Node: k.node}, ModifyIndex: a.index}
		if p := c.memberKeys[k.node]; p != nil {
			a.exists, a.modify, a.bytes = true, p.modify, 2+p.size
			a.member = failover.MemberRecord{Info: p.value.Info(k.node, p.session != ""), ModifyIndex: p.modify}
		}
	case keyInbox:
		if p := c.inboxKeys[k.node]; p != nil {
			a.exists, a.modify, a.bytes = true, p.modify, 2+p.size
			a.inbox = failover.InboxValue{Read: slices.Clone(p.value.Read)}
		}
	}
	return a
}

// fullRead reads every slice key and every member key (two recursive reads), at the KV
// table's index.
func (c *consul) fullRead() (index uint64, entries map[failover.SliceID]failover.KVEntry, members []failover.MemberRecord, bytes int) {
	snap := c.snapshot()
	bytes = 2 + max(len(c.kv)-1, 0) + 2 + max(len(c.memberKeys)-1, 0) // brackets and commas
	for _, p := range c.kv {
		bytes += p.size
	}
	for _, n := range slices.Sorted(maps.Keys(c.memberKeys)) {
		p := c.memberKeys[n]
		bytes += p.size
		members = append(members, failover.MemberRecord{Info: p.value.Info(n, p.session != ""), ModifyIndex: p.modify})
	}
	return snap.Index, snap.Entries, members, bytes
}

// prefixBytes is the size of the prefix layout's answers: the recursive read of every slice
// key, and the service's health (one entry per instance).
func (c *consul) prefixBytes(kv bool) int {
	if !kv {
		return c.sizes.prefixOverhead + len(c.checks)*c.sizes.healthEntry
	}
	b := 2 + max(len(c.kv)-1, 0)
	for _, p := range c.kv {
		b += p.size
	}
	return b
}

// casInbox writes node's inbox if its ModifyIndex is still cas (0: only if it does not exist).
func (c *consul) casInbox(node string, cas uint64, v failover.InboxValue) bool {
	p := c.inboxKeys[node]
	if (cas == 0 && p != nil) || (cas != 0 && (p == nil || p.modify != cas)) {
		return false
	}
	if p == nil {
		p = &inboxPair{}
		c.inboxKeys[node] = p
	}
	c.index++
	p.value, p.modify = failover.InboxValue{Read: slices.Clone(v.Read)}, c.index
	p.size = pairBytes(inboxKey(node), p.value, false, p.modify, 0)
	c.notify(inboxKey(node))
	return true
}

// deleteInbox deletes node's inbox if its ModifyIndex is still cas.
func (c *consul) deleteInbox(node string, cas uint64) bool {
	p := c.inboxKeys[node]
	if p == nil || p.modify != cas {
		return false
	}
	delete(c.inboxKeys, node)
	c.index++ // the tombstone's index: the KV table's index grows
	c.notify(inboxKey(node))
	return true
}
