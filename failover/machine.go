package failover

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/qslice/qslice/internal/retry"
)

// Machine is the ownership state machine of one node, in the style of etcd-io/raft's RawNode: it
// never does I/O and never reads a clock. The driver (consul.Coordinator in production, the
// simulator in failover/sim) feeds it events with Step, asks Ready what must be done, does it
// (Consul transactions, SetSlices, session destroys) and reports every outcome back with Step,
// then calls Advance. Given the same events, a Machine takes the same decisions.
//
// What the driver must do:
//
//  1. Step every input as it happens: the lease (EvLease) whenever the session or its deadline
//     changes, every KV snapshot (EvKV, with Reset when Consul's index went backwards), every
//     membership answer (EvMembers), the queues this node cannot work (EvUnavailable), Drain,
//     Undrain, Stop (KeepLocks for a restart), and EvTick at least every RenewInterval and at the
//     lease deadline. To resume a previous process's session (restart in place), step EvAdopt
//     before the first EvLease, and only under the conditions EvAdopt states.
//  2. After each batch of events call Ready and carry out, in this order: publish Tokens, call
//     SetSlices for each Assign, carry out each Release transaction (Step EvReleaseResult; stop
//     at the first error), each Acquire transaction (Step EvAcquireResult; stop at the first
//     error), DestroySessions and ResetConnections; then Advance(rd), then Step EvAssigned for
//     each Assign with whether the channel SetSlices returned is still open (and
//     EvAssigneeReleased when it closes). Repeat while Ready has work (a few rounds: a release
//     follows a narrowing, a widening follows an acquisition).
//  3. Readers never touch the Machine: the driver publishes Ready.Status, an immutable
//     snapshot.
type Machine struct {
	cfg    MachineConfig
	log    *slog.Logger
	tracer trace.Tracer

	now        time.Time
	session    string
	deadline   time.Time
	critical   map[SliceID]time.Time
	leaseValid bool
	lapsedAt   time.Time // when the lease last lapsed; zero before the first lapse
	owned      map[SliceID]*held
	assigned   map[string]map[int]bool // what the assignee currently has
	releasing  map[SliceID]uint64      // removed from the assignee (generation), not yet released
	gen        uint64                  // last SetSlices generation
	releasedAt map[SliceID]uint64      // ModifyIndex of our last release (stale-snapshot guard)
	destroyed  map[string]bool         // stale sessions already destroyed (or ours, ended)
	draining   bool
	// unavailable: queues this node cannot work now (QueueAvailability), published in Meta.
	unavailable map[string]bool
	stopping    bool
	stopBy      time.Time
	// keepLocks: the stop is a restart (EvStop.KeepLocks): narrow the assignee, release nothing.
	keepLocks bool
	// adoptSession: a session of a previous run of this node that the driver adopted
	// (EvAdopt); adopting: the Machine runs on it and has not reconciled a KV snapshot yet.
	adoptSession   string
	adopting       bool
	adoptReleasing map[SliceID]bool // EvAdopt.Releasing
	// unsure: acquisitions whose answer was lost (EvAcquireResult.Err): Consul may have applied
	// them. Only these, and an adopted session's locks, are ever adopted from a KV snapshot.
	unsure     map[SliceID]AcquireReq
	notBefore  time.Time             // acquisitions back off until then
	retryAt    map[SliceID]time.Time // a refused lock (held, lock-delay) is retried after one RenewInterval
	staleAt    map[SliceID]uint64    // KV snapshot index at which an acquisition found the key changed
	quarantine time.Time             // no acquisitions until then (after a Consul state reset)
	acqBackoff backoff.BackOff
	kv         *KVSnapshot
	members    []MemberInfo
	plan       Plan
	planner    Planner
	states     map[SliceID]SliceState // reused by sliceStates
	// dirty: something the snapshot shows changed since the last one (a tick alone changes
	// nothing: the previous snapshot is handed out again).
	dirty      bool
	last       Ready
	changes    map[string]uint64
	toDestroy  []string // sessions decided to destroy, not yet handed out
	resetConns bool
	// scopeGen changes whenever something WatchScope reads may have changed (WatchScopeGen);
	// scopeHolders are the holders of the slices the last WatchScope watched, as it read them,
	// and scopeTargets the slices the last plan targets at this node: an EvKV or a plan changes
	// the scope only through these.
	scopeGen     uint64
	scopeHolders map[SliceID]string
	scopeTargets []SliceID
}

// MachineConfig is what a Machine needs to know; ConsulConfig.MachineConfig derives it.
type MachineConfig struct {
	Self          string
	Queues        []QueueSpec
	TTL           time.Duration
	LockDelay     time.Duration
	HoldDown      time.Duration
	RenewInterval time.Duration
	DrainTimeout  time.Duration
	StuckHandoff  bool
	StuckAfter    time.Duration
	// Cluster and Version go into the service Meta, with ServiceMeta (whose keys the Machine
	// sets itself lose).
	Cluster     string
	Version     string
	ServiceMeta map[string]string
	// Backoff builds the acquisition backoff (nil: retry.New with jitter on the system clock).
	// The simulator passes one without jitter, so runs are reproducible.
	Backoff func(initial, maxInterval time.Duration) backoff.BackOff
}

// MachineConfig derives the state machine's configuration.
func (c ConsulConfig) MachineConfig() MachineConfig {
	return MachineConfig{Self: c.NodeID, Queues: c.Queues, TTL: c.TTL, LockDelay: c.LockDelay, HoldDown: c.HoldDown,
		RenewInterval: c.RenewInterval, DrainTimeout: c.DrainTimeout, StuckHandoff: c.StuckHandoff, StuckAfter: c.StuckAfter,
		Cluster: c.Cluster, Version: c.Version, ServiceMeta: c.ServiceMeta}
}

