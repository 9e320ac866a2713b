package failover

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func members(nodes ...string) []Member {
	ms := make([]Member, len(nodes))
	for i, n := range nodes {
		ms[i] = Member{Node: n}
	}
	return ms
}

func moves(ms []Move) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.String()
	}
	return out
}

// constWeight makes every node tie.
func constWeight(SliceID, string) uint64 { return 7 }

// tableWeight ranks nodes by a per-slice preference order: first is best.
func tableWeight(pref map[int][]string) func(SliceID, string) uint64 {
	return func(s SliceID, node string) uint64 {
		i := slices.Index(pref[s.Index], node)
		if i < 0 {
			return 0
		}
		return uint64(100 - i)
	}
}

func TestComputePlanTable(t *testing.T) {
	q2 := []QueueSpec{{Name: "out", Slices: 2}}
	pref := tableWeight(map[int][]string{0: {"a", "b", "c"}, 1: {"b", "a", "c"}})
	cases := []struct {
		name        string
		in          PlanInput
		acquire     []string
		release     []string
		targets     map[string]string // "out/0" -> node; omitted slices unchecked
		homes       map[string]string
		wantNoMoves bool
	}{
		{
			name:        "empty cluster: nobody is a target",
			in:          PlanInput{Self: "a", Queues: q2},
			targets:     map[string]string{"out/0": "", "out/1": ""},
			wantNoMoves: true,
		},
		{
			name:    "one node takes every free slice",
			in:      PlanInput{Self: "a", Queues: q2, Members: members("a")},
			acquire: []string{"out/0 -->a (acquired)", "out/1 -->a (acquired)"},
		},
		{
			name:        "a node that is not live takes nothing",
			in:          PlanInput{Self: "a", Queues: q2, Members: members("b"), Weight: pref},
			targets:     map[string]string{"out/0": "b", "out/1": "b"},
			wantNoMoves: true,
		},
		{
			name:    "ties go to the smaller node ID",
			in:      PlanInput{Self: "a", Queues: q2, Members: members("c", "a", "b"), Weight: constWeight},
			acquire: []string{"out/0 -->a (acquired)", "out/1 -->a (acquired)"},
			targets: map[string]string{"out/0": "a", "out/1": "a"},
		},
		{
			name:    "ties seen from another node: it takes nothing",
			in:      PlanInput{Self: "b", Queues: q2, Members: members("c", "a", "b"), Weight: constWeight},
			targets: map[string]string{"out/0": "a", "out/1": "a"}, wantNoMoves: true,
		},
		{
			name:    "duplicate member entries count once",
			in:      PlanInput{Self: "a", Queues: q2, Members: append(members("a", "b"), Member{Node: "a", Draining: true}), Weight: pref},
			acquire: []string{"out/0 -->a (acquired)"},
		},
		{
			name:    "each node takes only its own rank-1 slices",
			in:      PlanInput{Self: "b", Queues: q2, Members: members("a", "b", "c"), Weight: pref},
			acquire: []string{"out/1 -->b (acquired)"},
			targets: map[string]string{"out/0": "a", "out/1": "b"},
		},
		{
			name: "a slice held by another node is never taken, even when self is the target",
			in: PlanInput{Self: "b", Queues: q2, Members: members("a", "b"), Weight: pref,
				Slices: map[SliceID]SliceState{{"out", 1}: {Owner: "a"}}},
			wantNoMoves: true,
		},
		{
			name: "node leaves: its free slice goes to the next in rank, as a failover",
			in: PlanInput{Self: "a", Queues: q2, Members: members("a", "c"), Weight: pref,
				Slices: map[SliceID]SliceState{{"out", 0}: {Owner: "a"}, {"out", 1}: {Prev: "b"}}},
			acquire: []string{"out/1 b->a (failover)"},
		},
		{
			name: "node comes back after hold-down: the backup hands its slice back",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, HoldDown: 10 * time.Second, Weight: pref,
				Members: []Member{{Node: "a"}, {Node: "b", HealthySince: t0.Add(-10 * time.Second)}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Owner: "a"}, {"out", 1}: {Owner: "a"}}},
			release: []string{"out/1 a->b (failback)"},
		},
		{
			name: "node back for less than hold-down: nothing moves",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, HoldDown: 10 * time.Second, Weight: pref,
				Members: []Member{{Node: "a"}, {Node: "b", HealthySince: t0.Add(-9 * time.Second)}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Owner: "a"}, {"out", 1}: {Owner: "a"}}},
			targets:     map[string]string{"out/1": "a"},
			homes:       map[string]string{"out/0": "a", "out/1": "b"},
			wantNoMoves: true,
		},
		{
			name: "returning home node takes the slice the backup released, as a failback",
			in: PlanInput{Self: "b", Queues: q2, Now: t0, HoldDown: 10 * time.Second, Weight: pref,
				Members: []Member{{Node: "a"}, {Node: "b", HealthySince: t0.Add(-10 * time.Second)}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Owner: "a"}, {"out", 1}: {Prev: "a", PrevReason: ReasonFailback}}},
			acquire: []string{"out/1 a->b (failback)"},
		},
		{
			name: "holder not settled (its lease lapsed, session kept) keeps its slice against settled peers",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, HoldDown: 10 * time.Second, Weight: pref,
				Members: []Member{{Node: "a", HealthySince: t0.Add(-time.Second)}, {Node: "b"}, {Node: "c"}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Owner: "a"}, {"out", 1}: {Owner: "b"}}},
			targets:     map[string]string{"out/0": "a", "out/1": "b"},
			wantNoMoves: true,
		},
		{
			name: "holder not settled hands a slice to a settled node that outranks it",
			in: PlanInput{Self: "b", Queues: q2, Now: t0, HoldDown: 10 * time.Second, Weight: pref,
				Members: []Member{{Node: "a"}, {Node: "b", HealthySince: t0.Add(-time.Second)}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Owner: "b"}, {"out", 1}: {Owner: "b"}}},
			release: []string{"out/0 b->a (failback)"},
			targets: map[string]string{"out/0": "a", "out/1": "b"},
		},
		{
			name: "a free slice still waits for the hold-down of its home node",
			in: PlanInput{Self: "b", Queues: q2, Now: t0, HoldDown: 10 * time.Second, Weight: pref,
				Members: []Member{{Node: "a", HealthySince: t0.Add(-time.Second)}, {Node: "b"}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Prev: "a"}, {"out", 1}: {Owner: "b"}}},
			acquire: []string{"out/0 a->b (failover)"},
			targets: map[string]string{"out/0": "b"},
		},
		{
			name: "cluster boot: the first node up hands the others their share at once",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, HoldDown: time.Minute, Weight: pref,
				Members: []Member{{Node: "a", HealthySince: t0}, {Node: "b", HealthySince: t0}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Owner: "a"}, {"out", 1}: {Owner: "a"}}},
			release: []string{"out/1 a->b (failback)"},
		},
		{
			name: "cluster boot: nobody settled yet, everyone takes its share",
			in: PlanInput{Self: "b", Queues: q2, Now: t0, HoldDown: time.Minute, Weight: pref,
				Members: []Member{{Node: "a", HealthySince: t0}, {Node: "b", HealthySince: t0}}},
			acquire: []string{"out/1 -->b (acquired)"},
		},
		{
			name: "home list overrides the hash",
			in: PlanInput{Self: "c", Queues: []QueueSpec{{Name: "out", Slices: 2, Home: map[int][]string{0: {"c", "a"}}}},
				Members: members("a", "b", "c"), Weight: pref},
			acquire: []string{"out/0 -->c (acquired)"},
			targets: map[string]string{"out/0": "c", "out/1": "b"},
			homes:   map[string]string{"out/0": "c", "out/1": "b"},
		},
		{
			name: "home list: first home is down, the second takes it",
			in: PlanInput{Self: "a", Queues: []QueueSpec{{Name: "out", Slices: 2, Home: map[int][]string{1: {"c", "a"}}}},
				Members: members("a", "b"), Weight: pref},
			acquire: []string{"out/0 -->a (acquired)", "out/1 -->a (acquired)"},
			homes:   map[string]string{"out/1": "c"},
		},
		{
			name: "home list: every home down, the hash decides among the others",
			in: PlanInput{Self: "b", Queues: []QueueSpec{{Name: "out", Slices: 2, Home: map[int][]string{0: {"x", "y"}}}},
				Members: members("b", "c"), Weight: pref},
			acquire: []string{"out/0 -->b (acquired)", "out/1 -->b (acquired)"},
		},
		{
			name: "home list: home back but not settled, the settled backup keeps it",
			in: PlanInput{Self: "a", Now: t0, HoldDown: time.Minute, Weight: pref,
				Queues:  []QueueSpec{{Name: "out", Slices: 1, Home: map[int][]string{0: {"c"}}}},
				Members: []Member{{Node: "a"}, {Node: "c", HealthySince: t0.Add(-time.Second)}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Owner: "a"}}},
			targets: map[string]string{"out/0": "a"}, homes: map[string]string{"out/0": "c"},
			wantNoMoves: true,
		},
		{
			name: "draining self hands every slice off, even with nobody to take it",
			in: PlanInput{Self: "a", Queues: q2, Members: members("a"), SelfDraining: true, Weight: pref,
				Slices: map[SliceID]SliceState{{"out", 0}: {Owner: "a"}, {"out", 1}: {Owner: "a"}}},
			release: []string{"out/0 a->- (drain)", "out/1 a->- (drain)"},
		},
		{
			name: "draining self names the next owner",
			in: PlanInput{Self: "a", Queues: q2, Members: members("a", "b", "c"), SelfDraining: true, Weight: pref,
				Slices: map[SliceID]SliceState{{"out", 0}: {Owner: "a"}}},
			release: []string{"out/0 a->b (drain)"},
		},
		{
			name: "draining self takes nothing",
			in:   PlanInput{Self: "a", Queues: q2, Members: members("a"), SelfDraining: true}, wantNoMoves: true,
		},
		{
			name: "a drained peer is not a candidate; its released slice comes here as drain",
			in: PlanInput{Self: "b", Queues: q2, Weight: pref,
				Members: []Member{{Node: "a", Draining: true}, {Node: "b"}},
				Slices:  map[SliceID]SliceState{{"out", 0}: {Prev: "a", PrevReason: ReasonDrain}, {"out", 1}: {Owner: "b"}}},
			acquire: []string{"out/0 a->b (drain)"},
		},
		{
			name: "stuck slice handed to the next node",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, Members: members("a", "b"), Weight: pref,
				StuckHandoff: true, StuckAfter: time.Minute,
				Slices: map[SliceID]SliceState{{"out", 0}: {Owner: "a", CriticalSince: t0.Add(-time.Minute)}}},
			release: []string{"out/0 a->b (stuck)"},
		},
		{
			name: "critical for less than StuckAfter: kept",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, Members: members("a", "b"), Weight: pref,
				StuckHandoff: true, StuckAfter: time.Minute,
				Slices: map[SliceID]SliceState{{"out", 0}: {Owner: "a", CriticalSince: t0.Add(-59 * time.Second)}}},
			wantNoMoves: true, acquire: nil,
		},
		{
			name: "stuck hand-off disabled: kept",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, Members: members("a", "b"), Weight: pref,
				StuckAfter: time.Minute,
				Slices:     map[SliceID]SliceState{{"out", 0}: {Owner: "a", CriticalSince: t0.Add(-time.Hour)}}},
			wantNoMoves: true,
		},
		{
			name: "stuck with nobody else: kept",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, Members: members("a"), Weight: pref,
				StuckHandoff: true, StuckAfter: time.Minute,
				Slices: map[SliceID]SliceState{{"out", 0}: {Owner: "a", CriticalSince: t0.Add(-time.Hour)}, {"out", 1}: {Owner: "a"}}},
			wantNoMoves: true,
		},
		{
			name: "the next node takes a stuck slice and the avoided node does not get it back",
			in: PlanInput{Self: "b", Queues: q2, Now: t0, Members: members("a", "b"), Weight: pref,
				Slices: map[SliceID]SliceState{
					{"out", 0}: {Prev: "a", PrevReason: ReasonStuck, Avoid: []Avoid{{Node: "a", Until: t0.Add(time.Second)}}},
					{"out", 1}: {Owner: "b"}}},
			acquire: []string{"out/0 a->b (stuck)"},
			targets: map[string]string{"out/0": "b"},
		},
		{
			name: "expired avoidance: the slice goes home again",
			in: PlanInput{Self: "b", Queues: q2, Now: t0, Members: members("a", "b"), Weight: pref,
				Slices: map[SliceID]SliceState{
					{"out", 0}: {Owner: "b", Avoid: []Avoid{{Node: "a", Until: t0}}},
					{"out", 1}: {Owner: "b"}}},
			release: []string{"out/0 b->a (failback)"},
		},
		{
			name: "every candidate avoided: avoidance ignored",
			in: PlanInput{Self: "a", Queues: q2, Now: t0, Members: members("a"), Weight: pref,
				Slices: map[SliceID]SliceState{{"out", 0}: {Prev: "a", PrevReason: ReasonStuck, Avoid: []Avoid{{Node: "a", Until: t0.Add(time.Hour)}}},
					{"out", 1}: {Owner: "a"}}},
			acquire: []string{"out/0 a->a (acquired)"},
		},
		{
			name: "self re-takes a slice it lost: acquired, not failover",
			in: PlanInput{Self: "a", Queues: q2, Members: members("a"), Weight: pref,
				Slices: map[SliceID]SliceState{{"out", 0}: {Prev: "a"}, {"out", 1}: {Owner: "a"}}},
			acquire: []string{"out/0 a->a (acquired)"},
		},
		{
			name: "slice released on shutdown comes here as released",
			in: PlanInput{Self: "a", Queues: q2, Members: members("a"), Weight: pref,
				Slices: map[SliceID]SliceState{{"out", 0}: {Prev: "b", PrevReason: ReasonReleased}, {"out", 1}: {Owner: "a"}}},
			acquire: []string{"out/0 b->a (released)"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := ComputePlan(tc.in)
			if tc.wantNoMoves && (len(p.Acquire) > 0 || len(p.Release) > 0) {
				t.Fatalf("want no moves, got acquire %v release %v", moves(p.Acquire), moves(p.Release))
			}
			if !tc.wantNoMoves {
				if got := moves(p.Acquire); !reflect.DeepEqual(got, nonNil(tc.acquire)) {
					t.Errorf("acquire = %q, want %q", got, tc.acquire)
				}
				if got := moves(p.Release); !reflect.DeepEqual(got, nonNil(tc.release)) {
					t.Errorf("release = %q, want %q", got, tc.release)
				}
			}
			for s, want := range tc.targets {
				if got := p.Target[parseSliceID(t, s)]; got != want {
					t.Errorf("target[%s] = %q, want %q", s, got, want)
				}
			}
			for s, want := range tc.homes {
				if got := p.Home[parseSliceID(t, s)]; got != want {
					t.Errorf("home[%s] = %q, want %q", s, got, want)
				}
			}
		})
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func parseSliceID(t *testing.T, s string) SliceID {
	t.Helper()
	var id SliceID
	q, i, _ := strings.Cut(s, "/")
	id.Queue = q
	if _, err := fmt.Sscan(i, &id.Index); err != nil {
		t.Fatalf("bad slice %q", s)
	}
	return id
}

