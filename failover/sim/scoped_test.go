package sim

import (
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/consultest"
)

// runSeeds runs seeds from..to with cfg and reports each failing seed's schedule (the first three).
func runSeeds(t *testing.T, cfg Config, from, to uint64) {
	t.Helper()
	failed := 0
	for seed := from; seed <= to; seed++ {
		cfg.Seed = seed
		r := Run(cfg)
		if r.Failed() {
			failed++
			if failed <= 3 {
				c := cfg.withDefaults()
				t.Errorf("%s  replay: go run ./failover/sim/cmd/qslice-sim -layout %s -nodes %d -full-read %s -seed %d -v",
					r.Report(), c.Layout, c.Nodes, c.FullReadInterval, seed)
			}
		}
	}
	t.Logf("seeds %d..%d: %d failed", from, to, failed)
}

// TestScopedLayoutWithoutFullReads: the scoped layout keeps every invariant when the periodic
// full read never comes (only the one at start and after a reset): watches and pokes alone
// carry what the Machine must see.
func TestScopedLayoutWithoutFullReads(t *testing.T) {
	runSeeds(t, Config{Faults: 6, Layout: failover.LayoutScoped, FullReadInterval: time.Hour}, 1, 30)
}

// TestScopedLayoutNineNodes: with 9 nodes most slices have candidates outside their watch
// group of three, so entrants and pokes matter.
func TestScopedLayoutNineNodes(t *testing.T) {
	runSeeds(t, Config{Nodes: 9, Faults: 6, Layout: failover.LayoutScoped}, 1, 20)
}

// TestScopedFailureWakesOnlyItsGroups: one node fails in a cluster of 16; in the scoped layout
// only the nodes sharing a watch group with it (and the entrants) read anything, each a few
// single keys, while in the prefix layout every survivor reads the whole prefix and health.
func TestScopedFailureWakesOnlyItsGroups(t *testing.T) {
	queues := []failover.QueueSpec{{Name: "in", Slices: 32}, {Name: "out", Slices: 16}}
	cfg := Config{Seed: 1, Nodes: 16, Queues: queues}
	prefix := MeasureFailure(cfg, "n3")
	cfg.Layout = failover.LayoutScoped
	scoped := MeasureFailure(cfg, "n3")
	for _, f := range []FailureTraffic{prefix, scoped} {
		if len(f.Violations) > 0 {
			t.Fatalf("%s: %v", f.Layout, f.Violations)
		}
		t.Logf("%s: woken %d of %d, %d answers, %d bytes, at most %d per node, %d writes", f.Layout, f.Woken, f.Nodes-1, f.Answers, f.Bytes, f.MaxNodeBytes, f.Writes)
	}
	if prefix.Woken != prefix.Nodes-1 {
		t.Errorf("prefix layout: %d nodes woken, want every survivor (%d)", prefix.Woken, prefix.Nodes-1)
	}
	if scoped.Woken == 0 || scoped.Woken >= scoped.Nodes-1 {
		t.Errorf("scoped layout: %d nodes woken, want some but not every survivor (%d)", scoped.Woken, scoped.Nodes-1)
	}
	if scoped.MaxNodeBytes >= prefix.Bytes/int64(prefix.Woken) {
		t.Errorf("scoped layout: a node read %d bytes, not less than a prefix node's mean %d", scoped.MaxNodeBytes, prefix.Bytes/int64(prefix.Woken))
	}
}

// TestModelSingleKeyQueries: the model's scoped-layout keys behave as Consul's: a change wakes
// only that key's watchers; a missing key answers with the KV table's index; the member key is
// released in the step that ends its session and keeps the lock-delay; inbox writes and deletes
// check their index; a state loss takes every key and the index back.
func TestModelSingleKeyQueries(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newConsul(now, func(bool) {})
	var woke []kvKey
	c.keyChanged = func(k kvKey) { woke = append(woke, k) }
	c.pass("a", 2*time.Second, memberMeta{})
	sa, _ := c.createSession("a", time.Second)
	s0 := failover.SliceID{Queue: "in", Index: 0}

	missing := c.get(sliceKey(s0))
	if missing.exists || missing.index != c.index || missing.bytes != 0 {
		t.Fatalf("missing key: %+v, want absent at the KV index %d", missing, c.index)
	}
	mv := failover.MemberValue{LiveSince: 1}
	idx, fresh, ok := c.lockMember("a", sa, mv)
	if !ok || !fresh || idx != c.index || !slices.Equal(woke, []kvKey{memberKey("a")}) {
		t.Fatalf("member write: %d %v, woke %v", idx, ok, woke)
	}
	if again, fresh, ok := c.lockMember("a", sa, mv); !ok || fresh || again != idx {
		t.Fatalf("the same value again: index %d %v, want %d unchanged", again, ok, idx)
	}
	if got := c.get(sliceKey(s0)); got.index != idx {
		t.Fatalf("a missing key answers with the KV table's index %d, got %d", idx, got.index)
	}
	woke = nil
	res := c.acquire(failover.AcquireReq{Move: failover.Move{Slice: s0}, Session: sa, Value: failover.LockValue{Node: "a"}})
	if !res.Granted || !slices.Equal(woke, []kvKey{sliceKey(s0)}) {
		t.Fatalf("acquire: %+v woke %v, want only the slice key", res, woke)
	}
	woke = nil
	c.invalidate(sa)
	if !slices.Equal(woke, []kvKey{sliceKey(s0), memberKey("a")}) {
		t.Fatalf("session end woke %v, want the slice key and the member key", woke)
	}
	m := c.get(memberKey("a"))
	if !m.exists || m.member.Info.Live || m.member.ModifyIndex != c.index {
		t.Fatalf("member key after the session ended: %+v, want present, not live, at %d", m, c.index)
	}
	c.pass("a", 2*time.Second, memberMeta{})
	sb, _ := c.createSession("a", time.Second)
	if _, _, ok := c.lockMember("a", sb, mv); ok {
		t.Fatal("member key locked again within the lock-delay")
	}
	c.now = c.now.Add(time.Second)
	if _, _, ok := c.lockMember("a", sb, mv); !ok {
		t.Fatal("member key refused after the lock-delay")
	}
	if !c.casInbox("b", 0, failover.InboxValue{Read: []string{"a"}}) || c.casInbox("b", 0, failover.InboxValue{Read: []string{"c"}}) {
		t.Fatal("cas=0 must create the inbox once and only once")
	}
	in := c.get(inboxKey("b"))
	if c.casInbox("b", in.modify-1, failover.InboxValue{}) || c.deleteInbox("b", in.modify-1) {
		t.Fatal("an old index must fail the check-and-set")
	}
	if !c.casInbox("b", in.modify, failover.InboxValue{Read: []string{"a", "c"}}) {
		t.Fatal("the current index must pass the check-and-set")
	}
	if got := c.get(inboxKey("b")); !slices.Equal(got.inbox.Read, []string{"a", "c"}) || !c.deleteInbox("b", got.modify) {
		t.Fatalf("inbox %+v, then delete with its index", got)
	}
	before := c.index
	woke = nil
	c.loseState()
	if c.index >= before || len(c.memberKeys)+len(c.kv)+len(c.inboxKeys) != 0 || len(woke) != 2 {
		t.Fatalf("state loss: index %d (was %d), keys left %d, woke %v", c.index, before, len(c.memberKeys)+len(c.kv), woke)
	}
}

