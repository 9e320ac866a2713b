package failover

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// Unit tests of the scoped watch layout's pure part: the watch groups, the pokes, the view.

func scopeMachine(self string, queues []QueueSpec, live []string) *Machine {
	m := NewMachine(MachineConfig{Self: self, Queues: queues, TTL: 2 * time.Second, LockDelay: time.Second,
		HoldDown: 3 * time.Second, RenewInterval: 200 * time.Millisecond, DrainTimeout: time.Minute}, nil, nil)
	var ms []MemberInfo
	for _, n := range live {
		ms = append(ms, MemberInfo{Node: n, Live: true})
	}
	m.Step(EvMembers{Now: t0, Members: ms})
	m.Step(EvKV{Now: t0, Snap: &KVSnapshot{Index: 5, Entries: map[SliceID]KVEntry{}}})
	m.Ready()
	return m
}

func nodeNames(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("node-%03d", i))
	}
	return out
}

// Every slice is watched by exactly its first ScopeDepth candidates, the first of which is the
// planner's target; every node agrees on the groups.
func TestWatchGroupsAreThePlannersFirstCandidates(t *testing.T) {
	queues := []QueueSpec{{Name: "in", Slices: 64}, {Name: "out", Slices: 16, Home: map[int][]string{3: {"node-009", "node-002"}}}}
	nodes := nodeNames(12)
	plan := ComputePlan(PlanInput{Self: nodes[0], Now: t0, Queues: queues, Members: func() (ms []Member) {
		for _, n := range nodes {
			ms = append(ms, Member{Node: n})
		}
		return
	}()})
	watchers := map[SliceID][]string{}
	groups := map[SliceID][]string{}
	for _, n := range nodes {
		sc := scopeMachine(n, queues, nodes).WatchScope()
		for s, g := range sc.Slices {
			if !slices.Contains(g, n) {
				t.Errorf("%s watches %s outside its group %v with nothing held or targeted", n, s, g)
			}
			watchers[s] = append(watchers[s], n)
			if prev, ok := groups[s]; ok && !slices.Equal(prev, g) {
				t.Errorf("nodes disagree on the group of %s: %v vs %v", s, prev, g)
			}
			groups[s] = g
			for _, o := range g {
				if o != n && !slices.Contains(sc.Members, o) {
					t.Errorf("%s does not watch the member key of %s, in the group of %s", n, o, s)
				}
			}
		}
	}
	for _, q := range queues {
		for i := range q.Slices {
			s := SliceID{q.Name, i}
			if len(watchers[s]) != ScopeDepth {
				t.Errorf("%s watched by %v, want %d nodes", s, watchers[s], ScopeDepth)
			}
			if g := groups[s]; len(g) == 0 || g[0] != plan.Home[s] {
				t.Errorf("%s: group %v does not start with the planner's choice %s", s, g, plan.Home[s])
			}
		}
	}
	if g := groups[SliceID{"out", 3}]; len(g) < 2 || g[0] != "node-009" || g[1] != "node-002" {
		t.Errorf("home list not ranked first: %v", g)
	}
}

// After a member dies, every node that enters a group it was in learns of it through a poke
// from a survivor, and the poke names the dead member.
func TestPokesReachEveryEntrant(t *testing.T) {
	queues := []QueueSpec{{Name: "in", Slices: 128}}
	nodes := nodeNames(9)
	dead := nodes[4]
	var alive []string
	for _, n := range nodes {
		if n != dead {
			alive = append(alive, n)
		}
	}
	before := map[string]WatchScope{}
	for _, n := range nodes {
		before[n] = scopeMachine(n, queues, nodes).WatchScope()
	}
	poked := map[string][]string{}
	for _, n := range alive {
		if !slices.Contains(before[n].Members, dead) {
			continue // only nodes watching the dead member's key see it go
		}
		after := scopeMachine(n, queues, alive).WatchScope()
		for to, read := range Pokes(n, before[n], after) {
			if to == n {
				t.Fatalf("%s pokes itself", n)
			}
			poked[to] = append(poked[to], read...)
		}
	}
	entrants := 0
	for _, n := range alive {
		after := scopeMachine(n, queues, alive).WatchScope()
		for s, g := range after.Slices {
			if !slices.Contains(g, n) {
				continue
			}
			if _, had := before[n].Slices[s]; had {
				continue
			}
			entrants++
			if !slices.Contains(poked[n], dead) {
				t.Errorf("%s entered the group of %s (%v) but no survivor told it that %s left", n, s, g, dead)
			}
		}
	}
	if entrants == 0 {
		t.Fatal("no node entered a group: the test proves nothing")
	}
}

// A node that joins tells every member of its groups about itself.
func TestPokesAnnounceAJoin(t *testing.T) {
	queues := []QueueSpec{{Name: "in", Slices: 64}}
	nodes := nodeNames(6)
	joiner := "node-new"
	all := append(slices.Clone(nodes), joiner)
	sc := scopeMachine(joiner, queues, all).WatchScope()
	pk := Pokes(joiner, WatchScope{}, sc)
	if len(pk) == 0 {
		t.Fatal("a joining node pokes nobody")
	}
	for s, g := range sc.Slices {
		for _, n := range g {
			if n != joiner && !slices.Contains(pk[n], joiner) {
				t.Errorf("%s in the group of %s not told about %s", n, s, joiner)
			}
		}
	}
}

