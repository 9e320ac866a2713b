package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/qslice/qslice/chaos"
	"github.com/qslice/qslice/runner/queue"
)

// Timing is how the demo runs: the nodes' failover timing, how often Prometheus scrapes, how the
// rules' `for:` durations are scaled, and how long each act lasts.
type Timing struct {
	TTL, LockDelay, HoldDown time.Duration
	Scrape                   time.Duration // Prometheus' scrape and evaluation interval
	// ForDivisor divides every alert's `for:` (1: the shipped rules unchanged).
	ForDivisor int
	// Baseline: feeding the converged cluster before the kill; AfterAlert: the killed node
	// stays down after QsliceNodeDown fires; Tail: after the fail-back.
	Baseline, AfterAlert, Tail time.Duration
	Rate                       float64       // messages per second
	Work                       time.Duration // how long the handler works on a message
	// Limit bounds the whole run.
	Limit time.Duration
}

// Full is the demo as a newcomer runs it: qslice's shipped TTL and lock-delay, a hold-down of
// 30 s instead of the shipped 60 s, and the shipped rules unchanged, so QsliceNodeDown fires
// after its 2 minutes. About 4 minutes.
var Full = Timing{TTL: 4500 * time.Millisecond, LockDelay: 2500 * time.Millisecond, HoldDown: 30 * time.Second,
	Scrape: time.Second, ForDivisor: 1, Baseline: 15 * time.Second, AfterAlert: 10 * time.Second, Tail: 15 * time.Second, Rate: 20,
	Work: 20 * time.Millisecond, Limit: 10 * time.Minute}

// Short is the demo for tests, about a minute: the test suite's timing (TTL 2 s, lock-delay 1 s,
// hold-down 5 s) and every `for:` of the rules divided by 10 (QsliceNodeDown fires after 12 s).
var Short = Timing{TTL: 2 * time.Second, LockDelay: time.Second, HoldDown: 5 * time.Second,
	Scrape: time.Second, ForDivisor: 10, Baseline: 6 * time.Second, AfterAlert: 3 * time.Second, Tail: 5 * time.Second, Rate: 20,
	Work: 20 * time.Millisecond, Limit: 4 * time.Minute}

// Bound is the documented failover bound the demo checks every taken-over slice against: the
// failover benchmark's 95th-percentile target, TTL + lock-delay + 3 s (docs/failover.md).
func (t Timing) Bound() time.Duration { return t.TTL + t.LockDelay + 3*time.Second }

// Demo cluster shape.
const (
	demoNodes  = 3
	demoSlices = 8
)

// Options say where the demo finds its programs and where it writes.
type Options struct {
	Timing     Timing
	Short      bool           // the Timing is Short (only for what the demo prints)
	Bin        chaos.Binaries // qslice and the chaos ledger handler (the demo's handler)
	Consul     string         // the consul binary (run with agent -dev)
	Prometheus string         // the prometheus binary
	Rules      string         // the shipped rules file (dashboards/rules/qslice-rules.yaml)
	Dir        string         // a scratch directory: queue, configs, logs, Prometheus' data
	Out        string         // where the picture and the report go
	Stdout     io.Writer      // the narration
	Log        *slog.Logger   // nil: discard
}

// Report is what the demo saw; cmd qslice-demo writes it as report.json next to the picture.
type Report struct {
	Short                    bool
	TTL, LockDelay, HoldDown time.Duration
	ForDivisor               int
	Bound                    time.Duration // the failover bound each takeover is checked against
	Window                   Window        // of the range queries (and the picture)
	Victim                   string        // the node killed
	VictimSlices             []int         // the slices it owned (its home slices) just before
	Killed, Restarted        time.Time
	// Takeover: per victim slice, from the kill until another node processed it; Failback:
	// from the restart until the victim processed it again (hold-down included). As the
	// nodes' status pages said, polled every 100 ms.
	Takeover, Failback map[int]time.Duration
	// Ownership per slice and the alert spans, from Prometheus' range queries.
	Ownership [][]Segment
	Alerts    []AlertSpan
	Fired     []string // alerts that fired (name and labels)
	Enqueued  int
	Handled   int      // distinct messages whose handling completed
	Lost      []string // enqueued, never completed (first 10)
	Picture   string
	Problems  []string // what the demo promised and did not see
}

// Err returns the problems as one error, nil when the demo showed what it promises.
func (r *Report) Err() error {
	if len(r.Problems) == 0 {
		return nil
	}
	return errors.New(strings.Join(r.Problems, "; "))
}

