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

// ownBoth makes m (self "a", alone) acquire both slices of "in", granted with tokens 11 and 12.
func ownBoth(t *testing.T, m *Machine, now time.Time) {
	t.Helper()
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 5, Entries: map[SliceID]KVEntry{}}})
	carry(m, now, granted(10), nil)
	carry(m, now, granted(20), nil)
	if len(m.owned) != 2 || len(m.assigned["in"]) != 2 {
		t.Fatalf("owned %v, assigned %v: want both slices", m.owned, m.assigned)
	}
}

// TestMachineSnapshotAloneNeverAdopts: a KV snapshot that shows our session on a key we have
// no acquisition pending for (it predates our own release, say) adopts nothing: the Machine asks
// Consul with a re-lock (check-index on the entry it saw), and the key is ours only if Consul
// grants that; a re-lock whose answer was lost is never adopted. An acquisition whose answer
// was lost is adopted from the first snapshot that shows it applied, counted once under its
// move's reason.
func TestMachineSnapshotAloneNeverAdopts(t *testing.T) {
	m, now := testMachine(t)
	s0, s1 := SliceID{"in", 0}, SliceID{"in", 1}
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 50, Entries: map[SliceID]KVEntry{
		s0: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 40, LockIndex: 1},
		s1: {Value: LockValue{Node: "b", Reason: ReasonFailback, To: "a"}, ModifyIndex: 41, LockIndex: 1},
	}}})
	if m.owned[s0] != nil {
		t.Fatal("adopted a key from a snapshot alone")
	}
	// s1 is free: the Machine tries it; s0 it re-locks. Both answers are lost.
	lost := func(a AcquireReq) EvAcquireResult { return EvAcquireResult{Req: a, Err: true} }
	rd := carry(m, now, lost, nil)
	if len(rd.Acquire) != 2 || rd.Acquire[0].Move.Slice != s0 || !rd.Acquire[0].Relock || rd.Acquire[0].CheckIndex != 40 ||
		rd.Acquire[1].Move.Slice != s1 || rd.Acquire[1].Relock {
		t.Fatalf("acquisitions %+v, want a re-lock of s0 with check-index 40, then s1", rd.Acquire)
	}
	// Consul applied s1's: the next snapshot shows s1 with our session, s0 as before.
	later := now.Add(time.Second)
	m.Step(EvLease{Now: later, Session: "sa", Deadline: later.Add(800 * time.Millisecond)})
	m.Step(EvKV{Now: later, Snap: &KVSnapshot{Index: 60, Entries: map[SliceID]KVEntry{
		s0: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 40, LockIndex: 1},
		s1: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 55, LockIndex: 2},
	}}})
	if h := m.owned[s1]; h == nil || h.token != 55 {
		t.Fatalf("s1 after its lost acquisition applied: %+v, want adopted with token 55", h)
	}
	if m.owned[s0] != nil {
		t.Fatal("adopted s0 from a snapshot alone (its re-lock's answer was lost)")
	}
	if got := m.Changes(); got[ReasonFailback] != 1 || len(got) != 1 {
		t.Fatalf("changes %v: want the adoption counted once, as the failback it was", got)
	}
	// Consul says s0 is not as the snapshot shows it (our release was applied since, say): its
	// re-lock's check fails and s0 stays not ours, not tried again on this snapshot.
	stale := func(a AcquireReq) EvAcquireResult { return EvAcquireResult{Req: a, Stale: true} }
	if rd := carry(m, later, stale, nil); len(rd.Assign) != 1 || len(rd.Assign[0].Slices) != 1 || rd.Assign[0].Slices[0] != 1 ||
		len(rd.Acquire) != 1 || rd.Acquire[0].Move.Slice != s0 {
		t.Fatalf("ready %+v: want s1 assigned and s0 re-locked", rd)
	}
	if rd := carry(m, later, stale, nil); m.owned[s0] != nil || len(rd.Acquire) != 0 {
		t.Fatalf("s0 owned %v, acquire %+v: want s0 not ours and not tried again on the same snapshot", m.owned[s0], rd.Acquire)
	}
}

