// Package sim is a deterministic simulator of qslice's slice ownership: N failover.Machines,
// each with a driver that does what failover's Consul driver does (the keeper's session and TTL
// rounds, the watches, the transactions, the assignee), against a model of the Consul semantics
// qslice relies on (consul.go), on virtual time, with injected faults.
//
// The nodes watch Consul in one of the two watch layouts (Config.Layout): the whole KV prefix
// and membership (prefix), or single keys with member and inbox keys, a failover.ScopedView
// and periodic full reads (scoped, scoped.go); the invariants are the same.
//
// Faults: a node crashes (and restarts as a new process, which adopts the previous run's
// session if Consul still has it: restart in place), restarts at once after a crash or after a
// clean stop that keeps its locks (SIGTERM), pauses past its lease, is cut off
// Consul (partition), sees its messages delayed or lost (a request may be applied and its answer
// lost), Consul restarts or loses its leader (every request fails for a while), Consul loses its
// state (the index goes backwards); every node's clock runs at its own rate within the documented
// drift (500 ppm).
//
// Invariants, checked after every event:
//   - no two nodes process a slice at overlapping times, by their leases (a node processes a
//     slice while the assignee has it and its lease is valid on its own clock); and a new owner
//     starts at least LeaseMargin after the previous one's end;
//   - a slice goes back to a node (fail-back) only once that node has been live for HoldDown;
//   - a node restarted in place (restart, stop-restart) adopts its session and moves nothing:
//     no acquisition of a home slice it held until it processes every one again, within
//     ResumeBound of its start;
//
// and at the end:
//   - every slice is processed by exactly one node within Bound of the last fault's end;
//   - every slice is at its home node once everything settled, and the moves stayed within
//     what the faults justify.
//
// A run is a pure function of its Config (seed included): a failing seed prints its schedule
// and replays exactly.
package sim

import (
	"container/heap"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/qslice/qslice/failover"
)

// Config describes one simulated run.
type Config struct {
	Seed   uint64
	Nodes  int
	Queues []failover.QueueSpec
	Faults int // number of faults, one after the other

	TTL, LockDelay, HoldDown time.Duration
	// Derived timings; zero takes failover's defaults for TTL and LockDelay.
	RenewInterval, LeaseMargin, WatchMinInterval time.Duration
	MaxDrift                                     float64       // clock rate error bound, e.g. 500e-6
	NetDelay                                     time.Duration // usual one-way delay to Consul
	MaxDrainFor                                  time.Duration // longest time the assignee takes to release a slice
	// Kinds restricts the faults drawn (nil: all).
	Kinds []string
	// Schedule, when set, is the fault schedule instead of one drawn from the seed.
	Schedule []Fault
	// Log receives every node's log lines (nil: discarded).
	Log io.Writer
	// BrokenLease is added to every lease deadline the nodes compute: a deliberately wrong
	// lease, so tests can show that the checks catch an unsafe protocol.
	BrokenLease time.Duration
	// NoAdopt: a restarted process never adopts its previous session (restart in place off),
	// so tests can show that the restart checks catch a restart that moves slices.
	NoAdopt bool
	// Layout is what the nodes watch: failover.LayoutPrefix (the default: the whole KV and the
	// membership) or failover.LayoutScoped (single keys, member and inbox keys; scoped.go).
	Layout string
	// FullReadInterval: in the scoped layout, how often each node reads every slice and member
	// key (default 3 TTLs: short, so that runs cover it; production's is minutes).
	FullReadInterval time.Duration

	// For the watch bench (MeasureFailure): probes run at their time; the run stops at stopAt
	// (from the start, 0: at its end); per-step checks run every checkEvery events (0: each).
	probes     []probe
	stopAt     time.Duration
	checkEvery int
}

// probe runs fn at a point of virtual time (from the start).
type probe struct {
	at time.Duration
	fn func(w *world)
}