func (r *Report) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// Picture file name in Options.Out.
const PictureName = "demo-ownership.svg"

// Run runs the demo: it starts Consul, Prometheus and the nodes in o.Dir, feeds the queue,
// kills one node, waits for the takeover, for QsliceNodeDown to fire and for the fail-back,
// then draws the picture into o.Out. Everything it started is stopped when it returns, also on
// error or when ctx ends. The report lists what it saw; problems are in Report.Problems.
func Run(ctx context.Context, o Options) (*Report, error) {
	t := o.Timing
	ctx, cancel := context.WithTimeout(ctx, t.Limit)
	defer cancel()
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	out := o.Stdout
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	rep := &Report{Short: o.Short, TTL: t.TTL, LockDelay: t.LockDelay, HoldDown: t.HoldDown, ForDivisor: t.ForDivisor,
		Bound: t.Bound(), Takeover: map[int]time.Duration{}, Failback: map[int]time.Duration{}}

	// Consul, the nodes, Prometheus.
	consul, consulAddr, err := startConsul(ctx, o.Consul, o.Dir)
	if err != nil {
		return rep, err
	}
	defer consul.stop(10 * time.Second)
	cl, err := chaos.NewCluster(chaos.ClusterConfig{Nodes: demoNodes, Slices: demoSlices, TTL: t.TTL, LockDelay: t.LockDelay,
		HoldDown: t.HoldDown, Work: t.Work, Bin: o.Bin, Dir: filepath.Join(o.Dir, "cluster"), ConsulAddr: consulAddr,
		Name: "demo", ShutdownGrace: 5 * time.Second, Log: log})
	if err != nil {
		return rep, err
	}
	defer cl.Close()
	rules, err := os.ReadFile(o.Rules)
	if err != nil {
		return rep, fmt.Errorf("rules: %w", err)
	}
	if rules, err = ScaleRules(rules, t.ForDivisor); err != nil {
		return rep, err
	}
	rulesPath := filepath.Join(o.Dir, "qslice-rules.yaml")
	if err := os.WriteFile(rulesPath, rules, 0o644); err != nil {
		return rep, fmt.Errorf("rules: %w", err)
	}
	var targets []string
	for _, n := range cl.Nodes {
		targets = append(targets, n.Listen)
	}
	pcfg, err := prometheusConfig(t.Scrape, rulesPath, targets)
	if err != nil {
		return rep, err
	}
	prom, promURL, err := startPrometheus(ctx, o.Prometheus, o.Dir, pcfg)
	if err != nil {
		return rep, err
	}
	defer prom.stop(10 * time.Second)
	pc := &promClient{base: promURL}

	timing := fmt.Sprintf("TTL %s, lock-delay %s, hold-down %s", t.TTL, t.LockDelay, t.HoldDown)
	say("== qslice failover demo%s: Consul %s (dev mode), Prometheus %s (scraping every %s, the shipped rules%s)",
		map[bool]string{true: " (short mode)"}[o.Short], consulAddr, promURL, t.Scrape, forNote(t.ForDivisor))
	say("   %d nodes on 127.0.0.1 sharing queue \"in\" of %d slices; %s (the shipped hold-down is 60s: shortened for the demo)", demoNodes, demoSlices, timing)
	if err := cl.StartAll(); err != nil {
		return rep, err
	}
	// Nodes that start together converge once the hold-down has passed: the first to come up
	// takes every slice, the others get their share when they are settled. Every node must see
	// itself a member first, or the others converge on a cluster without it.
	for _, n := range cl.Nodes {
		if err := cl.WaitRejoined(ctx, n, true, time.Minute); err != nil {
			return rep, fmt.Errorf("node %s did not join: %w", n.Name, err)
		}
	}
	if err := cl.WaitOwned(ctx, t.HoldDown+time.Minute, true); err != nil {
		return rep, fmt.Errorf("the cluster did not converge: %w", err)
	}
	if err := poll(ctx, time.Minute, 200*time.Millisecond, func() error {
		n, err := pc.count(ctx, `up{job="qslice"} == 1`)
		if err == nil && n < demoNodes {
			err = fmt.Errorf("Prometheus scrapes %d of %d nodes", n, demoNodes)
		}
		return err
	}); err != nil {
		return rep, err
	}
	// Alerts still pending from the start-up (slices moving while the nodes settled) end at
	// the next evaluations, once Prometheus has scraped the settled cluster; the run starts
	// without any.
	if err := sleep(ctx, 2*t.Scrape); err != nil {
		return rep, err
	}
	if err := poll(ctx, 30*time.Second, 200*time.Millisecond, func() error {
		n, err := pc.count(ctx, "ALERTS")
		if err == nil && n > 0 {
			err = fmt.Errorf("%d alerts pending or firing", n)
		}
		return err
	}); err != nil {
		log.Warn("alerts left from the start-up", "err", err)
	}
	start := time.Now().Truncate(t.Scrape)
	feedCtx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feeder := &chaos.Feeder{Dir: queue.NewDir(cl.QueueDir, "", ""), Rate: t.Rate}
	var feedErr error
	var feedWG sync.WaitGroup
	feedWG.Add(1)
	go func() { // owned by Run: stopFeed ends it, feedWG.Wait waits for it
		defer feedWG.Done()
		feedErr = feeder.Run(feedCtx)
	}()
	defer feedWG.Wait()
	say("== the cluster has converged; feeding %.0f messages/s (each handled in %s)", t.Rate, t.Work)
	cli(ctx, say, cl.Nodes[0], "members")
	cli(ctx, say, cl.Nodes[0], "status")
	instances := map[string]string{}
	for _, n := range cl.Nodes {
		instances[n.Listen] = n.Name
	}
	if err := sleep(ctx, t.Baseline); err != nil {
		return rep, err
	}

	// The kill.
	own, err := cl.Ownership(ctx)
	if err != nil {
		return rep, err
	}
	victim := cl.Nodes[0]
	for _, n := range cl.Nodes {
		if len(own.Owned[n.Name]) > len(own.Owned[victim.Name]) {
			victim = n
		}
	}
	rep.Victim, rep.VictimSlices = victim.Name, slices.Sorted(slices.Values(own.Owned[victim.Name]))
	say("== kill -9 %s (it processes slices %v)", victim.Name, rep.VictimSlices)
	rep.Killed = time.Now()
	if err := victim.Kill(); err != nil {
		return rep, err
	}
	others := func(n string) bool { return n != "" && n != victim.Name }
	if err := waitSlices(ctx, cl, rep.VictimSlices, rep.Killed, t.Bound()+time.Minute, others, rep.Takeover); err != nil {
		rep.problem("takeover: %v", err)
	}
	for _, s := range rep.VictimSlices {
		if d, ok := rep.Takeover[s]; ok {
			say("   slice %d processed by another node %.1fs after the kill", s, d.Seconds())
			if d > t.Bound() {
				rep.problem("slice %d taken over after %s, over the bound of %s", s, d.Round(time.Millisecond), t.Bound())
			}
		}
	}
	say("   (bound: TTL + lock-delay + 3 s = %s)", t.Bound())
	cli(ctx, say, cl.Nodes[otherIndex(cl, victim)], "status")

	// QsliceNodeDown: up == 0 for its for: (2 minutes shipped).
	say("== %s stays down until Prometheus fires QsliceNodeDown (for: %s)", victim.Name, scaledFor(2*time.Minute, t.ForDivisor))
	firing := `ALERTS{alertname="QsliceNodeDown", alertstate="firing"}`
	if err := poll(ctx, scaledFor(2*time.Minute, t.ForDivisor)+time.Minute, 500*time.Millisecond, func() error {
		n, err := pc.count(ctx, firing)
		if err == nil && n == 0 {
			err = errors.New("not firing yet")
		}
		return err
	}); err != nil {
		rep.problem("QsliceNodeDown did not fire: %v", err)
	} else {
		say("   QsliceNodeDown fires %.0fs after the kill", time.Since(rep.Killed).Seconds())
		if err := sleep(ctx, t.AfterAlert); err != nil {
			return rep, err
		}
	}

	// The restart and the fail-back.
	say("== %s restarts; its slices come back once it has been healthy for the hold-down (%s)", victim.Name, t.HoldDown)
	rep.Restarted = time.Now()
	if err := victim.Start(); err != nil {
		return rep, err
	}
	home := func(n string) bool { return n == victim.Name }
	if err := waitSlices(ctx, cl, rep.VictimSlices, rep.Restarted, t.HoldDown+time.Minute, home, rep.Failback); err != nil {
		rep.problem("fail-back: %v", err)
	}
	back := time.Time{}
	for _, s := range rep.VictimSlices {
		if d, ok := rep.Failback[s]; ok {
			say("   slice %d back on %s %.1fs after the restart", s, victim.Name, d.Seconds())
			back = maxTime(back, rep.Restarted.Add(d))
			if d < t.HoldDown {
				rep.problem("slice %d back on %s after %s, before the hold-down of %s", s, victim.Name, d, t.HoldDown)
			}
		}
	}
	cli(ctx, say, victim, "status")
	if err := sleep(ctx, t.Tail); err != nil {
		return rep, err
	}

	// Stop feeding; every message must be handled.
	stopFeed()
	feedWG.Wait()
	if feedErr != nil {
		return rep, feedErr
	}
	ids := feeder.Enqueued()
	rep.Enqueued = len(ids)
	_ = poll(ctx, time.Minute, 200*time.Millisecond, func() error {
		handled, lost, err := handledMessages(filepath.Join(o.Dir, "cluster"), ids)
		rep.Handled, rep.Lost = handled, lost
		if err == nil && len(lost) > 0 {
			err = fmt.Errorf("%d messages not handled yet", len(lost))
		}
		return err
	})
	if len(rep.Lost) > 0 {
		rep.problem("%d of %d messages were not handled (first: %v)", len(rep.Lost), rep.Enqueued, rep.Lost)
	}
	say("== messages: %d enqueued, %d handled, %d not handled", rep.Enqueued, rep.Handled, len(rep.Lost))
	// Two more scrapes, so the picture ends on the drained queue.
	if err := sleep(ctx, 2*t.Scrape+t.Scrape/2); err != nil {
		return rep, err
	}

	// What Prometheus recorded.
	rep.Window = Window{Start: start, End: time.Now().Truncate(t.Scrape), Step: t.Scrape}
	ownSeries, err := pc.rangeQuery(ctx, queryOwnership, rep.Window)
	if err != nil {
		return rep, err
	}
	backlog, err := pc.rangeQuery(ctx, queryBacklog, rep.Window)
	if err != nil {
		return rep, err
	}
	alerts, err := pc.rangeQuery(ctx, queryAlerts, rep.Window)
	if err != nil {
		return rep, err
	}
	rep.Ownership = OwnershipSegments(ownSeries, demoSlices, rep.Window)
	rep.Alerts = AlertSpans(alerts, rep.Window)
	rep.Fired = Fired(rep.Alerts)
	say("== alerts, from Prometheus' ALERTS series over the run (rules evaluated every %s%s):", t.Scrape, forNote(t.ForDivisor))
	for _, line := range SummarizeAlerts(rep.Alerts, rep.Killed, instances) {
		say("   %s", line)
	}
	say("   (Pending is not firing: an alert fires only once its condition has held for its for:. A slice seen")
	say("   unowned while it moves, or owned twice for one step of a hand-over (the two nodes scraped at")
	say("   different instants), stays pending.)")
	if !slices.ContainsFunc(rep.Fired, func(k string) bool { return strings.HasPrefix(k, "QsliceNodeDown{") }) {
		rep.problem("Prometheus' ALERTS has no firing QsliceNodeDown")
	}
	// The takeover is faster than their for:, and ownership is exclusive.
	for _, k := range rep.Fired {
		if strings.HasPrefix(k, "QsliceSliceUnowned{") || strings.HasPrefix(k, "QsliceSliceOwnedTwice{") {
			rep.problem("%s fired", k)
		}
	}

	// The picture.
	var names []string
	for _, n := range cl.Nodes {
		names = append(names, n.Name)
	}
	chart := Chart{
		Title: fmt.Sprintf("qslice: node %s killed (kill -9), its slices taken over, then given back", victim.Name),
		Subtitle: fmt.Sprintf("%d nodes, queue \"in\" of %d slices, %.0f messages/s; %s (demo hold-down); from Prometheus, every %s",
			demoNodes, demoSlices, t.Rate, timing, t.Scrape),
		Window: rep.Window, Nodes: names, Instances: instances, Ownership: rep.Ownership, Backlog: backlog, Alerts: rep.Alerts,
		Marks: []Mark{{rep.Killed, "kill -9 " + victim.Name}, {rep.Restarted, victim.Name + " restarted"}},
	}
	if !back.IsZero() {
		chart.Marks = append(chart.Marks, Mark{back, "slices back on " + victim.Name})
	}
	svg := RenderSVG(chart)
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return rep, fmt.Errorf("picture: %w", err)
	}
	rep.Picture = filepath.Join(o.Out, PictureName)
	if err := os.WriteFile(rep.Picture, svg, 0o644); err != nil {
		return rep, fmt.Errorf("picture: %w", err)
	}
	checkFromPrometheus(rep, backlog)
	say("== picture: %s", rep.Picture)

	say("== stopping: nodes (SIGTERM), Prometheus, Consul")
	if err := cl.StopAll(20 * time.Second); err != nil {
		log.Warn("stop nodes", "err", err)
	}
	return rep, nil
}

