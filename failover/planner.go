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

// Planner computes the same plans as ComputePlan, and remembers the targets and homes of the
// last one: while the members and their state (settled, draining, unavailable queues) stay the
// same, a plan costs one pass over the slices instead of slices x members weight computations.
// Slices with an avoid list are always ranked afresh. A Planner is not safe for concurrent use.
type Planner struct {
	key    uint64 // fingerprint of the ranking inputs of the cached maps; 0: none
	target map[SliceID]string
	home   map[SliceID]string
}

// Plan decides, for Self, which slices to acquire and which to hand off.
func (pl *Planner) Plan(in PlanInput) Plan {
	r := newRanker(in)
	key := r.fingerprint()
	if key == 0 || key != pl.key || in.Weight != nil {
		pl.target, pl.home = map[SliceID]string{}, map[SliceID]string{}
		for _, q := range in.Queues {
			for i := 0; i < q.Slices; i++ {
				s := SliceID{q.Name, i}
				pl.target[s] = r.target(q, s, nil, "", "")
				pl.home[s] = r.home(q, s)
			}
		}
		pl.key = key
		if in.Weight != nil {
			pl.key = 0
		}
	}
	p := Plan{Target: pl.target, Home: pl.home}
	cloned := false
	for _, q := range in.Queues {
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			st := in.Slices[s]
			target := pl.target[s]
			if len(st.Avoid) > 0 || r.unsettled(st.Owner) {
				if t := r.target(q, s, st.Avoid, "", st.Owner); t != target {
					if !cloned {
						p.Target, cloned = maps.Clone(p.Target), true
					}
					p.Target[s], target = t, t
				}
			}
			switch {
			case st.Owner == in.Self:
				switch {
				case r.selfDraining:
					p.Release = append(p.Release, Move{Slice: s, From: in.Self, To: target, Reason: ReasonDrain})
				case in.SelfUnavailable[s.Queue]:
					p.Release = append(p.Release, Move{Slice: s, From: in.Self, To: target, Reason: ReasonUnavailable})
				case in.StuckHandoff && !st.CriticalSince.IsZero() && !in.Now.Before(st.CriticalSince.Add(in.StuckAfter)):
					if alt := r.target(q, s, st.Avoid, in.Self, ""); alt != "" && alt != in.Self {
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
	return p
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
}

type ranker struct {
	in           PlanInput
	members      []rankMember // sorted by node, deduplicated
	byNode       map[string]int
	selfDraining bool
}

func newRanker(in PlanInput) *ranker {
	r := &ranker{in: in, byNode: map[string]int{}}
	ms := slices.Clone(in.Members)
	slices.SortStableFunc(ms, func(a, b Member) int { return strings.Compare(a.Node, b.Node) })
	for _, m := range ms {
		if m.Node == "" || (len(r.members) > 0 && r.members[len(r.members)-1].Node == m.Node) {
			continue // first entry of a duplicated node wins
		}
		if m.Node == in.Self {
			m.Draining, m.Unavailable = in.SelfDraining, in.SelfUnavailable
		}
		settled := m.HealthySince.IsZero() || !in.Now.Before(m.HealthySince.Add(in.HoldDown))
		r.byNode[m.Node] = len(r.members)
		r.members = append(r.members, rankMember{Member: m, hash: stringHash(m.Node), settled: settled})
	}
	r.selfDraining = in.SelfDraining
	return r
}

func (r *ranker) weight(s SliceID, seed uint64, m *rankMember) uint64 {
	if r.in.Weight != nil {
		return r.in.Weight(s, m.Node)
	}
	return mix64(seed ^ m.hash)
}

// fingerprint hashes what the rankings depend on besides the slice: every member with its
// settled, draining and unavailable state. Never 0.
func (r *ranker) fingerprint() uint64 {
	h := uint64(0x6a09e667f3bcc909)
	for i := range r.members {
		m := &r.members[i]
		f := m.hash
		if m.settled {
			f ^= 1
		}
		if m.Draining {
			f ^= 2
		}
		for q, u := range m.Unavailable {
			if u {
				f ^= mix64(stringHash(q)) // order-independent
			}
		}
		h = mix64(h ^ f)
	}
	return h | 1
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
	queue       string
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
	if m.Draining || m.Unavailable[f.queue] || m.Node == f.exclude || (f.settledOnly && !m.settled && m.Node != f.holder) {
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

// target picks the owner of s among live, non-draining members, honouring avoidance, hold-down
// and the home list. exclude, when set, is treated as avoided too.
//
// holder is the node holding s ("" when free). While some candidate is settled, the holder
// competes as if settled too: the hold-down keeps slices from a node that comes back, it must
// not push a slice away from the node that holds it. A holder that is not settled is one whose
// lease lapsed and came back with its session (a Consul restart or leader election, a short
// partition, a pause: its live_since restarts); without this rule it would hand its own slices
// to the first settled peer and take them back a hold-down later, two moves per slice for a
// fault that needed none.
func (r *ranker) target(q QueueSpec, s SliceID, avoid []Avoid, exclude, holder string) string {
	f := filter{queue: s.Queue, avoid: avoid, exclude: exclude, holder: holder}
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
			return r.best(q, s, &f)
		}
	}
	return ""
}

// home is where s belongs when everyone is up: the head of its home list, else the best
// non-draining member regardless of hold-down.
func (r *ranker) home(q QueueSpec, s SliceID) string {
	if h := q.Home[s.Index]; len(h) > 0 {
		return h[0]
	}
	return r.best(q, s, &filter{homeOnly: true})
}

// best is the first candidate of the slice's home list, else the candidate with the highest
// weight (members are sorted by node: on equal weight the smaller ID stays).
func (r *ranker) best(q QueueSpec, s SliceID, f *filter) string {
	for _, n := range q.Home[s.Index] {
		if i, ok := r.byNode[n]; ok && r.candidate(&r.members[i], f) {
			return n
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
		return ""
	}
	return best.Node
}

// Rendezvous is the highest-random-weight score of node for slice s. Every node computes the
// same scores, so every node agrees on the ranking given the same members.
func Rendezvous(s SliceID, node string) uint64 { return mix64(sliceSeed(s) ^ stringHash(node)) }

func sliceSeed(s SliceID) uint64 {
	return mix64(stringHash(s.Queue) ^ mix64(uint64(s.Index)+0x9e3779b97f4a7c15))
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
