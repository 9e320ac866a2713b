package chaos

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/runner/queue"
)

// Consul is the Consul server the cluster talks to, as internal/consultest provides it: Stop
// and Restart keep its data, the way a real restart does.
type Consul interface {
	Stop() error
	Restart()
}

// SoakOptions configure a chaos run.
type SoakOptions struct {
	Seed uint64
	// Faults is a bounded schedule: this many faults of each kind, in a seeded random order.
	// When empty, faults of random kinds (but KindBlackhole) are drawn until Duration has passed.
	Faults   map[Kind]int
	Duration time.Duration
	// Rate (messages per second) and Messages (0: until the faults end) bound the feeder.
	Rate     float64
	Messages int
	// SettleTimeout bounds the wait, after each fault, for every slice to be processed again
	// (default 60 s); DrainTimeout the final wait for every message to be handled (default 2 min).
	SettleTimeout, DrainTimeout time.Duration
	// RecoverTimeout bounds the wait, after a blackhole heals, for the node's lease and its
	// slices to come back (default 7 min: qslice's blocking queries wait 5 min, Consul adds up to
	// a sixteenth, and a watch left on a silent connection hears nothing for that long), so that
	// a slow recovery is measured; one slower than SettleTimeout is a problem all the same.
	RecoverTimeout time.Duration
	// FSHold is the shortest hold of an fscut (ScheduleParams.FSHold).
	FSHold time.Duration
	Log    *slog.Logger
}

// RunSoak runs the cluster's nodes, feeds messages, injects the faults one after the other,
// stops feeding, waits until everything is handled, stops the nodes and checks the ledger.
// It must be called from the goroutine that owns consul (a test's: consultest fails the test
// from Restart). The caller owns cl and closes it (Close kills whatever still runs).
func RunSoak(ctx context.Context, cl *Cluster, consul Consul, o SoakOptions) (*Report, error) {
	o.SettleTimeout = cmp.Or(o.SettleTimeout, time.Minute)
	o.DrainTimeout = cmp.Or(o.DrainTimeout, 2*time.Minute)
	o.RecoverTimeout = cmp.Or(o.RecoverTimeout, 7*time.Minute)
	o.Rate = cmp.Or(o.Rate, 5)
	run := newRunLog(o.Log)
	log, problem := run.Logger, run.problem
	began := time.Now()

	if err := startSettled(ctx, cl, 60*time.Second); err != nil {
		return nil, err
	}
	log.Info("cluster up", "nodes", len(cl.Nodes), "slices", cl.cfg.Slices)

	feeder := &Feeder{Dir: queue.NewDir(cl.QueueDir, "", ""), Rate: o.Rate, Count: o.Messages}
	feed := startFeeder(ctx, feeder)
	defer feed.stop()

	scr := newScraper(cl)
	timing := cl.cfg.Timing()
	params := ScheduleParams{Nodes: len(cl.Nodes), Lease: cl.cfg.Lease(), Takeover: cl.cfg.TTL + cl.cfg.LockDelay + time.Second,
		GapMin: time.Second, GapMax: 3 * time.Second, FSHold: o.FSHold, StallMax: timing.StallTolerance(), BlipMax: timing.CutTolerance()}
	var schedule []Fault
	rng := NewRand(o.Seed)
	if len(o.Faults) > 0 {
		schedule = NewSchedule(o.Seed, o.Faults, params)
	}
	var records []FaultRecord
	for seq := 0; ; seq++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var f Fault
		if len(o.Faults) > 0 {
			if seq >= len(schedule) {
				break
			}
			f = schedule[seq]
		} else {
			if time.Since(began) >= o.Duration {
				break
			}
			f = NextFault(rng, seq, params)
		}
		scr.scrape(ctx)
		rec := applyFault(ctx, cl, consul, f, o, log)
		if rec.Err != "" {
			problem("fault %s: %s", f, rec.Err)
		}
		records = append(records, rec)
		// Every slice back at its home node before the next fault, the fault's node included: the
		// moves between two faults are the first one's (Report.Churn), and a fault needs no more
		// than its minimum.
		if f.Kind != KindConsulRestart {
			if err := cl.WaitRejoined(ctx, cl.Nodes[f.Node%len(cl.Nodes)], rec.Owned > 0, o.SettleTimeout); err != nil {
				problem("after fault %s: %v", f, err)
			}
		}
		if err := cl.WaitOwned(ctx, o.SettleTimeout, true); err != nil {
			problem("after fault %s: slices not all processed by their home nodes within %s: %v", f, o.SettleTimeout, err)
		}
		if !clock.Sleep(ctx, clock.System{}, f.Gap) {
			return nil, ctx.Err()
		}
	}
	log.Info("faults done", "faults", len(records))

	// Stop feeding (a bounded feeder gets the time its remaining messages need), then wait for
	// every message to be handled and the queue to be empty.
	var feedErr error
	if o.Messages > 0 {
		rest := o.Messages - len(feeder.Enqueued())
		feedErr = feed.wait(time.Duration(float64(rest)/o.Rate*float64(time.Second)) + 10*time.Second)
	} else {
		feedErr = feed.stop()
	}
	if feedErr != nil {
		problem("feeder: %v", feedErr)
	}
	enqueued := feeder.Enqueued()
	log.Info("feeding stopped; waiting for the queue to drain", "messages", len(enqueued))
	rep, err := run.finish(ctx, cl, scr, enqueued, records, o.DrainTimeout, began)
	if err != nil {
		return nil, err
	}
	rep.Seed = o.Seed
	return rep, nil
}