// held is a slice whose lock this node holds.
type held struct {
	session   string
	token     uint64 // ModifyIndex at acquisition: the fencing token
	lockIndex uint64
	since     time.Time
	value     LockValue
	handoff   *Move // set once the planner asked to hand it off; the lock goes once released
	// handoffSince is when handoff was set (for the hand-off span).
	handoffSince time.Time
	// releaseErr: a release of this hand-off got no answer; Consul may have applied it.
	releaseErr bool
}

// KVEntry is one slice key as a KV read saw it.
type KVEntry struct {
	Session     string // holder's session, "" when free
	Value       LockValue
	ModifyIndex uint64
	LockIndex   uint64
}

// KVSnapshot is one answer of the KV watch: every slice key and the index of the answer.
// In the scoped layout (ScopedView) keys come from different answers: Index is the last full
// read's and AsOf holds the keys known current at a later index.
type KVSnapshot struct {
	Index   uint64
	Entries map[SliceID]KVEntry
	AsOf    map[SliceID]uint64
}

// asOf is the index at which the snapshot's entry for s (or its absence) is known current.
func (k *KVSnapshot) asOf(s SliceID) uint64 {
	if i, ok := k.AsOf[s]; ok && i > k.Index {
		return i
	}
	return k.Index
}

// MemberInfo is one qslice service instance as the membership watch saw it.
type MemberInfo struct {
	Node     string
	Live     bool
	Draining bool
	// Unavailable: queues the node cannot work (Meta unavailable, comma-separated).
	Unavailable map[string]bool
	LiveSince   time.Time // published by the node itself (Meta live_since); zero if absent
}

// LockValue is the JSON value of a slice key. While locked, Node is the owner; once released,
// Node is the last owner and Reason why it let go ("" when it lost the lock).
type LockValue struct {
	Node   string  `json:"node"`
	Reason string  `json:"reason,omitempty"`
	To     string  `json:"to,omitempty"`
	Avoid  []Avoid `json:"avoid,omitempty"`
}

// Events. Each carries the driver's reading of the clock when it happened.
type (
	// Event is an input of the Machine.
	Event interface{ at() time.Time }

	// EvTick: time passed.
	EvTick struct{ Now time.Time }
	// EvLease: the keeper's view of the session: its ID ("" when none), the lease deadline
	// (zero when none), and since when owned slices have been critical.
	EvLease struct {
		Now           time.Time
		Session       string
		Deadline      time.Time
		CriticalSince map[SliceID]time.Time
	}
	// EvKV: a KV watch answer; Reset when Consul's index went backwards before it.
	EvKV struct {
		Now   time.Time
		Snap  *KVSnapshot
		Reset bool
	}
	// EvMembers: a membership watch answer.
	EvMembers struct {
		Now     time.Time
		Members []MemberInfo
	}
	// EvUnavailable: the queues this node cannot work now.
	EvUnavailable struct {
		Now    time.Time
		Queues map[string]bool
	}
	// EvDrain / EvUndrain: operator control.
	EvDrain   struct{ Now time.Time }
	EvUndrain struct{ Now time.Time }
	// EvStop: Run's context ended: hand everything off within DrainTimeout. With KeepLocks
	// (a restart: SIGTERM) only narrow the assignee to nothing and release no lock: the session
	// and its locks stay for the next process of this node to adopt (EvAdopt), or, if none comes,
	// for Consul to release when the session's check lapses (TTL, then the lock-delay).
	EvStop struct {
		Now       time.Time
		KeepLocks bool
	}
	// EvAdopt: the driver adopts Session, the session of a previous process of this node, and
	// vouches that no process of that run can still act: it holds the node's local lock (the
	// previous process is gone), the previous run's handler process trees are dead, and Consul
	// confirmed the session exists, is named for this node and is bound to its check. Step it
	// before the EvLease that carries the session. The first KV snapshot reconciled on that
	// session then makes every slice key it holds ours, with its fencing token unchanged:
	// Consul never saw another holder, so no other node can hold a token for it in between.
	//
	// Releasing lists the slices the previous process was handing off: a release it sent may
	// still be applied by Consul (an agent forwards a request whose client died), after which
	// the next owner may take the slice at once. They are adopted only to be released again,
	// never processed.
	EvAdopt struct {
		Now       time.Time
		Session   string
		Releasing []SliceID
	}
	// EvAssigned: SetSlices of Assign Gen was called; Pending when its channel is not closed
	// yet (the removed slices still have messages in flight).
	EvAssigned struct {
		Now     time.Time
		Gen     uint64
		Pending bool
	}
	// EvAssigneeReleased: the channel of SetSlices generation Gen closed.
	EvAssigneeReleased struct {
		Now time.Time
		Gen uint64
	}
	// EvAcquireResult: the outcome of an Acquire transaction. Err: the request failed (no
	// answer, denied); Stale: the check failed (the key changed since the snapshot); otherwise
	// Granted with the pair's ModifyIndex (the fencing token) and LockIndex, or refused (held,
	// lock-delay). Start is when the call started.
	EvAcquireResult struct {
		Now       time.Time
		Start     time.Time
		Req       AcquireReq
		Err       bool
		Stale     bool
		Granted   bool
		Token     uint64
		LockIndex uint64
	}
	// EvReleaseResult: the outcome of a Release transaction. Err: failed, retried later;
	// Gone: not ours any more (our session was invalidated meanwhile); else released at Index.
	EvReleaseResult struct {
		Now   time.Time
		Req   ReleaseReq
		Err   bool
		Gone  bool
		Index uint64
	}
)

