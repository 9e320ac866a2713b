package chaos

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/qslice/qslice/runner/queue"
)

// FaultRecord is a fault as it happened.
type FaultRecord struct {
	Fault
	NodeName string
	// At is just before the first signal (or command) was sent; Done when it had taken effect
	// (every process of the node killed or stopped; Consul down; drain returned; every
	// connection of the node to Consul closed); End when the fault was undone (node started
	// again, SIGCONT sent, Consul ready, undrained, connections to Consul let through again).
	At, Done, End time.Time
	Err           string // what went wrong applying or undoing it, if anything
	// KindBlackhole only. Silenced: the node's open connections to Consul silenced at Done;
	// Held: the connections it opened during the hold, held silent. LeaseBack: from End (the
	// healing) until the node's status showed a valid lease again; SlicesBack: from End until
	// every slice was processed by its home node again (the node's share back). Zero when not
	// reached.
	Silenced, Held        int
	LeaseBack, SlicesBack time.Duration
	// KindFSCut only (SlicesBack too). Detected: from Done (the cut) until the node's status
	// showed the queue's filesystem unavailable; Elsewhere: until every slice was processed by
	// another node.
	Detected, Elsewhere time.Duration
	// Owned is how many slices the node held just before the fault, by its own account (for the
	// least number of moves the fault needed: MinMoves).
	Owned int
}

// Leftover is a file of a message still somewhere after the run: in the queue directory, in
// shunt/ or in bad/.
type Leftover struct {
	ID     string
	Where  string // "ready", "in-flight", "shunt", "bad"
	Reason string // bad/: the recorded reason; shunt: the recorded error
}

// Explained reports whether a leftover is a designed outcome of the faults: a message found in
// flight after crashes or lost leases MaxAttempts times goes to bad/ on purpose, with qslice's own
// reason for it, after handlings the ledger saw start (handlings: how many). A message in bad/ for
// any other reason (unreadable, corrupt, ...) or that no handler ever started is not explained:
// the faults alone cannot put it there.
func (l Leftover) Explained(handlings int) bool {
	return l.Where == "bad" && handlings > 0 && strings.HasPrefix(l.Reason, queue.ReasonInFlightTooOften+" ")
}

// Input is everything Analyze looks at.
type Input struct {
	Enqueued  []string // message IDs, in enqueue order
	Handlings []Handling
	Faults    []FaultRecord
	// Lapses are, per node, the instants its runner reported a lapsed lease (and so cancelled
	// its handlers) or left a message for the next owner, from the node's log.
	Lapses    map[string][]time.Time
	Leftovers []Leftover
	// Lease is the nodes' lease (ClusterConfig.Lease): a node cut off Consul (KindPartition,
	// KindBlackhole, KindBlip) at Done cannot hold a valid lease past Done + Lease, since its last
	// renewal was sent before.
	Lease time.Duration
	// FSTimeout is the nodes' health.filesystem.timeout: a node whose mount is cut
	// (KindFSCut) at Done starts no handling from Done + FSTimeout + lapseWithin until healed.
	FSTimeout time.Duration
	// Moves are the ownership changes the nodes logged; Sessions, per node, when it created a
	// Consul session. Both serve the churn analysis (Report.Churn).
	Moves    []Move
	Sessions map[string][]time.Time
}

// fenceSlack allows for the instant between a handler's check of its lease deadline and the
// timestamp of its ledger line, on a loaded machine.
const fenceSlack = 100 * time.Millisecond

// lapseWithin is how long after its lease must have ended a cut-off node's runner logs the lapse
// (it checks every 50 ms; the rest is slack for a loaded machine). A partition or blackhole held
// longer than Lease + lapseWithin without a lapse logged by the node is a failure.
const lapseWithin = time.Second