// TestMachineUnsureAcquisitionThatCannotApplyIsForgotten: once a snapshot shows the key changed
// (taken by another node), a lost acquisition can no longer be applied, and a later snapshot
// showing our session on the key does not make us adopt it.
func TestMachineUnsureAcquisitionThatCannotApplyIsForgotten(t *testing.T) {
	m, now := testMachine(t)
	s0 := SliceID{"in", 0}
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 5, Entries: map[SliceID]KVEntry{{"in", 1}: {Session: "sb", Value: LockValue{Node: "b"}, ModifyIndex: 4}}}})
	carry(m, now, func(a AcquireReq) EvAcquireResult { return EvAcquireResult{Req: a, Err: true} }, nil)
	if _, ok := m.unsure[s0]; !ok {
		t.Fatal("a lost acquisition is not remembered")
	}
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 9, Entries: map[SliceID]KVEntry{
		s0: {Session: "sb", Value: LockValue{Node: "b"}, ModifyIndex: 8, LockIndex: 1}}}})
	if _, ok := m.unsure[s0]; ok {
		t.Fatal("a lost acquisition whose check can no longer pass is still remembered")
	}
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 12, Entries: map[SliceID]KVEntry{
		s0: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 11, LockIndex: 2}}}})
	if m.owned[s0] != nil || len(m.Changes()) != 0 {
		t.Fatalf("adopted from a snapshot alone: owned %v, changes %v", m.owned, m.Changes())
	}
}

// TestMachineLostReleaseAnswerIsTheHandoff: a hand-off whose release got no answer and whose
// retry finds the key gone happened (Consul applied the first attempt): it counts under its
// own reason, not lease_lost, and a snapshot from before it does not bring the slice back.
func TestMachineLostReleaseAnswerIsTheHandoff(t *testing.T) {
	m, now := testMachine(t)
	ownBoth(t, m, now)
	m.Step(EvDrain{Now: now})
	calls := 0
	release := func(r ReleaseReq) EvReleaseResult {
		calls++
		if calls <= 2 {
			return EvReleaseResult{Req: r, Err: true} // applied, the answer lost
		}
		return EvReleaseResult{Req: r, Gone: true}
	}
	for i := 0; i < 6; i++ {
		carry(m, now, granted(100), release)
	}
	got := m.Changes()
	if got[ReasonDrain] != 2 || got[ReasonLeaseLost] != 0 {
		t.Fatalf("changes %v: want both hand-offs counted as drain, none as lease_lost", got)
	}
	if rd := m.Ready(); !rd.DrainDone {
		t.Fatal("drain not done with nothing held")
	}
	// A snapshot taken before the releases still shows our session on both keys.
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 30, Entries: map[SliceID]KVEntry{
		{"in", 0}: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 11, LockIndex: 1},
		{"in", 1}: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 12, LockIndex: 1},
	}}})
	if len(m.owned) != 0 {
		t.Fatalf("a snapshot from before the hand-offs brought back %v", m.owned)
	}
	// Without a lost answer, a release that finds the key gone is a lost lock.
	m2, now2 := testMachine(t)
	ownBoth(t, m2, now2)
	m2.Step(EvDrain{Now: now2})
	for i := 0; i < 3; i++ {
		carry(m2, now2, granted(100), func(r ReleaseReq) EvReleaseResult { return EvReleaseResult{Req: r, Gone: true} })
	}
	if got := m2.Changes(); got[ReasonLeaseLost] != 2 || got[ReasonDrain] != 0 {
		t.Fatalf("changes %v: want two lease_lost", got)
	}
}