// applyFault applies f, holds it, undoes it, and records when each happened (and, for a
// blackhole, how long the node took to come back).
func applyFault(ctx context.Context, cl *Cluster, consul Consul, f Fault, o SoakOptions, log *slog.Logger) FaultRecord {
	rec := FaultRecord{Fault: f}
	var n *Node
	if f.Kind != KindConsulRestart {
		n = cl.Nodes[f.Node%len(cl.Nodes)]
		rec.NodeName = n.Name
	}
	if n != nil {
		if own, err := cl.Ownership(ctx); err == nil {
			rec.Owned = len(own.Held[n.Name])
		}
	}
	// Kills, pauses, stalls, partitions, blips and blackholes strike while the node runs a
	// handler, when it gets one within 3 s.
	busy := false
	switch f.Kind {
	case KindKill, KindPause, KindStall, KindPartition, KindBlip, KindBlackhole, KindFSCut:
		busy = n.WaitBusy(3 * time.Second)
	}
	log.Info("fault", "fault", f.String(), "node", rec.NodeName, "handler_running", busy)
	var errs []error
	rec.At = time.Now()
	switch f.Kind {
	case KindKill:
		errs = append(errs, n.Kill())
		rec.Done = time.Now()
		clock.Sleep(ctx, clock.System{}, f.Hold)
		errs = append(errs, n.Start())
	case KindPause:
		errs = append(errs, n.Pause())
		rec.Done = time.Now()
		clock.Sleep(ctx, clock.System{}, f.Hold)
		errs = append(errs, n.Resume())
	case KindStall:
		// Shorter than the stall the timing tolerates, counted from the first SIGSTOP: the node
		// keeps its session, nothing moves (Report.Churn counts any move as spurious).
		errs = append(errs, n.Pause())
		rec.Done = time.Now()
		clock.Sleep(ctx, clock.System{}, time.Until(rec.At.Add(f.Hold)))
		errs = append(errs, n.Resume())
	case KindBlip:
		// Shorter than the cut the timing tolerates: the node keeps its session, nothing moves
		// (Report.Churn counts any move as spurious). Its lease may lapse meanwhile.
		n.Cut()
		rec.Done = time.Now()
		clock.Sleep(ctx, clock.System{}, time.Until(rec.At.Add(f.Hold)))
		n.Heal()
		rec.End = time.Now()
	case KindConsulRestart:
		errs = append(errs, consul.Stop())
		rec.Done = time.Now()
		consul.Restart()
	case KindRestart:
		errs = append(errs, n.Stop(time.Minute))
		rec.Done = time.Now()
		clock.Sleep(ctx, clock.System{}, f.Hold)
		errs = append(errs, n.Start())
	case KindDrain:
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := n.CLI(dctx, "drain")
		cancel()
		errs = append(errs, err)
		rec.Done = time.Now()
		clock.Sleep(ctx, clock.System{}, f.Hold)
		uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = n.CLI(uctx, "drain", "--undo")
		cancel()
		errs = append(errs, err)
	case KindPartition:
		// The node must notice within the hold: its lease lapses (it stops processing), and the
		// others take its slices once its session is gone. End is the healing; the node's return
		// (a new session, its slices back after the hold-down) comes after it.
		n.Cut()
		rec.Done = time.Now()
		if err := n.WaitLease(ctx, false, f.Hold); err != nil {
			errs = append(errs, fmt.Errorf("cut off Consul, its lease did not lapse: %w", err))
		}
		clock.Sleep(ctx, clock.System{}, time.Until(rec.Done.Add(f.Hold)))
		refused, _ := n.Heal()
		rec.End = time.Now()
		log.Info("partition healed", "node", n.Name, "connections_refused", refused)
		if refused == 0 {
			errs = append(errs, fmt.Errorf("%s tried no connection to Consul while cut off: does it reach Consul through its proxy?", n.Name))
		}
		if err := n.WaitLease(ctx, true, 30*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("healed, the node got no valid lease again: %w", err))
		}
	case KindBlackhole:
		// As a partition, but nothing the node sent before the healing is ever answered: it
		// must give up its old connections by its own timeouts.
		silenced, err := n.Blackhole()
		errs = append(errs, err)
		rec.Done = time.Now()
		if err := n.WaitLease(ctx, false, f.Hold); err != nil {
			errs = append(errs, fmt.Errorf("blackholed, its lease did not lapse: %w", err))
		}
		clock.Sleep(ctx, clock.System{}, time.Until(rec.Done.Add(f.Hold)))
		refused, held := n.Heal()
		rec.End = time.Now()
		rec.Silenced, rec.Held = silenced, held
		log.Info("blackhole healed", "node", n.Name, "connections_silenced", silenced, "connections_held_silent", held,
			"silent_in_all", n.Silent())
		if refused > 0 {
			errs = append(errs, fmt.Errorf("%s: %d connections closed at once instead of held silent (over the proxy's bound of %d)", n.Name, refused, maxSilentConns))
		}
		if silenced+held == 0 {
			errs = append(errs, fmt.Errorf("%s had no connection to Consul while blackholed: does it reach Consul through its proxy?", n.Name))
		}
		errs = append(errs, measureRecovery(ctx, cl, n, &rec, o, log))
	case KindFSCut:
		errs = append(errs, applyFSCut(ctx, cl, n, f, &rec, o, log)...)
	}
	if rec.End.IsZero() {
		rec.End = time.Now()
	}
	if err := errors.Join(errs...); err != nil {
		rec.Err = err.Error()
	}
	return rec
}

