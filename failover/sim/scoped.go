package sim

import (
	"maps"
	"slices"
	"time"

	"github.com/qslice/qslice/failover"
)

// The node's driver in the scoped watch layout (Config.Layout failover.LayoutScoped), as the
// Consul driver does it:
//
//   - a failover.ScopedView is the node's knowledge of the cluster: a full read (every slice
//     key and member key) at start, after Consul's index went backwards, and every
//     FullReadInterval; single-key answers in between;
//   - the keeper writes the node's member key (failover.MemberValue) with its session whenever
//     the value changes or the session is new;
//   - after each round the node computes Machine.WatchScope (again only when
//     Machine.WatchScopeGen changed), starts and stops single-key watches for the difference (each rate-limited to one answer per WatchMinInterval, as the
//     prefix layout's watches), and writes failover.Pokes into the peers' inbox keys
//     (check-and-set add);
//   - an inbox answer makes it read the member keys it lists, then delete the inbox with
//     check-and-set;
//   - the Machine gets EvKV{view.Snapshot()} and EvMembers{view.Members()} after every answer,
//     as failover.ScopedTrust allows (the reset epochs, the membership hold after a reset, a new
//     session's warm-up: the rules the Consul driver follows too). The simulator measures their
//     delays in true time, as it schedules its events.
type scoped struct {
	view      *failover.ScopedView
	trust     *failover.ScopedTrust
	scope     failover.WatchScope // what the watches and pokes were last set for
	watches   map[kvKey]*keyWatch
	reset     bool // Consul's index went backwards: a full read is due
	fullAsked bool
	fullDue   bool // a full read failed: asked again when the requests go through

	announce      bool                 // the member key was written: tell the groups (Pokes from an empty scope)
	scopeGen      uint64               // the Machine's WatchScopeGen when scope was computed (0: never)
	member        failover.MemberValue // written with memberSession
	memberSession string
}

// keyWatch is one single-key blocking query.
type keyWatch struct {
	index  uint64 // the query's index: it answers once the key's index is above it (0: at once)
	prev   uint64 // the last answer's index: a lower one means Consul's index went backwards
	asked  bool   // an answer is on its way
	missed bool   // the key changed since the last answer
	last   time.Time
}

func newScoped(trust failover.ScopedTrustConfig) *scoped {
	return &scoped{view: failover.NewScopedView(), trust: failover.NewScopedTrust(trust), watches: map[kvKey]*keyWatch{}}
}

func (n *node) isScoped() bool { return n.w.cfg.Layout == failover.LayoutScoped }

// scopedStart starts a new process: a full read, the inbox watch, periodic full reads.
func (n *node) scopedStart(after time.Duration) {
	if n.sc != nil {
		for k := range n.sc.watches {
			n.w.unwatch(k, n)
		}
	}
	cfg := n.w.cfg
	n.sc = newScoped(failover.ScopedTrustConfig{Self: n.id, TTL: cfg.TTL, LockDelay: cfg.LockDelay, WatchInterval: cfg.WatchMinInterval})
	n.event(after, func() {
		n.fullRead()
		n.startWatch(inboxKey(n.id), 0)
	})
	var periodic func()
	periodic = func() {
		n.fullRead()
		n.event(n.w.cfg.FullReadInterval, periodic)
	}
	n.event(after+n.w.cfg.FullReadInterval, periodic)
}

// scopedResend: the node's requests failed (partition, Consul unavailable): every watch reads
// afresh, and the full read is asked again if it is due.
func (n *node) scopedResend() {
	sc := n.sc
	if !sc.view.Known() || sc.reset || sc.fullDue {
		n.fullRead()
	}
	for _, k := range sortedWatchKeys(sc.watches) {
		kw := sc.watches[k]
		kw.index, kw.missed = 0, true
		n.fireKey(k)
	}
}

// fullRead reads every slice and member key.
func (n *node) fullRead() {
	sc := n.sc
	if sc.fullAsked || n.crashed {
		return
	}
	sc.fullAsked = true
	w := n.w
	run, epoch, sent := n.run, sc.trust.Epoch(), w.now
	d := n.delay + w.cfg.NetDelay
	w.after(d, func() { // the request reaches Consul
		if n.run != run {
			return
		}
		if n.cut || !w.consul.up() {
			sc.fullAsked, sc.fullDue = false, true // asked again when the node reconnects or Consul is back
			return
		}
		index, entries, members, bytes := w.consul.fullRead()
		n.traffic.fullReads++
		n.traffic.fullBytes += int64(bytes)
		n.event(d, func() {
			sc.fullAsked = false
			switch sc.trust.FullRead(epoch, sent, index, sc.view.Index()) {
			case failover.FullReadStale:
				n.fullRead() // sent before a reset: read again
				return
			case failover.FullReadReset:
				n.scopedReset()
				return
			}
			rearm := sc.reset
			sc.reset, sc.fullDue = false, false
			sc.view.Full(index, entries, members)
			if rearm {
				// The watches ask from the full read's index: they answer at once if the key
				// changed since.
				for _, k := range sortedWatchKeys(sc.watches) {
					kw := sc.watches[k]
					kw.index, kw.prev, kw.missed = index, 0, true
					n.fireKey(k)
				}
			}
			n.stepView(true, true)
			if sc.trust.ReadDue(w.now) {
				n.fullRead() // this one was on its way when the hold or the warm-up ended
			}
		})
	})
}