// The view's snapshot does not depend on the order answers arrive in.
func TestScopedViewIsOrderIndependent(t *testing.T) {
	s1, s2 := SliceID{"in", 1}, SliceID{"in", 2}
	type answer func(v *ScopedView)
	answers := []answer{
		func(v *ScopedView) {
			v.Full(10, map[SliceID]KVEntry{s1: {Session: "x", Value: LockValue{Node: "a"}, ModifyIndex: 7}, s2: {ModifyIndex: 3}},
				[]MemberRecord{{Info: MemberInfo{Node: "a", Live: true}, ModifyIndex: 4}, {Info: MemberInfo{Node: "b", Live: true}, ModifyIndex: 5}})
		},
		func(v *ScopedView) { v.Slice(s1, KVEntry{Value: LockValue{Node: "a"}, ModifyIndex: 12}, true, 12) },
		func(v *ScopedView) { v.Slice(s2, KVEntry{}, false, 14) },
		func(v *ScopedView) { v.Member(MemberRecord{Info: MemberInfo{Node: "b"}, ModifyIndex: 12}, true) },
		// Older single-key answers, which may arrive last: they must not undo the newer ones.
		func(v *ScopedView) {
			v.Slice(s1, KVEntry{Session: "x", Value: LockValue{Node: "a"}, ModifyIndex: 9}, true, 9)
		},
		func(v *ScopedView) {
			v.Member(MemberRecord{Info: MemberInfo{Node: "b", Live: true}, ModifyIndex: 6}, true)
		},
	}
	var want *KVSnapshot
	var wantMembers []MemberInfo
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		order := rng.Perm(len(answers))
		v := NewScopedView()
		for _, i := range order {
			answers[i](v)
		}
		got, gotMembers := v.Snapshot(), v.Members()
		if e := got.Entries[s1]; e.Session != "" || e.ModifyIndex != 12 {
			t.Fatalf("order %v: s1 = %+v, want the release at 12", order, e)
		}
		if _, ok := got.Entries[s2]; ok {
			t.Fatalf("order %v: s2 still present after its deletion at 14", order)
		}
		if got.asOf(s1) != 12 || got.asOf(s2) != 14 {
			t.Fatalf("order %v: asOf s1=%d s2=%d, want 12 and 14", order, got.asOf(s1), got.asOf(s2))
		}
		if round == 0 {
			want, wantMembers = got, gotMembers
			continue
		}
		if fmt.Sprint(got.Entries) != fmt.Sprint(want.Entries) || fmt.Sprint(gotMembers) != fmt.Sprint(wantMembers) {
			t.Fatalf("order %v: view differs:\n%v %v\nvs\n%v %v", order, got.Entries, gotMembers, want.Entries, wantMembers)
		}
	}
	if len(wantMembers) != 2 || wantMembers[1].Live {
		t.Fatalf("members %+v: b's release at 12 lost", wantMembers)
	}
}

// A snapshot older than an acquisition for that key (per key in the scoped layout) never makes
// the Machine drop the slice.
func TestMachineComparesFreshnessPerKey(t *testing.T) {
	m, now := testMachine(t)
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 5, Entries: map[SliceID]KVEntry{}}})
	carry(m, now, granted(10), nil) // tokens 11 and 12
	if len(m.owned) != 2 {
		t.Fatalf("owned %d slices, want 2", len(m.owned))
	}
	// A composite snapshot: full read at 20 shows both held, but slice 1's single-key answer
	// (index 30) is newer; then a snapshot whose base is 40 but whose per-key knowledge of
	// slice 0 predates the acquisition must not drop it.
	held := func(tok uint64) KVEntry {
		return KVEntry{Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: tok}
	}
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 8, Entries: map[SliceID]KVEntry{{"in", 1}: held(12)}, AsOf: map[SliceID]uint64{{"in", 1}: 30}}})
	m.Ready()
	if len(m.owned) != 2 {
		t.Fatalf("slice 0 dropped on a snapshot whose knowledge of it (index 8) predates its acquisition")
	}
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 8, Entries: map[SliceID]KVEntry{{"in", 1}: held(12)}, AsOf: map[SliceID]uint64{{"in", 0}: 31, {"in", 1}: 30}}})
	m.Ready()
	if len(m.owned) != 1 || m.owned[SliceID{"in", 1}] == nil {
		t.Fatalf("slice 0 still owned although a key answer at 31 shows it gone: %v", m.owned)
	}
}

// BenchmarkWatchScope1000x16x256: what the driver pays after a membership change to know which
// keys to watch, on one node of 1,000 with 16 queues of 256 slices.
func BenchmarkWatchScope1000x16x256(b *testing.B) {
	var queues []QueueSpec
	for q := range 16 {
		queues = append(queues, QueueSpec{Name: fmt.Sprintf("q%02d", q), Slices: 256})
	}
	m := scopeMachine("node-007", queues, nodeNames(1000))
	b.ReportAllocs()
	n, k := 0, 0
	for b.Loop() {
		sc := m.WatchScope()
		n, k = len(sc.Slices), len(sc.Members)
	}
	b.ReportMetric(float64(n), "slices-watched")
	b.ReportMetric(float64(k), "members-watched")
}