// cluster simulates nodes that each run ComputePlan on a shared view and act on it, with
// releases applied before acquisitions and locks granted to the first taker.
type cluster struct {
	queues   []QueueSpec
	holdDown time.Duration
	now      time.Time
	live     map[string]time.Time // node -> healthy since (zero: settled)
	draining map[string]bool
	unavail  map[string]map[string]bool // node -> queues it cannot work
	state    map[SliceID]SliceState
	changes  int // ownership changes so far
}

func newCluster(queues []QueueSpec, holdDown time.Duration, nodes ...string) *cluster {
	c := &cluster{queues: queues, holdDown: holdDown, now: t0, live: map[string]time.Time{},
		draining: map[string]bool{}, unavail: map[string]map[string]bool{}, state: map[SliceID]SliceState{}}
	for _, n := range nodes {
		c.live[n] = time.Time{}
	}
	return c
}

func (c *cluster) members() []Member {
	var ms []Member
	for n, since := range c.live {
		ms = append(ms, Member{Node: n, HealthySince: since, Draining: c.draining[n], Unavailable: c.unavail[n]})
	}
	return ms
}

// kill makes a node die: its locks are lost (session invalidated).
func (c *cluster) kill(n string) {
	delete(c.live, n)
	for s, st := range c.state {
		if st.Owner == n {
			c.state[s] = SliceState{Prev: n, Avoid: st.Avoid}
			c.changes++
		}
	}
}