// TestMachineAdoptsThePreviousProcessSession: after EvAdopt the first snapshot on the adopted
// session makes its keys ours with their tokens unchanged and no ownership change; without
// EvAdopt the same events adopt nothing (and the previous run's session is destroyed).
func TestMachineAdoptsThePreviousProcessSession(t *testing.T) {
	snap := func(idx uint64) *KVSnapshot {
		return &KVSnapshot{Index: idx, Entries: map[SliceID]KVEntry{
			{"in", 0}: {Session: "old", Value: LockValue{Node: "a"}, ModifyIndex: 40, LockIndex: 3},
			{"in", 1}: {Session: "sb", Value: LockValue{Node: "b"}, ModifyIndex: 41, LockIndex: 1},
		}}
	}
	cfg := MachineConfig{Self: "a", Queues: []QueueSpec{{Name: "in", Slices: 2}}, TTL: 2 * time.Second, LockDelay: time.Second,
		HoldDown: 3 * time.Second, RenewInterval: 200 * time.Millisecond, DrainTimeout: time.Minute}
	members := []MemberInfo{{Node: "a", Live: true}} // b holds in/1 and is gone from the members: nobody takes a held slice

	m := NewMachine(cfg, nil, nil)
	now := t0
	m.Step(EvMembers{Now: now, Members: members})
	m.Step(EvKV{Now: now, Snap: snap(50)}) // the watch answered before the keeper's first round
	m.Step(EvAdopt{Now: now, Session: "old"})
	m.Step(EvLease{Now: now, Session: "old", Deadline: now.Add(800 * time.Millisecond)})
	rd := carry(m, now, granted(100), nil)
	h := m.owned[SliceID{"in", 0}]
	if h == nil || h.token != 40 || h.lockIndex != 3 || len(m.owned) != 1 {
		t.Fatalf("owned %v: want in/0 adopted with token 40, lock index 3", m.owned)
	}
	if len(rd.Acquire) != 0 || len(rd.DestroySessions) != 0 || len(m.Changes()) != 0 {
		t.Fatalf("adoption: acquire %+v, destroy %v, changes %v; want none of them", rd.Acquire, rd.DestroySessions, m.Changes())
	}
	if len(rd.Assign) != 1 || len(rd.Assign[0].Slices) != 1 || rd.Tokens[SliceID{"in", 0}] != 40 {
		t.Fatalf("ready %+v: want in/0 processed with token 40", rd)
	}
	// It is handed off later (say b drains into it... here: a drain), and a snapshot from
	// before the release must not bring it back: adoption is for the first snapshot only.
	m.Step(EvDrain{Now: now})
	carry(m, now, granted(100), func(r ReleaseReq) EvReleaseResult { return EvReleaseResult{Req: r, Index: 60} })
	carry(m, now, granted(100), func(r ReleaseReq) EvReleaseResult { return EvReleaseResult{Req: r, Index: 60} })
	if len(m.owned) != 0 {
		t.Fatalf("drain left %v", m.owned)
	}
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 55, Entries: map[SliceID]KVEntry{
		{"in", 0}: {Session: "old", Value: LockValue{Node: "a"}, ModifyIndex: 58, LockIndex: 3}}}})
	if len(m.owned) != 0 {
		t.Fatalf("a later snapshot adopted %v again", m.owned)
	}

	// Without EvAdopt: a new session; the old one's key is not ours, its session is destroyed.
	m2 := NewMachine(cfg, nil, nil)
	m2.Step(EvMembers{Now: now, Members: members})
	m2.Step(EvKV{Now: now, Snap: snap(50)})
	m2.Step(EvLease{Now: now, Session: "new", Deadline: now.Add(800 * time.Millisecond)})
	rd = carry(m2, now, granted(100), nil)
	if len(m2.owned) != 0 || len(rd.DestroySessions) != 1 || rd.DestroySessions[0] != "old" {
		t.Fatalf("fresh start: owned %v, destroy %v; want nothing owned and the old session destroyed", m2.owned, rd.DestroySessions)
	}
	// EvAdopt of a session the lease never carries adopts nothing.
	m3 := NewMachine(cfg, nil, nil)
	m3.Step(EvAdopt{Now: now, Session: "old"})
	m3.Step(EvMembers{Now: now, Members: members})
	m3.Step(EvKV{Now: now, Snap: snap(50)})
	m3.Step(EvLease{Now: now, Session: "new", Deadline: now.Add(800 * time.Millisecond)})
	if len(m3.owned) != 0 {
		t.Fatalf("adopted %v without running on the adopted session", m3.owned)
	}
}