// measureRecovery waits, from the healing of a blackhole (rec.End), until the node's status
// shows a valid lease (rec.LeaseBack) and then until every slice is processed by its home node
// as every node sees it (rec.SlicesBack: the node has its share back), each up to
// o.RecoverTimeout from the healing. A recovery slower than o.SettleTimeout is an error too.
func measureRecovery(ctx context.Context, cl *Cluster, n *Node, rec *FaultRecord, o SoakOptions, log *slog.Logger) error {
	bound := rec.End.Add(o.RecoverTimeout)
	if err := n.WaitLease(ctx, true, time.Until(bound)); err != nil {
		return fmt.Errorf("healed, the node got no valid lease again within %s: %w", o.RecoverTimeout, err)
	}
	rec.LeaseBack = time.Since(rec.End)
	if err := cl.WaitOwned(ctx, time.Until(bound), true); err != nil {
		return fmt.Errorf("healed, lease back after %s, but the cluster did not converge with %s's slices back within %s: %w",
			rec.LeaseBack.Round(time.Millisecond), n.Name, o.RecoverTimeout, err)
	}
	rec.SlicesBack = time.Since(rec.End)
	log.Info("blackhole recovered", "node", n.Name, "lease_back", rec.LeaseBack.Round(time.Millisecond),
		"slices_back", rec.SlicesBack.Round(time.Millisecond))
	if rec.SlicesBack > o.SettleTimeout {
		return fmt.Errorf("healed, %s got its lease back after %s but its slices only after %s (more than %s)", n.Name,
			rec.LeaseBack.Round(time.Millisecond), rec.SlicesBack.Round(time.Millisecond), o.SettleTimeout)
	}
	return nil
}