// scopedReset: Consul's index went backwards (its state was lost or restored). The view
// forgets everything, answers in flight are dropped (sc.trust's epoch), the Machine quarantines
// acquisitions at once (EvKV with Reset and no snapshot: it keeps deciding on what it knew), and
// a full read is due; the watches wait for it.
func (n *node) scopedReset() {
	sc := n.sc
	readAt := sc.trust.Reset(n.w.now)
	sc.reset = true
	sc.view.Reset()
	// Every member writes its member key again (the state is gone): like a node that joins,
	// this one announces itself to its groups once it knows them (Pokes from an empty scope).
	sc.announce = true
	for _, kw := range sc.watches {
		kw.index, kw.prev, kw.missed = 0, 0, false
	}
	n.m.Step(failover.EvKV{Now: n.local(n.w.now), Reset: true})
	n.fullRead()
	// The membership is held until a full read sent when the quarantine ends (ScopedTrust).
	n.fullReadAt(readAt)
}

// fullReadAt does a full read at t if sc.trust still wants one then (a later reset or new
// session moves the time on, and schedules its own).
func (n *node) fullReadAt(t time.Time) {
	sc := n.sc
	n.event(t.Sub(n.w.now), func() {
		if sc.trust.ReadDue(n.w.now) {
			n.fullRead()
		}
	})
}

// stepView gives the Machine what the view knows (nothing before the first full read).
func (n *node) stepView(kv, members bool) {
	sc := n.sc
	if !sc.view.Known() || sc.reset {
		return
	}
	now := n.local(n.w.now)
	if kv {
		n.m.Step(failover.EvKV{Now: now, Snap: sc.view.Snapshot()})
	}
	if members {
		if ms, ok := sc.trust.Membership(sc.view); ok {
			n.m.Step(failover.EvMembers{Now: now, Members: ms})
		}
	}
	n.round()
}

// startWatch starts a blocking query on k from index (0: read it at once).
func (n *node) startWatch(k kvKey, index uint64) {
	if _, ok := n.sc.watches[k]; ok {
		return
	}
	n.sc.watches[k] = &keyWatch{index: index, missed: true}
	n.w.watch(k, n)
	n.fireKey(k)
}

func (n *node) stopWatch(k kvKey) {
	delete(n.sc.watches, k)
	n.w.unwatch(k, n)
}

// keyNotify: k changed in Consul.
func (n *node) keyNotify(k kvKey) {
	if kw := n.sc.watches[k]; kw != nil && !n.crashed {
		kw.missed = true
		n.fireKey(k)
	}
}

// fireKey lets the blocking query on k answer, at most once per WatchMinInterval; the answer
// reaches the node after the network delay.
func (n *node) fireKey(k kvKey) {
	sc := n.sc
	kw := sc.watches[k]
	if kw == nil || kw.asked || !kw.missed || n.crashed {
		return
	}
	w := n.w
	wait := max(kw.last.Add(w.cfg.WatchMinInterval).Sub(w.now), 0)
	kw.asked = true
	run := n.run
	w.after(wait, func() {
		if n.run != run || sc.watches[k] != kw {
			return
		}
		kw.asked = false
		if n.cut || !w.consul.up() {
			return // the query fails; read afresh when the node reconnects or Consul is back
		}
		a := w.consul.get(k)
		if kw.index != 0 && a.index <= kw.index {
			kw.missed = false // nothing above the query's index: it goes on waiting
			return
		}
		back := a.index < kw.prev
		kw.missed, kw.last, kw.index, kw.prev = false, w.now, a.index, a.index
		n.traffic.answers++
		n.traffic.answerBytes += int64(a.bytes)
		epoch := sc.trust.Epoch()
		n.event(n.delay+w.cfg.NetDelay, func() {
			if !sc.trust.Current(epoch) {
				return
			}
			if back {
				n.scopedReset()
				return
			}
			n.applyKey(k, a)
			n.fireKey(k) // a change during the rate limit
		})
	})
}

