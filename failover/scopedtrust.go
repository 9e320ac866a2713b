package failover

import (
	"slices"
	"time"
)

// ScopedTrust holds the scoped layout's rules on when a node may believe what its ScopedView
// shows: written once here, called by both drivers (failover/consul/scoped.go and
// failover/sim/scoped.go). It is pure: it never reads a clock (every method takes the driver's
// reading of it), starts nothing and does no I/O; it names the times at which the driver must
// do a full read, and the driver does it. Not safe for concurrent use.
//
// The rules:
//
//   - Reset: Consul's index went backwards (its state was lost or restored). A new epoch
//     starts: an answer to a request sent in an earlier epoch is dropped (Current, FullRead),
//     as it may show keys of the lost state with indexes above the new ones. A full read whose
//     index is below the last one applied starts a reset itself (FullRead says so).
//   - Hold: after a reset every member writes its member key again, and a full read during the
//     quarantine (max(TTL, LockDelay), the Machine's own after EvKV.Reset) may see only some of
//     them. Membership withholds the membership, so the Machine keeps the one it had (as the
//     service's health, which a state loss does not erase, keeps it in the prefix layout),
//     until a full read sent at or after the quarantine's end. Else a peer whose key is not
//     written yet looks gone, nobody looks settled, and slices go back to unsettled nodes.
//   - Warm-up: a node that took its member key with a new session (a new process, or back
//     after its session ended) is left out of its own Membership until a full read sent at or
//     after one watch interval later, as the prefix layout's node sees itself only in a later
//     answer of its rate-limited membership watch: the peers starting or coming back with it
//     have written their keys by then. Deciding at once, alone in its view, it would take every
//     free slice and hand most of them back. The warm-up begins before that write is sent
//     (Writing): the key may reach the view (the node's own key's watch, a full read) before
//     the driver has Consul's answer, and a round in between would see the node alone.
//   - Older peer: a full read that finds a live member without a member key (a node of a
//     qslice without member keys, or one that registered and has not written its key yet: it
//     writes it a round later) is believed only when a full read sent at least a TTL later
//     finds one again; then the node watches the whole prefix (OlderPeer says so) until a full
//     read finds none.
//
// Invariants: Current(e) holds only for e == Epoch(); the hold and the warm-up each end only in
// FullRead of a read sent at or after their end, and ReadDue reports while such a read is
// wanted; OlderPeer says prefix only after two full reads at least a TTL apart found an older
// peer, with no read in between finding none, and says it until a read finds none.
type ScopedTrust struct {
	self       string
	quarantine time.Duration // max(TTL, LockDelay): the hold after a reset
	warmUp     time.Duration // WatchMinInterval: the warm-up after a new session
	confirm    time.Duration // TTL: between the two reads that must find an older peer

	epoch     uint64
	holding   bool
	holdUntil time.Time // a full read sent at or after it ends the hold
	warming   bool
	writing   bool      // the new session's member key write is on its way: no warmUntil yet
	warmUntil time.Time // a full read sent at or after it ends the warm-up
	suspected bool      // a full read found an older peer; not believed yet
	suspectAt time.Time // when that read was sent
	prefix    bool      // believed: the node watches the whole prefix
}

// ScopedTrustConfig is what ScopedTrust's rules depend on, from the node's configuration.
type ScopedTrustConfig struct {
	Self          string        // this node: left out of Membership during the warm-up
	TTL           time.Duration // the session TTL: the older-peer confirmation delay, and part of the quarantine
	LockDelay     time.Duration // the lock-delay: the other part of the quarantine
	WatchInterval time.Duration // WatchMinInterval: the warm-up
}

// NewScopedTrust returns the rules of a node that has seen no reset, no session and no older
// peer.
func NewScopedTrust(cfg ScopedTrustConfig) *ScopedTrust {
	return &ScopedTrust{self: cfg.Self, quarantine: max(cfg.TTL, cfg.LockDelay), warmUp: cfg.WatchInterval, confirm: cfg.TTL}
}

// Epoch is the number of resets so far: the driver tags each request with the epoch it is sent
// in, and asks Current before it keeps the answer.
func (t *ScopedTrust) Epoch() uint64 { return t.epoch }