func (e EvTick) at() time.Time             { return e.Now }
func (e EvLease) at() time.Time            { return e.Now }
func (e EvKV) at() time.Time               { return e.Now }
func (e EvMembers) at() time.Time          { return e.Now }
func (e EvUnavailable) at() time.Time      { return e.Now }
func (e EvDrain) at() time.Time            { return e.Now }
func (e EvUndrain) at() time.Time          { return e.Now }
func (e EvStop) at() time.Time             { return e.Now }
func (e EvAdopt) at() time.Time            { return e.Now }
func (e EvAssigned) at() time.Time         { return e.Now }
func (e EvAssigneeReleased) at() time.Time { return e.Now }
func (e EvAcquireResult) at() time.Time    { return e.Now }
func (e EvReleaseResult) at() time.Time    { return e.Now }

// Assign is one SetSlices call: the queue's slices the assignee may process from now on.
type Assign struct {
	Gen     uint64
	Queue   string
	Slices  []int
	Removed []SliceID
}

// AcquireReq is one lock transaction: check-index(Slice, CheckIndex) (check-not-exists when
// !Exists) + lock(Slice, Session, Value) + get(Slice).
type AcquireReq struct {
	Move       Move
	Session    string
	Exists     bool
	CheckIndex uint64
	Value      LockValue
	// Relock: the snapshot shows the key held by Session already, for this node, but the
	// Machine does not know it as its own (see Machine.relocks). The transaction is the same;
	// Consul grants a lock its holder asks for again without raising LockIndex.
	Relock bool
}

// ReleaseReq is one unlock transaction: unlock(Slice, Session, Value) + get(Slice).
type ReleaseReq struct {
	Slice   SliceID
	Session string
	Value   LockValue
}

// Ready is what the driver must do now, in order (see Machine).
type Ready struct {
	// Tokens is the fencing token of every owned slice (publish before SetSlices).
	Tokens          map[SliceID]uint64
	Assign          []Assign
	Release         []ReleaseReq
	Acquire         []AcquireReq
	DestroySessions []string
	// ResetConnections: the lease lapsed or is valid again; abandon the watches' requests.
	ResetConnections bool
	// Status is the new snapshot for readers (without the driver's Consul error counts).
	Status *Status
	// Processing: slices handed to the assignee, by queue (the keeper reports their health).
	Processing map[string][]int
	// Meta is the service Meta the node should publish (without live_since).
	Meta map[string]string
	// DrainDone: draining or stopping, and nothing is held any more.
	DrainDone bool
}

// HasWork reports whether the driver has something to carry out (besides publishing); then it
// must call Advance.
func (r Ready) HasWork() bool {
	return len(r.Assign)+len(r.Release)+len(r.Acquire)+len(r.DestroySessions) > 0 || r.ResetConnections
}

// NewMachine returns the state machine of a node that holds nothing. logger and tracer may be nil.
func NewMachine(cfg MachineConfig, logger *slog.Logger, tp trace.TracerProvider) *Machine {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	if cfg.Backoff == nil {
		cfg.Backoff = func(initial, maxInterval time.Duration) backoff.BackOff {
			return retry.New(retry.Policy{Initial: max(initial, time.Millisecond), Max: maxInterval, Jitter: 0.5}, nil)
		}
	}
	m := &Machine{
		cfg: cfg, log: logger, tracer: tp.Tracer(tracerName),
		owned: map[SliceID]*held{}, assigned: map[string]map[int]bool{}, releasing: map[SliceID]uint64{},
		releasedAt: map[SliceID]uint64{}, destroyed: map[string]bool{}, retryAt: map[SliceID]time.Time{}, staleAt: map[SliceID]uint64{},
		changes: map[string]uint64{}, unsure: map[SliceID]AcquireReq{},
		scopeGen: 1,
	}
	m.acqBackoff = cfg.Backoff(cfg.RenewInterval/4, 4*cfg.RenewInterval)
	for _, q := range cfg.Queues {
		m.assigned[q.Name] = map[int]bool{}
	}
	return m
}

// Step applies one event.
func (m *Machine) Step(ev Event) {
	if t := ev.at(); t.After(m.now) {
		m.now = t
	}
	now := m.now
	_, tick := ev.(EvTick)
	m.dirty = m.dirty || !tick
	switch e := ev.(type) {
	case EvTick:
	case EvLease:
		m.stepLease(e)
	case EvKV:
		if e.Reset {
			// Indexes start again lower: a stale mark from before would match a later snapshot's
			// index by chance and hold the acquisition back until the key changes.
			clear(m.staleAt)
			m.quarantine = now.Add(max(m.cfg.TTL, m.cfg.LockDelay))
			m.log.Warn("consul KV index went backwards (state lost or restored): no acquisitions for one lease",
				"until", m.quarantine.Format(time.RFC3339))
		}
		if e.Snap != nil {
			m.kv = e.Snap
			if m.scopeHoldersChanged() {
				m.scopeChanged()
			}
		}
	case EvMembers:
		if !sameScopeMembers(m.members, e.Members) {
			m.scopeChanged()
		}
		m.members = e.Members
	case EvUnavailable:
		if !maps.Equal(e.Queues, m.unavailable) {
			m.log.Warn("queues this node cannot work changed: their slices go to other nodes", "unavailable", strings.Join(slices.Sorted(maps.Keys(e.Queues)), ","))
			m.unavailable = e.Queues
			m.scopeChanged()
		}
	case EvDrain:
		if !m.draining {
			m.log.Info("drain: handing every slice to other nodes")
			m.scopeChanged()
		}
		m.draining = true
	case EvUndrain:
		if m.draining {
			m.log.Info("undrain: taking slices again")
			m.scopeChanged()
		}
		m.draining = false
	case EvStop:
		if !m.stopping {
			m.scopeChanged()
		}
		switch {
		case !m.stopping && e.KeepLocks:
			m.stopping, m.keepLocks, m.stopBy = true, true, now.Add(m.cfg.DrainTimeout)
			m.log.Info("stopping for a restart: handlers stop, the session and its locks stay for the next process of this node",
				"owned", len(m.owned), "drain_timeout", m.cfg.DrainTimeout)
		case !m.stopping:
			m.stopping, m.stopBy = true, now.Add(m.cfg.DrainTimeout)
			m.log.Info("stopping: releasing all slices", "drain_timeout", m.cfg.DrainTimeout)
		case m.keepLocks && !e.KeepLocks: // leave while stopping for a restart: hand off after all
			m.keepLocks = false
			m.log.Info("stopping: releasing all slices", "drain_timeout", m.cfg.DrainTimeout)
		}
	case EvAdopt:
		m.adoptSession, m.adoptReleasing = e.Session, map[SliceID]bool{}
		for _, s := range e.Releasing {
			m.adoptReleasing[s] = true
		}
	case EvAssigned:
		if !e.Pending {
			m.clearReleasing(e.Gen)
		}
	case EvAssigneeReleased:
		m.clearReleasing(e.Gen)
	case EvAcquireResult:
		m.stepAcquired(e)
	case EvReleaseResult:
		m.stepReleased(e)
	}
	m.updateValidity()
	if m.kv != nil && !tick {
		m.reconcileKV()
	}
}

