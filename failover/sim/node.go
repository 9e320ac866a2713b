package sim

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/qslice/qslice/failover"
)

// node is one qslice process and its driver: what the Consul driver (failover/consul) does (keeper
// rounds, watches, transactions, assignee), on virtual time and the model of Consul.
type node struct {
	w     *world
	id    string
	ord   int     // its place in w.nodes
	drift float64 // its clock runs at 1+drift

	run     int // process generation: events of a crashed run are dropped
	m       *failover.Machine
	crashed bool
	paused  bool
	defer_  []func() // events that arrived while paused
	cut     bool     // partitioned from Consul
	delay   time.Duration
	loss    float64

	// keeper
	session     string
	ttlSent     time.Time            // local
	confirmSent time.Time            // local
	live        failover.LiveStretch // live_since (local), decided as the Consul driver's keeper does
	deadline    time.Time            // local; the lease the runner honours
	meta        map[string]string
	critical    map[failover.SliceID]time.Time
	// liveHist: every live stretch's start (true time) and when it was published (true time).
	liveHist []liveRec

	// watches
	lastIndex           uint64
	kvAsked, memAsked   bool // an answer is on its way
	kvLast, memLast     time.Time
	kvMissed, memMissed bool // a change happened while the watch could not answer
	roundQueued         bool
	nextTick            time.Time
	assigned            map[failover.SliceID]bool
	crashAt             time.Time
	releasedGens        map[uint64]bool

	// Restart in place: the previous run's session and live_since, which this run adopts at
	// its first keeper round if Consul still has the session (the simulated process is gone
	// with its run, and its handlers with it, as the node lock and KillOrphans make sure).
	adoptFrom      string
	adoptLiveSince time.Time
	adopted        bool // this run adopted its previous run's session
	// sessionExpiredInRestart: the previous run's session ran out of TTL before this run's
	// first round reached Consul: nothing to adopt (the restart check does not apply).
	sessionExpiredInRestart bool
	startedAt               time.Time

	// the scoped watch layout (scoped.go); nil in the prefix layout
	sc      *scoped
	traffic traffic
	log     *slog.Logger
}

type liveRec struct{ publishedAt, since time.Time }

func (n *node) setLiveSince(l time.Time) {
	n.live = failover.NewLiveStretch(l)
	n.liveHist = append(n.liveHist, liveRec{publishedAt: n.w.now, since: n.trueOf(l)})
}

// noteLive records live_since in liveHist if the keeper's decisions changed it.
func (n *node) noteLive(before time.Time) {
	if l := n.live.Since(); !l.Equal(before) {
		n.liveHist = append(n.liveHist, liveRec{publishedAt: n.w.now, since: n.trueOf(l)})
	}
}

// settledWithin reports whether the node was settled (live for HoldDown by its published
// live_since) at some moment of the last d: peers decide on a view that old.
func (n *node) settledWithin(d time.Duration, slack time.Duration) bool {
	w := n.w
	for i, r := range n.liveHist {
		end := w.now
		if i+1 < len(n.liveHist) {
			end = n.liveHist[i+1].publishedAt
		}
		if end.Before(w.now.Add(-d)) {
			continue
		}
		if !end.Add(slack).Before(r.since.Add(w.cfg.HoldDown)) {
			return true
		}
	}
	return false
}

// local converts true time to the node's clock.
func (n *node) local(t time.Time) time.Time {
	d := t.Sub(n.w.start)
	return n.w.start.Add(d + time.Duration(float64(d)*n.drift))
}

// trueOf converts a reading of the node's clock to true time.
func (n *node) trueOf(l time.Time) time.Time {
	d := l.Sub(n.w.start)
	return n.w.start.Add(time.Duration(float64(d) / (1 + n.drift)))
}

func (n *node) reachable() bool {
	return !n.cut && n.w.consul.up() && (n.loss == 0 || n.w.rng.Float64() >= n.loss)
}

// event runs fn for this run of the node: dropped after a crash, deferred while paused.
func (n *node) event(d time.Duration, fn func()) {
	run := n.run
	n.w.after(d, func() {
		if n.run != run || n.crashed {
			return
		}
		if n.paused {
			n.defer_ = append(n.defer_, fn)
			return
		}
		fn()
	})
}

