package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
)

// The scoped watch layout (ConsulConfig.WatchLayout "scoped"; failover/scope.go has the rules).
// Instead of the whole KV prefix and the service's health, the node watches single keys: the
// slices and member keys of its watch groups (failover.Machine.WatchScope) and its own inbox.
// A full read (every key under the prefix, and the catalog's instances of the service) at start,
// after a reset and every FullReadInterval corrects what the watches do not cover. All of it feeds a
// failover.ScopedView, which the loop turns into the Machine's KV snapshot and membership.
//
// When to believe what the view shows (the reset epochs, the membership hold after a reset, a
// new session's warm-up, an older peer's confirmation) is decided by failover.ScopedTrust, which
// the simulator's driver calls too; this driver does the reads it asks for.
//
// Mixed versions: a node of a version without member keys is invisible to this layout. While a
// full read shows an instance of the service in the catalog without a held member key, and the
// service's health shows it live (confirmed by a second read a TTL later:
// ScopedTrust.OlderPeer), the node runs the prefix layout's two watches instead (and says so in
// its log), until a full read shows every member with its key.

// pokeAttempts bounds the check-and-set retries of one inbox write; a failed one is tried again
// after a random part of a renew interval (peers poking one inbox at a cold start would fail
// each other's writes over and over: the simulator counted 20,000 retries at 100 nodes without
// the delay).
const pokeAttempts = 10

type scoped struct {
	c *Coordinator

	mu     sync.Mutex
	view   *failover.ScopedView
	trust  *failover.ScopedTrust // epochs, hold, warm-up, older peer: what of the view to believe
	reset  bool                  // Consul's index went backwards: the Machine has not been told yet
	dirty  bool                  // the view changed since the loop last took it
	legacy bool                  // prefix watches run (a member without a member key)
	// written: the member key's write take last looked at (a fresh one starts the warm-up's
	// clock, s.trust.NewSession).
	written *memberWrite

	fullNow chan struct{}

	// Owned by the loop goroutine (update):
	watches   map[string]context.CancelFunc
	scope     failover.WatchScope // the Machine's scope, computed at its WatchScopeGen scopeGen
	scopeGen  uint64              // 0: never computed
	announced failover.WatchScope // the scope the last pokes were computed against
	annWrite  *memberWrite        // the member key's write last announced
	annEpoch  uint64              // the reset epoch announced in
	pokes     chan map[string][]string
	// watchedMembers: the member keys watched now (the inbox skips them: the watch has them);
	// replaced, never changed, under mu.
	watchedMembers map[string]bool

	ctx context.Context
	wg  sync.WaitGroup
}

// newScoped prepares the layout's watches; ctx bounds every watch it will start.
func newScoped(c *Coordinator, ctx context.Context) *scoped {
	trust := failover.NewScopedTrust(failover.ScopedTrustConfig{Self: c.cfg.NodeID, TTL: c.cfg.TTL, LockDelay: c.cfg.LockDelay,
		WatchInterval: c.cfg.WatchMinInterval})
	return &scoped{c: c, ctx: ctx, view: failover.NewScopedView(), trust: trust, fullNow: make(chan struct{}, 1),
		watches: map[string]context.CancelFunc{}, pokes: make(chan map[string][]string, 1)}
}