func (m *Machine) clearReleasing(gen uint64) {
	for s, g := range m.releasing {
		if g == gen {
			delete(m.releasing, s)
			m.scopeChanged()
		}
	}
}

func (m *Machine) stepLease(e EvLease) {
	m.critical = e.CriticalSince
	m.deadline = e.Deadline
	if e.Session == m.session {
		return
	}
	// A new session means every lock of the old one is gone.
	m.scopeChanged() // the unsure acquisitions and the locks of the old one go
	m.adopting = e.Session != "" && e.Session == m.adoptSession
	clear(m.unsure) // attempts of the old session: whatever they got is gone with it
	if m.session != "" {
		// This run's own ended session: a KV snapshot taken before its end still shows it
		// holding our locks, which is not a session "left by a previous run" to destroy.
		m.destroyed[m.session] = true
	}
	for _, s := range m.ownedSorted() {
		if m.owned[s].session != e.Session {
			m.lost(s, "", "session ended")
		}
	}
	m.session = e.Session
}

func (m *Machine) updateValidity() {
	valid := m.session != "" && m.now.Before(m.deadline)
	if valid == m.leaseValid {
		return
	}
	m.leaseValid, m.dirty = valid, true
	if valid {
		m.log.Info("lease valid: processing owned slices", "owned", len(m.owned), "remaining", m.deadline.Sub(m.now).Round(time.Millisecond))
		if !m.lapsedAt.IsZero() {
			m.traceLapse(m.lapsedAt, m.now, len(m.owned))
			m.resetConns = true // the watches asked again during the outage: ask once more
		}
		return
	}
	m.lapsedAt = m.now
	m.resetConns = true
	m.log.Warn("lease lapsed: stopped processing all slices until Consul confirms the session again",
		"owned", len(m.owned), "has_session", m.session != "")
}

// NextDeadline is when the Machine wants an EvTick at the latest: the lease deadline while it
// is valid and nearer than RenewInterval, else RenewInterval from now.
func (m *Machine) NextDeadline() time.Time {
	next := m.now.Add(m.cfg.RenewInterval)
	if m.leaseValid && m.deadline.After(m.now) && m.deadline.Before(next) {
		next = m.deadline
	}
	return next
}

// Stopped reports whether a stop is complete: every slice released (for a restart: the
// assignee has released every slice; the locks stay), or DrainTimeout passed.
func (m *Machine) Stopped() bool {
	if !m.stopping {
		return false
	}
	if !m.now.Before(m.stopBy) {
		return true
	}
	if m.keepLocks {
		for _, a := range m.assigned {
			if len(a) > 0 {
				return false
			}
		}
		return len(m.releasing) == 0
	}
	return len(m.owned) == 0 && len(m.releasing) == 0
}

// HeldAtStop lists the slices still held that should have been released (for the final count
// when DrainTimeout passed); none after a stop for a restart, which keeps them on purpose.
func (m *Machine) HeldAtStop() []SliceID {
	if m.keepLocks {
		return nil
	}
	return m.ownedSorted()
}

// KeepsLocks reports whether the stop under way is one for a restart: the driver must neither
// destroy the session nor deregister the service, so that the next process can adopt them.
func (m *Machine) KeepsLocks() bool { return m.stopping && m.keepLocks }

// LeaseValid reports whether the Machine considers its lease valid now.
func (m *Machine) LeaseValid() bool { return m.leaseValid }

// Changes returns the ownership changes counted so far, by reason.
func (m *Machine) Changes() map[string]uint64 { return maps.Clone(m.changes) }

// CountChange counts an ownership change the driver made outside the Machine (slices left held
// after a stop past DrainTimeout).
func (m *Machine) CountChange(s SliceID, from, to, reason string) { m.changed(s, from, to, reason) }