// checkFromPrometheus checks what the report promises against Prometheus' data: each victim
// slice was owned by another node alone within the bound (plus a scrape and a step of sampling)
// of the kill, by the victim alone again after the restart, and has a backlog series.
func checkFromPrometheus(rep *Report, backlog []Series) {
	slack := 2 * rep.Window.Step
	for _, s := range rep.VictimSlices {
		segs := rep.Ownership[s]
		if o := OwnersAt(segs, rep.Killed.Add(-rep.Window.Step)); !slices.Equal(o, []string{rep.Victim}) {
			rep.problem("Prometheus: slice %d was owned by %v just before the kill, not by %s", s, o, rep.Victim)
		}
		at, ok := FirstSoleOwner(segs, rep.Killed, func(n string) bool { return n != rep.Victim })
		if !ok || at.Sub(rep.Killed) > rep.Bound+slack {
			rep.problem("Prometheus: slice %d not owned by another node within %s of the kill (at %v)", s, rep.Bound+slack, at)
		}
		if _, ok := FirstSoleOwner(segs, rep.Restarted, func(n string) bool { return n == rep.Victim }); !ok {
			rep.problem("Prometheus: slice %d never owned by %s again after its restart", s, rep.Victim)
		}
	}
	have := map[int]bool{}
	for _, se := range backlog {
		have[sliceNum(se)] = len(se.Points) > 0
	}
	for s := 0; s < demoSlices; s++ {
		if !have[s] {
			rep.problem("Prometheus: no backlog series for slice %d", s)
		}
	}
}