// Report is the verdict of a chaos run.
type Report struct {
	Seed     uint64
	Nodes    int
	Duration time.Duration
	Faults   map[Kind]int
	// Messages enqueued; Handlings started; Completed handlings (with an end line).
	Messages, Handlings, Completed int
	// Lost: enqueued, never completed, and nowhere on disk.
	Lost    int
	LostIDs []string
	// Stranded: never completed but still on disk (queue, shunt or bad); Explained ones are
	// in bad/ after MaxAttempts cut-off handlings.
	Stranded, StrandedExplained int
	StrandedDetails             []string
	// ConcurrentDuplicates: pairs of handlings of one message whose intervals overlap. The
	// interval of a handling without an end ends when its node was killed or paused or its
	// lease lapsed (whichever came first after the start); with none of these it never ends.
	ConcurrentDuplicates int
	DuplicateDetails     []string
	// Repeats: handlings of a message after its first. AfterCrash: the previous handling was
	// cut off, or its node was killed or paused or lost its lease before the message was
	// handled again. Unexplained: anything else.
	RepeatsAfterCrash  int
	UnexplainedRepeats int
	UnexplainedDetails []string
	// HandledWhileCut: handlings started on a node cut off Consul (KindPartition, KindBlackhole)
	// after its lease had to have ended (Done + Lease + fenceSlack) and before the cut was healed.
	// PartitionsUnlapsed: partitions and blackholes held past Lease + lapseWithin during which
	// the node's runner logged no lapsed lease. Both mean a cut-off node did not stop.
	HandledWhileCut    int
	PartitionsUnlapsed int
	PartitionDetails   []string
	CutOff             int // handlings without an end line
	// BlackholeLeaseBack and BlackholeSlicesBack summarize FaultRecord.LeaseBack and SlicesBack
	// over the blackholes that got that far; BlackholeDetails has one line per blackhole.
	BlackholeLeaseBack, BlackholeSlicesBack Stats
	BlackholeDetails                        []string
	// FSCutDetected, FSCutElsewhere and FSCutSlicesBack summarize the fscut measurements
	// (FaultRecord.Detected, Elsewhere, SlicesBack); FSCutDetails has one line per fscut.
	// LateAfterFence counts filesystem operations that returned after their node fenced the
	// queue (from the node logs): the late completions the fencing had to absorb.
	FSCutDetected, FSCutElsewhere, FSCutSlicesBack Stats
	FSCutDetails                                   []string
	LateAfterFence                                 int
	MalformedLedgerLine                            int
	// OwnershipChanges sums the nodes' qslice_ownership_changes_total by reason, over every
	// process (each process's last scrape); LoggedChanges counts the "slice ownership changed"
	// log lines by reason.
	OwnershipChanges map[string]float64
	LoggedChanges    map[string]int
	// MetricMismatches lists scrapes whose counters disagree with the process's log lines.
	MetricMismatches []string
	// Problems are troubles of the run itself: a fault that could not be applied or undone, a
	// cluster that did not process every slice again within the settle timeout, a node that did
	// not stop. Err reports them.
	Problems []string
	// NodeErrors are the ERROR lines of the nodes' logs that no fault of the run explains (see
	// ExpectedErrors); Err fails the run on them. ExpectedNodeErrors counts the explained ones.
	NodeErrors         []string
	ExpectedNodeErrors int
	// Churn counts the moves per fault kind against the least each fault needed.
	Churn Churn
}

// maxDetails bounds the detail lists.
const maxDetails = 20

func addDetail(list *[]string, s string) {
	if len(*list) < maxDetails {
		*list = append(*list, s)
	}
}