// reconcileKV drops slices whose lock the last KV snapshot shows we lost, adopts locks our
// session holds that we did not know about, and decides to destroy sessions left by a previous
// run of this node.
//
// A lock is adopted only for a reason of its own, never because a snapshot shows our session
// on a key: (a) an acquisition of it whose answer was lost (EvAcquireResult.Err: Consul may
// have applied it), or (b) the first snapshot on a session adopted from this node's previous
// process (EvAdopt). A snapshot may be older than our own release of the key (its answer lost,
// the retry found the key gone), and the next owner may hold it already: adopting from it
// would make two nodes process the slice until the next snapshot. A key our session holds for
// no such reason is re-locked instead (relocks): Consul, not the snapshot, then says it is ours.
func (m *Machine) reconcileKV() {
	for _, s := range m.ownedSorted() {
		h := m.owned[s]
		if m.kv.asOf(s) < h.token {
			continue // snapshot older than our acquisition
		}
		e, ok := m.kv.Entries[s]
		if !ok || e.Session != h.session {
			owner := ""
			if ok && e.Session != "" {
				owner = e.Value.Node
			}
			m.lost(s, owner, "lock no longer held by our session")
		}
	}
	// An unsure acquisition that can no longer be applied (the key changed, so its check fails)
	// will never be adopted.
	for s, req := range m.unsure {
		e, ok := m.kv.Entries[s]
		switch {
		case req.Session != m.session:
			delete(m.unsure, s)
			m.scopeChanged()
		case ok && e.Session == m.session:
			// applied: adopted below
		case ok != req.Exists || (ok && e.ModifyIndex != req.CheckIndex):
			delete(m.unsure, s)
			m.scopeChanged()
		}
	}
	var keys []SliceID // the entries to act on, sorted so that logs and destroys are deterministic
	for s, e := range m.kv.Entries {
		if (m.adoptable(s, e) || m.staleSession(e)) && m.known(s) {
			keys = append(keys, s)
		}
	}
	sortSlices(keys)
	for _, s := range keys {
		e := m.kv.Entries[s]
		switch {
		case m.adoptable(s, e):
			m.owned[s] = &held{session: e.Session, token: e.ModifyIndex, lockIndex: e.LockIndex, since: m.now, value: e.Value}
			m.scopeChanged()
			if req, ok := m.unsure[s]; ok {
				delete(m.unsure, s)
				m.log.Info("an acquisition whose answer was lost was applied: slice adopted", "slice", s.String(), "fencing_token", e.ModifyIndex)
				m.changed(s, req.Move.From, m.cfg.Self, req.Move.Reason)
			} else if m.adoptReleasing[s] {
				// The previous process was handing it off and its release may still land: release
				// it again (a release that finds the key gone was the earlier one), never process it.
				h := m.owned[s]
				h.handoff, h.handoffSince, h.releaseErr = &Move{Slice: s, From: m.cfg.Self, Reason: ReasonReleased}, m.now, true
				m.log.Info("slice adopted to be released again: the previous process was handing it off", "slice", s.String())
			} else {
				// The previous process of this node held it: no change of owner, same token.
				m.log.Info("slice adopted from the previous process of this node", "slice", s.String(), "fencing_token", e.ModifyIndex)
			}
		case m.staleSession(e):
			m.destroyed[e.Session] = true
			m.log.Warn("destroying a session left by a previous run of this node", "session", e.Session, "slice", s.String())
			m.toDestroy = append(m.toDestroy, e.Session)
		}
	}
	m.adopting = false // only the first snapshot on an adopted session: later ones may be older than our releases
}

// adoptable: the snapshot shows our session holding s, which we do not know as ours, and we
// have a reason to believe it is (see reconcileKV).
func (m *Machine) adoptable(s SliceID, e KVEntry) bool {
	if e.Session == "" || e.Session != m.session || m.owned[s] != nil || e.ModifyIndex <= m.releasedAt[s] {
		return false
	}
	if _, releasing := m.releasing[s]; releasing {
		return false
	}
	req, unsure := m.unsure[s]
	return (unsure && req.Session == m.session) || (m.adopting && e.Value.Node == m.cfg.Self)
}

// staleSession: e is held by a session of an earlier run of this node that is not ours. Not
// before this run has a session: until then the earlier one may be the one it adopts.
func (m *Machine) staleSession(e KVEntry) bool {
	return m.session != "" && e.Session != "" && e.Session != m.session && e.Value.Node == m.cfg.Self && !m.destroyed[e.Session]
}

func (m *Machine) known(s SliceID) bool {
	for _, q := range m.cfg.Queues {
		if q.Name == s.Queue {
			return s.Index < q.Slices
		}
	}
	return false
}

func (m *Machine) lost(s SliceID, to, why string) {
	delete(m.owned, s)
	m.scopeChanged()
	m.traceLost(s, m.now, why)
	m.log.Warn("slice lock lost", "slice", s.String(), "why", why)
	m.changed(s, m.cfg.Self, to, ReasonLeaseLost)
}

func (m *Machine) changed(s SliceID, from, to, reason string) {
	m.log.Info("slice ownership changed", "slice", s.String(), "from", from, "to", to, "reason", reason)
	m.changes[reason]++
}

func (m *Machine) ownedSorted() []SliceID {
	keys := make([]SliceID, 0, len(m.owned))
	for s := range m.owned {
		keys = append(keys, s)
	}
	sortSlices(keys)
	return keys
}

func (m *Machine) sliceStates() map[SliceID]SliceState {
	if m.states == nil {
		m.states = map[SliceID]SliceState{}
	}
	out := m.states
	clear(out)
	if m.kv != nil {
		for s, e := range m.kv.Entries {
			if e.Session != "" {
				owner := e.Value.Node
				if owner == m.cfg.Self && e.Session != m.session {
					owner = "?" + owner // an older session of ours: held, but not by us
				}
				out[s] = SliceState{Owner: owner, Avoid: e.Value.Avoid}
			} else {
				out[s] = SliceState{Prev: e.Value.Node, PrevReason: e.Value.Reason, Avoid: e.Value.Avoid}
			}
		}
	}
	for s, h := range m.owned {
		ss := out[s]
		ss.Owner, ss.Prev, ss.PrevReason = m.cfg.Self, "", ""
		if ss.Avoid == nil {
			ss.Avoid = h.value.Avoid
		}
		ss.CriticalSince = m.critical[s]
		out[s] = ss
	}
	return out
}