// waitSlices polls the nodes' status every 100 ms until each of the slices is processed by a
// node that ok accepts, recording when (since from) in got; it gives up after timeout.
func waitSlices(ctx context.Context, cl *chaos.Cluster, want []int, from time.Time, timeout time.Duration, ok func(string) bool, got map[int]time.Duration) error {
	return poll(ctx, timeout, 100*time.Millisecond, func() error {
		o, err := cl.Ownership(ctx)
		if err != nil {
			return err
		}
		now := time.Since(from)
		var missing []int
		for _, s := range want {
			if _, done := got[s]; done {
				continue
			}
			if ok(o.ProcessedBy[s]) {
				got[s] = now
				continue
			}
			missing = append(missing, s)
		}
		if len(missing) > 0 {
			return fmt.Errorf("slices %v not there yet", missing)
		}
		return nil
	})
}

// handledMessages reads the handler's ledgers in dir and returns how many of ids completed and
// the first ten that did not.
func handledMessages(dir string, ids []string) (int, []string, error) {
	evs, _, err := chaos.ReadLedgers(dir)
	if err != nil {
		return 0, nil, err
	}
	done := map[string]bool{}
	for _, h := range chaos.PairHandlings(evs) {
		if h.Completed() {
			done[h.ID] = true
		}
	}
	var lost []string
	handled := 0
	for _, id := range ids {
		if done[id] {
			handled++
		} else if len(lost) < 10 {
			lost = append(lost, id)
		}
	}
	return handled, lost, nil
}

// cli prints `qslice <cmd>` as run against node n, with its output and exit status.
func cli(ctx context.Context, say func(string, ...any), n *chaos.Node, cmd string) {
	say("$ qslice %s    # asking %s", cmd, n.Name)
	out, err := n.CLI(ctx, cmd)
	say("%s", strings.TrimRight(out, "\n"))
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		say("(exit status %d%s)", ee.ExitCode(), map[bool]string{true: ": a member is down or a slice is unowned"}[ee.ExitCode() == 3])
	} else if err != nil {
		say("(%v)", err)
	}
}

func otherIndex(cl *chaos.Cluster, victim *chaos.Node) int {
	for i, n := range cl.Nodes {
		if n != victim {
			return i
		}
	}
	return 0
}

func forNote(div int) string {
	if div <= 1 {
		return ""
	}
	return fmt.Sprintf(", every for: divided by %d", div)
}

func scaledFor(d time.Duration, div int) time.Duration {
	return max(time.Second, d/time.Duration(max(1, div)))
}

// poll calls cond every interval until it returns nil, ctx ends or timeout passes.
func poll(ctx context.Context, timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still not after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// WriteReport writes the report as JSON.
func WriteReport(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}