// run does the full reads and the inbox; the loop (update) starts the key watches. It returns
// once ctx ends and every watch it started has stopped.
func (s *scoped) run(ctx context.Context) {
	c := s.c
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.watchInbox(ctx) }()
	go func() { defer s.wg.Done(); s.poker(ctx) }()
	var stopLegacy context.CancelFunc
	var legacyWG sync.WaitGroup
	b := c.newBackoff(c.cfg.WatchMinInterval, c.cfg.TTL)
	for ctx.Err() == nil {
		found, sent, err := s.fullRead(ctx)
		wait := c.cfg.FullReadInterval
		if err != nil {
			wait = b.NextBackOff()
		} else {
			b.Reset()
			// Spread the nodes' full reads: each comes at a random point of [3/4, 5/4] of the interval.
			wait = time.Duration(float64(wait) * (0.75 + rand.Float64()/2))
			s.mu.Lock()
			legacy, recheckAt := s.trust.OlderPeer(sent, found)
			s.mu.Unlock()
			if !recheckAt.IsZero() {
				wait = max(recheckAt.Sub(c.clk.Now()), 0) // the read that may confirm an older peer
			}
			switch {
			case legacy && stopLegacy == nil:
				c.log.Warn("scoped watch layout: a member has no member key (an older qslice); watching the whole prefix until every member has one")
				lctx, cancel := context.WithCancel(ctx)
				stopLegacy = cancel
				legacyWG.Add(2)
				go func() { defer legacyWG.Done(); c.watchKV(lctx) }()
				go func() { defer legacyWG.Done(); c.watchMembers(lctx) }()
			case !legacy && stopLegacy != nil:
				c.log.Info("scoped watch layout: every member has a member key; watching single keys again")
				stopLegacy()
				legacyWG.Wait()
				stopLegacy = nil
				s.mu.Lock()
				s.dirty = true
				s.mu.Unlock()
				c.wakeLoop()
			}
			s.mu.Lock()
			s.legacy = legacy
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
		case <-s.fullNow:
		case <-clock.After(c.clk, wait):
		}
	}
	if stopLegacy != nil {
		stopLegacy()
	}
	legacyWG.Wait()
	s.wg.Wait()
}

// fullRead reads every key under the prefix and the catalog's instances of the service, applies
// them to the view as s.trust says, and reports whether a live member has no member key (legacy)
// and when the read was sent.
func (s *scoped) fullRead(ctx context.Context) (legacy bool, sent time.Time, err error) {
	c := s.c
	s.mu.Lock()
	epoch, sent := s.trust.Epoch(), c.clk.Now()
	s.mu.Unlock()
	var pairs api.KVPairs
	var index uint64
	err = c.call(ctx, failover.OpFullRead, func(ctx context.Context) error {
		var meta *api.QueryMeta
		var err error
		pairs, meta, err = c.client.KV().List(c.prefix, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil {
			index = meta.LastIndex
		}
		return err
	})
	if err != nil {
		return false, sent, err
	}
	// Nodes registered in our cluster: a catalog read (about 1 KB per node, without the checks
	// the health answer carries).
	var registered []*api.CatalogService
	err = c.call(ctx, failover.OpFullRead, func(ctx context.Context) error {
		var err error
		q := &api.QueryOptions{Filter: fmt.Sprintf("ServiceMeta.cluster == %q", c.cfg.Cluster)}
		registered, _, err = c.client.Catalog().Service(ServiceName, "", q.WithContext(ctx))
		return err
	})
	if err != nil {
		return false, sent, err
	}
	slicesRead := map[failover.SliceID]failover.KVEntry{}
	var members []failover.MemberRecord
	hasKey := map[string]bool{}
	for _, p := range pairs {
		if id, ok := c.parseKey(p.Key); ok {
			slicesRead[id] = failover.KVEntry{Session: p.Session, Value: parseLockValue(p.Value), ModifyIndex: p.ModifyIndex, LockIndex: p.LockIndex}
		} else if n := c.memberNode(p.Key); n != "" {
			r, _ := c.parseMember(n, p, index)
			members = append(members, r)
			hasKey[n] = true
		}
	}
	// A registered node that never wrote a member key may run an older qslice (a released key
	// shows a current one, dead or between sessions); only then is the service's health read,
	// to see whether it is live.
	suspect := false
	for _, r := range registered {
		if n := r.ServiceMeta["node"]; n != "" && n != c.cfg.NodeID && !hasKey[n] {
			suspect = true
		}
	}
	if suspect {
		c.readMemberEntries(ctx)
		ma := c.members.Load()
		if ma.err != nil {
			return false, sent, ma.err
		}
		for _, e := range ma.entries {
			if e.Service != nil && e.Service.Meta["cluster"] == c.cfg.Cluster && e.Service.Meta["node"] != "" &&
				entryLive(e) && !hasKey[e.Service.Meta["node"]] && e.Service.Meta["node"] != c.cfg.NodeID {
				legacy = true
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.trust.FullRead(epoch, sent, index, s.view.Index()) {
	case failover.FullReadStale:
		s.askFull()
		return legacy, sent, nil
	case failover.FullReadReset:
		s.resetLocked()
		s.askFull()
		return legacy, sent, nil
	}
	s.view.Full(index, slicesRead, members)
	s.dirty = true
	c.wakeLoop()
	return legacy, sent, nil
}

// askFull asks run for a full read now.
func (s *scoped) askFull() {
	select {
	case s.fullNow <- struct{}{}:
	default:
	}
}

// askFullAt asks run for a full read at t (a goroutine of run's; ends with ctx).
func (s *scoped) askFullAt(t time.Time) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.ctx.Done():
		case <-clock.After(s.c.clk, max(t.Sub(s.c.clk.Now()), 0)+time.Millisecond):
			s.askFull()
		}
	}()
}

// resetLocked: Consul's index went backwards (its state was lost or restored). The view
// forgets everything, answers to requests sent before are dropped (s.trust's epoch), the
// watches' requests are sent again without an index, the Machine quarantines acquisitions at
// once (EvKV with Reset and no snapshot: it keeps deciding on what it knew), and a full read is
// due (the caller asks for it), with one more when the quarantine ends (the membership hold).
// s.mu is held.
func (s *scoped) resetLocked() {
	c := s.c
	s.askFullAt(s.trust.Reset(c.clk.Now()))
	s.view.Reset()
	s.reset, s.dirty = true, true
	go c.resetConnections() // not under s.mu: the watches' goroutines take it
}

// take gives the loop the view's snapshot and membership when they changed (nil while the
// prefix watches stand in for the layout, or before the first full read).
func (s *scoped) take(now time.Time) []failover.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.c.memberHeld.Load(); w != nil && w != s.written {
		s.written = w
		if w.fresh {
			s.askFullAt(s.trust.NewSession(now))
			s.dirty = true
		}
	}
	var evs []failover.Event
	if s.reset {
		evs = append(evs, failover.EvKV{Now: now, Reset: true})
		s.reset = false
	}
	if !s.dirty || s.legacy || !s.view.Known() {
		return evs
	}
	s.dirty = false
	evs = append(evs, failover.EvKV{Now: now, Snap: s.view.Snapshot()})
	if ms, ok := s.trust.Membership(s.view); ok {
		evs = append(evs, failover.EvMembers{Now: now, Members: ms})
	}
	return evs
}