// applyFSCut cuts node n's mount of the shared filesystem for f.Hold and measures: how long the
// node took to report the queue's filesystem unavailable (its HTTP status must answer all along:
// nothing there may block on the filesystem), until every slice was processed and none by n
// (its slices handed off and taken by nodes that reach the filesystem), and, after the healing,
// until the cluster converged with n's slices back (the filesystem hold-down, then Consul's).
func applyFSCut(ctx context.Context, cl *Cluster, n *Node, f Fault, rec *FaultRecord, o SoakOptions, log *slog.Logger) []error {
	if cl.cfg.FS == nil {
		return []error{errors.New("fscut needs a cluster on per-node mounts (ClusterConfig.FS)")}
	}
	var errs []error
	if err := cl.cfg.FS.Cut(n.Index); err != nil {
		return []error{err}
	}
	rec.Done = time.Now()
	bound := cl.cfg.FSHealth.EffectiveTimeout() + 5*time.Second
	if err := pollUntil(bound, func() error {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := n.Status(sctx)
		if err != nil {
			return fmt.Errorf("status of %s while its filesystem is cut (it must answer): %w", n.Name, err)
		}
		for _, fs := range st.Filesystems {
			if fs.Queue == "in" && !fs.Available {
				return nil
			}
		}
		return errors.New("filesystem still reported available")
	}); err != nil {
		errs = append(errs, fmt.Errorf("cut off its filesystem, %s did not report it unavailable within %s: %w", n.Name, bound, err))
	} else {
		rec.Detected = time.Since(rec.Done)
	}
	if err := pollUntil(time.Until(rec.Done.Add(f.Hold)), func() error {
		o, err := cl.Ownership(ctx)
		if err != nil {
			return err
		}
		for s := 0; s < cl.cfg.Slices; s++ {
			if !o.Processing[s] || o.ProcessedBy[s] == n.Name {
				return fmt.Errorf("slice %d processed by %q", s, o.ProcessedBy[s])
			}
		}
		return nil
	}); err != nil {
		errs = append(errs, fmt.Errorf("cut off its filesystem, %s's slices were not all processed elsewhere within the hold %s: %w", n.Name, f.Hold, err))
	} else {
		rec.Elsewhere = time.Since(rec.Done)
	}
	clock.Sleep(ctx, clock.System{}, time.Until(rec.Done.Add(f.Hold)))
	errs = append(errs, cl.cfg.FS.Heal(n.Index))
	rec.End = time.Now()
	log.Info("filesystem healed", "node", n.Name, "detected", rec.Detected.Round(time.Millisecond), "processed_elsewhere", rec.Elsewhere.Round(time.Millisecond))
	timeout := max(o.SettleTimeout, 2*time.Minute)
	if err := cl.WaitOwned(ctx, timeout, true); err != nil {
		errs = append(errs, fmt.Errorf("healed, the cluster did not converge with %s's slices back within %s: %w", n.Name, timeout, err))
	} else {
		rec.SlicesBack = time.Since(rec.End)
	}
	log.Info("filesystem cut recovered", "node", n.Name, "slices_back", rec.SlicesBack.Round(time.Millisecond))
	return errs
}

// waitHandled polls until every message in ids has a completed handling and the queue directory
// holds no ready or in-flight file, or timeout.
func waitHandled(ctx context.Context, cl *Cluster, ids []string, timeout time.Duration) error {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	r := NewLedgerReader(cl.LedgerPaths()...)
	return pollUntil(timeout, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		evs, err := r.Poll()
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.End {
				delete(want, e.ID)
			}
		}
		if len(want) > 0 {
			return fmt.Errorf("%d messages not handled yet", len(want))
		}
		left, err := Leftovers(cl.QueueDir)
		if err != nil {
			return err
		}
		for _, l := range left {
			if l.Where == "ready" || l.Where == "in-flight" {
				return fmt.Errorf("%s still %s", l.ID, l.Where)
			}
		}
		return nil
	})
}

// Collect reads the ledgers, the nodes' logs and what is left on disk, and analyzes them.
func Collect(cl *Cluster, enqueued []string, faults []FaultRecord) (*Report, error) {
	evs, malformed, err := ReadLedgers(cl.cfg.Dir)
	if err != nil {
		return nil, err
	}
	left, err := Leftovers(cl.QueueDir)
	if err != nil {
		return nil, err
	}
	in := Input{Enqueued: enqueued, Handlings: PairHandlings(evs), Faults: faults, Lapses: map[string][]time.Time{}, Leftovers: left,
		Lease: cl.cfg.Lease(), FSTimeout: cl.cfg.FSHealth.EffectiveTimeout(), Sessions: map[string][]time.Time{}}
	logged := map[string]int{}
	var nodeErrors []string
	expected, late := 0, 0
	for _, n := range cl.Nodes {
		for _, p := range n.Logs() {
			nl, err := ReadNodeLog(p)
			if err != nil {
				return nil, err
			}
			in.Lapses[n.Name] = append(in.Lapses[n.Name], nl.Lapses...)
			late += nl.LateAfterFence
			in.Sessions[n.Name] = append(in.Sessions[n.Name], nl.Sessions...)
			in.Moves = append(in.Moves, movesFromLog(n.Name, nl)...)
			for k, v := range nl.Changes {
				logged[k] += v
			}
			for _, l := range nl.ErrorLines {
				if ExpectedError(l, faults) {
					expected++
				} else if len(nodeErrors) < maxDetails {
					nodeErrors = append(nodeErrors, fmt.Sprintf("%s: %s", filepath.Base(p), l.Line))
				}
			}
			if nl.Errors > len(nl.ErrorLines) && len(nodeErrors) < maxDetails {
				nodeErrors = append(nodeErrors, fmt.Sprintf("%s: %d more ERROR lines, not judged", filepath.Base(p), nl.Errors-len(nl.ErrorLines)))
			}
		}
	}
	rep := Analyze(in)
	rep.MalformedLedgerLine = malformed
	rep.LoggedChanges = logged
	rep.NodeErrors = nodeErrors
	rep.ExpectedNodeErrors = expected
	rep.LateAfterFence = late
	return &rep, nil
}