func (n *node) start(after time.Duration) {
	n.run++
	n.crashed, n.paused, n.defer_ = false, false, nil
	n.adoptFrom, n.adoptLiveSince, n.adopted, n.startedAt = n.session, n.live.Since(), false, n.w.now.Add(after)
	n.sessionExpiredInRestart = false
	n.session, n.ttlSent, n.confirmSent, n.deadline = "", time.Time{}, time.Time{}, time.Time{}
	n.kvLast, n.memLast = time.Time{}, time.Time{} // a new process has not asked yet
	n.setLiveSince(n.local(n.w.now.Add(after)))
	n.lastIndex, n.kvAsked, n.memAsked, n.kvMissed, n.memMissed, n.roundQueued = 0, false, false, true, true, false
	n.assigned = map[failover.SliceID]bool{}
	n.releasedGens = map[uint64]bool{}
	logger := discardLogger
	if n.w.cfg.Log != nil {
		w := n.w
		virtual := func(_ []string, a slog.Attr) slog.Attr { // the virtual time, not the wall clock
			if a.Key == slog.TimeKey {
				return slog.String("t", fmt.Sprintf("%.3fs", w.now.Sub(w.start).Seconds()))
			}
			return a
		}
		logger = slog.New(slog.NewTextHandler(n.w.cfg.Log, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: virtual})).With("node", n.id, "run", n.run)
	}
	n.log = logger
	n.m = failover.NewMachine(failover.MachineConfig{Self: n.id, Queues: n.w.cfg.Queues, TTL: n.w.cfg.TTL, LockDelay: n.w.cfg.LockDelay,
		HoldDown: n.w.cfg.HoldDown, RenewInterval: n.w.cfg.RenewInterval, DrainTimeout: time.Minute, Backoff: noJitter}, logger, nil)
	n.event(after, n.keeperRound)
	if n.isScoped() {
		n.scopedStart(after)
		return
	}
	n.event(after, n.resendWatches)
}

func (n *node) crash() {
	n.crashed, n.crashAt = true, n.w.now
	n.assigned = map[failover.SliceID]bool{}
}

// stopForRestart is SIGTERM: the Machine narrows the assignee and keeps its locks; once it is
// stopped the process exits (then restarts after For). Its session lives on until its check
// lapses, unless the next run adopts it first.
func (n *node) stopForRestart(exited func()) {
	n.m.Step(failover.EvStop{Now: n.local(n.w.now), KeepLocks: true})
	n.round()
	var wait func()
	wait = func() {
		if n.m.Stopped() {
			n.crash()
			exited()
			return
		}
		n.event(10*time.Millisecond, wait)
	}
	n.event(0, wait)
}

func (n *node) resume() {
	n.paused = false
	d := n.defer_
	n.defer_ = nil
	for _, fn := range d {
		if n.crashed || n.paused {
			break
		}
		fn()
	}
	n.queueRound()
}

// processing: the assignee has s and the lease is valid on the node's clock, and the process
// runs.
func (n *node) processing(s failover.SliceID) bool {
	return !n.crashed && !n.paused && n.assigned[s] && n.local(n.w.now).Before(n.deadline)
}

// endOf is when the node's processing of s ended, for the margin check: the crash, the
// narrowing, or else (a lapse, a pause) its lease deadline, in true time.
func (n *node) endOf(s failover.SliceID) time.Time {
	switch {
	case n.crashed:
		return n.crashAt
	case !n.assigned[s]:
		return n.w.now
	default:
		return n.trueOf(n.deadline)
	}
}

// ---- keeper: TTL pass, session confirmation and creation, every RenewInterval ----