// freshWrite: the keeper is about to write our member key with a session this process
// created. The warm-up begins now (s.trust.Writing); take starts its clock once the keeper has
// the answer (memberHeld): the key may reach the view (our own key's watch, a full read) before
// that, and a round in between would decide with this node alone in its view.
func (s *scoped) freshWrite() {
	s.mu.Lock()
	s.trust.Writing()
	s.dirty = true
	s.mu.Unlock()
}

// keyWatch is the state of one single-key watch shared by its fetch and publish.
type keyWatch struct {
	sent, last uint64 // the reset epoch its request was sent in, and its last answer's
}

// fetched records the epoch a request is sent in.
func (s *scoped) fetched(w *keyWatch) {
	s.mu.Lock()
	w.sent = s.trust.Epoch()
	s.mu.Unlock()
}

// answer decides what to do with a watch's answer, s.mu held: false drops it (sent before a
// reset, or a reset is being handled and a full read is due). reset (its index went backwards)
// is a new reset only if its last answer was in the current epoch.
func (s *scoped) answer(w *keyWatch, reset bool) bool {
	if !s.trust.Current(w.sent) {
		return false
	}
	if reset && s.trust.Current(w.last) {
		s.resetLocked()
		s.askFull()
		return false
	}
	w.last = w.sent
	if !s.view.Known() {
		return false // the full read will have it
	}
	s.dirty = true
	return true
}

