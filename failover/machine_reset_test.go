package failover

import (
	"testing"
	"time"
)

// A stale acquisition marks the slice until a snapshot at another index shows it. After Consul's
// index went backwards, a snapshot at the very index of that mark is from the new state: the
// slice must be acquired again (the scoped layout's view keeps a key that does not change at the
// full read's index for minutes; found by the simulator, scoped layout, two state losses in a row).
func TestResetForgetsStaleAcquisitions(t *testing.T) {
	q := []QueueSpec{{Name: "in", Slices: 1}}
	m := NewMachine(MachineConfig{Self: "a", Queues: q, TTL: 2 * time.Second, LockDelay: time.Second, HoldDown: 3 * time.Second,
		RenewInterval: 200 * time.Millisecond, DrainTimeout: time.Minute}, nil, nil)
	now := t0
	m.Step(EvLease{Now: now, Session: "s1", Deadline: now.Add(time.Hour)})
	m.Step(EvMembers{Now: now, Members: []MemberInfo{{Node: "a", Live: true}}})
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 6, Entries: map[SliceID]KVEntry{}}})
	rd := m.Ready()
	if len(rd.Acquire) != 1 {
		t.Fatalf("acquisitions %v, want in/0", rd.Acquire)
	}
	m.Step(EvAcquireResult{Now: now, Start: now, Req: rd.Acquire[0], Stale: true})
	m.Advance(rd)
	if rd := m.Ready(); len(rd.Acquire) != 0 {
		t.Fatalf("acquired again on the snapshot that was stale: %v", rd.Acquire)
	}
	m.Step(EvKV{Now: now, Snap: &KVSnapshot{Index: 6, Entries: map[SliceID]KVEntry{}}, Reset: true})
	now = now.Add(3 * time.Second) // past the quarantine
	m.Step(EvTick{Now: now})
	if rd := m.Ready(); len(rd.Acquire) != 1 {
		t.Fatalf("after a reset, a snapshot at the stale mark's index: acquisitions %v, want in/0", rd.Acquire)
	}
}