// Fault kinds.
const (
	FaultCrash        = "crash"
	FaultPause        = "pause"
	FaultPartition    = "partition"
	FaultDelay        = "delay"
	FaultLoss         = "loss"
	FaultConsulDown   = "consul-restart"
	FaultLeaderLoss   = "leader-loss"
	FaultConsulLoss   = "consul-state-loss"
	FaultRestart      = "restart"      // crash, restart at once on the same node
	FaultStopRestart  = "stop-restart" // SIGTERM (keep the locks), restart at once
	defaultMaxDrift   = 500e-6
	defaultNetDelay   = 2 * time.Millisecond
	defaultDrainFor   = 300 * time.Millisecond
	maxRounds         = 4
	settleAfterFaults = 2 * time.Second
)

// AllKinds lists every fault kind.
var AllKinds = []string{FaultCrash, FaultPause, FaultPartition, FaultDelay, FaultLoss, FaultConsulDown, FaultLeaderLoss, FaultConsulLoss,
	FaultRestart, FaultStopRestart}

// Fault is one scheduled fault.
type Fault struct {
	Kind string
	Node string // "" for Consul faults
	At   time.Duration
	For  time.Duration
}

func (f Fault) String() string {
	who := f.Node
	if who == "" {
		who = "consul"
	}
	return fmt.Sprintf("%8.3fs %-17s %-6s for %.3fs", f.At.Seconds(), f.Kind, who, f.For.Seconds())
}

// Result is what a run found.
type Result struct {
	Seed       uint64
	Layout     string
	Schedule   []Fault
	Drift      map[string]float64
	Violations []string
	Moves      int // acquisitions, the first ones included
	MoveBudget int
	Events     int
	Virtual    time.Duration // virtual time simulated
	// ReownedAfter: for every slice a crashed, paused or partitioned node processed, how long
	// after the fault began it was processed again (by another node, or by the node itself once
	// the fault ended).
	ReownedAfter []time.Duration
	// ResumedAfter: for every restart in place, from the new process's start until it processed
	// every slice it held before again.
	ResumedAfter []time.Duration
}

// Failed reports whether an invariant was broken.
func (r Result) Failed() bool { return len(r.Violations) > 0 }

// Report prints the seed, the schedule and the violations.
func (r Result) Report() string {
	var b strings.Builder
	if r.Layout != failover.LayoutPrefix {
		fmt.Fprintf(&b, "layout %s: ", r.Layout)
	}
	fmt.Fprintf(&b, "seed %d: %d events, %.1fs virtual, %d moves (budget %d)\n", r.Seed, r.Events, r.Virtual.Seconds(), r.Moves, r.MoveBudget)
	for _, n := range sortStrings(mapsKeys(r.Drift)) {
		fmt.Fprintf(&b, "  clock %s %+.0f ppm\n", n, r.Drift[n]*1e6)
	}
	for _, f := range r.Schedule {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "  VIOLATION %s\n", v)
	}
	return b.String()
}

func mapsKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// ---- the event queue ----

type event struct {
	at  time.Time
	seq int
	fn  func()
}

type queue []*event

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *queue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// ---- the world ----

type world struct {
	cfg    Config
	rng    *rand.Rand
	start  time.Time
	now    time.Time
	q      queue
	seq    int
	consul *consul
	nodes  []*node
	byID   map[string]*node
	res    *Result
	// per slice: who processes it now, and when and by whom the last processing ended
	cur     map[failover.SliceID]string
	lastEnd map[failover.SliceID]procEnd
	homes   map[failover.SliceID]string
	// checking the end state
	lastFaultEnd time.Time
	faultFrom    map[string]time.Time // node -> start of its current fault, for ReownedAfter
	// takenOver: the slice's last lock was taken after its holder's session ended (not handed
	// off): the new owner must start LeaseMargin after the old one's lease at the earliest.
	takenOver map[failover.SliceID]bool
	// heldAtFault: slices the faulted nodes held when their faults began (for the move budget)
	heldAtFault int
	// pending: slices a faulted node processed when its fault began, not processed since by
	// another node (or by it after the fault ended), with the fault's start.
	pending map[failover.SliceID]pendingTakeover
	// restart: the restart in place under way, checked until the node processes its slices again
	restart *restartCheck
	// grants counts the acquisitions of each slice
	grants map[failover.SliceID]int
	// keyWatchers: the nodes watching each single key (scoped layout), in w.nodes order
	keyWatchers map[kvKey][]*node
	// sliceIDs: every slice, sorted
	sliceIDs []failover.SliceID
}

