package chaos

import (
	"fmt"
	"slices"
	"time"
)

// Move is one change of a slice's owner, as the node that took the slice logged it ("slice
// ownership changed" with to = itself). A release is not a move by itself: the next acquisition
// is. A node taking back a slice it held itself (its session was lost, nobody took the slice
// meanwhile) is no move either.
type Move struct {
	At       time.Time
	Slice    string
	From, To string
	Reason   string
}

// movesFromLog returns the moves node logged in one of its logs.
func movesFromLog(node string, nl NodeLog) []Move {
	var out []Move
	for _, c := range nl.ChangeLines {
		if c.To != node || c.From == node || c.Reason == "lease_lost" {
			continue
		}
		out = append(out, Move{At: c.At, Slice: c.Slice, From: c.From, To: c.To, Reason: c.Reason})
	}
	return out
}

// Churn is the ownership churn of a run: every move attributed to the fault during which it
// happened (from the fault until the next one; the soak waits between faults until every slice
// is back at its home node), against the least that fault needed.
type Churn struct {
	// Boot counts the moves before the first fault (the cluster taking its slices).
	Boot int
	// Moves and Min count, per fault kind, the moves during its faults and the least they
	// needed. Excess is the sum over faults of the moves beyond their minimum.
	Moves, Min map[Kind]int
	Excess     int
	// Spurious counts the moves during faults that needed none: a node briefly slow or cut off
	// (stall, blip), a Consul restart, a pause or a partition its session survived.
	Spurious int
	// Details lists, per fault with moves beyond its minimum, the fault and its moves.
	Details []string
}

// MinMoves is the least number of moves fault f needed, given what it did to its node.
//
//   - stall, blip, consul-restart: none. They are shorter than the bounds the timing defaults
//     tolerate (docs/failover.md): the node keeps its session and so its slices.
//   - drain, fscut: every slice the node held goes away and comes back when it is
//     undrained or its filesystem answers again: 2k.
//   - anything else (kill, restart, pause, partition, blackhole): 2k when the node's session
//     ended (its slices go to the others, then back after the hold-down), none when it survived
//     (a pause or cut shorter than the TTL). A restarted process that adopted its session
//     (restart in place) needs none.
//
// k is the number of slices the node held just before the fault.
func MinMoves(f FaultRecord, sessionLost bool) int {
	switch f.Kind {
	case KindStall, KindBlip, KindConsulRestart:
		return 0
	case KindDrain, KindFSCut:
		return 2 * f.Owned
	default:
		if sessionLost {
			return 2 * f.Owned
		}
		return 0
	}
}

// analyzeChurn attributes moves to faults. sessions lists, per node, when it created a session.
func analyzeChurn(faults []FaultRecord, moves []Move, sessions map[string][]time.Time) Churn {
	c := Churn{Moves: map[Kind]int{}, Min: map[Kind]int{}}
	ms := slices.Clone(moves)
	slices.SortFunc(ms, func(a, b Move) int { return a.At.Compare(b.At) })
	fs := slices.Clone(faults)
	slices.SortFunc(fs, func(a, b FaultRecord) int { return a.At.Compare(b.At) })
	i := 0
	for ; i < len(ms) && (len(fs) == 0 || ms[i].At.Before(fs[0].At)); i++ {
		c.Boot++
	}
	for fi, f := range fs {
		var end time.Time // zero: the end of the run
		if fi+1 < len(fs) {
			end = fs[fi+1].At
		}
		var in []Move
		for ; i < len(ms) && (end.IsZero() || ms[i].At.Before(end)); i++ {
			in = append(in, ms[i])
		}
		lost := false
		for _, t := range sessions[f.NodeName] {
			lost = lost || (f.NodeName != "" && !t.Before(f.At) && (end.IsZero() || t.Before(end)))
		}
		min := MinMoves(f, lost)
		c.Moves[f.Kind] += len(in)
		c.Min[f.Kind] += min
		if min == 0 {
			c.Spurious += len(in)
		}
		if len(in) > min {
			c.Excess += len(in) - min
			if len(c.Details) < maxDetails {
				s := fmt.Sprintf("%s (%s, %d slices, session %s): %d moves, %d needed:", f.Fault, orNone(f.NodeName), f.Owned,
					map[bool]string{true: "lost", false: "kept"}[lost], len(in), min)
				for j, m := range in {
					if j == 8 {
						s += fmt.Sprintf(" ... (%d more)", len(in)-j)
						break
					}
					s += fmt.Sprintf(" %s %s %s->%s (%s);", stamp(m.At), m.Slice, orNone(m.From), m.To, m.Reason)
				}
				c.Details = append(c.Details, s)
			}
		}
	}
	return c
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
