package failover

import (
	"testing"
	"time"
)

// Unit tests of the state machine: events in, Ready out, no Consul, no clock.

func testMachine(t *testing.T) (*Machine, time.Time) {
	t.Helper()
	m := NewMachine(MachineConfig{Self: "a", Queues: []QueueSpec{{Name: "in", Slices: 2}}, TTL: 2 * time.Second, LockDelay: time.Second,
		HoldDown: 3 * time.Second, RenewInterval: 200 * time.Millisecond, DrainTimeout: time.Minute}, nil, nil)
	now := t0
	m.Step(EvLease{Now: now, Session: "sa", Deadline: now.Add(800 * time.Millisecond)})
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}, {Node: "b", Live: true}}})
	return m, now
}

// carry does what a driver does with a Ready: transactions answered by answer, SetSlices whose
// channel closes at once.
func carry(m *Machine, now time.Time, acquire func(AcquireReq) EvAcquireResult, release func(ReleaseReq) EvReleaseResult) Ready {
	rd := m.Ready()
	for _, r := range rd.Release {
		res := release(r)
		res.Now = now
		m.Step(res)
	}
	for _, a := range rd.Acquire {
		res := acquire(a)
		res.Now = now
		m.Step(res)
	}
	m.Advance(rd)
	for _, a := range rd.Assign {
		m.Step(EvAssigned{Now: now, Gen: a.Gen})
	}
	return rd
}

func granted(token uint64) func(AcquireReq) EvAcquireResult {
	return func(a AcquireReq) EvAcquireResult {
		token++
		return EvAcquireResult{Req: a, Granted: true, Token: token, LockIndex: 1}
	}
}

func TestMachineAcquiresItsTargetsAndAssignsThem(t *testing.T) {
	m, now := testMachine(t)
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	if rd := m.Ready(); len(rd.Acquire) != 0 {
		t.Fatalf("acquisitions before the first KV snapshot: %+v", rd.Acquire)
	}
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 5, Entries: map[SliceID]KVEntry{}}})
	rd := carry(m, now, granted(10), nil)
	if len(rd.Acquire) != 2 {
		t.Fatalf("acquisitions %+v, want both slices", rd.Acquire)
	}
	var mine []SliceID
	for _, a := range rd.Acquire {
		if a.Exists || a.Session != "sa" {
			t.Errorf("acquisition %+v: want check-not-exists with our session", a)
		}
		mine = append(mine, a.Move.Slice)
	}
	rd = carry(m, now, granted(20), nil)
	if len(rd.Assign) != 1 || len(rd.Assign[0].Slices) != len(mine) {
		t.Fatalf("assignments after acquiring %v: %+v", mine, rd.Assign)
	}
	if got := m.Changes()[ReasonAcquired]; got != uint64(len(mine)) {
		t.Errorf("acquired counted %d times, want %d", got, len(mine))
	}
}

// TestMachineLapseNarrowsAndResetsConnections: at the lease deadline the assignee loses every
// slice and the watches are asked to reconnect; a valid lease again gives them back.
func TestMachineLapseNarrowsAndResetsConnections(t *testing.T) {
	m, now := testMachine(t)
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 5, Entries: map[SliceID]KVEntry{}}})
	carry(m, now, granted(10), nil)
	carry(m, now, granted(20), nil)
	later := now.Add(time.Second)
	m.Step(EvTick{Now: later})
	rd := carry(m, later, granted(30), nil)
	if len(rd.Assign) != 1 || len(rd.Assign[0].Slices) != 0 || len(rd.Assign[0].Removed) != 2 || !rd.ResetConnections {
		t.Fatalf("after the deadline: %+v; want both slices removed and connections reset", rd)
	}
	m.Step(EvLease{Now: later, Session: "sa", Deadline: later.Add(800 * time.Millisecond)})
	rd = carry(m, later, granted(40), nil)
	if len(rd.Assign) != 1 || len(rd.Assign[0].Slices) != 2 || !rd.ResetConnections {
		t.Fatalf("lease valid again: %+v; want both slices back and connections reset", rd)
	}
	if rd := m.Ready(); rd.HasWork() {
		t.Fatalf("nothing left to do, got %+v", rd)
	}
}

// TestMachineGoneReleaseIsNotReadopted: a release refused because our session no longer holds
// the key must not be undone by a snapshot taken before (it still shows our session).
func TestMachineGoneReleaseIsNotReadopted(t *testing.T) {
	m, now := testMachine(t)
	s := SliceID{"in", 0}
	snap := &KVSnapshot{Index: 50, Entries: map[SliceID]KVEntry{
		s:         {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 40, LockIndex: 1},
		{"in", 1}: {Session: "sb", Value: LockValue{Node: "b"}, ModifyIndex: 41, LockIndex: 1},
	}}
	m.Step(EvKV{Now: now, Snap: snap}) // adopts s: our session holds it
	if m.owned[s] == nil {
		t.Fatal("a lock held by our session was not adopted")
	}
	m.Step(EvDrain{Now: now})
	gone := func(r ReleaseReq) EvReleaseResult { return EvReleaseResult{Req: r, Gone: true} }
	for i := 0; i < 4; i++ {
		carry(m, now, granted(100), gone)
	}
	if got := m.Changes(); got[ReasonLeaseLost] != 1 || got[ReasonAcquired] != 1 {
		t.Fatalf("changes %v: want one adoption and one loss, not a loop", got)
	}
	if rd := m.Ready(); !rd.DrainDone {
		t.Fatal("drain not done with nothing held")
	}
}

// TestMachineStaleSnapshotAndQuarantine: a key changed since the snapshot is not tried again on
// the same snapshot; after Consul's index went backwards nothing is acquired for max(TTL, LD).
func TestMachineStaleSnapshotAndQuarantine(t *testing.T) {
	m, now := testMachine(t)
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 5, Entries: map[SliceID]KVEntry{}}})
	stale := func(a AcquireReq) EvAcquireResult { return EvAcquireResult{Req: a, Stale: true} }
	if rd := carry(m, now, stale, nil); len(rd.Acquire) != 2 {
		t.Fatalf("acquisitions %+v, want 2", rd.Acquire)
	}
	if rd := m.Ready(); len(rd.Acquire) != 0 {
		t.Fatalf("retried on the same stale snapshot: %+v", rd.Acquire)
	}
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 3, Entries: map[SliceID]KVEntry{}}, Reset: true})
	if rd := m.Ready(); len(rd.Acquire) != 0 {
		t.Fatalf("acquired during the quarantine after a reset: %+v", rd.Acquire)
	}
	after := now.Add(2 * time.Second)
	m.Step(EvLease{Now: after, Session: "sa", Deadline: after.Add(800 * time.Millisecond)})
	if rd := m.Ready(); len(rd.Acquire) != 2 {
		t.Fatalf("after the quarantine: %d acquisitions, want 2", len(rd.Acquire))
	}
}