// TestMachineStopForRestartKeepsLocks: EvStop with KeepLocks narrows the assignee and releases
// nothing; the stop is complete once the assignee let go, with the locks still held.
func TestMachineStopForRestartKeepsLocks(t *testing.T) {
	m, now := testMachine(t)
	ownBoth(t, m, now)
	m.Step(EvStop{Now: now, KeepLocks: true})
	rd := m.Ready()
	if len(rd.Release) != 0 || len(rd.Assign) != 1 || len(rd.Assign[0].Slices) != 0 || len(rd.Assign[0].Removed) != 2 {
		t.Fatalf("stop for a restart: %+v; want the assignee narrowed to nothing and no release", rd)
	}
	if rd.Meta["draining"] != "false" {
		t.Errorf("Meta draining %q during a stop for a restart, want false", rd.Meta["draining"])
	}
	m.Advance(rd)
	m.Step(EvAssigned{Now: now, Gen: rd.Assign[0].Gen, Pending: true})
	if m.Stopped() {
		t.Fatal("stopped while the assignee still has messages in flight")
	}
	m.Step(EvAssigneeReleased{Now: now, Gen: rd.Assign[0].Gen})
	if !m.Stopped() || !m.KeepsLocks() || len(m.HeldAtStop()) != 0 || len(m.owned) != 2 {
		t.Fatalf("stopped %v, keeps %v, held at stop %v, owned %d; want stopped with both locks kept",
			m.Stopped(), m.KeepsLocks(), m.HeldAtStop(), len(m.owned))
	}
	if rd := m.Ready(); len(rd.Release) != 0 || len(rd.Acquire) != 0 {
		t.Fatalf("after the stop: %+v", rd)
	}
	// A leave while stopping for a restart hands everything off after all.
	m.Step(EvStop{Now: now})
	if rd := carry(m, now, granted(100), func(r ReleaseReq) EvReleaseResult { return EvReleaseResult{Req: r, Index: 70} }); len(rd.Release) != 2 {
		t.Fatalf("leave: releases %+v, want both", rd.Release)
	}
	if !m.Stopped() || m.KeepsLocks() || len(m.owned) != 0 {
		t.Fatalf("after the leave: stopped %v keeps %v owned %v", m.Stopped(), m.KeepsLocks(), m.owned)
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

// TestMachineAdoptedSliceBeingHandedOffIsReleasedNotProcessed: a slice the previous process
// was handing off (its release may still be applied) is adopted only to be released again.
func TestMachineAdoptedSliceBeingHandedOffIsReleasedNotProcessed(t *testing.T) {
	cfg := MachineConfig{Self: "a", Queues: []QueueSpec{{Name: "in", Slices: 2}}, TTL: 2 * time.Second, LockDelay: time.Second,
		HoldDown: 3 * time.Second, RenewInterval: 200 * time.Millisecond, DrainTimeout: time.Minute}
	m := NewMachine(cfg, nil, nil)
	now := t0
	s0, s1 := SliceID{"in", 0}, SliceID{"in", 1}
	m.Step(EvAdopt{Now: now, Session: "old", Releasing: []SliceID{s0}})
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvLease{Now: now, Session: "old", Deadline: now.Add(800 * time.Millisecond)})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 50, Entries: map[SliceID]KVEntry{
		s0: {Session: "old", Value: LockValue{Node: "a"}, ModifyIndex: 40, LockIndex: 1},
		s1: {Session: "old", Value: LockValue{Node: "a"}, ModifyIndex: 41, LockIndex: 1},
	}}})
	var released []SliceID
	gone := func(r ReleaseReq) EvReleaseResult {
		released = append(released, r.Slice)
		return EvReleaseResult{Req: r, Gone: true}
	}
	for i := 0; i < 3; i++ {
		rd := carry(m, now, func(a AcquireReq) EvAcquireResult { return EvAcquireResult{Req: a, Stale: true} }, gone)
		for _, a := range rd.Assign {
			for _, i := range a.Slices {
				if i == 0 {
					t.Fatalf("in/0 assigned: %+v; a slice being handed off must not be processed", a)
				}
			}
		}
	}
	if len(released) != 1 || released[0] != s0 {
		t.Fatalf("released %v, want in/0 once", released)
	}
	if !m.assigned["in"][1] {
		t.Fatal("in/1 not processed after its adoption")
	}
	if got := m.Changes(); got[ReasonLeaseLost] != 0 || got[ReasonReleased] != 1 {
		t.Fatalf("changes %v: the release found gone was the previous process's: released, not lease_lost", got)
	}
}