// applyKey applies one answer to the view and tells the Machine.
func (n *node) applyKey(k kvKey, a keyAnswer) {
	sc := n.sc
	switch k.kind {
	case keySlice:
		sc.view.Slice(k.slice, a.slice, a.exists, a.index)
		n.stepView(true, false)
	case keyMember:
		sc.view.Member(a.member, a.exists)
		n.stepView(false, true)
	case keyInbox:
		if a.exists && len(a.inbox.Read) > 0 {
			n.readInbox(a.inbox.Read, a.modify)
		}
	}
}

// readInbox reads the member keys a poke names, then deletes the inbox with check-and-set
// (a poke written meanwhile fails it, and the inbox watch answers again).
func (n *node) readInbox(nodes []string, modify uint64) {
	w := n.w
	sc := n.sc
	run, epoch := n.run, sc.trust.Epoch()
	d := n.delay + w.cfg.NetDelay
	w.after(d, func() {
		if n.run != run || n.cut || !w.consul.up() {
			return // the inbox stays; its watch reads it afresh at the reconnection
		}
		var got []keyAnswer
		for _, o := range nodes {
			if _, watched := sc.watches[memberKey(o)]; watched || o == n.id {
				continue // its watch answers when it changes
			}
			a := w.consul.get(memberKey(o))
			n.traffic.answers++
			n.traffic.answerBytes += int64(a.bytes)
			got = append(got, a)
		}
		w.consul.deleteInbox(n.id, modify)
		n.event(d, func() {
			if !sc.trust.Current(epoch) {
				return
			}
			for _, a := range got {
				sc.view.Member(a.member, a.exists)
			}
			n.stepView(false, true)
		})
	})
}

// updateScope (after each round): watch what Machine.WatchScope says, and poke the entrants.
func (n *node) updateScope() {
	sc := n.sc
	if !sc.view.Known() || sc.reset || n.crashed || sc.trust.WarmingUp() {
		return
	}
	// WatchScope costs milliseconds at a thousand nodes: it is computed again only when the
	// Machine's WatchScopeGen says something it reads changed. With the per-step checks on,
	// the simulator also checks that an unchanged generation means an unchanged scope.
	next := sc.scope
	if gen := n.m.WatchScopeGen(); gen != sc.scopeGen {
		next, sc.scopeGen = n.m.WatchScope(), gen
	} else if n.w.cfg.checkEvery == 0 {
		if got := n.m.WatchScope(); !got.Equal(sc.scope) {
			n.w.violation("%s: WatchScopeGen %d unchanged since the scope was computed, but the scope changed: was %+v, now %+v",
				n.id, gen, sc.scope, got)
		}
	}
	if next.Equal(sc.scope) && !sc.announce {
		return
	}
	prev := sc.scope
	if sc.announce {
		// Its member key changed (a new session, live_since, draining, a queue): Pokes from an
		// empty scope tells every other member of its groups, who may have stopped watching it.
		prev, sc.announce = failover.WatchScope{}, false
	}
	pokes := failover.Pokes(n.id, prev, next)
	want := map[kvKey]bool{inboxKey(n.id): true}
	for s := range next.Slices {
		want[sliceKey(s)] = true
	}
	for _, m := range next.Members {
		want[memberKey(m)] = true
	}
	for _, k := range sortedWatchKeys(sc.watches) {
		if !want[k] {
			n.stopWatch(k)
		}
	}
	snap := sc.view.Snapshot()
	for _, k := range slices.SortedFunc(maps.Keys(want), compareKeys) {
		if _, ok := sc.watches[k]; ok {
			continue
		}
		// Ask from the index the view knows the key at: the query answers at once if it
		// changed since.
		from := snap.Index
		switch k.kind {
		case keySlice:
			if a := snap.AsOf[k.slice]; a > from {
				from = a
			}
		case keyMember:
			from = max(from, sc.view.MemberIndex(k.node))
		}
		n.startWatch(k, from)
	}
	sc.scope = next
	for _, to := range slices.Sorted(maps.Keys(pokes)) {
		n.poke(to, pokes[to], 0)
	}
}