// restartCheck: a node restarted in place must move nothing and resume every slice it held.
type restartCheck struct {
	node    *node
	held    []failover.SliceID
	grants  int       // acquisitions of the held slices when the fault began
	started time.Time // the new process's start; zero until then
}

type pendingTakeover struct {
	node string
	from time.Time
}

type procEnd struct {
	node string
	at   time.Time
}

func (w *world) at(t time.Time, fn func()) {
	w.seq++
	heap.Push(&w.q, &event{at: t, seq: w.seq, fn: fn})
}

func (w *world) after(d time.Duration, fn func()) { w.at(w.now.Add(d), fn) }

func (w *world) violation(format string, args ...any) {
	if len(w.res.Violations) < 20 {
		w.res.Violations = append(w.res.Violations, fmt.Sprintf("t=%.3fs ", w.now.Sub(w.start).Seconds())+fmt.Sprintf(format, args...))
	}
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config { return c.withDefaults() }

func (c Config) withDefaults() Config {
	if c.Nodes == 0 {
		c.Nodes = 4
	}
	if len(c.Queues) == 0 {
		c.Queues = []failover.QueueSpec{{Name: "in", Slices: 8}, {Name: "out", Slices: 4}}
	}
	if c.TTL == 0 {
		c.TTL = 2 * time.Second
	}
	if c.LockDelay == 0 {
		c.LockDelay = time.Second
	}
	if c.HoldDown == 0 {
		c.HoldDown = 3 * time.Second
	}
	fc := failover.ConsulConfig{TTL: c.TTL, LockDelay: c.LockDelay, RenewInterval: c.RenewInterval, LeaseMargin: c.LeaseMargin,
		WatchMinInterval: c.WatchMinInterval}.WithDefaults()
	c.RenewInterval, c.LeaseMargin, c.WatchMinInterval = fc.RenewInterval, fc.LeaseMargin, fc.WatchMinInterval
	if c.MaxDrift == 0 {
		c.MaxDrift = defaultMaxDrift
	}
	if c.NetDelay == 0 {
		c.NetDelay = defaultNetDelay
	}
	if c.MaxDrainFor == 0 {
		c.MaxDrainFor = defaultDrainFor
	}
	if len(c.Kinds) == 0 {
		c.Kinds = AllKinds
	}
	if c.Layout == "" {
		c.Layout = failover.LayoutPrefix
	}
	if c.FullReadInterval == 0 {
		c.FullReadInterval = 3 * c.TTL
	}
	return c
}

// Bound is how long after the end of the last fault every slice must be processed again:
// TTL + lock-delay + 2 renew intervals (the failover target), plus one watch interval and
// the assignee's drain (a hand-off in flight at the fault's end finishes first).
func (c Config) Bound() time.Duration {
	c = c.withDefaults()
	return c.TTL + c.LockDelay + 2*c.RenewInterval + c.WatchMinInterval + c.MaxDrainFor + c.LeaseMargin
}

// Run simulates one run.
func Run(cfg Config) Result {
	cfg = cfg.withDefaults()
	w := &world{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15)), start: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		byID: map[string]*node{}, res: &Result{Seed: cfg.Seed, Layout: cfg.Layout, Drift: map[string]float64{}},
		cur: map[failover.SliceID]string{}, lastEnd: map[failover.SliceID]procEnd{}, faultFrom: map[string]time.Time{},
		takenOver: map[failover.SliceID]bool{}, pending: map[failover.SliceID]pendingTakeover{}, grants: map[failover.SliceID]int{},
		keyWatchers: map[kvKey][]*node{}}
	w.now = w.start
	if cfg.Layout != failover.LayoutPrefix && cfg.Layout != failover.LayoutScoped {
		w.violation("unknown layout %q: %q or %q", cfg.Layout, failover.LayoutPrefix, failover.LayoutScoped)
		return *w.res
	}
	w.consul = newConsul(w.now, w.consulChanged)
	if cfg.Layout == failover.LayoutScoped {
		w.consul.keyChanged = w.keyChanged
	}
	w.consul.granted = func(s failover.SliceID, invalidated bool) { w.takenOver[s] = invalidated }
	var ids []string
	for i := 0; i < cfg.Nodes; i++ {
		id := fmt.Sprintf("n%d", i+1)
		ids = append(ids, id)
		n := &node{w: w, id: id, ord: i, drift: (w.rng.Float64()*2 - 1) * cfg.MaxDrift}
		w.res.Drift[id] = n.drift
		w.nodes = append(w.nodes, n)
		w.byID[id] = n
	}
	w.homes = homes(cfg.Queues, ids)
	w.sliceIDs = sortedKeys(w.homes)
	w.consul.sizes = newSizes(len(cfg.Queues))
	for _, p := range cfg.probes {
		w.at(w.start.Add(p.at), func() { p.fn(w) })
	}
	for _, n := range w.nodes {
		n.start(time.Duration(w.rng.Int64N(int64(cfg.RenewInterval))))
	}
	// Faults, one after another, after the cluster settled.
	t := cfg.TTL + cfg.HoldDown + 2*time.Second
	for i := 0; i < cfg.Faults && cfg.Schedule == nil; i++ {
		f := w.drawFault(t)
		w.res.Schedule = append(w.res.Schedule, f)
		w.schedule(f)
		t = f.At + f.For + time.Duration(w.rng.Int64N(int64(cfg.TTL+cfg.LockDelay+cfg.HoldDown)))
	}
	for _, f := range cfg.Schedule {
		w.res.Schedule = append(w.res.Schedule, f)
		w.schedule(f)
		t = max(t, f.At+f.For)
	}
	end := t + cfg.Bound() + cfg.HoldDown + cfg.TTL + settleAfterFaults
	w.lastFaultEnd = w.start
	if len(w.res.Schedule) > 0 {
		last := w.res.Schedule[len(w.res.Schedule)-1]
		w.lastFaultEnd = w.start.Add(last.At + last.For)
		if last.Kind == FaultCrash || last.Kind == FaultRestart || last.Kind == FaultStopRestart { // the restarted process must get a session first
			w.lastFaultEnd = w.lastFaultEnd.Add(cfg.RenewInterval)
		}
	}
	w.at(w.lastFaultEnd.Add(cfg.Bound()), w.checkAllOwned)
	w.at(w.start.Add(end), w.checkSettled)
	if cfg.stopAt > 0 {
		end = cfg.stopAt
	}
	for w.q.Len() > 0 {
		e := heap.Pop(&w.q).(*event)
		if e.at.After(w.start.Add(end)) {
			break
		}
		w.now = e.at
		w.consul.now = e.at
		w.consul.expire()
		e.fn()
		w.res.Events++
		if cfg.checkEvery == 0 || w.res.Events%cfg.checkEvery == 0 {
			w.checkStep()
		}
		w.checkRestart()
	}
	w.res.Virtual = w.now.Sub(w.start)
	w.res.MoveBudget = w.moveBudget()
	if w.res.Moves > w.res.MoveBudget {
		w.violation("%d moves, more than the %d the faults justify", w.res.Moves, w.res.MoveBudget)
	}
	return *w.res
}

