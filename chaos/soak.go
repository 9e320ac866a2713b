package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

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
	// When empty, faults of random kinds are drawn until Duration has passed.
	Faults   map[Kind]int
	Duration time.Duration
	// Rate (messages per second) and Messages (0: until the faults end) bound the feeder.
	Rate     float64
	Messages int
	// SettleTimeout bounds the wait, after each fault, for every slice to be processed again
	// (default 60 s); DrainTimeout the final wait for every message to be handled (default 2 min).
	SettleTimeout, DrainTimeout time.Duration
	Log                         *slog.Logger
}

// RunSoak runs the cluster's nodes, feeds messages, injects the faults one after the other,
// stops feeding, waits until everything is handled, stops the nodes and checks the ledger.
// It must be called from the goroutine that owns consul (a test's: consultest fails the test
// from Restart). The caller owns cl and closes it (Close kills whatever still runs).
func RunSoak(ctx context.Context, cl *Cluster, consul Consul, o SoakOptions) (*Report, error) {
	if o.SettleTimeout == 0 {
		o.SettleTimeout = time.Minute
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 2 * time.Minute
	}
	if o.Rate == 0 {
		o.Rate = 5
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	began := time.Now()
	var problems []string
	problem := func(format string, args ...any) {
		s := fmt.Sprintf(format, args...)
		log.Warn("problem", "what", s)
		problems = append(problems, s)
	}

	if err := cl.StartAll(); err != nil {
		return nil, err
	}
	if err := cl.WaitOwned(ctx, 60*time.Second, true); err != nil {
		return nil, fmt.Errorf("cluster did not come up: %w", err)
	}
	log.Info("cluster up", "nodes", len(cl.Nodes), "slices", cl.cfg.Slices)

	// The feeder runs in its own goroutine, owned here: cancelled and waited for below.
	feeder := &Feeder{Dir: queue.NewDir(cl.QueueDir, "", ""), Rate: o.Rate, Count: o.Messages}
	feedCtx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feedErr := make(chan error, 1)
	go func() { feedErr <- feeder.Run(feedCtx) }()
	feederDone := false
	waitFeeder := func(timeout time.Duration) {
		if feederDone {
			return
		}
		select {
		case err := <-feedErr:
			feederDone = true
			if err != nil {
				problem("feeder: %v", err)
			}
		case <-time.After(timeout):
			stopFeed()
			if err := <-feedErr; err != nil {
				problem("feeder: %v", err)
			}
			feederDone = true
		}
	}

	scr := newScraper(cl)
	params := ScheduleParams{Nodes: len(cl.Nodes), Lease: cl.cfg.Lease(), Takeover: cl.cfg.TTL + cl.cfg.LockDelay + time.Second,
		GapMin: time.Second, GapMax: 3 * time.Second}
	var schedule []Fault
	var rng = NewRand(o.Seed)
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
		rec := applyFault(ctx, cl, consul, f, log)
		if rec.Err != "" {
			problem("fault %s: %s", f, rec.Err)
		}
		records = append(records, rec)
		if err := cl.WaitOwned(ctx, o.SettleTimeout, false); err != nil {
			problem("after fault %s: slices not all processed within %s: %v", f, o.SettleTimeout, err)
		}
		if !sleepCtx(ctx, f.Gap) {
			return nil, ctx.Err()
		}
	}
	log.Info("faults done", "faults", len(records))

	// Stop feeding (a bounded feeder gets the time its remaining messages need), then wait for
	// every message to be handled and the queue to be empty.
	if o.Messages > 0 {
		rest := o.Messages - len(feeder.Enqueued())
		waitFeeder(time.Duration(float64(rest)/o.Rate*float64(time.Second)) + 10*time.Second)
	}
	stopFeed()
	waitFeeder(10 * time.Second)
	enqueued := feeder.Enqueued()
	log.Info("feeding stopped; waiting for the queue to drain", "messages", len(enqueued))
	if err := waitHandled(ctx, cl, enqueued, o.DrainTimeout); err != nil {
		problem("final drain: %v", err)
	}
	scr.scrape(ctx)
	if err := cl.StopAll(time.Minute); err != nil {
		problem("stop nodes: %v", err)
	}

	rep, err := Collect(cl, enqueued, records)
	if err != nil {
		return nil, err
	}
	rep.Seed, rep.Nodes, rep.Duration = o.Seed, len(cl.Nodes), time.Since(began)
	rep.OwnershipChanges = scr.total()
	rep.Problems = append(problems, rep.Problems...)
	return rep, nil
}