// poke adds nodes to the inbox of to: create it (check-and-set 0), or if it exists read it and
// write the union with check-and-set; a failed check reads it again. A node that cannot reach Consul tries again a renew interval later.
// After attempts tries it gives up: the next full read shows what the poke would have.
func (n *node) poke(to string, nodes []string, attempt int) {
	const attempts = 10
	w := n.w
	run := n.run
	d := n.delay + w.cfg.NetDelay
	again := func() {
		if attempt+1 < attempts {
			n.event(w.cfg.RenewInterval, func() { n.poke(to, nodes, attempt+1) })
		}
	}
	if attempt == 0 { // create the inbox without reading it (check-and-set 0); merge if it exists
		w.after(d, func() {
			if n.run != run {
				return
			}
			if n.cut || !w.consul.up() {
				again()
				return
			}
			n.traffic.writes++
			if !w.consul.casInbox(to, 0, failover.InboxValue{Read: slices.Sorted(slices.Values(nodes))}) {
				n.traffic.casFailed++
				n.event(d, func() { n.poke(to, nodes, 1) })
			}
		})
		return
	}
	w.after(d, func() { // the read reaches Consul
		if n.run != run {
			return
		}
		if n.cut || !w.consul.up() {
			again()
			return
		}
		a := w.consul.get(inboxKey(to))
		n.traffic.pokeReads++
		n.traffic.answerBytes += int64(a.bytes)
		merged := slices.Clone(a.inbox.Read)
		for _, o := range nodes {
			if !slices.Contains(merged, o) {
				merged = append(merged, o)
			}
		}
		if a.exists && len(merged) == len(a.inbox.Read) {
			return // it says so already
		}
		slices.Sort(merged)
		cas := a.modify
		n.event(d, func() { // the answer is back: write
			w.after(d, func() {
				if n.run != run {
					return
				}
				if n.cut || !w.consul.up() {
					again()
					return
				}
				n.traffic.writes++
				if !w.consul.casInbox(to, cas, failover.InboxValue{Read: merged}) {
					// Written meanwhile: read again, after a random part of a renew interval,
					// so that the peers poking the same inbox at once (a cold start) do not all
					// read and fail again together.
					n.traffic.casFailed++
					if attempt+1 < attempts {
						backoff := time.Duration(w.rng.Int64N(int64(w.cfg.RenewInterval)))
						n.event(d+backoff, func() { n.poke(to, nodes, attempt+1) })
					}
				}
			})
		})
	})
}

// writeMember is the keeper's member key write (at Consul, in the keeper's round): with the
// session, whenever the value changed or the session is new. The answer feeds the view.
//
// Every write is announced to every member of the node's groups (Pokes from an empty scope):
// its peers may have stopped watching its key (it was gone, draining, or could not work a
// queue), while its own groups may look unchanged to it. A node that takes its member key
// with a new session (a new process, or back after its session ended) also leaves itself out
// of the Machine's membership until a full read one watch interval later (as the prefix
// layout's node sees itself only in a later answer of its rate-limited membership watch): the
// peers starting or coming back with it have written their keys by then. Deciding at once,
// alone in its view, it would take every free slice and hand most of them back.
func (n *node) writeMember(meta memberMeta, d time.Duration) {
	sc := n.sc
	if n.session == "" {
		return
	}
	v := failover.MemberValue{LiveSince: meta.liveSince.UnixMilli(), Draining: meta.draining, Unavailable: meta.unavailable}
	if v == sc.member && n.session == sc.memberSession {
		return
	}
	idx, fresh, ok := n.w.consul.lockMember(n.id, n.session, v)
	if !ok {
		return // refused (lock-delay of the previous session): the next round tries again
	}
	n.traffic.writes++
	sc.member, sc.memberSession = v, n.session
	rec := failover.MemberRecord{Info: v.Info(n.id, true), ModifyIndex: idx}
	epoch := sc.trust.Epoch()
	n.event(d, func() {
		if !sc.trust.Current(epoch) {
			return
		}
		sc.announce = true
		if fresh {
			n.fullReadAt(sc.trust.NewSession(n.w.now))
		}
		sc.view.Member(rec, true)
		n.stepView(false, true)
	})
}

func sortedWatchKeys(m map[kvKey]*keyWatch) []kvKey {
	return slices.SortedFunc(maps.Keys(m), compareKeys)
}

// traffic counts what a node read from Consul (the scoped layout's bench).
type traffic struct {
	answers     int   // single-key answers (watches, member keys a poke names)
	pokeReads   int   // inbox reads before a poke
	answerBytes int64 // their bytes
	fullReads   int
	fullBytes   int64
	writes      int // member key and inbox writes
	casFailed   int // inbox writes that failed their check-and-set
}

// watch registers n as a watcher of k (the model notifies it of k's changes).
func (w *world) watch(k kvKey, n *node) {
	l := w.keyWatchers[k]
	i, found := slices.BinarySearchFunc(l, n, func(a, b *node) int { return a.ord - b.ord })
	if !found {
		w.keyWatchers[k] = slices.Insert(l, i, n)
	}
}

func (w *world) unwatch(k kvKey, n *node) {
	l := w.keyWatchers[k]
	if i, found := slices.BinarySearchFunc(l, n, func(a, b *node) int { return a.ord - b.ord }); found {
		l = slices.Delete(l, i, i+1)
		if len(l) == 0 {
			delete(w.keyWatchers, k)
		} else {
			w.keyWatchers[k] = l
		}
	}
}

// keyChanged: the model changed k; its watchers' queries may answer.
func (w *world) keyChanged(k kvKey) {
	for _, n := range slices.Clone(w.keyWatchers[k]) {
		n.keyNotify(k)
	}
}