func homes(queues []failover.QueueSpec, nodes []string) map[failover.SliceID]string {
	out := map[failover.SliceID]string{}
	for _, q := range queues {
		for i := 0; i < q.Slices; i++ {
			s := failover.SliceID{Queue: q.Name, Index: i}
			best, bw := "", uint64(0)
			for _, n := range nodes {
				if w := failover.Rendezvous(s, n); best == "" || w > bw {
					best, bw = n, w
				}
			}
			out[s] = best
		}
	}
	return out
}

func (w *world) drawFault(at time.Duration) Fault {
	cfg := w.cfg
	kind := cfg.Kinds[w.rng.IntN(len(cfg.Kinds))]
	node := w.nodes[w.rng.IntN(len(w.nodes))].id
	lease := min(cfg.TTL, cfg.LockDelay)
	rnd := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(w.rng.Int64N(int64(hi-lo)+1)) }
	f := Fault{Kind: kind, Node: node, At: at}
	switch kind {
	case FaultCrash:
		f.For = rnd(100*time.Millisecond, cfg.TTL+cfg.LockDelay+3*time.Second)
	case FaultPause:
		f.For = rnd(lease/2, cfg.TTL+cfg.LockDelay+3*time.Second)
	case FaultPartition:
		f.For = rnd(lease/2, cfg.TTL+cfg.LockDelay+3*time.Second)
	case FaultDelay:
		f.For = rnd(time.Second, 5*time.Second)
	case FaultLoss:
		f.For = rnd(time.Second, 5*time.Second)
	case FaultConsulDown:
		f.Node, f.For = "", rnd(500*time.Millisecond, cfg.TTL+time.Second)
	case FaultLeaderLoss:
		f.Node, f.For = "", rnd(100*time.Millisecond, lease)
	case FaultConsulLoss:
		f.Node, f.For = "", rnd(100*time.Millisecond, time.Second)
	case FaultRestart, FaultStopRestart:
		// Down for at most TTL/4: the session's check (passed at most one renew interval before
		// the stop) is still passing when the new process passes it.
		f.For = rnd(10*time.Millisecond, cfg.TTL/4)
	}
	return f
}