// Ready runs the planner on the current state and returns what the driver must do.
func (m *Machine) Ready() Ready {
	now := m.now
	in := PlanInput{
		Self: m.cfg.Self, Now: now, HoldDown: m.cfg.HoldDown, SelfDraining: m.draining || m.stopping, SelfUnavailable: m.unavailable,
		StuckHandoff: m.cfg.StuckHandoff, StuckAfter: m.cfg.StuckAfter, Queues: m.cfg.Queues,
		Slices: m.sliceStates(),
	}
	for _, mem := range m.members {
		if mem.Live {
			in.Members = append(in.Members, Member{Node: mem.Node, HealthySince: mem.LiveSince, Draining: mem.Draining, Unavailable: mem.Unavailable})
		}
	}
	m.plan = m.planner.Plan(in)
	if m.scopeTargetsChanged() {
		m.scopeChanged()
	}
	for _, mv := range m.plan.Release {
		if m.keepLocks {
			break // a restart keeps every lock for the next process
		}
		if h := m.owned[mv.Slice]; h != nil && h.handoff == nil {
			mv := mv
			if m.stopping {
				mv.Reason = ReasonReleased
			}
			h.handoff, h.handoffSince, m.dirty = &mv, now, true
		}
	}
	if m.stopping && !m.keepLocks { // even without a plan entry (e.g. no members seen), everything goes
		for s, h := range m.owned {
			if h.handoff == nil {
				h.handoff, h.handoffSince, m.dirty = &Move{Slice: s, From: m.cfg.Self, Reason: ReasonReleased}, now, true
			}
		}
	}
	var rd Ready
	rd.Tokens = make(map[SliceID]uint64, len(m.owned))
	for s, h := range m.owned {
		rd.Tokens[s] = h.token
	}
	rd.Assign = m.assignments()
	rd.Release = m.releases()
	// Acquire only with a valid lease and a first KV snapshot (it carries the previous holder,
	// hence the reason, and the avoid list to carry over). Re-locks go first (they give back
	// slices nobody else can take), and also while draining: a re-locked slice is handed off.
	if m.leaseValid && m.kv != nil && !m.stopping && !now.Before(m.notBefore) && !now.Before(m.quarantine) {
		rd.Acquire = m.relocks()
		if !m.draining {
			rd.Acquire = append(rd.Acquire, m.acquisitions()...)
		}
	}
	rd.DestroySessions = slices.Clone(m.toDestroy)
	rd.ResetConnections = m.resetConns
	if m.dirty || m.last.Status == nil {
		m.status(&rd)
		m.last, m.dirty = rd, false
	} else {
		rd.Status, rd.Processing, rd.Meta = m.last.Status, m.last.Processing, m.last.Meta
	}
	// Draining, keys our session holds for nobody are re-locked and handed off first; stopping,
	// they go with the session.
	rd.DrainDone = (m.draining || m.stopping) && len(m.owned) == 0 && len(m.releasing) == 0 && (m.stopping || !m.holdsUnknown())
	return rd
}

// Advance tells the Machine that the driver carried out rd: the assignee has rd.Assign (the
// removed slices are releasing until EvAssigned or EvAssigneeReleased says otherwise), the
// sessions were destroyed, the connections reset. Results of transactions were stepped already.
func (m *Machine) Advance(rd Ready) {
	m.dirty = m.dirty || len(rd.Assign) > 0
	for _, a := range rd.Assign {
		next := make(map[int]bool, len(a.Slices))
		for _, i := range a.Slices {
			next[i] = true
		}
		m.assigned[a.Queue] = next
		for _, s := range a.Removed {
			m.releasing[s] = a.Gen
			m.scopeChanged()
		}
		m.gen = max(m.gen, a.Gen)
	}
	m.toDestroy = m.toDestroy[len(rd.DestroySessions):]
	if rd.ResetConnections {
		m.resetConns = false
	}
}

// assignments decides the SetSlices calls: exactly the slices held, with a valid lease, not being
// handed off, not still releasing from an earlier narrowing. Advance applies them.
func (m *Machine) assignments() []Assign {
	var out []Assign
	for _, q := range m.cfg.Queues {
		var want []int
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			h := m.owned[s]
			_, releasing := m.releasing[s]
			if h != nil && h.handoff == nil && !releasing && m.leaseValid && !m.stopping {
				want = append(want, i)
			}
		}
		cur := m.assigned[q.Name]
		same := len(cur) == len(want)
		for _, i := range want {
			same = same && cur[i]
		}
		if same {
			continue
		}
		next := map[int]bool{}
		for _, i := range want {
			next[i] = true
		}
		var removed []SliceID
		for i := 0; i < q.Slices; i++ {
			if cur[i] && !next[i] {
				removed = append(removed, SliceID{q.Name, i})
			}
		}
		out = append(out, Assign{Gen: m.gen + uint64(len(out)) + 1, Queue: q.Name, Slices: want, Removed: removed})
	}
	return out
}

// releases lists the unlock transactions of every handed-off slice the assignee has released.
func (m *Machine) releases() []ReleaseReq {
	var out []ReleaseReq
	for _, s := range m.ownedSorted() {
		h := m.owned[s]
		_, releasing := m.releasing[s]
		if h.handoff == nil || m.assigned[s.Queue][s.Index] || releasing {
			continue
		}
		v := LockValue{Node: m.cfg.Self, Reason: h.handoff.Reason, To: h.handoff.To, Avoid: liveAvoid(h.value.Avoid, m.now)}
		if h.handoff.Reason == ReasonStuck {
			v.Avoid = append(v.Avoid, Avoid{Node: m.cfg.Self, Until: m.now.Add(m.cfg.HoldDown).Round(0)})
		}
		out = append(out, ReleaseReq{Slice: s, Session: h.session, Value: v})
	}
	return out
}