func (c *cluster) revive(n string) { c.live[n] = c.now }

// settle runs planning rounds until nothing moves (at most 10).
func (c *cluster) settle(t *testing.T) {
	t.Helper()
	for round := 0; round < 10; round++ {
		moved := false
		nodes := make([]string, 0, len(c.live))
		for n := range c.live {
			nodes = append(nodes, n)
		}
		slices.Sort(nodes)
		for _, n := range nodes {
			p := ComputePlan(PlanInput{Self: n, Now: c.now, HoldDown: c.holdDown, SelfDraining: c.draining[n], SelfUnavailable: c.unavail[n],
				Queues: c.queues, Members: c.members(), Slices: c.state})
			for _, m := range p.Release {
				c.state[m.Slice] = SliceState{Prev: n, PrevReason: m.Reason}
				moved = true
				c.changes++
			}
			for _, m := range p.Acquire {
				if c.state[m.Slice].Owner == "" {
					st := c.state[m.Slice]
					c.state[m.Slice] = SliceState{Owner: n, Avoid: st.Avoid}
					moved = true
					c.changes++
				}
			}
		}
		if !moved {
			return
		}
	}
	t.Fatalf("cluster did not settle in 10 rounds")
}

func (c *cluster) owners() map[string][]SliceID {
	out := map[string][]SliceID{}
	for _, q := range c.queues {
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			out[c.state[s].Owner] = append(out[c.state[s].Owner], s)
		}
	}
	return out
}

