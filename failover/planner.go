package failover

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Member is a live node as one observer sees it: its qslice service instance passes its
// liveness check.
type Member struct {
	Node string
	// HealthySince is when the observer first saw the node live in its current run of good
	// health. Zero means "already live when the observer started": settled.
	HealthySince time.Time
	// Draining nodes take no slices.
	Draining bool
	// Unavailable lists queues the node cannot work now (their filesystem does not answer
	// there): it takes none of their slices.
	Unavailable map[string]bool
}

// Avoid keeps a slice away from a node until a time (after a stuck hand-off).
type Avoid struct {
	Node  string    `json:"node"`
	Until time.Time `json:"until"`
}

// SliceState is what the observer knows about one slice.
type SliceState struct {
	// Owner is the node holding the slice's lock, "" when free.
	Owner string
	// Prev is, for a free slice, the node that held it last ("" if none); PrevReason is why it
	// gave it up (a Reason* constant), "" when it lost the lock without releasing it.
	Prev       string
	PrevReason string
	// Avoid lists nodes that handed the slice off as stuck.
	Avoid []Avoid
	// CriticalSince is, for a slice the observer owns, since when its health has been critical
	// without interruption; zero when it is not critical.
	CriticalSince time.Time
}

// PlanInput is everything the planner looks at. Plan is a pure function of it.
type PlanInput struct {
	Self string
	Now  time.Time
	// HoldDown: a member is settled once it has been live for HoldDown. While some candidate
	// for a slice is settled, only settled candidates are considered.
	HoldDown time.Duration
	// SelfDraining overrides what Members says about Self (the local decision is authoritative).
	SelfDraining bool
	// SelfUnavailable overrides what Members says about Self's unavailable queues: Self hands
	// their slices off at once (reason unavailable) and takes none, whatever StuckHandoff says.
	SelfUnavailable map[string]bool
	StuckHandoff    bool
	StuckAfter      time.Duration
	Queues          []QueueSpec
	Members         []Member
	Slices          map[SliceID]SliceState
	// Weight ranks nodes for a slice, highest first; nil means Rendezvous.
	Weight func(s SliceID, node string) uint64
}

// Move is one ownership change the planner asks for.
type Move struct {
	Slice  SliceID
	From   string
	To     string // "" when no node can take a released slice
	Reason string // Reason* constant
}