// ExpectedErrors are the ERROR messages (their beginnings) that a fault of each kind may make a
// node log, from the fault's start until errorSettle after it was undone: a node cut off Consul,
// or whose Consul restarts, logs its failing requests once per outage. Any other ERROR line, or a
// line that is not JSON (a panic), fails the run.
var ExpectedErrors = map[Kind][]string{
	KindConsulRestart: {"consul request failing"},
	KindPartition:     {"consul request failing"},
	KindBlackhole:     {"consul request failing"},
	// The node whose filesystem hangs and then fails (GlusterFS: ENOTCONN after its
	// ping-timeout) says so, and says what it leaves behind.
	KindFSCut: {"queue filesystem unavailable", "queue fenced", "claim failed", "scanning the queue directory failed",
		"recovering in-flight files", "could not recover an in-flight file", "handler succeeded but the file could not be removed",
		"a claim landed after the queue was fenced", "could not give a message back", "stopped with work stuck"},
	KindBlip: {"consul request failing"},
	// A request in flight when the node stops may time out when it resumes.
	KindStall: {"consul request failing"},
}

// slowConsul are the error texts of a Consul request that got no answer in time. Outside any fault
// they come from a loaded machine (the harness gives requests 200 ms), not from a bug: a
// "consul request failing" line with one of them is expected at any time, while a request that
// Consul answered with an error (a refusal, a 404, a 500) is judged like any other ERROR line.
var slowConsul = []string{"context deadline exceeded", "Client.Timeout", "i/o timeout", "timed out", "connection reset by peer", "EOF"}

// errorSettle is how long after a fault was undone its expected errors may still be logged: a
// restarted Consul elects a leader and syncs its agent before every request succeeds again.
const errorSettle = 30 * time.Second

// ExpectedError reports whether some fault of the run explains an ERROR line of a node log.
func ExpectedError(l ErrorLine, faults []FaultRecord) bool {
	if l.Msg == "" || l.At.IsZero() {
		return false
	}
	if strings.HasPrefix(l.Msg, "consul request failing") {
		for _, e := range slowConsul {
			if strings.Contains(l.Line, e) {
				return true
			}
		}
	}
	for _, f := range faults {
		if l.At.Before(f.At) || (!f.End.IsZero() && l.At.After(f.End.Add(errorSettle))) {
			continue
		}
		for _, m := range ExpectedErrors[f.Kind] {
			if strings.HasPrefix(l.Msg, m) {
				return true
			}
		}
	}
	return false
}

