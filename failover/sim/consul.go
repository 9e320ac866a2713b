package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/qslice/qslice/failover"
)

// consul models the part of Consul that qslice relies on, in virtual time:
//
//   - one TTL check per node ("alive"); it goes critical TTL after the last pass arrived;
//   - sessions bound to that check: a critical check invalidates the node's sessions, and an
//     invalidated (or destroyed) session releases its locks and arms the key's lock-delay;
//   - KV pairs with ModifyIndex and LockIndex from one Raft index that only grows, except when
//     the state is lost (the index starts again lower: clients must reset their watches);
//   - transactions: check-index / check-not-exists + lock (refused while another session
//     holds the key or within its lock-delay) + get; unlock + get; a write that changes
//     nothing (the holder locking again with the same value) leaves ModifyIndex as it was;
//   - consistent session reads;
//   - blocking queries answer once the index is above the one asked for (blockingAnswers);
//   - unavailability (leader election, restart): every request fails;
//   - for the scoped watch layout (consulkeys.go): member keys held by the node's session and
//     released in the same step that ends it, inbox keys written with check-and-set, and
//     blocking queries on one key that answer only when that key changes.
type consul struct {
	now       time.Time
	index     uint64
	kv        map[failover.SliceID]*pair
	sessions  map[string]*session
	checks    map[string]*check // by node
	lockDelay map[failover.SliceID]time.Time
	downUntil time.Time
	nextID    int
	// changed is called after every change of the KV (kv true) or of the membership.
	changed func(kv bool)
	// granted is called for every lock granted: whether the key was freed by a lost session.
	granted func(s failover.SliceID, invalidated bool)

	// The scoped layout's keys (consulkeys.go).
	memberKeys  map[string]*memberPair
	inboxKeys   map[string]*inboxPair
	memberDelay map[string]time.Time // lock-delay of member keys released by an ended session
	// keyChanged is called after every change of one key (nil: nobody watches single keys).
	keyChanged func(k kvKey)
	// sizes of the answers in bytes (for the watch bench)
	sizes sizes
}

type pair struct {
	// invalidated: the key was freed by the end of its holder's session (no hand-off), so
	// the holder may still run until its lease ends.
	invalidated bool
	session     string
	value       failover.LockValue
	modify      uint64
	lock        uint64
	size        int // bytes of the pair in a KV answer (pairBytes)
}

type session struct {
	id, node  string
	lockDelay time.Duration
}

type check struct {
	ttl        time.Duration
	lastPass   time.Time // when the last pass arrived
	passing    bool
	meta       memberMeta
	generation int       // bumps on every status or meta change
	expiredAt  time.Time // when the TTL last ran out
}

type memberMeta struct {
	liveSince   time.Time
	draining    bool
	unavailable string
}

func newConsul(start time.Time, changed func(bool)) *consul {
	return &consul{now: start, index: 10, kv: map[failover.SliceID]*pair{}, sessions: map[string]*session{},
		checks: map[string]*check{}, lockDelay: map[failover.SliceID]time.Time{}, changed: changed,
		memberKeys: map[string]*memberPair{}, inboxKeys: map[string]*inboxPair{}}
}

func (c *consul) up() bool { return !c.now.Before(c.downUntil) }

// expire turns checks whose TTL ran out critical and invalidates their sessions.
func (c *consul) expire() {
	for _, node := range slices.Sorted(maps.Keys(c.checks)) {
		ch := c.checks[node]
		if ch.passing && !c.now.Before(ch.lastPass.Add(ch.ttl)) {
			ch.passing, ch.expiredAt = false, c.now
			ch.generation++
			c.changed(false)
			for _, id := range slices.Sorted(maps.Keys(c.sessions)) {
				if c.sessions[id].node == node {
					c.invalidate(id)
				}
			}
		}
	}
}

// invalidate ends a session: its locks are released (behavior release) with lock-delay.
func (c *consul) invalidate(id string) {
	s := c.sessions[id]
	if s == nil {
		return
	}
	delete(c.sessions, id)
	changed := false
	for _, k := range sortedKeys(c.kv) {
		p := c.kv[k]
		if p.session == id {
			c.index++
			p.session, p.modify, p.invalidated = "", c.index, true
			p.size = pairBytes(sliceKey(k), p.value, false, p.modify, p.lock)
			c.lockDelay[k] = c.now.Add(s.lockDelay)
			changed = true
			c.notify(kvKey{kind: keySlice, slice: k})
		}
	}
	c.releaseMemberKeys(id, s.lockDelay)
	if changed {
		c.changed(true)
	}
}

func (c *consul) pass(node string, ttl time.Duration, meta memberMeta) {
	ch := c.checks[node]
	if ch == nil {
		ch = &check{ttl: ttl}
		c.checks[node] = ch
	}
	ch.lastPass = c.now
	if !ch.passing || ch.meta != meta {
		ch.passing, ch.meta = true, meta
		ch.generation++
		c.changed(false)
	}
}

func (c *consul) createSession(node string, lockDelay time.Duration) (string, error) {
	if ch := c.checks[node]; ch == nil || !ch.passing {
		return "", fmt.Errorf("check of %s is critical", node)
	}
	c.nextID++
	id := fmt.Sprintf("s%d-%s", c.nextID, node)
	c.sessions[id] = &session{id: id, node: node, lockDelay: lockDelay}
	return id, nil
}