func (w *world) schedule(f Fault) {
	start, end := w.start.Add(f.At), w.start.Add(f.At+f.For)
	n := w.byID[f.Node]
	w.at(start, w.endRestartCheck) // a new fault ends the previous restart's window
	if n == nil {                  // Consul faults delay every takeover under way
		w.at(start, w.anotherFault)
		w.at(end, w.anotherFault)
	}
	switch f.Kind {
	case FaultCrash:
		w.at(start, func() { w.faultFrom[n.id] = w.now; w.faultBegins(n); n.crash() })
		w.at(end, func() { delete(w.faultFrom, n.id); n.start(0) })
	case FaultPause:
		w.at(start, func() { w.faultFrom[n.id] = w.now; w.faultBegins(n); n.paused = true })
		w.at(end, func() { delete(w.faultFrom, n.id); n.resume() })
	case FaultPartition:
		w.at(start, func() { w.faultFrom[n.id] = w.now; w.faultBegins(n); n.cut = true })
		w.at(end, func() { delete(w.faultFrom, n.id); n.cut = false; n.resendWatches() })
	case FaultDelay:
		delay := time.Duration(w.rng.Int64N(int64(min(w.cfg.TTL, w.cfg.LockDelay)/2))) + 50*time.Millisecond
		w.at(start, func() { n.delay = delay })
		w.at(end, func() { n.delay = 0 })
	case FaultLoss:
		w.at(start, func() { n.loss = 0.3 })
		w.at(end, func() { n.loss = 0 })
	case FaultConsulDown, FaultLeaderLoss:
		w.at(start, func() { w.consul.downUntil = end })
		w.at(end, w.consulBack)
	case FaultConsulLoss:
		w.at(start, func() { w.consul.downUntil = end; w.consul.loseState() })
		w.at(end, w.consulBack)
	case FaultRestart:
		var rc *restartCheck
		w.at(start, func() { rc = w.restartBegins(n); n.crash() })
		w.at(end, func() { delete(w.faultFrom, n.id); n.start(0); rc.started = w.now })
	case FaultStopRestart:
		// For counts from the process's exit, once the assignee let go of everything.
		w.at(start, func() {
			rc := w.restartBegins(n)
			n.stopForRestart(func() {
				w.after(f.For, func() { delete(w.faultFrom, n.id); n.start(0); rc.started = w.now })
			})
		})
	}
}

// restartBegins: n restarts in place; its slices must be processed again (as for a crash), by
// n itself, with no acquisition anywhere meanwhile.
func (w *world) restartBegins(n *node) *restartCheck {
	w.faultFrom[n.id] = w.now
	w.faultBegins(n)
	rc := &restartCheck{node: n}
	if n.session == "" || w.consul.sessions[n.session] == nil {
		return rc // no session to adopt (Consul lost it, say): a fresh start, as after a crash
	}
	for _, s := range w.sliceIDs {
		// Its home slices: one it holds for another node may go back to it meanwhile (the
		// fail-back of an earlier fault), a move the restart did not cause.
		if n.processing(s) && w.homes[s] == n.id {
			rc.held = append(rc.held, s)
			rc.grants += w.grants[s]
		}
	}
	w.restart = rc
	w.after(w.cfg.RestartDeadline(), func() {
		if w.restart == rc {
			w.violation("%s restarted in place and did not adopt its session or process the %d slices it held again within %s of the stop (adopted: %v)",
				n.id, len(rc.held), w.cfg.RestartDeadline(), n.adopted)
			w.endRestartCheck()
		}
	})
	return rc
}

