package failover

import (
	"maps"
	"slices"
	"strings"
	"time"
)

// The scoped watch layout (ConsulConfig.WatchLayout "scoped"): instead of the whole KV prefix
// and the whole service health, a node watches single keys, the ones whose change it must act
// on. This file holds the pure part, shared by the Consul driver and the simulator: which keys
// a node watches (Machine.WatchScope) and whom it must tell when a watch group changes
// (Pokes). docs/failover.md, "Consul load", describes the layout.
//
// Invariants:
//   - a node watches the key of every slice it holds, is acquiring (unsure), is the planner's
//     target of, or ranks among the first ScopeDepth eligible candidates of (its watch group);
//   - it watches the member key of every other member of those groups and of their holders,
//     and of the members of the groups it is the next entrant of (ranked ScopeDepth+1), so that
//     a whole group failing at once is seen by the node that enters it;
//   - when a group changes, its highest-ranked member that was in it before tells each entrant
//     (Pokes) which member keys to read; an entrant that knows nothing of the group yet then
//     reads them, recomputes its scope and watches the slice.

// MemberValue is the JSON value of a member key qslice/<cluster>/members/<node>, which the node
// holds with its session (both layouts write it): Consul releases it in the same write that
// ends the session, so a member is live exactly while its key is held and Out is empty.
type MemberValue struct {
	LiveSince   int64  `json:"live_since"` // Unix ms: when the node's current run of good health began
	Draining    bool   `json:"draining,omitempty"`
	Unavailable string `json:"unavailable,omitempty"` // queues it cannot work, comma-separated
	// Out says why the node must not count as live although its session holds: the service or
	// the node is in maintenance, or a node check fails (what the prefix layout reads from the
	// service's health).
	Out     string `json:"out,omitempty"`
	Version string `json:"version,omitempty"`
}

// Info is the member a member key shows; held: the key is locked by a session.
func (v MemberValue) Info(node string, held bool) MemberInfo {
	mi := MemberInfo{Node: node, Live: held && v.Out == "", Draining: v.Draining}
	if v.LiveSince > 0 {
		mi.LiveSince = time.UnixMilli(v.LiveSince)
	}
	for _, q := range strings.Split(v.Unavailable, ",") {
		if q != "" {
			if mi.Unavailable == nil {
				mi.Unavailable = map[string]bool{}
			}
			mi.Unavailable[q] = true
		}
	}
	return mi
}

// InboxValue is the JSON value of an inbox key qslice/<cluster>/inbox/<node>: the member keys
// peers asked the node to read (Pokes). Writers add to it with check-and-set; the node deletes
// it with check-and-set once it has read them.
type InboxValue struct {
	Read []string `json:"read"`
}

// ScopeDepth is how many candidates of a slice watch it: with three, two overlapping failures
// among a slice's candidates still leave one watcher that knows the slice, without waiting for
// a poke.
const ScopeDepth = 3

// WatchScope is what one node watches in the scoped layout.
type WatchScope struct {
	// Slices maps each watched slice to its watch group: its first ScopeDepth eligible
	// candidates (live, not draining, able to work the queue), home list first, then rendezvous
	// order, as the planner ranks them. A slice watched only because the node holds it or is
	// its target may have a group without the node.
	Slices map[SliceID][]string
	// Members are the member keys to watch (sorted, without the node itself): the other
	// members of the groups in Slices, their holders, and the members of the groups the node
	// would enter next.
	Members []string
}

// Equal reports whether two scopes watch the same keys with the same groups.
func (w WatchScope) Equal(o WatchScope) bool {
	if len(w.Slices) != len(o.Slices) || !slices.Equal(w.Members, o.Members) {
		return false
	}
	for s, g := range w.Slices {
		og, ok := o.Slices[s]
		if !ok || !slices.Equal(g, og) {
			return false
		}
	}
	return true
}

// scopeMember is an eligible member with its precomputed hash.
type scopeMember struct {
	node string
	hash uint64
	unav map[string]bool
}

// WatchScope computes the keys this node must watch now (see the package's scoped layout).
// It reads the Machine's members, last snapshot, plan and owned slices; the driver calls it
// after Ready and watches the difference. It costs milliseconds at a thousand nodes: the driver
// computes it again only when WatchScopeGen changed.
func (m *Machine) WatchScope() WatchScope {
	out, holders := m.computeScope()
	m.scopeHolders = holders
	return out
}