func (m *Machine) stepReleased(e EvReleaseResult) {
	s := e.Req.Slice
	h := m.owned[s]
	if h == nil || h.session != e.Req.Session {
		return
	}
	if e.Err {
		h.releaseErr = true // retried at the next Ready; Consul may have applied it
		return
	}
	delete(m.owned, s)
	m.scopeChanged()
	if e.Gone && h.releaseErr {
		// An earlier attempt of this hand-off got no answer and Consul most likely applied it:
		// the hand-off happened, under its own reason (the next owner may hold the key already).
		// A snapshot older than it must not make us adopt the key again.
		if m.kv != nil {
			if ent, ok := m.kv.Entries[s]; ok {
				m.releasedAt[s] = max(m.releasedAt[s], ent.ModifyIndex)
			}
		}
		m.log.Info("a release whose answer was lost was applied: hand-off done", "slice", s.String(), "to", h.handoff.To, "reason", h.handoff.Reason)
		m.traceHandoff(s, h, m.now, "released")
		m.changed(s, m.cfg.Self, h.handoff.To, h.handoff.Reason)
		return
	}
	if e.Gone {
		// Not ours any more: a snapshot that still shows it held by our session is older than
		// that, and must not make us adopt it again.
		if m.kv != nil {
			if ent, ok := m.kv.Entries[s]; ok {
				m.releasedAt[s] = max(m.releasedAt[s], ent.ModifyIndex)
			}
		}
		m.traceHandoff(s, h, m.now, "lease_lost")
		m.changed(s, m.cfg.Self, "", ReasonLeaseLost)
		return
	}
	m.releasedAt[s] = e.Index
	m.traceHandoff(s, h, m.now, "released")
	m.changed(s, m.cfg.Self, h.handoff.To, h.handoff.Reason)
}

func liveAvoid(av []Avoid, now time.Time) []Avoid {
	var out []Avoid
	for _, a := range av {
		if now.Before(a.Until) {
			out = append(out, a)
		}
	}
	return out
}

// acquisitions lists the planned lock transactions. The move's previous owner and reason, and
// the avoid list carried over, come from the snapshot: the lock is taken only if the key is still
// as the snapshot saw it, so they are exact. A key changed meanwhile is retried once the watch
// has the new state.
func (m *Machine) acquisitions() []AcquireReq {
	var out []AcquireReq
	for _, mv := range m.plan.Acquire {
		_, releasing := m.releasing[mv.Slice]
		if m.owned[mv.Slice] != nil || releasing || m.now.Before(m.retryAt[mv.Slice]) {
			continue
		}
		if idx, ok := m.staleAt[mv.Slice]; ok && idx == m.kv.asOf(mv.Slice) {
			continue // the key changed after this snapshot: wait for the next one
		}
		prev, seen := m.kv.Entries[mv.Slice]
		out = append(out, AcquireReq{Move: mv, Session: m.session, Exists: seen, CheckIndex: prev.ModifyIndex,
			Value: LockValue{Node: m.cfg.Self, Avoid: liveAvoid(prev.Value.Avoid, m.now)}})
	}
	return out
}

// relocks lists the re-lock transactions of keys the snapshot shows held by our current
// session, for this node, that the Machine does not know as its own. Such a key stays locked
// until the session ends, and nobody processes its slice: the planner sees it as ours and plans
// no move, and a snapshot alone never makes the Machine adopt a lock (see reconcileKV). It
// happens after Consul lost its state: an acquisition granted at once by the restarted Consul
// is dropped on a snapshot from before the reset, whose index, from the old Consul, is above
// the new token, so the stale-snapshot guard cannot tell it is older.
//
// A re-lock is check-index on the entry's ModifyIndex + lock with our session: granted only if
// the key is still exactly as the snapshot shows it, held by our session, so it is as safe as
// an acquisition (a key released or taken since has another ModifyIndex; the check fails). The
// fencing token is the ModifyIndex the transaction returns: the entry's own when the value is
// unchanged (Consul writes nothing then), no other holder having been in between, or the new
// one. A lost answer is not remembered as unsure: the snapshot showed our session before the
// re-lock, so it cannot tell whether it was applied; the re-lock is tried again (a retry after
// one applied finds the ModifyIndex changed, and the next snapshot's is re-locked).
func (m *Machine) relocks() []AcquireReq {
	var keys []SliceID
	for s, e := range m.kv.Entries {
		if m.heldUnknown(s, e) && !m.now.Before(m.retryAt[s]) {
			keys = append(keys, s)
		}
	}
	sortSlices(keys)
	out := make([]AcquireReq, 0, len(keys))
	for _, s := range keys {
		e := m.kv.Entries[s]
		out = append(out, AcquireReq{Move: Move{Slice: s, From: m.cfg.Self, To: m.cfg.Self, Reason: ReasonAcquired}, Session: m.session,
			Exists: true, CheckIndex: e.ModifyIndex, Value: LockValue{Node: m.cfg.Self, Avoid: liveAvoid(e.Value.Avoid, m.now)}, Relock: true})
	}
	return out
}

// heldUnknown: the snapshot shows our current session holding s for this node, the Machine
// does not know it as its own, and no re-lock of it failed its check on this snapshot.
func (m *Machine) heldUnknown(s SliceID, e KVEntry) bool {
	if e.Session == "" || e.Session != m.session || e.Value.Node != m.cfg.Self || m.owned[s] != nil {
		return false
	}
	if _, releasing := m.releasing[s]; releasing || e.ModifyIndex <= m.releasedAt[s] || !m.known(s) {
		return false // releasedAt: the snapshot is older than our release; a check would fail
	}
	idx, stale := m.staleAt[s]
	return !stale || idx != m.kv.asOf(s) // else the key changed after this snapshot: wait for the next
}