// stuckAfterStateLoss brings m (self "a", alone, session "sa") to the state Consul's loss of its
// state can leave behind: the restarted Consul granted both slices at once (tokens 21 and 22,
// below the index of the old Consul's last snapshot, which still stood and did not show them),
// the Machine dropped them on that snapshot (the stale-snapshot guard cannot tell it is older),
// and the restarted Consul's first snapshot, returned, shows both keys held by our session.
// It returns that snapshot and the end of the quarantine.
func stuckAfterStateLoss(t *testing.T, m *Machine, now time.Time) (*KVSnapshot, time.Time) {
	t.Helper()
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 312, Entries: map[SliceID]KVEntry{}}})
	if rd := carry(m, now, granted(20), nil); len(rd.Acquire) != 2 || len(m.owned) != 0 {
		t.Fatalf("setup: acquisitions %+v, owned %v; want both granted and dropped on the old snapshot", rd.Acquire, m.owned)
	}
	fresh := &KVSnapshot{Index: 30, Entries: map[SliceID]KVEntry{
		{"in", 0}: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 21, LockIndex: 1},
		{"in", 1}: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 22, LockIndex: 1},
	}}
	m.Step(EvKV{Now: now, Snap: fresh, Reset: true})
	return fresh, now.Add(2 * time.Second) // max(TTL, LockDelay)
}

// relockAnswer answers like Consul with the keys of snap: check-index, then a lock its holder
// asks for again with the same value writes nothing (the token is the entry's ModifyIndex, the
// LockIndex stays).
func relockAnswer(snap *KVSnapshot) func(AcquireReq) EvAcquireResult {
	return func(a AcquireReq) EvAcquireResult {
		e, ok := snap.Entries[a.Move.Slice]
		if !ok || !a.Exists || a.CheckIndex != e.ModifyIndex || e.Session != a.Session {
			return EvAcquireResult{Req: a, Stale: ok != a.Exists || a.CheckIndex != e.ModifyIndex}
		}
		return EvAcquireResult{Req: a, Granted: true, Token: e.ModifyIndex, LockIndex: e.LockIndex}
	}
}

