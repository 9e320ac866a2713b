package failover

import (
	"maps"
	"slices"
	"strings"
)

// ScopedView is what a node knows of the cluster in the scoped watch layout, built from full
// reads (every slice and member key, at start, after a reset, and every FullReadInterval) and
// from single-key answers (its watches, and the member keys a poke names). It turns them into
// the KVSnapshot and the membership the Machine decides on. Not safe for concurrent use.
//
// Invariants: per key, the answer with the highest ModifyIndex wins, whatever order answers
// arrive in; a key absent from an answer at index i is dropped only if nothing newer than i
// was seen for it. Every entry carries the index it is known to be current at (KVSnapshot.AsOf),
// which the Machine's stale-snapshot guards compare per key.
type ScopedView struct {
	base    uint64 // index of the last full read
	slices  map[SliceID]KVEntry
	members map[string]viewMember
	asOf    map[SliceID]uint64 // single-key answers newer than base, present or not
}

type viewMember struct {
	info   MemberInfo
	modify uint64
}

// MemberRecord is one member key as a read saw it: the member as its value and session say,
// and the key's ModifyIndex.
type MemberRecord struct {
	Info        MemberInfo
	ModifyIndex uint64
}

// NewScopedView returns an empty view: nothing is known before the first full read.
func NewScopedView() *ScopedView {
	return &ScopedView{slices: map[SliceID]KVEntry{}, members: map[string]viewMember{}, asOf: map[SliceID]uint64{}}
}

// Index is the index of the last full read (0 before the first).
func (v *ScopedView) Index() uint64 { return v.base }

// Known reports whether a full read has been applied since the view was made or reset.
func (v *ScopedView) Known() bool { return v.base != 0 }

// Reset forgets everything (Consul's index went backwards): the next full read starts over.
func (v *ScopedView) Reset() {
	v.base = 0
	clear(v.slices)
	clear(v.members)
	clear(v.asOf)
}

// Full applies a full read at index: every slice key and member key there was.
func (v *ScopedView) Full(index uint64, entries map[SliceID]KVEntry, members []MemberRecord) {
	for s, old := range v.slices {
		if _, ok := entries[s]; !ok && old.ModifyIndex <= index && v.asOf[s] <= index {
			delete(v.slices, s)
		}
	}
	for s, e := range entries {
		if old, ok := v.slices[s]; !ok || old.ModifyIndex <= e.ModifyIndex {
			if ok || v.asOf[s] <= index {
				v.slices[s] = e
			}
		}
	}
	for s, at := range v.asOf {
		if at <= index {
			delete(v.asOf, s)
		}
	}
	seen := make(map[string]bool, len(members))
	for _, r := range members {
		seen[r.Info.Node] = true
		v.Member(r, true)
	}
	for n, old := range v.members {
		if !seen[n] && old.modify <= index {
			delete(v.members, n)
		}
	}
	v.base = max(v.base, index)
}

// Slice applies one slice key's answer at index (ok false: the key does not exist).
func (v *ScopedView) Slice(s SliceID, e KVEntry, ok bool, index uint64) {
	old, had := v.slices[s]
	switch {
	case ok && (!had || old.ModifyIndex <= e.ModifyIndex):
		v.slices[s] = e
	case !ok && had && old.ModifyIndex <= index:
		delete(v.slices, s)
	}
	if index > v.base && index > v.asOf[s] {
		v.asOf[s] = index
	}
}

// Member applies one member key's answer (ok false: the key does not exist, the node left).
func (v *ScopedView) Member(r MemberRecord, ok bool) {
	n := r.Info.Node
	old, had := v.members[n]
	switch {
	case ok && (!had || old.modify <= r.ModifyIndex):
		v.members[n] = viewMember{r.Info, r.ModifyIndex}
	case !ok && had && old.modify <= r.ModifyIndex:
		delete(v.members, n)
	}
}

// Snapshot is the view as the Machine's KV snapshot: Index is the last full read's, AsOf
// holds the keys known current at a later index.
func (v *ScopedView) Snapshot() *KVSnapshot {
	s := &KVSnapshot{Index: v.base, Entries: maps.Clone(v.slices)}
	if len(v.asOf) > 0 {
		s.AsOf = maps.Clone(v.asOf)
	}
	return s
}

// Members is the membership the view knows, sorted by node.
func (v *ScopedView) Members() []MemberInfo {
	out := make([]MemberInfo, 0, len(v.members))
	for _, m := range v.members {
		out = append(out, m.info)
	}
	slices.SortFunc(out, func(a, b MemberInfo) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// MemberIndex is the ModifyIndex of the member key of node the view holds (0: none).
func (v *ScopedView) MemberIndex(node string) uint64 { return v.members[node].modify }