// holdsUnknown reports whether some key is heldUnknown: a drain is not done while one is.
func (m *Machine) holdsUnknown() bool {
	if m.kv == nil || m.session == "" {
		return false
	}
	for s, e := range m.kv.Entries {
		if m.heldUnknown(s, e) {
			return true
		}
	}
	return false
}

func (m *Machine) stepAcquired(e EvAcquireResult) {
	s := e.Req.Move.Slice
	if e.Err {
		m.notBefore = m.now.Add(m.acqBackoff.NextBackOff())
		if e.Req.Session == m.session && m.owned[s] == nil && !e.Req.Relock {
			m.unsure[s] = e.Req // Consul may have applied it: a later snapshot tells
			m.scopeChanged()
		}
		return
	}
	m.acqBackoff.Reset()
	switch {
	case e.Req.Session != m.session:
		// A session that ended meanwhile: whatever it got is gone with it (the next KV
		// snapshot shows the key as the old session left it).
	case !e.Granted && e.Stale:
		if m.kv != nil {
			m.staleAt[s] = m.kv.asOf(s)
		}
	case !e.Granted:
		m.retryAt[s] = m.now.Add(m.cfg.RenewInterval)
	default:
		delete(m.retryAt, s)
		delete(m.staleAt, s)
		delete(m.unsure, s)
		m.owned[s] = &held{session: e.Req.Session, token: e.Token, lockIndex: e.LockIndex, since: m.now, value: e.Req.Value}
		m.scopeChanged()
		if e.Req.Relock {
			m.log.Warn("slice re-locked: our session held it without the Machine knowing (dropped on a snapshot older than its acquisition, as after a Consul state reset)",
				"slice", s.String(), "fencing_token", e.Token)
		}
		m.traceAcquire(e.Req.Move, e.Start, m.now, e.Token)
		m.changed(s, e.Req.Move.From, m.cfg.Self, e.Req.Move.Reason)
	}
}

// status builds the immutable snapshot, the processing set and the Meta.
func (m *Machine) status(rd *Ready) {
	var owned []OwnedSlice
	ownedByQueue := map[string][]int{}
	processing := map[string][]int{}
	for s, h := range m.owned {
		p := m.assigned[s.Queue][s.Index]
		owned = append(owned, OwnedSlice{Slice: s, FencingToken: h.token, LockIndex: h.lockIndex, Since: h.since, Processing: p})
		ownedByQueue[s.Queue] = append(ownedByQueue[s.Queue], s.Index)
		if p {
			processing[s.Queue] = append(processing[s.Queue], s.Index)
		}
	}
	sort.Slice(owned, func(i, j int) bool {
		a, b := owned[i].Slice, owned[j].Slice
		return a.Queue < b.Queue || (a.Queue == b.Queue && a.Index < b.Index)
	})
	for q := range processing {
		slices.Sort(processing[q])
	}
	var all []SliceStatus
	for _, q := range m.cfg.Queues {
		for i := 0; i < q.Slices; i++ {
			s := SliceID{q.Name, i}
			ss := SliceStatus{Slice: s, Home: m.plan.Home[s], State: SliceFree}
			if m.kv != nil {
				if e, ok := m.kv.Entries[s]; ok && e.Session != "" {
					ss.Owner, ss.State = e.Value.Node, SliceHeld
				}
			}
			if h := m.owned[s]; h != nil {
				_, releasing := m.releasing[s]
				ss.Owner = m.cfg.Self
				switch {
				case m.assigned[s.Queue][s.Index]:
					ss.State = SliceOwned
				case h.handoff != nil || releasing:
					ss.State = SliceReleasing
				default:
					ss.State = SliceSuspended
				}
			}
			all = append(all, ss)
		}
	}
	rd.Status = &Status{Mode: "consul", NodeID: m.cfg.Self, Draining: m.draining, Owned: owned, Slices: all,
		OwnershipChanges: maps.Clone(m.changes)}
	rd.Processing = processing
	rd.Meta = m.meta(ownedByQueue)
}

// meta is the Machine's part of the service Meta; the keeper adds live_since.
func (m *Machine) meta(owned map[string][]int) map[string]string {
	out := maps.Clone(m.cfg.ServiceMeta)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, map[string]string{
		"unavailable": strings.Join(slices.Sorted(maps.Keys(m.unavailable)), ","),
		"cluster":     m.cfg.Cluster,
		"node":        m.cfg.Self,
		"version":     m.cfg.Version,
		"queues":      queuesMeta(m.cfg.Queues),
		"owned":       ownedMeta(m.cfg.Queues, owned),
		"draining":    strconv.FormatBool(m.draining || (m.stopping && !m.keepLocks)),
	})
	return out
}

func sortSlices(s []SliceID) {
	sort.Slice(s, func(i, j int) bool {
		if s[i].Queue != s[j].Queue {
			return s[i].Queue < s[j].Queue
		}
		return s[i].Index < s[j].Index
	})
}

// ownedMeta renders owned slices for the service Meta: "in:1-2 out:0-3,7", or, when that would
// not fit in a Meta value, per-queue counts "in:2/8 out:5/64".
func ownedMeta(queues []QueueSpec, owned map[string][]int) string {
	var parts, counts []string
	names := make([]string, 0, len(queues))
	spec := map[string]int{}
	for _, q := range queues {
		names = append(names, q.Name)
		spec[q.Name] = q.Slices
	}
	slices.Sort(names)
	for _, n := range names {
		if len(owned[n]) == 0 {
			continue
		}
		parts = append(parts, n+":"+FormatRanges(owned[n]))
		counts = append(counts, fmt.Sprintf("%s:%d/%d", n, len(owned[n]), spec[n]))
	}
	if s := strings.Join(parts, " "); len(s) <= metaValueMaxLen {
		return s
	}
	return strings.Join(counts, " ")
}