// TestMachineRelocksKeysItsSessionHolds: after Consul lost its state, slices dropped on a
// snapshot from before the reset stay locked by our session; the planner sees them as ours and
// plans nothing, and the snapshot alone adopts nothing. Once the quarantine is over the Machine
// re-locks them with a check-index on the entries it saw, and processes them again under the
// tokens Consul returns. A re-lock whose answer was lost is tried again, never adopted from a
// snapshot; one whose check fails waits for a newer snapshot.
func TestMachineRelocksKeysItsSessionHolds(t *testing.T) {
	m, now := testMachine(t)
	s0, s1 := SliceID{"in", 0}, SliceID{"in", 1}
	fresh, after := stuckAfterStateLoss(t, m, now)
	if rd := m.Ready(); len(rd.Acquire) != 0 || len(m.owned) != 0 {
		t.Fatalf("in the quarantine: acquire %+v, owned %v; want nothing", rd.Acquire, m.owned)
	}
	m.Step(EvLease{Now: after, Session: "sa", Deadline: after.Add(800 * time.Millisecond)})

	// The first re-locks' answers are lost: not adopted from a snapshot that shows our session
	// (it did before the re-lock), tried again after the backoff.
	lost := func(a AcquireReq) EvAcquireResult { return EvAcquireResult{Req: a, Err: true} }
	rd := carry(m, after, lost, nil)
	if len(rd.Acquire) != 2 {
		t.Fatalf("after the quarantine: acquire %+v; want both keys re-locked", rd.Acquire)
	}
	for _, a := range rd.Acquire {
		e := fresh.Entries[a.Move.Slice]
		if !a.Relock || !a.Exists || a.CheckIndex != e.ModifyIndex || a.Session != "sa" || a.Value.Node != "a" {
			t.Errorf("re-lock %+v: want check-index %d with our session", a, e.ModifyIndex)
		}
	}
	m.Step(EvKV{Now: after, Snap: fresh})
	if len(m.owned) != 0 || len(m.unsure) != 0 {
		t.Fatalf("owned %v, unsure %v after lost re-locks: a snapshot alone must not adopt", m.owned, m.unsure)
	}

	// s1 changed meanwhile (the lost re-lock was applied with a new value): its check fails,
	// and it waits for a snapshot that shows it.
	later := after.Add(time.Second)
	m.Step(EvLease{Now: later, Session: "sa", Deadline: later.Add(800 * time.Millisecond)})
	now1 := &KVSnapshot{Index: 40, Entries: map[SliceID]KVEntry{
		s0: fresh.Entries[s0],
		s1: {Session: "sa", Value: LockValue{Node: "a"}, ModifyIndex: 35, LockIndex: 1},
	}}
	rd = carry(m, later, relockAnswer(now1), nil)
	if len(rd.Acquire) != 2 || m.owned[s0] == nil || m.owned[s1] != nil {
		t.Fatalf("acquire %+v, owned %v: want both re-locks tried, s0 granted, s1 refused by its check", rd.Acquire, m.owned)
	}
	if rd := carry(m, later, relockAnswer(now1), nil); len(rd.Acquire) != 0 {
		t.Fatalf("re-locked again on the same snapshot: %+v", rd.Acquire)
	}
	m.Step(EvKV{Now: later, Snap: now1})
	carry(m, later, relockAnswer(now1), nil)
	rd = carry(m, later, relockAnswer(now1), nil)
	if !m.assigned["in"][0] || !m.assigned["in"][1] || rd.Tokens[s0] != 21 || rd.Tokens[s1] != 35 {
		t.Fatalf("assigned %v, tokens %v: want both processed, with tokens 21 and 35", m.assigned["in"], rd.Tokens)
	}
	if got := m.Changes(); got[ReasonLeaseLost] != 2 || got[ReasonAcquired] != 4 || len(got) != 2 {
		t.Fatalf("changes %v: want 2 acquired, 2 lost, 2 re-locked (acquired)", got)
	}
	if rd := m.Ready(); rd.HasWork() {
		t.Fatalf("nothing left to do, got %+v", rd)
	}
}

// TestMachineRelocksToHandOffWhenDraining: a node that drains re-locks such keys too, then
// hands them off, so its drain does not end with keys its session holds for nobody.
func TestMachineRelocksToHandOffWhenDraining(t *testing.T) {
	m, now := testMachine(t)
	fresh, after := stuckAfterStateLoss(t, m, now)
	m.Step(EvLease{Now: after, Session: "sa", Deadline: after.Add(800 * time.Millisecond)})
	m.Step(EvDrain{Now: after})
	if rd := m.Ready(); rd.DrainDone {
		t.Fatal("drain done while our session holds two keys")
	}
	var released []SliceID
	release := func(r ReleaseReq) EvReleaseResult {
		released = append(released, r.Slice)
		return EvReleaseResult{Req: r, Index: 50}
	}
	for i := 0; i < 3; i++ {
		rd := carry(m, after, relockAnswer(fresh), release)
		for _, a := range rd.Assign {
			if len(a.Slices) > 0 {
				t.Fatalf("assigned %+v while draining", a)
			}
		}
	}
	if len(released) != 2 || !m.Ready().DrainDone {
		t.Fatalf("released %v, drain done %v: want both keys re-locked and handed off", released, m.Ready().DrainDone)
	}
	if got := m.Changes(); got[ReasonDrain] != 2 {
		t.Fatalf("changes %v: want two drain hand-offs", got)
	}
}