// applyFault applies f, holds it, undoes it, and records when each happened.
func applyFault(ctx context.Context, cl *Cluster, consul Consul, f Fault, log *slog.Logger) FaultRecord {
	rec := FaultRecord{Fault: f}
	var n *Node
	if f.Kind != KindConsulRestart {
		n = cl.Nodes[f.Node%len(cl.Nodes)]
		rec.NodeName = n.Name
	}
	// Kills and pauses strike while the node runs a handler, when it gets one within 3 s.
	busy := false
	if f.Kind == KindKill || f.Kind == KindPause {
		busy = n.WaitBusy(3 * time.Second)
	}
	log.Info("fault", "fault", f.String(), "node", rec.NodeName, "handler_running", busy)
	var errs []error
	rec.At = time.Now()
	switch f.Kind {
	case KindKill:
		errs = append(errs, n.Kill())
		rec.Done = time.Now()
		sleepCtx(ctx, f.Hold)
		errs = append(errs, n.Start())
	case KindPause:
		errs = append(errs, n.Pause())
		rec.Done = time.Now()
		sleepCtx(ctx, f.Hold)
		errs = append(errs, n.Resume())
	case KindConsulRestart:
		errs = append(errs, consul.Stop())
		rec.Done = time.Now()
		consul.Restart()
	case KindRestart:
		errs = append(errs, n.Stop(time.Minute))
		rec.Done = time.Now()
		sleepCtx(ctx, f.Hold)
		errs = append(errs, n.Start())
	case KindDrain:
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := n.CLI(dctx, "drain")
		cancel()
		errs = append(errs, err)
		rec.Done = time.Now()
		sleepCtx(ctx, f.Hold)
		uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = n.CLI(uctx, "drain", "--undo")
		cancel()
		errs = append(errs, err)
	}
	rec.End = time.Now()
	if err := errors.Join(errs...); err != nil {
		rec.Err = err.Error()
	}
	return rec
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
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
	in := Input{Enqueued: enqueued, Handlings: PairHandlings(evs), Faults: faults, Lapses: map[string][]time.Time{}, Leftovers: left}
	logged := map[string]int{}
	var problems []string
	for _, n := range cl.Nodes {
		for _, p := range n.Logs() {
			nl, err := ReadNodeLog(p)
			if err != nil {
				return nil, err
			}
			in.Lapses[n.Name] = append(in.Lapses[n.Name], nl.Lapses...)
			for k, v := range nl.Changes {
				logged[k] += v
			}
			for _, l := range nl.ErrorLines {
				if !strings.Contains(l, "consul request failing") && len(problems) < maxDetails {
					problems = append(problems, fmt.Sprintf("%s: %s", filepath.Base(p), l))
				}
			}
		}
	}
	rep := Analyze(in)
	rep.MalformedLedgerLine = malformed
	rep.LoggedChanges = logged
	rep.Problems = problems
	return &rep, nil
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
			l.Reason = strings.TrimSpace(string(b))
		}
		out = append(out, l)
	}
	return out, nil
}

// scraper keeps, for every process a node ran, the last ownership counters read from it: a
// killed process's counters die with it, so they are read before every fault.
type scraper struct {
	cl   *Cluster
	last map[string]map[string]float64 // "node#incarnation" -> reason -> count
}

func newScraper(cl *Cluster) *scraper { return &scraper{cl: cl, last: map[string]map[string]float64{}} }

func (s *scraper) scrape(ctx context.Context) {
	for _, n := range s.cl.Nodes {
		n.mu.Lock()
		skip, inc := n.proc == nil || n.paused, n.incarnation
		n.mu.Unlock()
		if skip {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := n.OwnershipChanges(cctx)
		cancel()
		if err == nil {
			s.last[fmt.Sprintf("%s#%d", n.Name, inc)] = m
		}
	}
}

func (s *scraper) total() map[string]float64 {
	out := map[string]float64{}
	for _, k := range slices.Sorted(maps.Keys(s.last)) {
		for r, v := range s.last[k] {
			out[r] += v
		}
	}
	return out
}