// Why a lock is refused (acquireWhy), in the words of the cross-check's transcripts.
const (
	refusedStale   = "stale"           // the check-index or check-not-exists failed
	refusedSession = "invalid session" // the session does not exist (ended, destroyed)
	refusedHeld    = "held"            // another session holds the key
	refusedDelay   = "lock-delay"      // within the lock-delay of the previous holder's session
)

func (c *consul) acquire(req failover.AcquireReq) failover.EvAcquireResult {
	res, _ := c.acquireWhy(req)
	return res
}

// acquireWhy is acquire, and why it refused (a refused* constant; "" when granted).
func (c *consul) acquireWhy(req failover.AcquireReq) (res failover.EvAcquireResult, why string) {
	res.Req = req
	k := req.Move.Slice
	p := c.kv[k]
	switch {
	case req.Exists && (p == nil || p.modify != req.CheckIndex), !req.Exists && p != nil:
		res.Stale = true
		return res, refusedStale
	case c.sessions[req.Session] == nil:
		return res, refusedSession
	case p != nil && p.session != "" && p.session != req.Session:
		return res, refusedHeld
	case c.now.Before(c.lockDelay[k]):
		return res, refusedDelay
	}
	if p != nil && p.session == req.Session && sameValue(p.value, req.Value) {
		// The holder locks again with the same value: Consul writes nothing for an unchanged
		// entry, so ModifyIndex (the token), the index and the watches stay as they were.
		res.Granted, res.Token, res.LockIndex = true, p.modify, p.lock
		return res, ""
	}
	if p == nil {
		p = &pair{}
		c.kv[k] = p
	}
	c.index++
	if p.session != req.Session {
		p.lock++
	}
	if c.granted != nil {
		c.granted(k, p.invalidated)
	}
	p.invalidated = false
	p.session, p.value, p.modify = req.Session, req.Value, c.index
	p.size = pairBytes(sliceKey(k), p.value, true, p.modify, p.lock)
	res.Granted, res.Token, res.LockIndex = true, p.modify, p.lock
	c.notify(kvKey{kind: keySlice, slice: k})
	c.changed(true)
	return res, ""
}

// sameValue reports whether two lock values are the same bytes in Consul.
func sameValue(a, b failover.LockValue) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

func (c *consul) release(req failover.ReleaseReq) (res failover.EvReleaseResult) {
	res.Req = req
	p := c.kv[req.Slice]
	if p == nil || p.session != req.Session {
		res.Gone = true
		return res
	}
	c.index++
	p.session, p.value, p.modify, p.invalidated = "", req.Value, c.index, false
	p.size = pairBytes(sliceKey(req.Slice), p.value, false, p.modify, p.lock)
	res.Index = p.modify
	c.notify(kvKey{kind: keySlice, slice: req.Slice})
	c.changed(true)
	return res
}

// blockingAnswers reports whether a blocking query on the KV from index answers now, as Consul
// decides it: only once the index is above the one asked for. A query from an index the state
// no longer reaches (after a state loss the index starts again lower) waits its full time, and
// a write that leaves the index below it does not end the wait. (The driver therefore reads
// afresh, without an index, after a failed request: a restart that lost the state shows then.)
func (c *consul) blockingAnswers(index uint64) bool { return c.index > index }

func (c *consul) snapshot() *failover.KVSnapshot {
	s := &failover.KVSnapshot{Index: c.index, Entries: make(map[failover.SliceID]failover.KVEntry, len(c.kv))}
	for k, p := range c.kv {
		s.Entries[k] = failover.KVEntry{Session: p.session, Value: p.value, ModifyIndex: p.modify, LockIndex: p.lock}
	}
	return s
}

func (c *consul) members() []failover.MemberInfo {
	var out []failover.MemberInfo
	for _, node := range slices.Sorted(maps.Keys(c.checks)) {
		ch := c.checks[node]
		var unavail map[string]bool
		if ch.meta.unavailable != "" {
			unavail = map[string]bool{ch.meta.unavailable: true}
		}
		out = append(out, failover.MemberInfo{Node: node, Live: ch.passing, Draining: ch.meta.draining, LiveSince: ch.meta.liveSince, Unavailable: unavail})
	}
	return out
}

// loseState is a restart that lost the state (dev mode, restore of an old snapshot): sessions,
// KV and lock-delays are gone and the index starts again lower. Registrations live in the
// agents and survive; their checks are passing again once re-synced.
func (c *consul) loseState() {
	gone := c.allKeys()
	c.sessions = map[string]*session{}
	c.kv = map[failover.SliceID]*pair{}
	c.lockDelay = map[failover.SliceID]time.Time{}
	c.memberKeys, c.inboxKeys, c.memberDelay = map[string]*memberPair{}, map[string]*inboxPair{}, nil
	c.index = 2
	for _, k := range gone {
		c.notify(k)
	}
	c.changed(true)
	c.changed(false)
}

func sortedKeys[V any](m map[failover.SliceID]V) []failover.SliceID {
	keys := make([]failover.SliceID, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b failover.SliceID) int {
		if a.Queue != b.Queue {
			if a.Queue < b.Queue {
				return -1
			}
			return 1
		}
		return a.Index - b.Index
	})
	return keys
}