// computeScope is WatchScope without side effects: the scope, and the holders of its slices it
// read (which WatchScope records for WatchScopeGen).
func (m *Machine) computeScope() (WatchScope, map[SliceID]string) {
	var elig []scopeMember
	for _, mem := range m.members {
		if !mem.Live || mem.Draining || mem.Node == "" {
			continue
		}
		unav := mem.Unavailable
		if mem.Node == m.cfg.Self {
			if m.draining || m.stopping {
				continue
			}
			unav = m.unavailable
		}
		elig = append(elig, scopeMember{node: mem.Node, hash: stringHash(mem.Node), unav: unav})
	}
	slices.SortFunc(elig, func(a, b scopeMember) int { return strings.Compare(a.node, b.node) })
	elig = slices.CompactFunc(elig, func(a, b scopeMember) bool { return a.node == b.node })
	selfIdx := slices.IndexFunc(elig, func(e scopeMember) bool { return e.node == m.cfg.Self })

	out := WatchScope{Slices: map[SliceID][]string{}}
	standby := map[string]bool{} // members of the groups this node is the next entrant of
	watch := func(s SliceID, qi int) {
		if _, ok := out.Slices[s]; !ok {
			out.Slices[s] = group(m.cfg.Queues[qi], s, elig, ScopeDepth)
		}
	}
	qIndex := make(map[string]int, len(m.cfg.Queues))
	for qi, q := range m.cfg.Queues {
		qIndex[q.Name] = qi
		if selfIdx < 0 || elig[selfIdx].unav[q.Name] {
			continue
		}
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			switch {
			case ranksWithin(q, s, elig, selfIdx, ScopeDepth):
				watch(s, qi)
			case ranksWithin(q, s, elig, selfIdx, ScopeDepth+1):
				// The next entrant watches the group's member keys (not the slice): if the whole
				// group fails at once, no survivor is left to poke it, and it must see them go.
				for _, n := range group(q, s, elig, ScopeDepth) {
					standby[n] = true
				}
			}
		}
	}
	extra := func(s SliceID) {
		if qi, ok := qIndex[s.Queue]; ok && s.Index < m.cfg.Queues[qi].Slices {
			watch(s, qi)
		}
	}
	for s := range m.owned {
		extra(s)
	}
	for s := range m.releasing {
		extra(s)
	}
	for s := range m.unsure {
		extra(s)
	}
	for _, s := range m.plan.SelfTargets {
		extra(s)
	}
	nodes := standby
	holders := make(map[SliceID]string, len(out.Slices))
	for s, g := range out.Slices {
		for _, n := range g {
			nodes[n] = true
		}
		h := m.holder(s)
		holders[s] = h
		if h != "" {
			nodes[h] = true
		}
	}
	delete(nodes, m.cfg.Self)
	for n := range nodes {
		out.Members = append(out.Members, n)
	}
	slices.Sort(out.Members)
	return out, holders
}

// WatchScopeGen is a generation number (never 0) that changes whenever something WatchScope
// reads may have changed: the members' liveness, draining and queues, this node's draining,
// stopping and queues, the slices it holds, releases, is unsure of or is the plan's target of,
// and who holds the slices the last WatchScope watched. A tick, a lease renewal, a snapshot or
// a membership answer that changes none of these leaves it as it is.
//
// Invariant: while WatchScopeGen returns the value it returned when WatchScope was last
// computed, WatchScope returns an equal scope (TestWatchScopeGenCoversEveryChange, and the
// simulator checks it at every step). A driver keeps the generation it computed the scope at
// and computes it again only when it differs.
func (m *Machine) WatchScopeGen() uint64 { return m.scopeGen }

// scopeChanged: something WatchScope reads changed (or may have).
func (m *Machine) scopeChanged() { m.scopeGen++ }

// holder is the node holding s in the last snapshot ("" when free or unknown), as WatchScope
// reads it.
func (m *Machine) holder(s SliceID) string {
	if m.kv == nil {
		return ""
	}
	if e, ok := m.kv.Entries[s]; ok && e.Session != "" {
		return e.Value.Node
	}
	return ""
}

// scopeHoldersChanged reports whether the snapshot changed who holds a slice the last
// WatchScope watched (true before the first WatchScope: it read nothing yet).
func (m *Machine) scopeHoldersChanged() bool {
	if m.scopeHolders == nil {
		return true
	}
	for s, h := range m.scopeHolders {
		if m.holder(s) != h {
			return true
		}
	}
	return false
}

// scopeTargetsChanged records the slices the new plan targets at this node and reports whether
// they changed (the plan's clock moves them too: a hold-down ending).
func (m *Machine) scopeTargetsChanged() bool {
	if slices.Equal(m.plan.SelfTargets, m.scopeTargets) {
		return false
	}
	m.scopeTargets = append(m.scopeTargets[:0], m.plan.SelfTargets...)
	return true
}

