package failover

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestWatchScopeGenCoversEveryChange drives Machines with random events (memberships, KV
// snapshots, transaction results, ticks past the hold-down, drains, resets, new sessions, an
// adopted session, a stop) the way a driver does, computing WatchScope only when WatchScopeGen
// changed (after every Ready round, and at random other points), and checks after every event
// that an unchanged generation means an unchanged scope.
func TestWatchScopeGenCoversEveryChange(t *testing.T) {
	nodes := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	queues := []QueueSpec{{Name: "in", Slices: 12}, {Name: "out", Slices: 6, Home: map[int][]string{2: {"c", "a"}, 4: {"a"}}}}
	var all []SliceID
	for _, q := range queues {
		for i := range q.Slices {
			all = append(all, SliceID{q.Name, i})
		}
	}
	recomputed, steps := 0, 0
	for seed := uint64(1); seed <= 150; seed++ {
		rng := rand.New(rand.NewPCG(seed, 19))
		m := NewMachine(MachineConfig{Self: "a", Queues: queues, TTL: 2 * time.Second, LockDelay: time.Second,
			HoldDown: 3 * time.Second, RenewInterval: 200 * time.Millisecond, DrainTimeout: time.Minute}, nil, nil)
		now, session, index := t0, "sa", uint64(10)
		consul := map[SliceID]KVEntry{} // what the snapshots show
		var pendingGens []uint64
		var last WatchScope
		lastGen := uint64(0)
		driverComputes := func() {
			if g := m.WatchScopeGen(); g != lastGen {
				last, lastGen = m.WatchScope(), g
				recomputed++
			}
		}
		check := func(step int, what string) {
			steps++
			if m.WatchScopeGen() != lastGen {
				return
			}
			if got, _ := m.computeScope(); !got.Equal(last) {
				t.Fatalf("seed %d step %d (%s): WatchScopeGen %d unchanged, but the scope changed:\nwas %+v\nnow %+v", seed, step, what, lastGen, last, got)
			}
		}
		snapshot := func() *KVSnapshot {
			index++
			return &KVSnapshot{Index: index, Entries: maps.Clone(consul)}
		}
		members := func() []MemberInfo {
			var ms []MemberInfo
			for _, n := range nodes {
				mi := MemberInfo{Node: n, Live: n == "a" || rng.IntN(8) > 0, Draining: rng.IntN(10) == 0,
					LiveSince: now.Add(-time.Duration(rng.IntN(6000)) * time.Millisecond)}
				if rng.IntN(10) == 0 {
					mi.Unavailable = map[string]bool{"out": true}
				}
				ms = append(ms, mi)
			}
			return ms
		}
		lastMembers := members()
		if seed%3 == 0 {
			// A restart in place: the previous process's session holds some slices for "a".
			session = "sa-prev"
			m.Step(EvAdopt{Now: now, Session: session})
			for _, s := range all[:5] {
				index++
				consul[s] = KVEntry{Session: session, Value: LockValue{Node: "a"}, ModifyIndex: index, LockIndex: 1}
			}
		}
		m.Step(EvLease{Now: now, Session: session, Deadline: now.Add(800 * time.Millisecond)})
		m.Step(EvMembers{Now: now, Members: lastMembers})
		m.Ready()
		driverComputes() // before the first snapshot
		m.Step(EvKV{Now: now, Snap: snapshot()})
		check(-1, "the first snapshot")
		for step := range 250 {
			var what string
			switch k := rng.IntN(14); {
			case k < 2:
				what = "tick"
				now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
				m.Step(EvTick{Now: now})
			case k < 4:
				what = "lease renewed"
				if rng.IntN(12) == 0 {
					what, session = "new session", fmt.Sprintf("sa%d", step)
				}
				m.Step(EvLease{Now: now, Session: session, Deadline: now.Add(800 * time.Millisecond)})
			case k < 5:
				what = "membership changed"
				lastMembers = members()
				m.Step(EvMembers{Now: now, Members: lastMembers})
			case k < 6:
				what = "the same membership again"
				m.Step(EvMembers{Now: now, Members: slices.Clone(lastMembers)})
			case k < 8:
				what = "KV changed"
				for range 1 + rng.IntN(3) {
					s := all[rng.IntN(len(all))]
					n := nodes[rng.IntN(len(nodes))]
					index++
					switch rng.IntN(3) {
					case 0:
						consul[s] = KVEntry{Value: LockValue{Node: n, Reason: ReasonReleased}, ModifyIndex: index}
					case 1:
						consul[s] = KVEntry{Session: "s-" + n, Value: LockValue{Node: n}, ModifyIndex: index, LockIndex: 1}
					default:
						delete(consul, s)
					}
				}
				m.Step(EvKV{Now: now, Snap: snapshot(), Reset: rng.IntN(15) == 0})
			case k < 9:
				what = "queues unavailable here"
				q := map[string]bool{}
				if rng.IntN(2) == 0 {
					q["out"] = true
				}
				m.Step(EvUnavailable{Now: now, Queues: q})
			case k < 10:
				what = "drain or undrain"
				if rng.IntN(2) == 0 {
					m.Step(EvDrain{Now: now})
				} else {
					m.Step(EvUndrain{Now: now})
				}
			case k < 11 && len(pendingGens) > 0:
				what = "assignee released"
				m.Step(EvAssigneeReleased{Now: now, Gen: pendingGens[0]})
				pendingGens = pendingGens[1:]
			case k < 11 && step > 200 && rng.IntN(4) == 0:
				what = "stop"
				m.Step(EvStop{Now: now, KeepLocks: rng.IntN(2) == 0})
			default:
				what = "ready round"
				rd := m.Ready()
				for _, r := range rd.Release {
					res := EvReleaseResult{Now: now, Req: r}
					switch rng.IntN(4) {
					case 0:
						res.Err = true
					case 1:
						res.Gone = true
					default:
						index++
						res.Index = index
						consul[r.Slice] = KVEntry{Value: r.Value, ModifyIndex: index}
					}
					m.Step(res)
					check(step, what+": release result")
				}
				for _, a := range rd.Acquire {
					res := EvAcquireResult{Now: now, Start: now, Req: a}
					switch rng.IntN(5) {
					case 0:
						res.Err = true
					case 1:
						res.Stale = true
					case 2:
					default:
						index++
						res.Granted, res.Token, res.LockIndex = true, index, 1
						consul[a.Move.Slice] = KVEntry{Session: a.Session, Value: a.Value, ModifyIndex: index, LockIndex: 1}
					}
					m.Step(res)
					check(step, what+": acquire result")
				}
				m.Advance(rd)
				check(step, what+": advance")
				for _, as := range rd.Assign {
					pending := rng.IntN(3) == 0
					if pending {
						pendingGens = append(pendingGens, as.Gen)
					}
					m.Step(EvAssigned{Now: now, Gen: as.Gen, Pending: pending})
					check(step, what+": assigned")
				}
				m.Ready()
				check(step, what+": ready")
				driverComputes()
			}
			check(step, what)
			if rng.IntN(2) == 0 {
				driverComputes()
			}
		}
	}
	t.Logf("%d checks, the scope computed %d times", steps, recomputed)
	if recomputed*3 > steps {
		t.Errorf("the scope was computed %d times in %d steps: the generation changes too often to save anything", recomputed, steps)
	}
}

// settledMachine is self among n nodes, every one live for an hour, every slice held by its
// home (self's by self: acquired and granted), after the rounds that settle it.
func settledMachine(tb testing.TB, self string, queues []QueueSpec, n int) (*Machine, time.Time, *KVSnapshot) {
	tb.Helper()
	now := t0
	var ms []MemberInfo
	var pm []Member
	for _, id := range nodeNames(n) {
		ms = append(ms, MemberInfo{Node: id, Live: true, LiveSince: now.Add(-time.Hour)})
		pm = append(pm, Member{Node: id, HealthySince: now.Add(-time.Hour)})
	}
	home := ComputePlan(PlanInput{Self: self, Now: now, HoldDown: 3 * time.Second, Queues: queues, Members: pm}).Home
	snap := &KVSnapshot{Index: 100, Entries: map[SliceID]KVEntry{}}
	for s, h := range home {
		if h != self {
			snap.Entries[s] = KVEntry{Session: "s-" + h, Value: LockValue{Node: h}, ModifyIndex: 50, LockIndex: 1}
		}
	}
	m := NewMachine(MachineConfig{Self: self, Queues: queues, TTL: 2 * time.Second, LockDelay: time.Second,
		HoldDown: 3 * time.Second, RenewInterval: 200 * time.Millisecond, DrainTimeout: time.Minute}, nil, nil)
	m.Step(EvLease{Now: now, Session: "s-" + self, Deadline: now.Add(800 * time.Millisecond)})
	m.Step(EvMembers{Now: now, Members: ms})
	m.Step(EvKV{Now: now, Snap: snap})
	for range 4 {
		carry(m, now, granted(1000), nil)
	}
	if rd := m.Ready(); rd.HasWork() {
		tb.Fatalf("not settled: %+v", rd)
	}
	return m, now, snap
}

// TestWatchScopeGenStaysOnQuietRounds: ticks, lease renewals, and membership and KV answers
// that change nothing WatchScope reads leave the generation as it is (the driver skips the
// computation); a change to what it reads moves it, including the plan's clock (a hold-down
// ending moves targets).
func TestWatchScopeGenStaysOnQuietRounds(t *testing.T) {
	queues := []QueueSpec{{Name: "in", Slices: 64}, {Name: "out", Slices: 32}}
	m, now, snap := settledMachine(t, "node-003", queues, 12)
	scope := m.WatchScope()
	gen := m.WatchScopeGen()
	if len(scope.Slices) == 0 || len(scope.Members) == 0 {
		t.Fatalf("settled node watches nothing: %+v", scope)
	}
	members := slices.Clone(m.members)
	later := func(d time.Duration) { // time passes; the keeper renews the lease
		now = now.Add(d)
		m.Step(EvLease{Now: now, Session: "s-node-003", Deadline: now.Add(800 * time.Millisecond)})
		m.Step(EvTick{Now: now})
	}
	quiet := func(what string) {
		t.Helper()
		m.Advance(m.Ready())
		if got := m.WatchScopeGen(); got != gen {
			t.Fatalf("%s: WatchScopeGen moved from %d to %d", what, gen, got)
		}
	}
	for i := range 20 {
		later(200 * time.Millisecond)
		quiet(fmt.Sprintf("round %d: tick and lease renewal", i))
	}
	m.Step(EvMembers{Now: now, Members: slices.Clone(members)})
	quiet("the same membership again")
	var unwatched, watched []SliceID // slices held by peers, sorted: the test is the same every run
	for _, s := range slices.SortedFunc(maps.Keys(snap.Entries), func(a, b SliceID) int { return strings.Compare(a.String(), b.String()) }) {
		if _, ok := scope.Slices[s]; ok {
			watched = append(watched, s)
		} else {
			unwatched = append(unwatched, s)
		}
	}
	if len(watched) == 0 || len(unwatched) == 0 {
		t.Fatalf("node-003 watches %d and does not watch %d of the slices its peers hold: want some of each", len(watched), len(unwatched))
	}
	next := &KVSnapshot{Index: 200, Entries: maps.Clone(snap.Entries)}
	e := next.Entries[unwatched[0]]
	e.ModifyIndex = 150 // a new index, the same holder
	next.Entries[unwatched[0]] = e
	m.Step(EvKV{Now: now, Snap: next})
	quiet("a snapshot with new indexes and the same holders")

	// A change moves it; the driver then computes the scope, and the rounds that carry out what
	// the change asked for leave it alone once they are done.
	token := uint64(5000)
	moved := func(what string, step func()) {
		t.Helper()
		step()
		for range 4 {
			carry(m, now, granted(token), func(r ReleaseReq) EvReleaseResult { token++; return EvReleaseResult{Req: r, Index: token} })
			token += 100
		}
		got := m.WatchScopeGen()
		if got == gen {
			t.Fatalf("%s: WatchScopeGen still %d", what, gen)
		}
		scope, gen = m.WatchScope(), got
		quiet(what + ", then a quiet round")
	}
	moved("the holder of a watched slice changed", func() {
		next = &KVSnapshot{Index: 201, Entries: maps.Clone(next.Entries)}
		holder := "node-011" // another node than the one holding it
		if next.Entries[watched[0]].Value.Node == holder {
			holder = "node-010"
		}
		next.Entries[watched[0]] = KVEntry{Session: "s-" + holder, Value: LockValue{Node: holder}, ModifyIndex: 201, LockIndex: 2}
		m.Step(EvKV{Now: now, Snap: next})
	})
	moved("a member drains", func() {
		members[5].Draining = true
		m.Step(EvMembers{Now: now, Members: slices.Clone(members)})
	})
	moved("it undrains", func() {
		members[5].Draining = false
		m.Step(EvMembers{Now: now, Members: slices.Clone(members)})
	})
	// A member this node takes slices from when it dies: they come back to it after its
	// hold-down, which only the plan's clock tells.
	gone := -1
	for i, mi := range members {
		if mi.Node != "node-003" && len(takenOver(t, queues, members, i)) > 0 {
			gone = i
			break
		}
	}
	if gone < 0 {
		t.Fatal("no member whose death gives node-003 a slice")
	}
	moved("a member dies: its slices are free", func() {
		members[gone].Live = false
		m.Step(EvMembers{Now: now, Members: slices.Clone(members)})
		next = &KVSnapshot{Index: 300, Entries: maps.Clone(next.Entries)}
		for s, e := range next.Entries {
			if e.Value.Node == members[gone].Node {
				next.Entries[s] = KVEntry{Value: LockValue{Node: e.Value.Node}, ModifyIndex: 300}
			}
		}
		m.Step(EvKV{Now: now, Snap: next})
	})
	if len(m.owned) == 0 || len(m.plan.Release) > 0 {
		t.Fatalf("after %s died: owned %d, releasing %v", members[gone].Node, len(m.owned), m.plan.Release)
	}
	moved("it comes back, not settled yet", func() {
		members[gone].Live, members[gone].LiveSince = true, now
		m.Step(EvMembers{Now: now, Members: slices.Clone(members)})
	})
	for range 5 {
		later(500 * time.Millisecond)
		quiet("a round inside its hold-down")
	}
	moved("its hold-down ends: the plan targets it again", func() {
		later(time.Second)
		before := m.WatchScopeGen()
		m.Ready() // the plan moves the targets before any release is carried out
		if m.WatchScopeGen() == before {
			t.Fatalf("the plan no longer targets node-003 at %v, but Ready left WatchScopeGen at %d", takenOver(t, queues, members, gone), before)
		}
	})
	moved("this node drains", func() { m.Step(EvDrain{Now: now}) })
}

// takenOver lists the slices whose target becomes node-003 when members[gone] dies.
func takenOver(t *testing.T, queues []QueueSpec, members []MemberInfo, gone int) []SliceID {
	t.Helper()
	plan := func(skip int) map[SliceID]string {
		var pm []Member
		for i, mi := range members {
			if i != skip {
				pm = append(pm, Member{Node: mi.Node, HealthySince: mi.LiveSince})
			}
		}
		return maps.Clone(ComputePlan(PlanInput{Self: "node-003", Now: t0, HoldDown: 3 * time.Second, Queues: queues, Members: pm}).Target)
	}
	before, after := plan(-1), plan(gone)
	var out []SliceID
	for s, n := range after {
		if n == "node-003" && before[s] == members[gone].Node {
			out = append(out, s)
		}
	}
	return out
}

// BenchmarkQuietRound1000x16x256: what the watch scope costs the driver in one round of its
// loop on one node of 1,000 (16 queues of 256 slices) when nothing changed (a lease renewal, a
// tick, Ready; those are not timed): computed every round (every-round: the drivers before
// WatchScopeGen) or only when WatchScopeGen changed (on-change). A quiet loop runs about two
// rounds a second (the tick and the keeper's renewal): cpu-ms/s is the cost per second at that.
func BenchmarkQuietRound1000x16x256(b *testing.B) {
	var queues []QueueSpec
	for q := range 16 {
		queues = append(queues, QueueSpec{Name: fmt.Sprintf("q%02d", q), Slices: 256})
	}
	for _, mode := range []string{"every-round", "on-change"} {
		b.Run(mode, func(b *testing.B) {
			m, now, _ := settledMachine(b, "node-007", queues, 1000)
			gen := m.WatchScopeGen()
			m.WatchScope()
			computed := 0
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				now = now.Add(200 * time.Millisecond)
				m.Step(EvLease{Now: now, Session: "s-node-007", Deadline: now.Add(800 * time.Millisecond)})
				m.Step(EvTick{Now: now})
				m.Advance(m.Ready())
				b.StartTimer()
				if g := m.WatchScopeGen(); mode == "every-round" || g != gen {
					m.WatchScope()
					gen = g
					computed++
				}
			}
			b.ReportMetric(float64(computed)/float64(b.N), "scopes/round")
			b.ReportMetric(2*float64(b.Elapsed())/float64(b.N)/1e6, "cpu-ms/s")
		})
	}
}