// Leftovers lists the message files of a queue directory and of its shunt and bad directories
// (Mailman's layout: siblings of the queue directory).
func Leftovers(queueDir string) ([]Leftover, error) {
	d := queue.NewDir(queueDir, "", "")
	var out []Leftover
	list := func(dir string) ([]string, error) {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list leftovers: %w", err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names, nil
	}
	names, err := list(d.Path)
	if err != nil {
		return nil, err
	}
	for _, f := range names {
		switch {
		case strings.HasSuffix(f, queue.SuffixReady):
			out = append(out, Leftover{ID: strings.TrimSuffix(f, queue.SuffixReady), Where: "ready"})
		case strings.HasSuffix(f, queue.SuffixInFlight):
			out = append(out, Leftover{ID: strings.TrimSuffix(f, queue.SuffixInFlight), Where: "in-flight"})
		}
	}
	names, err = list(d.ShuntDir)
	if err != nil {
		return nil, err
	}
	for _, f := range names {
		if !strings.HasSuffix(f, queue.SuffixReady) {
			continue
		}
		l := Leftover{ID: strings.TrimSuffix(f, queue.SuffixReady), Where: "shunt"}
		if b, err := os.ReadFile(filepath.Join(d.ShuntDir, f)); err == nil {
			if m, _, err := queue.Decode(b); err == nil {
				l.Reason = m.Error
			}
		}
		out = append(out, l)
	}
	names, err = list(d.BadDir)
	if err != nil {
		return nil, err
	}
	for _, f := range names {
		if !strings.HasSuffix(f, queue.SuffixBad) {
			continue
		}
		id := strings.TrimSuffix(f, queue.SuffixBad)
		l := Leftover{ID: id, Where: "bad"}
		if b, err := os.ReadFile(filepath.Join(d.BadDir, id+queue.SuffixWhy)); err == nil {
			var why queue.BadReason
			if json.Unmarshal(b, &why) == nil && why.Reason != "" {
				l.Reason = why.Reason
			} else {
				l.Reason = "unparsable reason file: " + strings.TrimSpace(string(b))
			}
		} else {
			l.Reason = "no reason file: " + err.Error()
		}
		out = append(out, l)
	}
	return out, nil
}

// scraper keeps, for every process a node ran, the ownership counters read from it: a killed
// process's counters die with it, so they are read before every fault.
type scraper struct {
	cl      *Cluster
	samples []scrapeSample
}

// scrapeSample is one read of a process's counters, between Start and End.
type scrapeSample struct {
	Node        *Node
	Incarnation int
	Start, End  time.Time
	Counts      map[string]float64
}

func newScraper(cl *Cluster) *scraper { return &scraper{cl: cl} }

func (s *scraper) scrape(ctx context.Context) {
	for _, n := range s.cl.Nodes {
		n.mu.Lock()
		skip, inc := n.proc == nil || n.paused, n.incarnation
		n.mu.Unlock()
		if skip {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		start := time.Now()
		m, err := n.OwnershipChanges(cctx)
		cancel()
		if err == nil {
			s.samples = append(s.samples, scrapeSample{Node: n, Incarnation: inc, Start: start, End: time.Now(), Counts: m})
		}
	}
}

// total sums, over every process, the counters of its last scrape.
func (s *scraper) total() map[string]float64 {
	last := map[string]map[string]float64{}
	for _, x := range s.samples {
		last[fmt.Sprintf("%s#%d", x.Node.Name, x.Incarnation)] = x.Counts
	}
	out := map[string]float64{}
	for _, k := range slices.Sorted(maps.Keys(last)) {
		for r, v := range last[k] {
			out[r] += v
		}
	}
	return out
}

// logSlack allows for the instant between a change's log line and its count (microseconds).
const logSlack = 10 * time.Millisecond

// crossCheck compares every scrape with the process's "slice ownership changed" log lines: a
// counter must lie between the lines logged before the scrape began and those logged before it
// ended. Every ownership change is one log line and one count.
func (s *scraper) crossCheck() ([]string, error) {
	var out []string
	logs := map[string]NodeLog{}
	for _, x := range s.samples {
		paths := x.Node.Logs()
		if x.Incarnation < 1 || x.Incarnation > len(paths) {
			continue
		}
		p := paths[x.Incarnation-1]
		nl, ok := logs[p]
		if !ok {
			var err error
			if nl, err = ReadNodeLog(p); err != nil {
				return nil, err
			}
			logs[p] = nl
		}
		reasons := map[string]bool{}
		for r := range x.Counts {
			reasons[r] = true
		}
		for _, c := range nl.ChangeLines {
			reasons[c.Reason] = true
		}
		for _, r := range slices.Sorted(maps.Keys(reasons)) {
			lo, hi := 0, 0
			for _, c := range nl.ChangeLines {
				if c.Reason != r {
					continue
				}
				if c.At.Before(x.Start.Add(-logSlack)) {
					lo++
				}
				if !c.At.After(x.End) {
					hi++
				}
			}
			if v := int(x.Counts[r]); v < lo || v > hi {
				out = append(out, fmt.Sprintf("%s (process %d) at %s: qslice_ownership_changes_total{reason=%q} = %d, but %d..%d such log lines",
					x.Node.Name, x.Incarnation, stamp(x.Start), r, v, lo, hi))
			}
		}
	}
	return out, nil
}