func TestPlannerSpreadOverSurvivors(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 64}, {Name: "in", Slices: 64}}
	c := newCluster(qs, time.Minute, "a", "b", "c", "d")
	c.settle(t)
	before := c.owners()
	if len(before[""]) != 0 {
		t.Fatalf("unowned slices after settle: %v", before[""])
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		if len(before[n]) < 128/4/2 {
			t.Errorf("node %s owns only %d of 128 slices: rendezvous spread is poor", n, len(before[n]))
		}
	}
	lost := before["b"]
	c.kill("b")
	c.settle(t)
	after := c.owners()
	if len(after[""]) != 0 {
		t.Fatalf("unowned slices after failover: %v", after[""])
	}
	got := map[string]int{}
	for _, s := range lost {
		got[c.state[s].Owner]++
	}
	for _, n := range []string{"a", "c", "d"} {
		if got[n] < len(lost)/6 {
			t.Errorf("survivor %s got %d of b's %d slices: piled on the others (%v)", n, got[n], len(lost), got)
		}
		// Minimal disruption: survivors keep what they had.
		for _, s := range before[n] {
			if c.state[s].Owner != n {
				t.Errorf("slice %s moved from surviving node %s to %s", s, n, c.state[s].Owner)
			}
		}
	}
}

func TestPlannerJoinAfterHoldDownTakesItsShareOnly(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 64}}
	c := newCluster(qs, time.Minute, "a", "b")
	c.settle(t)
	before := c.owners()
	c.revive("c") // joins now
	c.settle(t)
	if n := len(c.owners()["c"]); n != 0 {
		t.Fatalf("new node got %d slices before hold-down", n)
	}
	c.now = c.now.Add(time.Minute)
	c.settle(t)
	after := c.owners()
	if len(after["c"]) < 64/3/2 {
		t.Fatalf("new node got only %d slices after hold-down", len(after["c"]))
	}
	for _, n := range []string{"a", "b"} {
		for _, s := range after[n] {
			if !slices.Contains(before[n], s) {
				t.Errorf("slice %s moved to %s, not to the newcomer", s, n)
			}
		}
	}
}