func (m Move) String() string {
	return fmt.Sprintf("%s %s->%s (%s)", m.Slice, orDash(m.From), orDash(m.To), m.Reason)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Plan is the planner's answer for Self.
type Plan struct {
	// Acquire lists free slices Self should lock (From is the previous holder).
	Acquire []Move
	// Release lists slices Self holds and should hand off: drain them, then release the lock.
	Release []Move
	// Target is the node that should own each slice now ("" when nobody can).
	Target map[SliceID]string
	// Home is the node each slice belongs to when every member is up and settled.
	Home map[SliceID]string
	// SelfTargets lists the slices whose Target is Self, in queue order then by index.
	// Target, Home and SelfTargets from a Planner are its own: valid until its next Plan call.
	SelfTargets []SliceID
}

// ComputePlan decides, for Self, which slices to acquire and which to hand off.
//
// Rules, for each slice:
//   - candidates are the live members that do not drain and are not avoided for the slice (if
//     every non-draining member is avoided, avoidance is ignored);
//   - among candidates, only settled ones count while at least one is settled (hold-down); the
//     node holding the slice counts as settled for it (a holder whose lease lapsed and came back
//     with its session keeps its slices);
//   - the target is the first candidate in the slice's explicit Home list, else the candidate
//     with the highest Weight (ties: the smaller node ID);
//   - members that cannot work the slice's queue (Unavailable) are not candidates;
//   - Self acquires a slice only when it is free and Self is its target; Self hands off a slice
//     it holds when it drains (always), when its queue is unavailable here (always), when the
//     slice is stuck (critical for StuckAfter, and
//     another candidate exists), or when the target is another node (fail-back).
//
// Nobody ever takes a held slice: a slice changes hands only through its holder's release or
// the loss of the holder's session.
func ComputePlan(in PlanInput) Plan { return new(Planner).Plan(in) }

// Planner computes the same plans as ComputePlan, incrementally. It keeps, for every slice, its
// target and home as the last members ranked them (without avoid lists and holders), and the
// members they were computed for. The next plan compares the members with those (a sorted
// merge): a member that joined, left or changed (settled, draining, unavailable queues) can only
// take a slice whose best candidate it now beats, or lose one it was best for, so each slice is
// compared with the changed members only, and ranked afresh over every member only when its
// cached target or home is among them (rendezvous: about 1/N of the slices per changed member).
// Homes depend only on who is there and not draining, so settling and queues do not touch them.
// A queue whose "is any candidate settled" answer flips (everyone unsettled after a Consul state
// loss, the first member settled again), or a change of most members, ranks the queue's targets
// afresh: the target is the home when every non-draining member is a candidate, else the best
// of the candidates, found once per queue. Slices with a home list are ranked afresh at every
// change, so is everything with a custom Weight or when most members joined, left or flipped
// draining. Slices with an avoid list, or held by an unsettled member, get their own target for
// the plan, as ComputePlan ranks them. Buffers are reused: a plan allocates little beyond its
// Acquire and Release lists.
//
// The Target and Home maps of a Plan belong to the Planner: they stay valid until its next Plan
// call, which updates them in place. A Planner is not safe for concurrent use.
type Planner struct {
	valid     bool        // tgt, home and the maps match queues and prev
	queues    []QueueSpec // what the cache was computed for (home lists copied)
	offset    []int       // flat index of each queue's slice 0
	prev, cur ranker      // the members of the cache; the plan in progress (buffers swap)
	modes     []queueMode // per queue, for prev
	tgt, home []pick      // per flat slice index
	target    map[SliceID]string
	homes     map[SliceID]string
	overrides []override // Target entries that hold a per-plan value, put back next plan
	self      []SliceID  // Plan.SelfTargets, reused
	// buffers: the members diff, its part that moves homes, the next modes, candidates
	changes, homeChanges []change
	modesNext            []queueMode
	cands                []int32
}

// pick is a ranked choice: the node, its rendezvous weight for the slice and its name's hash.
type pick struct {
	node string
	w    uint64
	hash uint64
}

// beatenBy reports whether node (weight w) outranks p: a higher weight, or the same and a smaller
// ID, exactly the order of best's scan over members sorted by node.
func (p pick) beatenBy(w uint64, node string) bool {
	return p.node == "" || w > p.w || (w == p.w && node < p.node)
}

// queueMode is what decides a queue's filter: whether it has any candidate, any settled one.
type queueMode struct{ any, anySettled bool }

type override struct {
	k int
	s SliceID
}

// change is a member that joined, left (m nil) or changed state since the cached ranking.
type change struct {
	node string
	hash uint64
	m    *rankMember // its new state; nil when it left
	home bool        // it changes home rankings: it joined, left or its draining flipped
}

// Plan decides, for Self, which slices to acquire and which to hand off.
func (pl *Planner) Plan(in PlanInput) Plan {
	r := &pl.cur
	r.reset(in)
	if pl.valid {
		for _, o := range pl.overrides {
			pl.target[o.s] = pl.tgt[o.k].node
		}
	}
	pl.overrides = pl.overrides[:0]
	if in.Weight != nil || !pl.valid || !sameQueues(pl.queues, in.Queues) || !pl.update(r) {
		pl.full(r)
	}
	pl.valid = in.Weight == nil

	pl.self = pl.self[:0]
	p := Plan{Target: pl.target, Home: pl.homes}
	for qi, q := range in.Queues {
		mode, off := pl.modes[qi], pl.offset[qi]
		qh := stringHash(q.Name)
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			st := in.Slices[s]
			cached := pl.tgt[off+i]
			target := cached.node
			fast := in.Weight == nil && len(q.Home[i]) == 0
			switch {
			case len(st.Avoid) > 0 || (!fast && r.unsettled(st.Owner)):
				target = r.target(qi, s, st.Avoid, "", st.Owner).node
			case mode.anySettled && r.unsettled(st.Owner):
				// The holder competes as if settled: the cached candidates plus the holder.
				if m := &r.members[r.byNode[st.Owner]]; !m.Draining && !m.unavailable(qi) {
					if w := mix64(sliceSeedH(qh, i) ^ m.hash); cached.beatenBy(w, m.Node) {
						target = m.Node
					}
				}
			}
			if target != cached.node {
				p.Target[s] = target
				pl.overrides = append(pl.overrides, override{off + i, s})
			}
			if target == in.Self {
				pl.self = append(pl.self, s)
			}
			switch {
			case st.Owner == in.Self:
				switch {
				case r.selfDraining:
					p.Release = append(p.Release, Move{Slice: s, From: in.Self, To: target, Reason: ReasonDrain})
				case in.SelfUnavailable[s.Queue]:
					p.Release = append(p.Release, Move{Slice: s, From: in.Self, To: target, Reason: ReasonUnavailable})
				case in.StuckHandoff && !st.CriticalSince.IsZero() && !in.Now.Before(st.CriticalSince.Add(in.StuckAfter)):
					if alt := r.target(qi, s, st.Avoid, in.Self, "").node; alt != "" && alt != in.Self {
						p.Release = append(p.Release, Move{Slice: s, From: in.Self, To: alt, Reason: ReasonStuck})
					}
				case target != "" && target != in.Self:
					p.Release = append(p.Release, Move{Slice: s, From: in.Self, To: target, Reason: ReasonFailback})
				}
			case st.Owner == "" && target == in.Self:
				p.Acquire = append(p.Acquire, Move{Slice: s, From: st.Prev, To: in.Self, Reason: acquireReason(in.Self, st)})
			}
		}
	}
	if len(pl.self) > 0 { // nil when none, as from a new Planner
		p.SelfTargets = pl.self
	}
	pl.prev, pl.cur = pl.cur, pl.prev
	return p
}