// TestSingleKeyQueriesMatchConsul anchors the model's single-key blocking queries on a real
// Consul: a read of a missing key answers with the KV table's index (the last KV write's); a
// blocking query on a missing key is not answered when a sibling key changes (it waits out its
// wait) and is answered when the key is created, with the key's ModifyIndex. The model's
// answers to the same sequence: TestModelSingleKeyQueries.
func TestSingleKeyQueriesMatchConsul(t *testing.T) {
	srv := consultest.Start(t, consultest.WithLogLevel("warn"))
	cl := srv.Client("")
	put := func(k string) uint64 {
		t.Helper()
		if _, err := cl.KV().Put(&api.KVPair{Key: k, Value: []byte(`{"read":["node-0003"]}`)}, nil); err != nil {
			t.Fatal(err)
		}
		p, _, err := cl.KV().Get(k, nil)
		if err != nil || p == nil {
			t.Fatalf("get %s: %v %v", k, p, err)
		}
		return p.ModifyIndex
	}
	const missing = "qslice/prod/inbox/node-0002"
	last := put("qslice/prod/inbox/node-0001")
	if p, m, err := cl.KV().Get(missing, nil); err != nil || p != nil || m.LastIndex != last {
		t.Fatalf("missing key: %v, index %d, %v; want absent at the last KV write's index %d", p, m.LastIndex, err, last)
	}
	const wait = 2 * time.Second
	block := func() <-chan time.Duration {
		_, m, err := cl.KV().Get(missing, nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan time.Duration, 1)
		go func() {
			start := time.Now()
			_, _, _ = cl.KV().Get(missing, &api.QueryOptions{WaitIndex: m.LastIndex, WaitTime: wait})
			done <- time.Since(start)
		}()
		time.Sleep(300 * time.Millisecond) // the query is sent before the write (an answer at once would be one the write woke)
		return done
	}
	for attempt := 1; ; attempt++ {
		done := block()
		put("qslice/prod/inbox/node-0001")
		if d := <-done; d >= wait*9/10 {
			break
		} else if attempt == 3 {
			t.Errorf("the query on a missing key was answered after %s when a sibling key changed, three times: it must wait out its wait", d)
			break
		}
	}
	done := block()
	created := put(missing)
	if d := <-done; d >= wait {
		t.Errorf("the query on a missing key was not answered when the key was created (after %s)", d)
	}
	if _, m, err := cl.KV().Get(missing, nil); err != nil || m.LastIndex != created {
		t.Errorf("the created key answers with index %d (%v), want its ModifyIndex %d", m.LastIndex, err, created)
	}
}

// TestScopedLayoutKnownWholeGroupFailure: the three nodes of one slice's watch group (its first
// ScopeDepth candidates) crash at once, in a cluster of 40 where the fourth candidate shares no
// other group with them. Nobody who watches their member keys takes the slice, nobody pokes the
// fourth candidate, and it learns of the failure only at its next full read (FullReadInterval,
// an hour here, minutes in production): the slice is not processed again within the failover
// bound. In the prefix layout, and with the simulator's default full read of 3 TTLs, it is.
// Open (a design gap of the scoped layout's pure part): skipped unless QSLICE_RUN_KNOWN_BUGS=1.
// A whole watch group failing at once: the next entrant watches the group's member keys
// (Machine.WatchScope), sees them go, and takes the slice without waiting for a full read.
func TestScopedLayoutWholeGroupFailure(t *testing.T) {
	var sched []Fault
	for _, n := range []string{"n31", "n9", "n7"} { // the group of in/0 at 40 nodes
		sched = append(sched, Fault{Kind: FaultCrash, Node: n, At: 8 * time.Second, For: 12 * time.Second})
	}
	r := Run(Config{Seed: 1, Nodes: 40, Layout: failover.LayoutScoped, FullReadInterval: time.Hour, Schedule: sched})
	if r.Failed() {
		t.Errorf("%s", r.Report())
	}
}