func TestPlannerFailBackAfterHoldDown(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 32}}
	c := newCluster(qs, time.Minute, "a", "b", "c")
	c.settle(t)
	home := c.owners()["a"]
	c.kill("a")
	c.settle(t)
	c.now = c.now.Add(time.Minute)
	c.revive("a")
	c.now = c.now.Add(59 * time.Second)
	c.settle(t)
	if n := len(c.owners()["a"]); n != 0 {
		t.Fatalf("a got %d slices back before hold-down", n)
	}
	c.now = c.now.Add(time.Second)
	c.settle(t)
	if got := c.owners()["a"]; !reflect.DeepEqual(got, home) {
		t.Fatalf("after hold-down a owns %v, want its home slices %v", got, home)
	}
}

func TestPlannerBouncingNodeDoesNotFlap(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 64}}
	c := newCluster(qs, time.Minute, "a", "b", "c")
	c.settle(t)
	c.kill("c")
	c.settle(t)
	stable := c.owners()
	changes := c.changes
	// c comes back for 50 s, then fails for 10 s, twenty times: never healthy for a hold-down.
	for i := 0; i < 20; i++ {
		c.revive("c")
		for j := 0; j < 5; j++ {
			c.now = c.now.Add(10 * time.Second)
			c.settle(t)
		}
		c.kill("c")
		c.now = c.now.Add(10 * time.Second)
		c.settle(t)
	}
	if c.changes != changes {
		t.Fatalf("%d ownership changes while c bounced; want none", c.changes-changes)
	}
	if got := c.owners(); !reflect.DeepEqual(got, stable) {
		t.Fatalf("ownership changed while c bounced")
	}
	// Once c stays up for the hold-down, it gets its slices back, in one move each.
	c.revive("c")
	c.now = c.now.Add(time.Minute)
	c.settle(t)
	if len(c.owners()["c"]) == 0 {
		t.Fatalf("c got nothing back after a full hold-down")
	}
}

// A Consul restart (or leader election, or a short cut) lapses every lease while the sessions
// survive; each node restarts its live_since, a few hundred milliseconds apart. Nothing may move:
// not when the first of them is settled again, nor when the others follow.
func TestPlannerLapsedLeasesWithSessionsKeptMoveNothing(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 64}}
	c := newCluster(qs, time.Minute, "a", "b", "c", "d")
	c.settle(t)
	stable := c.owners()
	changes := c.changes
	for i, n := range []string{"a", "b", "c", "d"} {
		c.live[n] = c.now.Add(time.Duration(i) * 300 * time.Millisecond)
	}
	for step := 0; step < 70; step++ { // through the hold-down of every node, 100 ms at a time
		c.now = c.now.Add(100 * time.Millisecond)
		c.settle(t)
	}
	if c.changes != changes {
		t.Fatalf("%d ownership changes after the leases lapsed with sessions kept; want none", c.changes-changes)
	}
	if got := c.owners(); !reflect.DeepEqual(got, stable) {
		t.Fatalf("ownership changed: %v, want %v", got, stable)
	}
	// One node alone lapsing (a short partition of it) moves nothing either.
	c.live["b"] = c.now
	for step := 0; step < 70; step++ {
		c.now = c.now.Add(time.Second)
		c.settle(t)
	}
	if c.changes != changes {
		t.Fatalf("%d ownership changes after b's lease lapsed with its session kept; want none", c.changes-changes)
	}
}

func TestPlannerDrainMovesEverythingAndTakesNone(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 16}, {Name: "in", Slices: 16}}
	c := newCluster(qs, time.Minute, "a", "b", "c")
	c.settle(t)
	c.draining["b"] = true
	c.settle(t)
	own := c.owners()
	if len(own["b"]) != 0 || len(own[""]) != 0 {
		t.Fatalf("after drain b owns %d and %d are unowned", len(own["b"]), len(own[""]))
	}
	c.kill("a") // even when a dies, drained b takes none of a's slices
	c.settle(t)
	if own := c.owners(); len(own["b"]) != 0 || len(own["c"]) != 32 {
		t.Fatalf("after a died: b owns %d, c owns %d", len(own["b"]), len(own["c"]))
	}
	delete(c.draining, "b")
	c.settle(t)
	if len(c.owners()["b"]) == 0 {
		t.Fatalf("undrained b got nothing back")
	}
}

