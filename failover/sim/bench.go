package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/qslice/qslice/failover"
)

// BenchScale prints the scale figures of qslice's ownership at nodes x 16 queues x 256 slices,
// measured on the real planner and state machine (CPU time per event, bytes allocated per
// event), and the Consul traffic of the KV layout:
//
//   - plan time and bytes allocated per event on one node: the first plan (every slice ranked
//     over every member), a membership change (a node leaves, comes back unsettled, settles,
//     drains, undrains: each kind over 20 nodes, one change per event), and an event with the
//     membership unchanged (one slice changed), each against its target;
//   - one Machine event (Step + Ready: plan, assignments, status snapshot): a tick, and a
//     membership change (a node leaves or comes back);
//   - slices moved when one node fails, against the 1/N optimum: every node's failure planned
//     by the real planner, and every moved slice checked to be the failed node's own;
//   - the bytes of one answer of the recursive KV watch, and what a failover costs the Consul
//     servers when every node watches the whole prefix.
func BenchScale(ctx context.Context, w io.Writer, nodes int) error {
	const queuesN, slicesN = 16, 256
	const targetTime, targetBytes = 10 * time.Millisecond, 1 << 20
	var queues []failover.QueueSpec
	for q := 0; q < queuesN; q++ {
		queues = append(queues, failover.QueueSpec{Name: fmt.Sprintf("q%02d", q), Slices: slicesN})
	}
	var ids []string
	var members []failover.Member
	for i := 0; i < nodes; i++ {
		id := fmt.Sprintf("node-%04d", i)
		ids = append(ids, id)
		members = append(members, failover.Member{Node: id})
	}
	home := homes(queues, ids)
	total := len(home)
	self := ids[0]
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	states := make(map[failover.SliceID]failover.SliceState, total)
	for s, h := range home {
		states[s] = failover.SliceState{Owner: h}
	}
	in := failover.PlanInput{Self: self, Now: now, HoldDown: time.Minute, Queues: queues, Members: members, Slices: states}
	fmt.Fprintf(w, "scale: %d nodes x %d queues x %d slices = %d slices (%.2f per node)\n", nodes, queuesN, slicesN, total, float64(total)/float64(nodes))

	measure := func(n int, f func(i int)) (time.Duration, uint64) {
		runtime.GC()
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		start := cpuTime()
		for i := 0; i < n; i++ {
			f(i)
		}
		d := cpuTime() - start
		runtime.ReadMemStats(&b)
		return d / time.Duration(n), (b.TotalAlloc - a.TotalAlloc) / uint64(n)
	}
	verdict := func(d time.Duration, b uint64) string {
		if d <= targetTime && b <= targetBytes {
			return "target met"
		}
		return "target NOT met"
	}
	line := func(what string, d time.Duration, b uint64, target bool) {
		fmt.Fprintf(w, "  %-54s %8.2f ms %8.0f KB allocated per event", what, ms(d), float64(b)/1024)
		if target {
			fmt.Fprintf(w, "   (<= %v, <= %d KB: %s)", targetTime, targetBytes/1024, verdict(d, b))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "plan on one node (the real failover.Planner; CPU time and bytes allocated per event):")

	var pl failover.Planner
	first, firstB := measure(1, func(int) { pl.Plan(in) })
	line("first plan (every slice over every member)", first, firstB, false)

	// Membership changes, one per event: 20 nodes leave one after the other, come back (not
	// settled yet), settle, drain, undrain. The member lists are built before measuring.
	const k = 20
	step := max(1, nodes/k)
	var changed []int
	for i := 1; i < nodes && len(changed) < k; i += step {
		changed = append(changed, i)
	}
	cur := slices.Clone(members)
	gone := map[string]bool{}
	type batch struct {
		kind   string
		events [][]failover.Member
	}
	var batches []batch
	build := func(kind string, apply func(m *failover.Member)) {
		b := batch{kind: kind}
		for _, i := range changed {
			if kind == "leaves" {
				gone[ids[i]] = true
			} else if kind == "comes back, not settled" {
				delete(gone, ids[i])
			}
			apply(&cur[i])
			var ev []failover.Member
			for j, m := range cur {
				if !gone[ids[j]] {
					ev = append(ev, m)
				}
			}
			b.events = append(b.events, ev)
		}
		batches = append(batches, b)
	}
	build("leaves", func(*failover.Member) {})
	build("comes back, not settled", func(m *failover.Member) { m.HealthySince = now })
	build("settles", func(m *failover.Member) { m.HealthySince = time.Time{} })
	build("drains", func(m *failover.Member) { m.Draining = true })
	build("stops draining", func(m *failover.Member) { m.Draining = false })
	var sumD time.Duration
	var sumB uint64
	var worstD time.Duration
	var worstB uint64
	for _, b := range batches {
		d, by := measure(len(b.events), func(i int) {
			in.Members = b.events[i]
			pl.Plan(in)
		})
		line("membership changed: a node "+b.kind, d, by, false)
		sumD, sumB = sumD+d, sumB+by
		worstD, worstB = max(worstD, d), max(worstB, by)
	}
	line("membership changed, mean of the above", sumD/time.Duration(len(batches)), sumB/uint64(len(batches)), true)
	line("membership changed, worst kind", worstD, worstB, true)

	// Changes that flip a queue's "is any candidate settled" answer rank whole queues afresh:
	// every member restarting its live_since at once (what a Consul state loss does), then the
	// first member settling again, then all of them. Three rounds, each event measured alone.
	allUnsettled, firstSettled := slices.Clone(members), slices.Clone(members)
	for i := range allUnsettled {
		allUnsettled[i].HealthySince, firstSettled[i].HealthySince = now, now
	}
	firstSettled[nodes/2].HealthySince = time.Time{}
	flips := []struct {
		what string
		ms   []failover.Member
	}{{"every member unsettled at once", allUnsettled}, {"the first member settles again", firstSettled}, {"every member settled again", members}}
	flipD, flipB := make([]time.Duration, len(flips)), make([]uint64, len(flips))
	const rounds = 3
	for range rounds {
		for i, f := range flips {
			d, by := measure(1, func(int) { in.Members = f.ms; pl.Plan(in) })
			flipD[i], flipB[i] = flipD[i]+d, flipB[i]+by
		}
	}
	for i, f := range flips {
		line("membership changed: "+f.what, flipD[i]/rounds, flipB[i]/rounds, true)
	}
	in.Members = members
	pl.Plan(in)
	ids0 := sortedKeys(home)
	warm, warmB := measure(50, func(i int) {
		s := ids0[i%len(ids0)]
		st := states[s]
		states[s] = failover.SliceState{Prev: st.Owner, PrevReason: failover.ReasonFailback} // one slice changed
		pl.Plan(in)
		states[s] = st
	})
	line("membership unchanged, one slice changed", warm, warmB, true)
	if ctx.Err() != nil {
		return ctx.Err()
	}

	// One Machine event: a KV snapshot where every slice is held by its home node.
	m := failover.NewMachine(failover.MachineConfig{Self: self, Queues: queues, TTL: 15 * time.Second, LockDelay: 15 * time.Second,
		HoldDown: time.Minute, RenewInterval: 3 * time.Second, DrainTimeout: time.Minute, Backoff: noJitter}, nil, nil)
	snap := &failover.KVSnapshot{Index: 100, Entries: map[failover.SliceID]failover.KVEntry{}}
	for s, h := range home {
		snap.Entries[s] = failover.KVEntry{Session: "s-" + h, Value: failover.LockValue{Node: h}, ModifyIndex: 50, LockIndex: 1}
	}
	var ms_ []failover.MemberInfo
	for _, id := range ids {
		ms_ = append(ms_, failover.MemberInfo{Node: id, Live: true})
	}
	m.Step(failover.EvLease{Now: now, Session: "s-" + self, Deadline: now.Add(time.Hour)})
	m.Step(failover.EvMembers{Now: now, Members: ms_})
	m.Step(failover.EvKV{Now: now, Snap: snap})
	m.Advance(m.Ready())
	ev, evB := measure(20, func(i int) {
		m.Step(failover.EvTick{Now: now.Add(time.Duration(i+1) * time.Second)})
		m.Advance(m.Ready())
	})
	line("machine event: a tick (Step + Ready, status)", ev, evB, false)
	// Membership events: the nodes of changed leave one per event, then come back.
	var memberEvents [][]failover.MemberInfo
	cur_ := slices.Clone(ms_)
	for _, live := range []bool{false, true} {
		for _, i := range changed {
			cur_[i].Live = live
			memberEvents = append(memberEvents, slices.Clone(cur_))
		}
	}
	mev, mevB := measure(len(memberEvents), func(i int) {
		m.Step(failover.EvMembers{Now: now.Add(time.Minute), Members: memberEvents[i]})
		m.Advance(m.Ready())
	})
	line("machine event: membership changed (Step + Ready)", mev, mevB, false)

	// Moves per failure, with the real planner: for every node, the targets without it; every
	// slice whose target changed must be one the failed node was the target of.
	pl.Plan(in)
	base := make(map[failover.SliceID]string, total)
	for s, t := range pl.Plan(in).Target {
		base[s] = t
	}
	own := perNode(base)
	moved := make([]int, 0, nodes)
	foreign := 0
	for i, dead := range ids {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		in.Members = slices.Delete(slices.Clone(members), i, i+1)
		n := 0
		for s, t := range pl.Plan(in).Target {
			if t != base[s] {
				n++
				if base[s] != dead {
					foreign++
				}
			}
		}
		moved = append(moved, n)
	}
	in.Members = members
	slices.Sort(moved)
	sum := 0
	for _, n := range moved {
		sum += n
	}
	opt := float64(total) / float64(nodes)
	mean := float64(sum) / float64(len(moved))
	fmt.Fprintf(w, "moves per node failure (all %d failures planned): mean %.2f (1/N optimum %.2f, %+.1f%%: within 5%%: %v), median %d, max %d; slices moved that were not the failed node's: %d; slices of a failed node that did not move: %d\n",
		nodes, mean, opt, 100*(mean/opt-1), math.Abs(mean/opt-1) <= 0.05, moved[len(moved)/2], moved[len(moved)-1], foreign, sumMap(own)-(sum-foreign))

	// The KV watch: one answer is every slice key.
	bytes := watchAnswerBytes(home)
	fmt.Fprintf(w, "KV watch answer (whole prefix): %d KB of JSON; one failover wakes every node at least twice (session end, acquisitions): about %.0f MB encoded by the servers\n",
		bytes/1024, 2*float64(bytes)*float64(nodes)/1e6)
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// cpuTime is the process's user + system CPU time: on a shared machine wall time mostly
// measures the neighbours. The bench runs on one goroutine; the GC's share is included.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func sumMap(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func perNode(home map[failover.SliceID]string) map[string]int {
	out := map[string]int{}
	for _, h := range home {
		out[h]++
	}
	return out
}

func homesWithout(queues []failover.QueueSpec, ids []string, dead string) map[failover.SliceID]string {
	var rest []string
	for _, id := range ids {
		if id != dead {
			rest = append(rest, id)
		}
	}
	return homes(queues, rest)
}

// watchAnswerBytes is the size of Consul's JSON answer for a recursive GET of every slice key,
// each held (as /v1/kv/?recurse encodes it: key, flags, base64 value, session, indexes).
func watchAnswerBytes(home map[failover.SliceID]string) int {
	type kvPair struct {
		LockIndex   uint64
		Key         string
		Flags       uint64
		Value       []byte
		Session     string
		CreateIndex uint64
		ModifyIndex uint64
	}
	var pairs []kvPair
	for s, h := range home {
		v, _ := json.Marshal(failover.LockValue{Node: h})
		pairs = append(pairs, kvPair{LockIndex: 3, Key: fmt.Sprintf("qslice/prod/slices/%s/%d", s.Queue, s.Index), Value: v,
			Session: "5f0a6ac0-1f5e-49a6-9f79-3d1fa1a1b6c1", CreateIndex: 123456, ModifyIndex: 234567})
	}
	b, _ := json.Marshal(pairs) // Consul indents only with ?pretty (TestWatchCostModelMatchesConsul)
	return len(b)
}