// checkRestart runs after every event while a restart in place is checked.
func (w *world) checkRestart() {
	rc := w.restart
	if rc == nil {
		return
	}
	if rc.node.sessionExpiredInRestart {
		// Its session ran out of TTL before the new process's first round reached Consul
		// (Consul was down just before the restart, so the last pass was old): nothing to
		// adopt, a fresh start; its slices fail over as after a crash, which the failover
		// checks cover.
		w.restart = nil
		return
	}
	grants := 0
	for _, s := range rc.held {
		grants += w.grants[s]
	}
	if grants != rc.grants {
		w.violation("a slice of %s was acquired while it restarted in place (%d acquisitions): a restart must move nothing", rc.node.id, grants-rc.grants)
		w.restart = nil
		return
	}
	if rc.started.IsZero() || w.now.Before(rc.started) || !rc.node.adopted {
		return // not adopted by the deadline: restartBegins reports it
	}
	for _, s := range rc.held {
		if w.cur[s] != rc.node.id {
			return
		}
	}
	d := w.now.Sub(rc.started)
	w.res.ResumedAfter = append(w.res.ResumedAfter, d)
	if d > w.cfg.ResumeBound() {
		w.violation("%s resumed its %d slices %.3fs after its restart, beyond %s", rc.node.id, len(rc.held), d.Seconds(), w.cfg.ResumeBound())
	}
	w.restart = nil
}

func (w *world) endRestartCheck() { w.restart = nil }

// ResumeBound is how long after its start a node restarted in place must process its slices
// again: one keeper round (the session confirmed, the check passed) and one KV answer, each a
// network round trip, within two renew intervals.
func (c Config) ResumeBound() time.Duration {
	c = c.withDefaults()
	return 2 * c.RenewInterval
}

// RestartDeadline bounds a restart in place from the stop: the assignee's drain, the longest
// downtime drawn (TTL/4) and ResumeBound.
func (c Config) RestartDeadline() time.Duration {
	c = c.withDefaults()
	return c.MaxDrainFor + c.TTL/4 + c.ResumeBound() + time.Second
}

// faultBegins: n's slices must be processed again within FailoverBound.
func (w *world) faultBegins(n *node) {
	w.anotherFault()
	w.faultFrom[n.id] = w.now
	w.heldAtFault += len(n.assigned)
	for _, s := range w.sliceIDs {
		if n.processing(s) {
			w.pending[s] = pendingTakeover{node: n.id, from: w.now}
		}
	}
}

// anotherFault: a fault that begins or ends while slices of an earlier one are still waiting
// for a new owner restarts their bound (it may have struck the node about to take them).
func (w *world) anotherFault() {
	for s, p := range w.pending {
		p.from = w.now
		w.pending[s] = p
	}
}

// FailoverBound is how long after a node's fault began its slices must be processed again
// (by another node, or by itself once the fault ended): TTL + lock-delay + 2 renew intervals
// (the target), plus one watch interval (the survivors' watches are rate-limited).
func (c Config) FailoverBound() time.Duration {
	c = c.withDefaults()
	return c.TTL + c.LockDelay + 2*c.RenewInterval + c.WatchMinInterval
}

func (w *world) consulBack() {
	for _, n := range w.nodes {
		n.resendWatches()
	}
}

func (w *world) consulChanged(kv bool) {
	for _, n := range w.nodes {
		n.watchChanged(kv)
	}
}