// full ranks every slice over every member of r.
func (pl *Planner) full(r *ranker) {
	in := r.in
	if !pl.valid || !sameQueues(pl.queues, in.Queues) {
		pl.queues = cloneQueues(in.Queues)
		pl.offset = pl.offset[:0]
		total := 0
		for _, q := range in.Queues {
			pl.offset = append(pl.offset, total)
			total += q.Slices
		}
		pl.tgt, pl.home = make([]pick, total), make([]pick, total)
		pl.target, pl.homes = make(map[SliceID]string, total), make(map[SliceID]string, total)
	}
	pl.modes = r.modes(pl.modes[:0])
	for qi, q := range in.Queues {
		pl.rankHomes(r, qi)
		pl.rankTargets(r, qi)
		for i := 0; i < q.Slices; i++ { // new maps have no entries yet
			s, k := SliceID{q.Name, i}, pl.offset[qi]+i
			pl.target[s], pl.homes[s] = pl.tgt[k].node, pl.home[k].node
		}
	}
}

// rank ranks one slice afresh over every member of r.
func (pl *Planner) rank(r *ranker, qi int, s SliceID) {
	k := pl.offset[qi] + s.Index
	pl.tgt[k] = r.target(qi, s, nil, "", "")
	pl.home[k] = r.home(qi, s)
	pl.target[s], pl.homes[s] = pl.tgt[k].node, pl.home[k].node
}

// rankHomes ranks the homes of queue qi afresh: one pass over the non-draining members per
// slice.
func (pl *Planner) rankHomes(r *ranker, qi int) {
	q, off := r.in.Queues[qi], pl.offset[qi]
	hc := pl.cands[:0]
	for i := range r.members {
		if !r.members[i].Draining {
			hc = append(hc, int32(i))
		}
	}
	pl.cands = hc
	qh := stringHash(q.Name)
	for i := 0; i < q.Slices; i++ {
		s := SliceID{q.Name, i}
		var h pick
		if len(q.Home[i]) > 0 || r.in.Weight != nil {
			h = r.home(qi, s)
		} else {
			h = r.bestOf(sliceSeedH(qh, i), hc)
		}
		if h.node != pl.home[off+i].node {
			pl.homes[s] = h.node
		}
		pl.home[off+i] = h
	}
}

// bestOf is the rendezvous winner among the members cands (indexes into r.members) for a slice
// whose seed is seed; the zero pick when cands is empty.
func (r *ranker) bestOf(seed uint64, cands []int32) pick {
	var p pick
	for _, j := range cands {
		m := &r.members[j]
		if w := mix64(seed ^ m.hash); p.beatenBy(w, m.Node) {
			p = pick{m.Node, w, m.hash}
		}
	}
	return p
}

// rankTargets ranks the targets of queue qi afresh, after its homes. The candidates are the
// same for every slice (no avoid list, no holder); when they are every non-draining member
// (nobody lacks the queue, and the hold-down excludes nobody), each target is the home.
func (pl *Planner) rankTargets(r *ranker, qi int) {
	q, off, mode := r.in.Queues[qi], pl.offset[qi], pl.modes[qi]
	tc := pl.cands[:0]
	same := true
	for i := range r.members {
		m := &r.members[i]
		switch {
		case m.Draining:
		case m.unavailable(qi) || (mode.anySettled && !m.settled):
			same = false
		default:
			tc = append(tc, int32(i))
		}
	}
	pl.cands = tc
	qh := stringHash(q.Name)
	for i := 0; i < q.Slices; i++ {
		s := SliceID{q.Name, i}
		var t pick
		switch {
		case len(q.Home[i]) > 0 || r.in.Weight != nil:
			t = r.target(qi, s, nil, "", "")
		case same:
			t = pl.home[off+i]
		default:
			t = r.bestOf(sliceSeedH(qh, i), tc)
		}
		if t.node != pl.tgt[off+i].node {
			pl.target[s] = t.node
		}
		pl.tgt[off+i] = t
	}
}