// Current reports whether an answer to a request sent in epoch sentIn may be kept: no reset
// came since it was sent.
func (t *ScopedTrust) Current(sentIn uint64) bool { return sentIn == t.epoch }

// Reset starts a new epoch at now (Consul's index went backwards; the driver forgets its view,
// tells the Machine EvKV{Reset} and reads everything again) and holds the membership until a
// full read sent at or after readAt, the quarantine's end: the driver must send one then.
func (t *ScopedTrust) Reset(now time.Time) (readAt time.Time) {
	t.epoch++
	t.holding, t.holdUntil = true, now.Add(t.quarantine)
	return t.holdUntil
}

// NewSession: at now the node took its member key with a new session. It is left out of its
// own membership until a full read sent at or after readAt: the driver must send one then.
func (t *ScopedTrust) NewSession(now time.Time) (readAt time.Time) {
	t.warming, t.writing, t.warmUntil = true, false, now.Add(t.warmUp)
	return t.warmUntil
}

// Writing: the node is about to send the write of its member key with a new session. It is
// left out of its own membership from now on, and no full read ends that before NewSession
// (the write's answer) names when the warm-up ends.
func (t *ScopedTrust) Writing() {
	t.warming, t.writing = true, true
}

// WarmingUp reports whether the node is left out of its own membership (NewSession).
func (t *ScopedTrust) WarmingUp() bool { return t.warming }

// FullReadVerdict says what to do with a full read's answer.
type FullReadVerdict int

const (
	// FullReadApply: apply it to the view (ScopedView.Full) and give the Machine the result.
	FullReadApply FullReadVerdict = iota
	// FullReadStale: it was sent before the last reset: drop it and read again.
	FullReadStale
	// FullReadReset: its index is below the last full read's: Consul's index went backwards.
	// Drop it, reset (Reset, and the driver's own reset), and read again.
	FullReadReset
)

// FullRead judges the answer of a full read sent at sentAt in epoch sentIn, at Consul index
// index, against viewIndex, the index of the last full read applied (ScopedView.Index; 0:
// none since the view was made or reset). When it says FullReadApply, the read ends the hold
// and the warm-up if it was sent at or after their end.
func (t *ScopedTrust) FullRead(sentIn uint64, sentAt time.Time, index, viewIndex uint64) FullReadVerdict {
	switch {
	case !t.Current(sentIn):
		return FullReadStale
	case index < viewIndex:
		return FullReadReset
	}
	if t.holding && !sentAt.Before(t.holdUntil) {
		t.holding = false
	}
	if t.warming && !t.writing && !sentAt.Before(t.warmUntil) {
		t.warming = false
	}
	return FullReadApply
}

// ReadDue reports whether a full read sent at now would end the hold or the warm-up: the
// driver reads again when the read that answered was sent too early (it was on its way
// already when the time came).
func (t *ScopedTrust) ReadDue(now time.Time) bool {
	return (t.holding && !now.Before(t.holdUntil)) || (t.warming && !t.writing && !now.Before(t.warmUntil))
}

// Membership is the membership the Machine may see now: none (ok false: it keeps the one it
// had) during the hold after a reset; the view's members without this node during its
// warm-up; else the view's members.
func (t *ScopedTrust) Membership(v *ScopedView) (members []MemberInfo, ok bool) {
	if t.holding {
		return nil, false
	}
	ms := v.Members()
	if t.warming {
		ms = slices.DeleteFunc(ms, func(m MemberInfo) bool { return m.Node == t.self })
	}
	return ms, true
}

// OlderPeer applies what a full read sent at sentAt found: found, a live member without a
// member key. It says whether the node must watch the whole prefix (the scoped watches see
// nothing of such a member), and, while the finding is not believed yet, when the read that
// may confirm it is due (recheckAt; zero: none is due, read at the usual interval).
func (t *ScopedTrust) OlderPeer(sentAt time.Time, found bool) (prefix bool, recheckAt time.Time) {
	switch {
	case !found:
		t.prefix, t.suspected = false, false
	case t.prefix:
	case !t.suspected:
		t.suspected, t.suspectAt = true, sentAt
	case !sentAt.Before(t.suspectAt.Add(t.confirm)):
		t.prefix, t.suspected = true, false
	}
	if t.suspected {
		recheckAt = t.suspectAt.Add(t.confirm)
	}
	return t.prefix, recheckAt
}