// update watches the keys the Machine's scope names (starting and stopping single-key watches)
// and sends the pokes its change calls for. It runs in the loop goroutine after each round.
func (s *scoped) update(m *failover.Machine) {
	c := s.c
	s.mu.Lock()
	known, legacy := s.view.Known(), s.legacy
	s.mu.Unlock()
	if !known {
		return
	}
	want := map[string]func(ctx context.Context){}
	var scope failover.WatchScope
	if !legacy {
		// WatchScope costs milliseconds at a thousand nodes: computed again only when
		// something it reads changed.
		if gen := m.WatchScopeGen(); gen != s.scopeGen {
			s.scope, s.scopeGen = m.WatchScope(), gen
		}
		scope = s.scope
		for id := range scope.Slices {
			id := id
			want[c.sliceKey(id)] = func(ctx context.Context) { s.watchSlice(ctx, id) }
		}
		// Our own member key too: the Machine sees this node as its peers do.
		for _, n := range append(scope.Members, c.cfg.NodeID) {
			n := n
			want[c.memberKey(n)] = func(ctx context.Context) { s.watchMember(ctx, n) }
		}
	}
	wm := map[string]bool{}
	for _, n := range scope.Members {
		wm[n] = true
	}
	s.mu.Lock()
	s.watchedMembers = wm
	s.mu.Unlock()
	for k, stop := range s.watches {
		if want[k] == nil {
			stop()
			delete(s.watches, k)
		}
	}
	for k, run := range want {
		if _, ok := s.watches[k]; ok {
			continue
		}
		wctx, cancel := context.WithCancel(s.ctx)
		s.watches[k] = cancel
		s.wg.Add(1)
		go func() { defer s.wg.Done(); run(wctx) }()
	}
	// Pokes only once peers can read our member key with the current session: before that
	// they would read nothing, and after a new session they have forgotten us.
	w := c.memberHeld.Load()
	if legacy || w == nil || w.session != c.lease.Load().session {
		return
	}
	s.mu.Lock()
	epoch := s.trust.Epoch()
	s.mu.Unlock()
	if w != s.annWrite || epoch != s.annEpoch {
		// A new write of our member key, or a reset (every member writes its key again):
		// announce ourselves to every member of our groups.
		s.announced, s.annWrite, s.annEpoch = failover.WatchScope{}, w, epoch
	}
	if p := failover.Pokes(c.cfg.NodeID, s.announced, scope); len(p) > 0 {
		s.send(p)
	}
	s.announced = scope
}

// send queues pokes for the poker, merged with any not sent yet.
func (s *scoped) send(p map[string][]string) {
	for {
		select {
		case s.pokes <- p:
			return
		case old := <-s.pokes:
			for to, read := range old {
				p[to] = mergeSorted(p[to], read)
			}
		}
	}
}

func mergeSorted(a, b []string) []string {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// poker writes the pokes into the peers' inbox keys, adding to what is there with
// check-and-set.
func (s *scoped) poker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-s.pokes:
			for _, to := range slices.Sorted(maps.Keys(p)) {
				s.poke(ctx, to, p[to])
			}
		}
	}
}

func (s *scoped) poke(ctx context.Context, to string, read []string) {
	c := s.c
	key := c.inboxKey(to)
	for i := 0; i < pokeAttempts && ctx.Err() == nil; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return
			case <-clock.After(c.clk, time.Duration(rand.Int64N(int64(c.cfg.RenewInterval)))):
			}
		}
		var done bool
		err := c.call(ctx, failover.OpInbox, func(ctx context.Context) error {
			v := failover.InboxValue{}
			var cas uint64
			if i > 0 { // the first try creates the inbox (usually empty), later ones add to it
				p, _, err := c.client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
				if err != nil {
					return err
				}
				if p != nil {
					_ = json.Unmarshal(p.Value, &v) // a damaged inbox is overwritten
					cas = p.ModifyIndex
				}
			}
			v.Read = mergeSorted(v.Read, read)
			body, _ := json.Marshal(v)
			var err error
			done, _, err = c.client.KV().CAS(&api.KVPair{Key: key, Value: body, ModifyIndex: cas}, (&api.WriteOptions{}).WithContext(ctx))
			return err
		})
		if err == nil && done {
			return
		}
	}
	c.log.Debug("inbox write gave up (the full read covers it)", "to", to)
}