// update brings the cache from pl.prev's members to r's; false when a full ranking is cheaper.
// Homes are compared with the members whose home ranking changed (joined, left, draining
// flipped); targets with every changed member, or ranked afresh for a queue whose mode flipped
// or when most members changed (a cheap pass when the target is the home).
func (pl *Planner) update(r *ranker) bool {
	ch := diffMembers(pl.changes[:0], &pl.prev, r)
	pl.changes = ch
	if len(ch) == 0 {
		return true
	}
	hch := pl.homeChanges[:0]
	for _, c := range ch {
		if c.home {
			hch = append(hch, c)
		}
	}
	pl.homeChanges = hch
	if 2*len(hch) > len(r.members) {
		return false
	}
	pl.modesNext = r.modes(pl.modesNext[:0])
	manyChanged := 2*len(ch) > len(r.members)
	in := r.in
	for qi, q := range in.Queues {
		mode, off := pl.modesNext[qi], pl.offset[qi]
		bulk := manyChanged || mode != pl.modes[qi]
		pl.modes[qi] = mode
		qh := stringHash(q.Name)
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			if len(q.Home[i]) > 0 {
				pl.rank(r, qi, s)
				continue
			}
			seed := sliceSeedH(qh, i)
			h := pl.home[off+i]
			stale := false
			for j := range hch {
				c := &hch[j]
				if h.node != "" && c.hash == h.hash && c.node == h.node {
					stale = true // the cached home itself changed: rank over everyone
					break
				}
				if c.m == nil || c.m.Draining {
					continue
				}
				if w := mix64(seed ^ c.hash); h.beatenBy(w, c.node) {
					h = pick{c.node, w, c.hash}
				}
			}
			if stale {
				h = r.home(qi, s)
			}
			if h.node != pl.home[off+i].node {
				pl.homes[s] = h.node
			}
			pl.home[off+i] = h
			if bulk {
				continue
			}
			t := pl.tgt[off+i]
			stale = false
			for j := range ch {
				c := &ch[j]
				if t.node != "" && c.hash == t.hash && c.node == t.node {
					stale = true
					break
				}
				if c.m == nil || c.m.Draining || c.m.unavailable(qi) || (mode.anySettled && !c.m.settled) {
					continue
				}
				if w := mix64(seed ^ c.hash); t.beatenBy(w, c.node) {
					t = pick{c.node, w, c.hash}
				}
			}
			if stale {
				t = r.target(qi, s, nil, "", "")
			}
			if t.node != pl.tgt[off+i].node {
				pl.target[s] = t.node
			}
			pl.tgt[off+i] = t
		}
		if bulk {
			pl.rankTargets(r, qi)
		}
	}
	return true
}

// diffMembers appends to out the members of b that are not in a or differ there, and the
// members of a that b lacks. Both are sorted by node.
func diffMembers(out []change, a, b *ranker) []change {
	i, j := 0, 0
	for i < len(a.members) || j < len(b.members) {
		switch {
		case j == len(b.members) || (i < len(a.members) && a.members[i].Node < b.members[j].Node):
			out = append(out, change{node: a.members[i].Node, hash: a.members[i].hash, home: true})
			i++
		case i == len(a.members) || b.members[j].Node < a.members[i].Node:
			out = append(out, change{node: b.members[j].Node, hash: b.members[j].hash, m: &b.members[j], home: true})
			j++
		default:
			if !a.members[i].sameRanking(&b.members[j]) {
				out = append(out, change{node: b.members[j].Node, hash: b.members[j].hash, m: &b.members[j],
					home: a.members[i].Draining != b.members[j].Draining})
			}
			i, j = i+1, j+1
		}
	}
	return out
}

func sameQueues(a, b []QueueSpec) bool {
	return slices.EqualFunc(a, b, func(x, y QueueSpec) bool {
		return x.Name == y.Name && x.Slices == y.Slices && maps.EqualFunc(x.Home, y.Home, func(a, b []string) bool { return slices.Equal(a, b) })
	})
}