// sameScopeMembers reports whether two membership answers agree on what WatchScope reads of
// them: each member's node, liveness, draining and unavailable queues, in order.
func sameScopeMembers(a, b []MemberInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Node != b[i].Node || a[i].Live != b[i].Live || a[i].Draining != b[i].Draining || !maps.Equal(a[i].Unavailable, b[i].Unavailable) {
			return false
		}
	}
	return true
}

// eligibleFor: m can take slices of queue q.
func (m *scopeMember) eligibleFor(q string) bool { return !m.unav[q] }

// ranksWithin reports whether elig[self] is among the first depth eligible candidates of s.
func ranksWithin(q QueueSpec, s SliceID, elig []scopeMember, self, depth int) bool {
	list := q.Home[s.Index]
	me := &elig[self]
	myPos := listPos(list, me.node)
	seed := sliceSeed(s)
	myW := mix64(seed ^ me.hash)
	before := 0
	for i := range elig {
		o := &elig[i]
		if i == self || !o.eligibleFor(q.Name) {
			continue
		}
		if rankedBefore(listPos(list, o.node), mix64(seed^o.hash), o.node, myPos, myW, me.node) {
			before++
			if before >= depth {
				return false
			}
		}
	}
	return true
}

// group returns the first depth eligible candidates of s, best first.
func group(q QueueSpec, s SliceID, elig []scopeMember, depth int) []string {
	list := q.Home[s.Index]
	seed := sliceSeed(s)
	type cand struct {
		pos  int
		w    uint64
		node string
	}
	var top []cand
	for i := range elig {
		o := &elig[i]
		if !o.eligibleFor(q.Name) {
			continue
		}
		c := cand{listPos(list, o.node), mix64(seed ^ o.hash), o.node}
		at := len(top)
		for at > 0 && rankedBefore(c.pos, c.w, c.node, top[at-1].pos, top[at-1].w, top[at-1].node) {
			at--
		}
		if at >= depth {
			continue
		}
		top = slices.Insert(top, at, c)
		if len(top) > depth {
			top = top[:depth]
		}
	}
	out := make([]string, len(top))
	for i, c := range top {
		out[i] = c.node
	}
	return out
}

// listPos is node's position in a home list, or len(list) when it is not listed.
func listPos(list []string, node string) int {
	for i, n := range list {
		if n == node {
			return i
		}
	}
	return len(list)
}

func rankedBefore(aPos int, aW uint64, aNode string, bPos int, bW uint64, bNode string) bool {
	if aPos != bPos {
		return aPos < bPos
	}
	if aW != bW {
		return aW > bW
	}
	return aNode < bNode
}

// Pokes says whom this node (self) must tell about a change of its watch groups from prev to
// next, and which member keys each must read: for each slice of next whose highest-ranked
// member that was already in the group before is self, every entrant (in next's group, not in
// prev's) learns of the members that left the group and of self. An empty prev is an
// announcement (self joined, came back, or its member key changed: undrained, a queue
// available again, a new live_since): self tells every node whose member key it watches (the
// members of its groups and the holders of its slices) about itself, since they may have
// stopped watching its member key. The answer maps node -> member keys to read, sorted.
func Pokes(self string, prev, next WatchScope) map[string][]string {
	out := map[string]map[string]bool{}
	add := func(to string, nodes ...string) {
		if to == self {
			return
		}
		if out[to] == nil {
			out[to] = map[string]bool{}
		}
		for _, n := range nodes {
			if n != to {
				out[to][n] = true
			}
		}
	}
	if len(prev.Slices) == 0 {
		// An announcement: every member key self watches belongs to a node that must know self
		// is here (its groups' members, the holders of its slices, who hand them back after the
		// hold-down, and the groups it would enter next).
		for _, n := range next.Members {
			add(n, self)
		}
	}
	for s, g := range next.Slices {
		old, watched := prev.Slices[s]
		if !watched {
			// A slice newly watched because self entered its group: its first survivor tells self
			// (below), and the others know self already. Only an announcement tells them.
			continue
		}
		first := ""
		for _, n := range g {
			if slices.Contains(old, n) {
				first = n
				break
			}
		}
		if first != self {
			continue
		}
		var left []string
		for _, n := range old {
			if !slices.Contains(g, n) {
				left = append(left, n)
			}
		}
		for _, n := range g {
			if !slices.Contains(old, n) {
				add(n, append(left, self)...)
			}
		}
	}
	res := make(map[string][]string, len(out))
	for to, ns := range out {
		if len(ns) == 0 {
			continue
		}
		l := make([]string, 0, len(ns))
		for n := range ns {
			l = append(l, n)
		}
		slices.Sort(l)
		res[to] = l
	}
	return res
}