// A node whose filesystem of one queue does not answer hands that queue's slices off at once and
// takes none of them (even from a dying node), keeps its other queues, and gets its share back
// once the queue is available again. When no node can work a queue, its slices stay free.
func TestPlannerUnavailableQueue(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 16}, {Name: "in", Slices: 16}}
	c := newCluster(qs, time.Minute, "a", "b", "c")
	c.settle(t)
	inBefore := 0
	for _, s := range c.owners()["b"] {
		if s.Queue == "in" {
			inBefore++
		}
	}
	c.unavail["b"] = map[string]bool{"out": true}
	c.settle(t)
	countB := func() (out, in int) {
		for _, s := range c.owners()["b"] {
			if s.Queue == "out" {
				out++
			} else {
				in++
			}
		}
		return
	}
	if out, in := countB(); out != 0 || in != inBefore || len(c.owners()[""]) != 0 {
		t.Fatalf("b unavailable for out: b owns %d out and %d in (had %d in), %d unowned", out, in, inBefore, len(c.owners()[""]))
	}
	for s, st := range c.state {
		if s.Queue == "out" && st.Owner == "" {
			t.Fatalf("slice %s unowned", s)
		}
	}
	c.kill("a")
	c.settle(t)
	if out, _ := countB(); out != 0 {
		t.Fatalf("b took %d out slices of the dead a while out is unavailable there", out)
	}
	delete(c.unavail, "b")
	c.settle(t)
	if out, _ := countB(); out == 0 {
		t.Fatalf("b got no out slice back once out was available again")
	}
	c.unavail["b"] = map[string]bool{"out": true}
	c.unavail["c"] = map[string]bool{"out": true}
	c.settle(t)
	for _, q := range []string{"out", "in"} {
		for i := 0; i < 16; i++ {
			st := c.state[SliceID{q, i}]
			if q == "out" && st.Owner != "" {
				t.Fatalf("nobody can work out, yet %s/%d is owned by %s", q, i, st.Owner)
			}
			if q == "in" && st.Owner == "" {
				t.Fatalf("in/%d unowned although in is available everywhere", i)
			}
		}
	}
	p := ComputePlan(PlanInput{Self: "b", Now: c.now, Queues: qs, Members: c.members(), SelfUnavailable: map[string]bool{"out": true},
		Slices: map[SliceID]SliceState{{"out", 0}: {Owner: "b"}}})
	if len(p.Release) != 1 || p.Release[0].Reason != ReasonUnavailable {
		t.Fatalf("release of an unavailable queue's slice: %v, want one with reason %s", moves(p.Release), ReasonUnavailable)
	}
}

func TestPlannerStuckHandoffDoesNotPingPong(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 1}}
	s := SliceID{"out", 0}
	for _, owner := range []string{"a", "b"} {
		other := map[string]string{"a": "b", "b": "a"}[owner]
		in := PlanInput{Self: owner, Now: t0, Queues: qs, Members: members("a", "b"), StuckHandoff: true, StuckAfter: time.Second,
			Slices: map[SliceID]SliceState{s: {Owner: owner, CriticalSince: t0.Add(-time.Second)}}}
		p := ComputePlan(in)
		if len(p.Release) != 1 || p.Release[0].To != other {
			t.Fatalf("owner %s: release = %v, want to %s", owner, moves(p.Release), other)
		}
		// The new owner sees the avoid entry the old one left and keeps the slice.
		in2 := PlanInput{Self: other, Now: t0, Queues: qs, Members: members("a", "b"),
			Slices: map[SliceID]SliceState{s: {Owner: other, Avoid: []Avoid{{Node: owner, Until: t0.Add(time.Minute)}}}}}
		if p := ComputePlan(in2); len(p.Release) != 0 {
			t.Fatalf("new owner %s hands the stuck slice back: %v", other, moves(p.Release))
		}
		// And the old owner does not try to take it back.
		in3 := PlanInput{Self: owner, Now: t0, Queues: qs, Members: members("a", "b"),
			Slices: map[SliceID]SliceState{s: {Prev: other, Avoid: []Avoid{{Node: owner, Until: t0.Add(time.Minute)}}}}}
		if p := ComputePlan(in3); len(p.Acquire) != 0 {
			t.Fatalf("avoided node %s re-acquires: %v", owner, moves(p.Acquire))
		}
	}
}

func TestRendezvousDistribution(t *testing.T) {
	nodes := []string{"mx1", "mx2", "mx3", "mx4", "mx5"}
	count := map[string]int{}
	p := ComputePlan(PlanInput{Members: members(nodes...), Queues: []QueueSpec{{Name: "out", Slices: 1000}}})
	for i := 0; i < 1000; i++ {
		count[p.Target[SliceID{"out", i}]]++
	}
	for _, n := range nodes {
		if count[n] < 150 || count[n] > 250 {
			t.Errorf("node %s ranks first for %d of 1000 slices, want 150..250: %v", n, count[n], count)
		}
	}
	if Rendezvous(SliceID{"out", 1}, "a") == Rendezvous(SliceID{"out", 1}, "b") ||
		Rendezvous(SliceID{"out", 1}, "a") == Rendezvous(SliceID{"in", 1}, "a") {
		t.Fatal("rendezvous weights collide on trivially different inputs")
	}
}