func cloneQueues(qs []QueueSpec) []QueueSpec {
	out := slices.Clone(qs)
	for i := range out {
		if out[i].Home != nil {
			out[i].Home = make(map[int][]string, len(qs[i].Home))
			for k, v := range qs[i].Home {
				out[i].Home[k] = slices.Clone(v)
			}
		}
	}
	return out
}

// acquireReason names why a free slice comes to self, from what its last holder left behind.
func acquireReason(self string, st SliceState) string {
	switch {
	case st.Prev == "" || st.Prev == self:
		return ReasonAcquired
	case st.PrevReason == "":
		return ReasonFailover // the holder lost its session
	case st.PrevReason == ReasonFailback, st.PrevReason == ReasonDrain, st.PrevReason == ReasonStuck, st.PrevReason == ReasonReleased,
		st.PrevReason == ReasonUnavailable:
		return st.PrevReason
	default:
		return ReasonAcquired
	}
}

type rankMember struct {
	Member
	hash    uint64
	settled bool
	unavail []int // indexes into the plan's queues that the member cannot work, ascending
}

func (m *rankMember) unavailable(qi int) bool {
	for _, u := range m.unavail {
		if u == qi {
			return true
		}
	}
	return false
}

// sameRanking reports whether m and o rank alike: the same node, settledness, draining flag and
// unavailable queues.
func (m *rankMember) sameRanking(o *rankMember) bool {
	return m.Node == o.Node && m.settled == o.settled && m.Draining == o.Draining && slices.Equal(m.unavail, o.unavail)
}

// ranker ranks members for slices; its buffers are reused from plan to plan.
type ranker struct {
	in           PlanInput
	members      []rankMember // sorted by node, deduplicated
	byNode       map[string]int
	selfDraining bool
	sorted       []Member // buffer
	unavail      []int    // buffer the members' unavail lists point into
}

func (r *ranker) reset(in PlanInput) {
	r.in, r.selfDraining = in, in.SelfDraining
	if r.byNode == nil {
		r.byNode = make(map[string]int, len(in.Members))
	}
	clear(r.byNode)
	r.sorted = append(r.sorted[:0], in.Members...)
	slices.SortStableFunc(r.sorted, func(a, b Member) int { return strings.Compare(a.Node, b.Node) })
	r.members, r.unavail = r.members[:0], r.unavail[:0]
	for _, m := range r.sorted {
		if m.Node == "" || (len(r.members) > 0 && r.members[len(r.members)-1].Node == m.Node) {
			continue // first entry of a duplicated node wins
		}
		if m.Node == in.Self {
			m.Draining, m.Unavailable = in.SelfDraining, in.SelfUnavailable
		}
		rm := rankMember{Member: m, hash: stringHash(m.Node), settled: m.HealthySince.IsZero() || !in.Now.Before(m.HealthySince.Add(in.HoldDown))}
		if len(m.Unavailable) > 0 {
			start := len(r.unavail)
			for qi, q := range in.Queues {
				if m.Unavailable[q.Name] {
					r.unavail = append(r.unavail, qi)
				}
			}
			rm.unavail = r.unavail[start:len(r.unavail):len(r.unavail)]
		}
		r.byNode[m.Node] = len(r.members)
		r.members = append(r.members, rm)
	}
}

func (r *ranker) weight(s SliceID, seed uint64, m *rankMember) uint64 {
	if r.in.Weight != nil {
		return r.in.Weight(s, m.Node)
	}
	return mix64(seed ^ m.hash)
}

// modes appends, for each queue, whether it has a candidate and a settled one (no avoid list, no
// holder).
func (r *ranker) modes(out []queueMode) []queueMode {
	all := queueMode{}
	for i := range r.members {
		if m := &r.members[i]; !m.Draining && len(m.unavail) == 0 {
			all.any, all.anySettled = true, all.anySettled || m.settled
			if all.anySettled {
				break
			}
		}
	}
	for qi := range r.in.Queues {
		mode := all
		if !mode.anySettled { // a member that cannot work some queue may decide it
			for i := range r.members {
				if m := &r.members[i]; !m.Draining && !m.unavailable(qi) {
					mode.any, mode.anySettled = true, mode.anySettled || m.settled
				}
			}
		}
		out = append(out, mode)
	}
	return out
}

// unsettled reports whether node is a member that is not settled (a holder the cached
// rankings, computed without holders, may rank wrongly).
func (r *ranker) unsettled(node string) bool {
	i, ok := r.byNode[node]
	return ok && !r.members[i].settled
}