// Analyze checks the ledger against the enqueued messages and the faults.
func Analyze(in Input) Report {
	r := Report{Messages: len(in.Enqueued), Handlings: len(in.Handlings), Faults: map[Kind]int{}}
	for _, f := range in.Faults {
		r.Faults[f.Kind]++
	}
	byID := map[string][]Handling{}
	for _, h := range in.Handlings {
		byID[h.ID] = append(byID[h.ID], h)
		if h.Completed() {
			r.Completed++
		} else {
			r.CutOff++
		}
	}
	left := map[string][]Leftover{}
	for _, l := range in.Leftovers {
		left[l.ID] = append(left[l.ID], l)
	}

	// cuts[node]: instants after which a handling of that node without an end line cannot
	// still have been running: the node was killed or paused (Done: every process stopped),
	// or its runner cancelled its handlers.
	cuts := map[string][]time.Time{}
	for _, f := range in.Faults {
		if (f.Kind == KindKill || f.Kind == KindPause || f.Kind == KindStall) && !f.Done.IsZero() {
			cuts[f.NodeName] = append(cuts[f.NodeName], f.Done)
		}
	}
	for n, ts := range in.Lapses {
		cuts[n] = append(cuts[n], ts...)
	}
	for n := range cuts {
		slices.SortFunc(cuts[n], func(a, b time.Time) int { return a.Compare(b) })
	}
	// A partition (or blackhole) is neither a cut nor a disruption by itself: the cut-off node's
	// processes run on, so only its runner's lapse (handlers killed, files left in flight) ends a
	// handling or explains a repeat.
	//
	// disrupted: between from and to, the node was killed or paused or lost its lease, so a
	// handling it completed may never have been settled (its file not removed).
	disrupted := func(node string, from, to time.Time) bool {
		for _, f := range in.Faults {
			if f.NodeName != node || (f.Kind != KindKill && f.Kind != KindPause && f.Kind != KindStall) {
				continue
			}
			// The fault's span [At, End] (End zero: still going) meets [from, to].
			if !f.At.After(to) && (f.End.IsZero() || !f.End.Before(from)) {
				return true
			}
		}
		for _, t := range in.Lapses[node] {
			if !t.Before(from) && !t.After(to) {
				return true
			}
		}
		return false
	}
	end := func(h Handling) (time.Time, bool) {
		if h.Completed() {
			return h.End, true
		}
		if !h.Fenced.IsZero() {
			return h.Fenced, true // the handler gave up at its commit point
		}
		for _, t := range cuts[h.Node] {
			if !t.Before(h.Start) {
				return t, true
			}
		}
		return time.Time{}, false // never ends
	}

	ids := slices.Clone(in.Enqueued)
	known := map[string]bool{}
	for _, id := range ids {
		known[id] = true
	}
	for id := range byID {
		if !known[id] {
			ids = append(ids, id) // handled but not enqueued by the feeder: still checked
		}
	}
	for _, id := range ids {
		hs := byID[id]
		completed := false
		for _, h := range hs {
			completed = completed || h.Completed()
		}
		if !completed {
			if ls := left[id]; len(ls) > 0 {
				r.Stranded++
				if ls[0].Explained(len(hs)) {
					r.StrandedExplained++
				}
				addDetail(&r.StrandedDetails, fmt.Sprintf("%s: %s %s (%d handlings, none completed)", id, ls[0].Where, ls[0].Reason, len(hs)))
			} else {
				r.Lost++
				addDetail(&r.LostIDs, id)
			}
		}
		// Concurrent duplicates: any two handlings whose intervals overlap.
		for i := 0; i < len(hs); i++ {
			ei, finite := end(hs[i])
			for j := i + 1; j < len(hs); j++ {
				if !finite || hs[j].Start.Before(ei) {
					r.ConcurrentDuplicates++
					addDetail(&r.DuplicateDetails, fmt.Sprintf("%s: %s pid %d [%s, %s] overlaps %s pid %d started %s",
						id, hs[i].Node, hs[i].PID, stamp(hs[i].Start), endStamp(ei, finite, hs[i].Completed()),
						hs[j].Node, hs[j].PID, stamp(hs[j].Start)))
				}
			}
		}
		// Repeats.
		for i := 1; i < len(hs); i++ {
			prev, cur := hs[i-1], hs[i]
			_, finite := end(prev)
			switch {
			case !prev.Completed() && finite:
				r.RepeatsAfterCrash++
			case prev.Completed() && disrupted(prev.Node, prev.Start, cur.Start):
				r.RepeatsAfterCrash++
			default:
				r.UnexplainedRepeats++
				why := "completed, and its node was neither killed nor paused nor lost its lease before the repeat"
				if !prev.Completed() {
					why = "cut off, but its node was neither killed nor paused nor lost its lease"
				}
				addDetail(&r.UnexplainedDetails, fmt.Sprintf("%s: handled on %s at %s (%s), again on %s at %s",
					id, prev.Node, stamp(prev.Start), why, cur.Node, stamp(cur.Start)))
			}
		}
	}
	// handledWhileCut counts the handlings on f's node that started after from, when the node
	// must have stopped, and before f was healed; cut says what cut the node off.
	handledWhileCut := func(f FaultRecord, from time.Time, cut string) {
		for _, h := range in.Handlings {
			if h.Node == f.NodeName && h.Start.After(from) && h.Start.Before(f.End) {
				r.HandledWhileCut++
				addDetail(&r.PartitionDetails, fmt.Sprintf("%s: handled on %s at %s, %s, healed %s",
					h.ID, h.Node, stamp(h.Start), cut, stamp(f.End)))
			}
		}
	}
	// A node cut off Consul stops: its lease lapses within Lease of the cut, its runner says so,
	// and it starts no handler until it is healed.
	for _, f := range in.Faults {
		if (f.Kind != KindPartition && f.Kind != KindBlackhole && f.Kind != KindBlip) || f.Done.IsZero() || f.End.IsZero() {
			continue
		}
		handledWhileCut(f, f.Done.Add(in.Lease+fenceSlack), fmt.Sprintf("cut off Consul since %s (lease %s)", stamp(f.Done), in.Lease))
		if f.End.Sub(f.Done) <= in.Lease+lapseWithin {
			continue
		}
		lapsed := false
		for _, t := range in.Lapses[f.NodeName] {
			lapsed = lapsed || (!t.Before(f.Done) && !t.After(f.Done.Add(in.Lease+lapseWithin)))
		}
		if !lapsed {
			r.PartitionsUnlapsed++
			addDetail(&r.PartitionDetails, fmt.Sprintf("%s cut off Consul from %s to %s: its runner logged no lapsed lease within %s",
				f.NodeName, stamp(f.Done), stamp(f.End), in.Lease+lapseWithin))
		}
	}
	// A node whose filesystem is cut starts nothing once it must have noticed, until healed.
	var fsDet, fsElse, fsBack []time.Duration
	for _, f := range in.Faults {
		if f.Kind != KindFSCut || f.Done.IsZero() || f.End.IsZero() {
			continue
		}
		handledWhileCut(f, f.Done.Add(in.FSTimeout+lapseWithin), fmt.Sprintf("its filesystem cut since %s (timeout %s)", stamp(f.Done), in.FSTimeout))
		d := func(x time.Duration) string {
			if x == 0 {
				return "not reached"
			}
			return x.Round(time.Millisecond).String()
		}
		addDetail(&r.FSCutDetails, fmt.Sprintf("%s (%s): filesystem cut %s, healed %s; unavailable reported after %s, slices processed elsewhere after %s; after the healing, slices back after %s",
			f, f.NodeName, stamp(f.Done), stamp(f.End), d(f.Detected), d(f.Elsewhere), d(f.SlicesBack)))
		for _, p := range []struct {
			v   time.Duration
			out *[]time.Duration
		}{{f.Detected, &fsDet}, {f.Elsewhere, &fsElse}, {f.SlicesBack, &fsBack}} {
			if p.v > 0 {
				*p.out = append(*p.out, p.v)
			}
		}
	}
	r.FSCutDetected, r.FSCutElsewhere, r.FSCutSlicesBack = Summarize(fsDet), Summarize(fsElse), Summarize(fsBack)
	// How long blackholed nodes took to come back after the healing.
	var leaseBack, slicesBack []time.Duration
	for _, f := range in.Faults {
		if f.Kind != KindBlackhole {
			continue
		}
		back := func(d time.Duration) string {
			if d == 0 {
				return "not reached"
			}
			return d.Round(time.Millisecond).String()
		}
		addDetail(&r.BlackholeDetails, fmt.Sprintf("%s (%s): blackholed %s, healed %s (%d open connections silenced, %d new ones held silent); after the healing: lease back %s, slices back %s",
			f, f.NodeName, stamp(f.Done), stamp(f.End), f.Silenced, f.Held, back(f.LeaseBack), back(f.SlicesBack)))
		if f.LeaseBack > 0 {
			leaseBack = append(leaseBack, f.LeaseBack)
		}
		if f.SlicesBack > 0 {
			slicesBack = append(slicesBack, f.SlicesBack)
		}
	}
	r.BlackholeLeaseBack, r.BlackholeSlicesBack = Summarize(leaseBack), Summarize(slicesBack)
	// Leftovers of completed messages (a file left behind after its handling) are strays too.
	for id, ls := range left {
		done := false
		for _, h := range byID[id] {
			done = done || h.Completed()
		}
		if done {
			r.Stranded++
			addDetail(&r.StrandedDetails, fmt.Sprintf("%s: %s %s although handled", id, ls[0].Where, ls[0].Reason))
		}
	}
	sort.Strings(r.LostIDs)
	r.Churn = analyzeChurn(in.Faults, in.Moves, in.Sessions)
	return r
}