func (n *node) keeperRound() {
	w := n.w
	next := w.cfg.RenewInterval
	defer func() { n.event(next, n.keeperRound) }()
	sent := n.local(w.now)
	if !n.reachable() {
		if !sent.Before(n.deadline) {
			n.live.Lapsed(n.session)
		}
		return
	}
	d := n.delay + w.cfg.NetDelay
	run := n.run
	w.after(d, func() { // the request reaches Consul
		if n.run != run || n.crashed {
			return
		}
		c := w.consul
		if !c.up() {
			return
		}
		adopt := ""
		if n.adoptFrom != "" && !w.cfg.NoAdopt { // the first round of a restarted process
			if se := c.sessions[n.adoptFrom]; se != nil && se.node == n.id {
				n.session, adopt = n.adoptFrom, n.adoptFrom
				n.setLiveSince(n.adoptLiveSince) // its live stretch goes on
			} else if ch := c.checks[n.id]; ch != nil && !ch.expiredAt.IsZero() && !ch.expiredAt.Before(w.faultFrom[n.id]) &&
				!c.downUntil.Before(w.faultFrom[n.id].Add(-w.cfg.TTL)) {
				// The session ended before this first round could confirm it: its TTL ran out
				// while the process was down, and Consul was down less than a TTL before the
				// restart, so the last pass was older than the restart. A fresh start, as after
				// a crash.
				n.sessionExpiredInRestart = true
			}
			n.adoptFrom = ""
		}
		if n.session != "" {
			if c.sessions[n.session] == nil {
				n.session = ""
				n.live.Lost()
			} else {
				n.confirmSent = sent // the session outlived the outage
				before := n.live.Since()
				n.live.Confirmed(n.session)
				n.noteLive(before)
			}
		}
		before := n.live.Since()
		n.live.Healthy(sent)
		n.noteLive(before)
		meta := memberMeta{liveSince: n.live.Since()}
		if n.meta != nil {
			meta.draining = n.meta["draining"] == "true"
			meta.unavailable = n.meta["unavailable"]
		}
		c.pass(n.id, w.cfg.TTL, meta)
		n.ttlSent = sent
		if n.session == "" {
			if id, err := c.createSession(n.id, w.cfg.LockDelay); err == nil {
				n.session, n.confirmSent = id, sent
				n.destroyStale(id)
			}
		}
		if n.sc != nil {
			n.writeMember(meta, d)
		}
		session, deadline := n.session, failover.LeaseDeadline(n.ttlSent, n.confirmSent, w.cfg.TTL, w.cfg.LockDelay, w.cfg.LeaseMargin)
		if !deadline.IsZero() {
			deadline = deadline.Add(w.cfg.BrokenLease)
		}
		n.event(d, func() { // the answer reaches the node
			n.deadline = deadline
			if adopt != "" {
				n.adopted = true
				n.m.Step(failover.EvAdopt{Now: n.local(w.now), Session: adopt})
			}
			n.m.Step(failover.EvLease{Now: n.local(w.now), Session: session, Deadline: deadline, CriticalSince: n.critical})
			n.round()
		})
	})
}

// destroyStale: as the keeper does, sessions of a previous run of this node are destroyed.
func (n *node) destroyStale(current string) {
	c := n.w.consul
	for _, id := range sortedSessions(c.sessions) {
		if c.sessions[id].node == n.id && id != current {
			c.invalidate(id)
		}
	}
}

// ---- watches ----

// watchChanged: Consul's state changed; a blocking query answers (at most one per
// WatchMinInterval) and the answer reaches the node after the network delay.
func (n *node) watchChanged(kv bool) {
	if n.crashed || n.sc != nil {
		return
	}
	if kv {
		n.kvMissed = true
	} else {
		n.memMissed = true
	}
	n.answer(kv)
}

func (n *node) resendWatches() {
	if n.sc != nil {
		n.scopedResend()
		return
	}
	n.answer(true)
	n.answer(false)
}

func (n *node) answer(kv bool) {
	w := n.w
	asked, last, missed := &n.memAsked, &n.memLast, &n.memMissed
	if kv {
		asked, last, missed = &n.kvAsked, &n.kvLast, &n.kvMissed
	}
	if *asked || !*missed || n.crashed {
		return
	}
	wait := max(last.Add(w.cfg.WatchMinInterval).Sub(w.now), 0)
	*asked = true
	run := n.run
	w.after(wait, func() {
		if n.run != run {
			return
		}
		*asked = false
		if n.cut || !w.consul.up() {
			return // the query fails; asked again when the node reconnects or Consul is back
		}
		*missed, *last = false, w.now
		n.traffic.answers++
		n.traffic.answerBytes += int64(w.consul.prefixBytes(kv))
		var ev func() failover.Event
		if kv {
			snap := w.consul.snapshot()
			ev = func() failover.Event {
				reset := snap.Index < n.lastIndex
				n.lastIndex = snap.Index
				return failover.EvKV{Now: n.local(w.now), Snap: snap, Reset: reset}
			}
		} else {
			ms := w.consul.members()
			ev = func() failover.Event { return failover.EvMembers{Now: n.local(w.now), Members: ms} }
		}
		n.event(n.delay+w.cfg.NetDelay, func() {
			n.m.Step(ev())
			n.round()
			n.answer(kv) // a change during the rate limit
		})
	})
}

// ---- the loop ----

func (n *node) queueRound() {
	if n.roundQueued {
		return
	}
	n.roundQueued = true
	n.event(0, func() { n.roundQueued = false; n.round() })
}