// filter says which members are candidates.
type filter struct {
	holder      string // counts as settled
	qi          int    // the queue's index in the plan
	avoid       []Avoid
	exclude     string
	ignoreAvoid bool
	settledOnly bool
	homeOnly    bool // home: every non-draining member
}

func (r *ranker) candidate(m *rankMember, f *filter) bool {
	if f.homeOnly {
		return !m.Draining
	}
	if m.Draining || m.unavailable(f.qi) || m.Node == f.exclude || (f.settledOnly && !m.settled && m.Node != f.holder) {
		return false
	}
	if !f.ignoreAvoid {
		for _, a := range f.avoid {
			if a.Node == m.Node && r.in.Now.Before(a.Until) {
				return false
			}
		}
	}
	return true
}

// target picks the owner of s (of queue qi) among live, non-draining members, honouring
// avoidance, hold-down and the home list. exclude, when set, is treated as avoided too.
//
// holder is the node holding s ("" when free). While some candidate is settled, the holder
// competes as if settled too: the hold-down keeps slices from a node that comes back, it must
// not push a slice away from the node that holds it. A holder that is not settled is one whose
// lease lapsed and came back with its session (a Consul restart or leader election, a short
// partition, a pause: its live_since restarts); without this rule it would hand its own slices
// to the first settled peer and take them back a hold-down later, two moves per slice for a
// fault that needed none.
func (r *ranker) target(qi int, s SliceID, avoid []Avoid, exclude, holder string) pick {
	f := filter{qi: qi, avoid: avoid, exclude: exclude, holder: holder}
	for _, ignoreAvoid := range [2]bool{false, true} {
		f.ignoreAvoid, f.settledOnly = ignoreAvoid, false
		any, anySettled := false, false
		for i := range r.members {
			m := &r.members[i]
			if r.candidate(m, &f) {
				any, anySettled = true, anySettled || m.settled
				if anySettled {
					break
				}
			}
		}
		if any {
			f.settledOnly = anySettled
			return r.best(qi, s, &f)
		}
	}
	return pick{}
}

// home is where s belongs when everyone is up: the head of its home list, else the best
// non-draining member regardless of hold-down.
func (r *ranker) home(qi int, s SliceID) pick {
	if h := r.in.Queues[qi].Home[s.Index]; len(h) > 0 {
		return pick{node: h[0]}
	}
	return r.best(qi, s, &filter{homeOnly: true})
}

// best is the first candidate of the slice's home list, else the candidate with the highest
// weight (members are sorted by node: on equal weight the smaller ID stays).
func (r *ranker) best(qi int, s SliceID, f *filter) pick {
	for _, n := range r.in.Queues[qi].Home[s.Index] {
		if i, ok := r.byNode[n]; ok && r.candidate(&r.members[i], f) {
			return pick{node: n}
		}
	}
	seed := sliceSeed(s)
	var best *rankMember
	var bestW uint64
	for i := range r.members {
		m := &r.members[i]
		if !r.candidate(m, f) {
			continue
		}
		if w := r.weight(s, seed, m); best == nil || w > bestW {
			best, bestW = m, w
		}
	}
	if best == nil {
		return pick{}
	}
	return pick{best.Node, bestW, best.hash}
}

// Rendezvous is the highest-random-weight score of node for slice s. Every node computes the
// same scores, so every node agrees on the ranking given the same members.
func Rendezvous(s SliceID, node string) uint64 { return mix64(sliceSeed(s) ^ stringHash(node)) }

func sliceSeed(s SliceID) uint64 { return sliceSeedH(stringHash(s.Queue), s.Index) }

// sliceSeedH is sliceSeed with the queue name already hashed.
func sliceSeedH(queueHash uint64, index int) uint64 {
	return mix64(queueHash ^ mix64(uint64(index)+0x9e3779b97f4a7c15))
}

// stringHash is 64-bit FNV-1a.
func stringHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is the splitmix64 finaliser: every input bit affects every output bit.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// FormatRanges renders sorted-or-not slice indexes compactly: [0 1 2 3 7] -> "0-3,7".
func FormatRanges(idx []int) string {
	s := slices.Clone(idx)
	slices.Sort(s)
	s = slices.Compact(s)
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return b.String()
}

// ParseRanges is the inverse of FormatRanges.
func ParseRanges(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("parse ranges %q: bad number %q", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("parse ranges %q: bad range %q", s, part)
			}
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}