func stamp(t time.Time) string { return t.Format("15:04:05.000000") }

func endStamp(t time.Time, finite, completed bool) string {
	switch {
	case !finite:
		return "no end, never cut off"
	case completed:
		return stamp(t)
	default:
		return "cut off " + stamp(t)
	}
}

// Err returns why the run failed, or nil: messages lost, concurrent duplicates, unexplained
// repeats, a cut-off node that did not stop, or messages left on disk without an explanation.
func (r *Report) Err() error {
	var errs []error
	if r.Lost > 0 {
		errs = append(errs, fmt.Errorf("%d messages lost: %v", r.Lost, r.LostIDs))
	}
	if r.ConcurrentDuplicates > 0 {
		errs = append(errs, fmt.Errorf("%d concurrent duplicate handlings:\n  %s", r.ConcurrentDuplicates, strings.Join(r.DuplicateDetails, "\n  ")))
	}
	if r.UnexplainedRepeats > 0 {
		errs = append(errs, fmt.Errorf("%d unexplained repeats:\n  %s", r.UnexplainedRepeats, strings.Join(r.UnexplainedDetails, "\n  ")))
	}
	if r.HandledWhileCut > 0 || r.PartitionsUnlapsed > 0 {
		errs = append(errs, fmt.Errorf("a node cut off Consul did not stop (%d handlings while cut off, %d partitions without a lapsed lease):\n  %s",
			r.HandledWhileCut, r.PartitionsUnlapsed, strings.Join(r.PartitionDetails, "\n  ")))
	}
	if n := r.Stranded - r.StrandedExplained; n > 0 {
		errs = append(errs, fmt.Errorf("%d messages left on disk without explanation:\n  %s", n, strings.Join(r.StrandedDetails, "\n  ")))
	}
	if len(r.MetricMismatches) > 0 {
		errs = append(errs, fmt.Errorf("ownership change counters disagree with the log:\n  %s", strings.Join(r.MetricMismatches, "\n  ")))
	}
	if len(r.Problems) > 0 {
		errs = append(errs, fmt.Errorf("%d problems during the run:\n  %s", len(r.Problems), strings.Join(r.Problems, "\n  ")))
	}
	if len(r.NodeErrors) > 0 {
		errs = append(errs, fmt.Errorf("ERROR lines in the node logs that no fault explains:\n  %s", strings.Join(r.NodeErrors, "\n  ")))
	}
	if r.MalformedLedgerLine > 0 {
		errs = append(errs, fmt.Errorf("%d malformed ledger lines", r.MalformedLedgerLine))
	}
	return errors.Join(errs...)
}