func TestFormatParseRanges(t *testing.T) {
	cases := []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{0}, "0"},
		{[]int{0, 1, 2, 3, 7}, "0-3,7"},
		{[]int{7, 3, 2, 1, 0, 3}, "0-3,7"},
		{[]int{1, 3, 5}, "1,3,5"},
		{[]int{10, 11, 63}, "10-11,63"},
	}
	for _, c := range cases {
		got := FormatRanges(c.in)
		if got != c.want {
			t.Errorf("FormatRanges(%v) = %q, want %q", c.in, got, c.want)
		}
		back, err := ParseRanges(got)
		if err != nil {
			t.Fatal(err)
		}
		want := slices.Compact(slices.Sorted(slices.Values(c.in)))
		if len(want) == 0 {
			want = nil
		}
		if !reflect.DeepEqual(back, want) {
			t.Errorf("ParseRanges(%q) = %v, want %v", got, back, want)
		}
	}
	for _, bad := range []string{"x", "3-1", "1,,2", "-1"} {
		if _, err := ParseRanges(bad); err == nil {
			t.Errorf("ParseRanges(%q) accepted", bad)
		}
	}
}

func BenchmarkComputePlan50x8x64(b *testing.B) {
	var qs []QueueSpec
	for i := 0; i < 8; i++ {
		qs = append(qs, QueueSpec{Name: fmt.Sprintf("q%d", i), Slices: 64})
	}
	var ms []Member
	for i := 0; i < 50; i++ {
		ms = append(ms, Member{Node: fmt.Sprintf("node%02d", i)})
	}
	state := map[SliceID]SliceState{}
	for _, q := range qs {
		for i := 0; i < q.Slices; i++ {
			state[SliceID{q.Name, i}] = SliceState{Owner: ms[i%50].Node}
		}
	}
	in := PlanInput{Self: "node07", Now: t0, HoldDown: time.Minute, Queues: qs, Members: ms, Slices: state}
	b.ReportAllocs()
	for b.Loop() {
		ComputePlan(in)
	}
}

// TestPlannerCacheMatchesComputePlan: a Planner that reuses its rankings gives the same plan as a
// fresh computation, across changing members, settledness, avoid lists and ownership.
func TestPlannerCacheMatchesComputePlan(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	queues := []QueueSpec{{Name: "in", Slices: 16, Home: map[int][]string{3: {"n2", "n1"}}}, {Name: "out", Slices: 8}}
	var pl Planner
	nodes := []string{"n1", "n2", "n3", "n4", "n5"}
	for step := 0; step < 300; step++ {
		now := t0.Add(time.Duration(step) * 700 * time.Millisecond)
		var ms []Member
		for _, n := range nodes {
			if rng.IntN(5) == 0 && step%7 == 0 {
				continue // a member missing now and then
			}
			m := Member{Node: n, HealthySince: t0.Add(time.Duration(rng.IntN(4)) * 20 * time.Second)}
			if rng.IntN(20) == 0 {
				m.Draining = true
			}
			if rng.IntN(25) == 0 {
				m.Unavailable = map[string]bool{"out": true}
			}
			ms = append(ms, m)
		}
		sl := map[SliceID]SliceState{}
		for _, q := range queues {
			for i := 0; i < q.Slices; i++ {
				st := SliceState{}
				switch rng.IntN(4) {
				case 0:
					st.Owner = nodes[rng.IntN(len(nodes))]
				case 1:
					st.Prev, st.PrevReason = nodes[rng.IntN(len(nodes))], ReasonFailback
				}
				if rng.IntN(10) == 0 {
					st.Avoid = []Avoid{{Node: nodes[rng.IntN(len(nodes))], Until: now.Add(time.Minute)}}
				}
				sl[SliceID{q.Name, i}] = st
			}
		}
		in := PlanInput{Self: "n1", Now: now, HoldDown: time.Minute, Queues: queues, Members: ms, Slices: sl,
			SelfDraining: step%50 == 49}
		want, got := ComputePlan(in), pl.Plan(in)
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("step %d: cached plan differs:\nwant %+v\ngot  %+v", step, want, got)
		}
	}
}