// moveBudget: the initial placement, then for each node fault twice what the node holds at home
// and twice what it held when the fault began (away and back), for each Consul fault twice
// every slice.
func (w *world) moveBudget() int {
	total := len(w.homes)
	perNode := map[string]int{}
	for _, n := range w.homes {
		perNode[n]++
	}
	budget := total + 2*w.heldAtFault
	for _, f := range w.res.Schedule {
		if f.Node == "" {
			budget += 2 * total
		} else {
			budget += 2 * perNode[f.Node]
		}
	}
	return budget
}

// ---- invariants ----

// checkStep runs after every event: at most one node processes each slice, a new owner starts
// LeaseMargin after the last one's end at the earliest.
func (w *world) checkStep() {
	procs := w.processors()
	for _, s := range w.sliceIDs {
		who := procs[s]
		prev := w.cur[s]
		if len(who) > 1 {
			w.violation("slice %s processed by %v at once", s, who)
		}
		now := ""
		if len(who) > 0 {
			now = who[0]
		}
		if prev == now {
			continue
		}
		if prev != "" {
			w.lastEnd[s] = procEnd{node: prev, at: w.byID[prev].endOf(s)}
		}
		if now != "" {
			if e, ok := w.lastEnd[s]; ok && e.node != now {
				if w.now.Before(e.at) {
					w.violation("slice %s started on %s while %s may process it until %.3fs", s, now, e.node, e.at.Sub(w.start).Seconds())
				} else if gap := w.now.Sub(e.at); w.takenOver[s] && gap < w.cfg.LeaseMargin-time.Millisecond {
					w.violation("slice %s taken over by %s %.3fs after %s's lease ended: less than the lease margin %s", s, now, gap.Seconds(), e.node, w.cfg.LeaseMargin)
				}
			}
			if p, ok := w.pending[s]; ok {
				if _, faulty := w.faultFrom[p.node]; now != p.node || !faulty {
					w.res.ReownedAfter = append(w.res.ReownedAfter, w.now.Sub(p.from))
					delete(w.pending, s)
				}
			}
		}
		w.cur[s] = now
	}
	bound := w.cfg.FailoverBound()
	for _, s := range sortedKeys(w.pending) {
		p := w.pending[s]
		if _, faulty := w.faultFrom[p.node]; !faulty && w.cur[s] == p.node {
			delete(w.pending, s) // the fault ended and the node processes it (again, or still)
			continue
		}
		if w.now.Sub(p.from) > bound {
			w.violation("slice %s of %s not processed again %s after its fault began (bound TTL + lock-delay + 2 renew intervals + watch interval)", s, p.node, bound)
			delete(w.pending, s)
		}
	}
}

// processors lists, per slice, the nodes processing it (in w.nodes order).
func (w *world) processors() map[failover.SliceID][]string {
	out := map[failover.SliceID][]string{}
	for _, n := range w.nodes {
		if n.crashed || n.paused || len(n.assigned) == 0 || !n.local(w.now).Before(n.deadline) {
			continue
		}
		for s, ok := range n.assigned {
			if ok {
				out[s] = append(out[s], n.id)
			}
		}
	}
	return out
}

// checkAllOwned: Bound after the last fault, every slice is processed by one node.
func (w *world) checkAllOwned() {
	for _, s := range w.sliceIDs {
		if w.cur[s] == "" {
			w.violation("slice %s not processed by any node %s after the last fault ended (bound TTL + lock-delay + 2 renew intervals + watch interval + drain + margin)", s, w.cfg.Bound())
		}
	}
}

// checkSettled: at the end, every slice is at its home.
func (w *world) checkSettled() {
	for _, s := range w.sliceIDs {
		if w.cur[s] != w.homes[s] {
			w.violation("slice %s settled on %q, not on its home %s", s, w.cur[s], w.homes[s])
		}
	}
}

// discardLogger is shared by nodes when Config.Log is nil.
var discardLogger = slog.New(slog.DiscardHandler)

// noJitter: the simulated acquisition backoff is deterministic without randomness.
func noJitter(initial, maxInterval time.Duration) backoff.BackOff {
	b := backoff.NewExponentialBackOff(backoff.WithInitialInterval(max(initial, time.Millisecond)), backoff.WithMaxInterval(max(maxInterval, initial)),
		backoff.WithRandomizationFactor(0), backoff.WithMaxElapsedTime(0))
	b.Reset()
	return b
}