// watchInbox watches our inbox key: peers name the member keys we must read (a member entered
// one of our watch groups, or left it). We read them, feed them to the view and clear the
// inbox with check-and-set (a poke written meanwhile stays for the next answer).
func (s *scoped) watchInbox(ctx context.Context) {
	c := s.c
	key := c.inboxKey(c.cfg.NodeID)
	var pair *api.KVPair
	w := &keyWatch{}
	c.blockingLoop(ctx, failover.OpKVWatch, func(ctx context.Context, q *api.QueryOptions) (uint64, error) {
		s.fetched(w)
		p, meta, err := c.client.KV().Get(key, q)
		if err != nil {
			return 0, err
		}
		pair = p
		return meta.LastIndex, nil
	}, func(reset bool) bool {
		s.mu.Lock()
		ok := s.answer(w, reset)
		watched := s.watchedMembers
		s.mu.Unlock()
		if !ok {
			return false
		}
		if pair == nil {
			return true
		}
		var v failover.InboxValue
		_ = json.Unmarshal(pair.Value, &v)
		for _, n := range v.Read {
			if n == c.cfg.NodeID || n == "" || watched[n] {
				continue // a watched member key is as fresh as the poke
			}
			var p *api.KVPair
			var index uint64
			err := c.call(ctx, failover.OpFullRead, func(ctx context.Context) error {
				var meta *api.QueryMeta
				var err error
				p, meta, err = c.client.KV().Get(c.memberKey(n), (&api.QueryOptions{}).WithContext(ctx))
				if err == nil {
					index = meta.LastIndex
				}
				return err
			})
			if err != nil {
				return false // the inbox stays: read again
			}
			r, present := c.parseMember(n, p, index)
			s.mu.Lock()
			if s.trust.Current(w.sent) && s.view.Known() {
				s.view.Member(r, present)
				s.dirty = true
			}
			s.mu.Unlock()
		}
		_ = c.call(ctx, failover.OpInbox, func(ctx context.Context) error {
			_, _, err := c.client.KV().DeleteCAS(&api.KVPair{Key: key, ModifyIndex: pair.ModifyIndex}, (&api.WriteOptions{}).WithContext(ctx))
			return err
		})
		c.wakeLoop()
		return true
	})
}

// watchSlice watches one slice key until ctx ends.
func (s *scoped) watchSlice(ctx context.Context, id failover.SliceID) {
	s.watchKey(ctx, s.c.sliceKey(id), failover.OpKVWatch, func(p *api.KVPair, index uint64) {
		if p == nil {
			s.view.Slice(id, failover.KVEntry{}, false, index)
			return
		}
		s.view.Slice(id, failover.KVEntry{Session: p.Session, Value: parseLockValue(p.Value), ModifyIndex: p.ModifyIndex, LockIndex: p.LockIndex}, true, index)
	})
}

// watchMember watches one member key until ctx ends.
func (s *scoped) watchMember(ctx context.Context, node string) {
	s.watchKey(ctx, s.c.memberKey(node), failover.OpMemberWatch, func(p *api.KVPair, index uint64) {
		r, present := s.c.parseMember(node, p, index)
		s.view.Member(r, present)
	})
}

// watchKey runs a blocking query on one key until ctx ends; apply records each answer it keeps
// in the view (s.mu held; p nil: the key does not exist).
func (s *scoped) watchKey(ctx context.Context, key string, op failover.ConsulOp, apply func(p *api.KVPair, index uint64)) {
	c := s.c
	var pair *api.KVPair
	var index uint64
	w := &keyWatch{}
	c.blockingLoop(ctx, op, func(ctx context.Context, q *api.QueryOptions) (uint64, error) {
		s.fetched(w)
		p, meta, err := c.client.KV().Get(key, q)
		if err != nil {
			return 0, err
		}
		pair, index = p, meta.LastIndex
		return index, nil
	}, func(reset bool) bool {
		s.mu.Lock()
		ok := s.answer(w, reset)
		if ok {
			apply(pair, index)
		}
		s.mu.Unlock()
		c.wakeLoop()
		return ok
	})
}