// TestIncrementalPlannerMatchesFullPlanning: over random membership sequences (joins, leaves,
// members settling, draining, losing and regaining queues, every member restarting its
// live_since or settling at once, half of them draining at once, duplicated entries) with random slice states (holders settled or not,
// avoid lists, home lists, critical slices), a Planner that updates its rankings incrementally
// gives exactly the plan of a full ranking at every step, for several observers. The reference
// passes Rendezvous as a custom Weight, which takes none of the shortcuts: every slice ranked
// over every member, each slice with an avoid list or an unsettled holder ranked again for it. The incremental path must actually run: the test counts the plans it served.
func TestIncrementalPlannerMatchesFullPlanning(t *testing.T) {
	queues := []QueueSpec{
		{Name: "in", Slices: 24, Home: map[int][]string{3: {"n02", "n01"}, 5: {"gone"}}},
		{Name: "out", Slices: 40},
		{Name: "bulk", Slices: 16},
	}
	var all []string
	for i := 0; i < 48; i++ {
		all = append(all, fmt.Sprintf("n%02d", i))
	}
	for seed := uint64(1); seed <= 12; seed++ {
		rng := rand.New(rand.NewPCG(seed, 14))
		type node struct {
			since    time.Time
			draining bool
			unavail  map[string]bool // mutated in place, as a caller might
		}
		live := map[string]*node{}
		for _, n := range all[:32] {
			live[n] = &node{}
		}
		selves := []string{"n00", "n07", "n31"}
		planners := make([]Planner, len(selves))
		incremental := 0
		now := t0
		for step := 0; step < 150; step++ {
			now = now.Add(time.Duration(rng.IntN(20)) * time.Second)
			for c := rng.IntN(4); c > 0; c-- { // a few membership changes
				n := all[rng.IntN(len(all))]
				m := live[n]
				switch k := rng.IntN(7); {
				case m == nil:
					live[n] = &node{since: now}
				case k == 0:
					delete(live, n)
				case k == 1:
					m.draining = !m.draining
				case k == 2:
					if m.unavail == nil {
						m.unavail = map[string]bool{}
					}
					q := queues[rng.IntN(len(queues))].Name
					m.unavail[q] = !m.unavail[q]
				case k == 3:
					m.since = now // a restarted live_since
				default:
					m.since = time.Time{}
				}
			}
			switch rng.IntN(40) {
			case 0: // a Consul restart: everybody unsettled
				for _, m := range live {
					m.since = now
				}
			case 1: // everybody settled
				for _, m := range live {
					m.since = time.Time{}
				}
			case 2: // half of the members drain
				for _, n := range all[:len(all)/2] {
					if m := live[n]; m != nil {
						m.draining = !m.draining
					}
				}
			}
			var ms []Member
			for _, n := range all {
				if m := live[n]; m != nil {
					ms = append(ms, Member{Node: n, HealthySince: m.since, Draining: m.draining, Unavailable: m.unavail})
				}
			}
			rng.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
			if len(ms) > 0 && rng.IntN(10) == 0 {
				dup := ms[0]
				dup.Draining = !dup.Draining
				ms = append(ms, dup) // the first entry of a node wins
			}
			sl := map[SliceID]SliceState{}
			for _, q := range queues {
				for i := 0; i < q.Slices; i++ {
					st := SliceState{}
					switch rng.IntN(3) {
					case 0:
						st.Owner = all[rng.IntN(len(all))]
					case 1:
						st.Prev, st.PrevReason = all[rng.IntN(len(all))], ReasonFailback
					}
					if rng.IntN(20) == 0 {
						st.Avoid = []Avoid{{Node: all[rng.IntN(len(all))], Until: now.Add(time.Duration(rng.IntN(3)-1) * time.Minute)}}
					}
					if rng.IntN(30) == 0 {
						st.CriticalSince = now.Add(-time.Hour)
					}
					sl[SliceID{q.Name, i}] = st
				}
			}
			for i, self := range selves {
				var selfUnavail map[string]bool
				if rng.IntN(15) == 0 {
					selfUnavail = map[string]bool{queues[rng.IntN(len(queues))].Name: true}
				}
				in := PlanInput{Self: self, Now: now, HoldDown: time.Minute, Queues: queues, Members: ms, Slices: sl,
					SelfDraining: rng.IntN(25) == 0, SelfUnavailable: selfUnavail, StuckHandoff: true, StuckAfter: time.Minute}
				full := in
				full.Weight = Rendezvous // the same ranking, computed the slow way: every slice over every member
				want := ComputePlan(full)
				got := planners[i].Plan(in)
				if n := len(planners[i].changes); n > 0 && 2*n <= len(planners[i].cur.members) {
					incremental++
				}
				if !reflect.DeepEqual(want, got) {
					for s, w := range want.Target {
						if got.Target[s] != w {
							t.Errorf("seed %d step %d self %s: target of %s: incremental %q, full %q", seed, step, self, s, got.Target[s], w)
						}
					}
					for s, w := range want.Home {
						if got.Home[s] != w {
							t.Errorf("seed %d step %d self %s: home of %s: incremental %q, full %q", seed, step, self, s, got.Home[s], w)
						}
					}
					t.Fatalf("seed %d step %d self %s: incremental plan differs:\nfull        acquire %v release %v\nincremental acquire %v release %v",
						seed, step, self, moves(want.Acquire), moves(want.Release), moves(got.Acquire), moves(got.Release))
				}
				var targets []SliceID // SelfTargets: every slice whose Target is self, in queue order
				for _, q := range queues {
					for i := range q.Slices {
						if s := (SliceID{q.Name, i}); got.Target[s] == self {
							targets = append(targets, s)
						}
					}
				}
				if !slices.Equal(got.SelfTargets, targets) {
					t.Fatalf("seed %d step %d self %s: SelfTargets %v, want %v", seed, step, self, got.SelfTargets, targets)
				}
			}
		}
		if incremental < 150 {
			t.Errorf("seed %d: only %d of %d plans took the incremental path", seed, incremental, 150*len(selves))
		}
	}
}