// round does what failover's driver does after a wake-up: tick, then Ready rounds.
func (n *node) round() {
	w := n.w
	m := n.m
	m.Step(failover.EvTick{Now: n.local(w.now)})
	releaseFailed, acquireFailed := false, false
	for i := 0; ; i++ {
		rd := m.Ready()
		if !rd.HasWork() || i == maxRounds {
			n.meta = rd.Meta
			break
		}
		type set struct {
			gen     uint64
			pending bool
		}
		var sets []set
		for _, a := range rd.Assign {
			now := map[int]bool{}
			for _, i := range a.Slices {
				now[i] = true
				n.assigned[failover.SliceID{Queue: a.Queue, Index: i}] = true
			}
			for _, s := range a.Removed {
				delete(n.assigned, s)
			}
			for s := range n.assigned {
				if s.Queue == a.Queue && !now[s.Index] {
					delete(n.assigned, s)
				}
			}
			drain := time.Duration(0)
			if len(a.Removed) > 0 {
				drain = time.Duration(w.rng.Int64N(int64(w.cfg.MaxDrainFor)))
			}
			gen := a.Gen
			sets = append(sets, set{gen, drain > 0})
			if drain > 0 {
				n.event(drain, func() {
					n.m.Step(failover.EvAssigneeReleased{Now: n.local(w.now), Gen: gen})
					n.round()
				})
			}
		}
		for _, r := range rd.Release {
			if releaseFailed {
				break
			}
			var res failover.EvReleaseResult
			res.Req = r
			if n.reachable() {
				res = w.consul.release(r)
				if n.loss > 0 && w.rng.Float64() < n.loss { // applied, answer lost
					res = failover.EvReleaseResult{Req: r, Err: true}
				}
			} else {
				res.Err = true
			}
			if !res.Err && res.Req.Value.Reason == failover.ReasonFailback {
				n.checkFailback(res.Req)
			}
			res.Now = n.local(w.now)
			m.Step(res)
			releaseFailed = res.Err
		}
		for _, a := range rd.Acquire {
			if acquireFailed {
				break
			}
			var res failover.EvAcquireResult
			res.Req = a
			if n.reachable() {
				res = w.consul.acquire(a)
				if res.Granted {
					w.res.Moves++
					w.grants[a.Move.Slice]++
				}
				if n.loss > 0 && w.rng.Float64() < n.loss { // applied, answer lost
					res = failover.EvAcquireResult{Req: a, Err: true}
				}
			} else {
				res.Err = true
			}
			res.Start, res.Now = n.local(w.now), n.local(w.now)
			m.Step(res)
			acquireFailed = res.Err
		}
		for _, id := range rd.DestroySessions {
			if n.reachable() {
				w.consul.invalidate(id)
			}
		}
		m.Advance(rd)
		for _, s := range sets {
			m.Step(failover.EvAssigned{Now: n.local(w.now), Gen: s.gen, Pending: s.pending})
		}
	}
	if n.sc != nil {
		n.updateScope()
	}
	n.scheduleTick()
}

// scheduleTick asks for a tick at the Machine's next deadline (the lease's end, or a renew
// interval).
func (n *node) scheduleTick() {
	at := n.trueOf(n.m.NextDeadline())
	if !at.After(n.w.now) {
		at = n.w.now.Add(time.Millisecond)
	}
	if !n.nextTick.IsZero() && n.nextTick.After(n.w.now) && !n.nextTick.After(at) {
		return // one is due sooner
	}
	n.nextTick = at
	n.event(at.Sub(n.w.now), func() {
		if n.w.now.Equal(n.nextTick) {
			n.round()
		}
	})
}

// checkFailback: a slice goes back to a node only once it has been live for HoldDown (by its
// own account, in true time, with the clocks' drift as slack), as peers could know it: their view
// is up to a watch interval and two renew intervals old.
//
// The planner's rule: while some candidate is settled, only settled ones count; when nobody is
// (cluster boot, or every node restarted its live stretch after losing its session), everybody
// does. So a hand-back to an unsettled node is a violation when another live node was settled.
func (n *node) checkFailback(r failover.ReleaseReq) {
	w := n.w
	to := w.byID[r.Value.To]
	if to == nil {
		return
	}
	slack := time.Duration(2*w.cfg.MaxDrift*float64(w.now.Sub(w.start))) + time.Millisecond
	stale := w.cfg.WatchMinInterval + 2*w.cfg.RenewInterval
	if to.settledWithin(stale, slack) {
		return
	}
	for _, o := range w.nodes {
		ch := w.consul.checks[o.id]
		if o != to && !o.crashed && ch != nil && ch.passing && o.settledWithin(0, -slack) {
			w.violation("slice %s handed back to %s %.3fs after it became live, before the hold-down %s, while %s was settled",
				r.Slice, to.id, w.now.Sub(to.trueOf(to.live.Since())).Seconds(), w.cfg.HoldDown, o.id)
			return
		}
	}
}

func sortedSessions(m map[string]*session) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return sortStrings(keys)
}

func sortStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}
