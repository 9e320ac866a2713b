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
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	d := &show{o: o, t: t, rep: &Report{Short: o.Short, TTL: t.TTL, LockDelay: t.LockDelay, HoldDown: t.HoldDown,
		ForDivisor: t.ForDivisor, Bound: t.Bound(), Takeover: map[int]time.Duration{}, Failback: map[int]time.Duration{}}}

	// Consul, the nodes, Prometheus; stopped in the reverse order.
	consul, consulAddr, err := startConsul(ctx, o.Consul, o.Dir)
	if err != nil {
		return d.rep, err
	}
	defer consul.stop(10 * time.Second)
	d.cl, err = chaos.NewCluster(chaos.ClusterConfig{Nodes: demoNodes, Slices: demoSlices, TTL: t.TTL, LockDelay: t.LockDelay,
		HoldDown: t.HoldDown, Work: t.Work, Bin: o.Bin, Dir: filepath.Join(o.Dir, "cluster"), ConsulAddr: consulAddr,
		Name: "demo", ShutdownGrace: 5 * time.Second, Log: o.Log})
	if err != nil {
		return d.rep, err
	}
	defer d.cl.Close()
	d.instances = map[string]string{}
	var targets []string
	for _, n := range d.cl.Nodes {
		targets = append(targets, n.Listen)
		d.instances[n.Listen] = n.Name
	}
	prom, promURL, err := d.startPrometheus(ctx, targets)
	if err != nil {
		return d.rep, err
	}
	defer prom.stop(10 * time.Second)
	d.pc = &promClient{base: promURL}
	d.say("== qslice failover demo%s: Consul %s (dev mode), Prometheus %s (scraping every %s, the shipped rules%s)",
		map[bool]string{true: " (short mode)"}[o.Short], consulAddr, promURL, t.Scrape, forNote(t.ForDivisor))
	d.say("   %d nodes on 127.0.0.1 sharing queue \"in\" of %d slices; %s (the shipped hold-down is 60s: shortened for the demo)",
		demoNodes, demoSlices, d.timing())

	if err := d.converge(ctx); err != nil {
		return d.rep, err
	}
	start := time.Now().Truncate(t.Scrape)
	// The feeder, until stopFeed; its goroutine is waited for on every way out.
	feedCtx, stopFeed := context.WithCancel(ctx)
	feeder := &chaos.Feeder{Dir: queue.NewDir(d.cl.QueueDir, "", ""), Rate: t.Rate}
	var feedErr error
	var feedWG sync.WaitGroup
	feedWG.Add(1)
	go func() { // owned by Run: stopFeed ends it, feedWG.Wait waits for it
		defer feedWG.Done()
		feedErr = feeder.Run(feedCtx)
	}()
	defer func() { stopFeed(); feedWG.Wait() }()
	d.say("== the cluster has converged; feeding %.0f messages/s (each handled in %s)", t.Rate, t.Work)
	d.cli(ctx, d.cl.Nodes[0], "members")
	d.cli(ctx, d.cl.Nodes[0], "status")
	if err := sleep(ctx, t.Baseline); err != nil {
		return d.rep, err
	}

	victim, err := d.kill(ctx)
	if err != nil {
		return d.rep, err
	}
	if err := d.nodeDown(ctx); err != nil {
		return d.rep, err
	}
	back, err := d.failback(ctx, victim)
	if err != nil {
		return d.rep, err
	}
	if err := sleep(ctx, t.Tail); err != nil {
		return d.rep, err
	}

	stopFeed()
	feedWG.Wait()
	if feedErr != nil {
		return d.rep, feedErr
	}
	d.messages(ctx, feeder.Enqueued())
	// Two more scrapes, so the picture ends on the drained queue.
	if err := sleep(ctx, 2*t.Scrape+t.Scrape/2); err != nil {
		return d.rep, err
	}
	if err := d.draw(ctx, Window{Start: start, End: time.Now().Truncate(t.Scrape), Step: t.Scrape}, back); err != nil {
		return d.rep, err
	}
	d.say("== stopping: nodes (SIGTERM), Prometheus, Consul")
	if err := d.cl.StopAll(20 * time.Second); err != nil {
		o.Log.Warn("stop nodes", "err", err)
	}
	return d.rep, nil
}

// show is one run of the demo: the cluster, Prometheus, and what was seen so far.
type show struct {
	o         Options
	t         Timing
	rep       *Report
	cl        *chaos.Cluster
	pc        *promClient
	instances map[string]string // scrape target -> node name
}

func (d *show) say(format string, args ...any) { fmt.Fprintf(d.o.Stdout, format+"\n", args...) }

func (d *show) timing() string {
	return fmt.Sprintf("TTL %s, lock-delay %s, hold-down %s", d.t.TTL, d.t.LockDelay, d.t.HoldDown)
}

// startPrometheus writes the rules (for: scaled) and the configuration and starts Prometheus.
func (d *show) startPrometheus(ctx context.Context, targets []string) (*process, string, error) {
	rules, err := os.ReadFile(d.o.Rules)
	if err != nil {
		return nil, "", fmt.Errorf("rules: %w", err)
	}
	if rules, err = ScaleRules(rules, d.t.ForDivisor); err != nil {
		return nil, "", err
	}
	rulesPath := filepath.Join(d.o.Dir, "qslice-rules.yaml")
	if err := os.WriteFile(rulesPath, rules, 0o644); err != nil {
		return nil, "", fmt.Errorf("rules: %w", err)
	}
	cfg, err := prometheusConfig(d.t.Scrape, rulesPath, targets)
	if err != nil {
		return nil, "", err
	}
	return startPrometheus(ctx, d.o.Prometheus, d.o.Dir, cfg)
}

// converge starts the nodes and waits until every slice is at its home, Prometheus scrapes
// every node and no alert is left from the start-up.
func (d *show) converge(ctx context.Context) error {
	if err := d.cl.StartAll(); err != nil {
		return err
	}
	// Nodes that start together converge once the hold-down has passed: the first to come up
	// takes every slice, the others get their share when they are settled. Every node must see
	// itself a member first, or the others converge on a cluster without it.
	for _, n := range d.cl.Nodes {
		if err := d.cl.WaitRejoined(ctx, n, true, time.Minute); err != nil {
			return fmt.Errorf("node %s did not join: %w", n.Name, err)
		}
	}
	if err := d.cl.WaitOwned(ctx, d.t.HoldDown+time.Minute, true); err != nil {
		return fmt.Errorf("the cluster did not converge: %w", err)
	}
	if err := poll(ctx, time.Minute, 200*time.Millisecond, func() error {
		n, err := d.pc.count(ctx, `up{job="qslice"} == 1`)
		if err == nil && n < demoNodes {
			err = fmt.Errorf("Prometheus scrapes %d of %d nodes", n, demoNodes)
		}
		return err
	}); err != nil {
		return err
	}
	// Alerts still pending from the start-up (slices moving while the nodes settled) end at
	// the next evaluations, once Prometheus has scraped the settled cluster; the run starts
	// without any.
	if err := sleep(ctx, 2*d.t.Scrape); err != nil {
		return err
	}
	if err := poll(ctx, 30*time.Second, 200*time.Millisecond, func() error {
		n, err := d.pc.count(ctx, "ALERTS")
		if err == nil && n > 0 {
			err = fmt.Errorf("%d alerts pending or firing", n)
		}
		return err
	}); err != nil {
		d.o.Log.Warn("alerts left from the start-up", "err", err)
	}
	return nil
}

// kill SIGKILLs the node owning the most slices and waits until others process them.
func (d *show) kill(ctx context.Context) (*chaos.Node, error) {
	own, err := d.cl.Ownership(ctx)
	if err != nil {
		return nil, err
	}
	victim := d.cl.Nodes[0]
	for _, n := range d.cl.Nodes {
		if len(own.Owned[n.Name]) > len(own.Owned[victim.Name]) {
			victim = n
		}
	}
	rep := d.rep
	rep.Victim, rep.VictimSlices = victim.Name, slices.Sorted(slices.Values(own.Owned[victim.Name]))
	d.say("== kill -9 %s (it processes slices %v)", victim.Name, rep.VictimSlices)
	rep.Killed = time.Now()
	if err := victim.Kill(); err != nil {
		return nil, err
	}
	others := func(n string) bool { return n != "" && n != victim.Name }
	if err := waitSlices(ctx, d.cl, rep.VictimSlices, rep.Killed, d.t.Bound()+time.Minute, others, rep.Takeover); err != nil {
		rep.problem("takeover: %v", err)
	}
	for _, s := range rep.VictimSlices {
		if dur, ok := rep.Takeover[s]; ok {
			d.say("   slice %d processed by another node %.1fs after the kill", s, dur.Seconds())
			if dur > d.t.Bound() {
				rep.problem("slice %d taken over after %s, over the bound of %s", s, dur.Round(time.Millisecond), d.t.Bound())
			}
		}
	}
	d.say("   (bound: TTL + lock-delay + 3 s = %s)", d.t.Bound())
	for _, n := range d.cl.Nodes {
		if n != victim {
			d.cli(ctx, n, "status")
			break
		}
	}
	return victim, nil
}

// nodeDown waits for QsliceNodeDown (up == 0 for its for:, 2 minutes shipped) to fire, then
// AfterAlert more.
func (d *show) nodeDown(ctx context.Context) error {
	d.say("== %s stays down until Prometheus fires QsliceNodeDown (for: %s)", d.rep.Victim, scaledFor(2*time.Minute, d.t.ForDivisor))
	firing := `ALERTS{alertname="QsliceNodeDown", alertstate="firing"}`
	if err := poll(ctx, scaledFor(2*time.Minute, d.t.ForDivisor)+time.Minute, 500*time.Millisecond, func() error {
		n, err := d.pc.count(ctx, firing)
		if err == nil && n == 0 {
			err = errors.New("not firing yet")
		}
		return err
	}); err != nil {
		d.rep.problem("QsliceNodeDown did not fire: %v", err)
		return ctx.Err()
	}
	d.say("   QsliceNodeDown fires %.0fs after the kill", time.Since(d.rep.Killed).Seconds())
	return sleep(ctx, d.t.AfterAlert)
}

// failback restarts the victim and waits until it processes its slices again; it returns when
// the last came back (zero if none did).
func (d *show) failback(ctx context.Context, victim *chaos.Node) (time.Time, error) {
	rep := d.rep
	d.say("== %s restarts; its slices come back once it has been healthy for the hold-down (%s)", victim.Name, d.t.HoldDown)
	rep.Restarted = time.Now()
	if err := victim.Start(); err != nil {
		return time.Time{}, err
	}
	home := func(n string) bool { return n == victim.Name }
	if err := waitSlices(ctx, d.cl, rep.VictimSlices, rep.Restarted, d.t.HoldDown+time.Minute, home, rep.Failback); err != nil {
		rep.problem("fail-back: %v", err)
	}
	var back time.Time
	for _, s := range rep.VictimSlices {
		if dur, ok := rep.Failback[s]; ok {
			d.say("   slice %d back on %s %.1fs after the restart", s, victim.Name, dur.Seconds())
			back = maxTime(back, rep.Restarted.Add(dur))
			if dur < d.t.HoldDown {
				rep.problem("slice %d back on %s after %s, before the hold-down of %s", s, victim.Name, dur, d.t.HoldDown)
			}
		}
	}
	d.cli(ctx, victim, "status")
	return back, nil
}

// messages waits (up to a minute) until every enqueued message was handled, from the ledgers.
func (d *show) messages(ctx context.Context, ids []string) {
	rep := d.rep
	rep.Enqueued = len(ids)
	_ = poll(ctx, time.Minute, 200*time.Millisecond, func() error {
		handled, lost, err := handledMessages(filepath.Join(d.o.Dir, "cluster"), ids)
		rep.Handled, rep.Lost = handled, lost
		if err == nil && len(lost) > 0 {
			err = fmt.Errorf("%d messages not handled yet", len(lost))
		}
		return err
	})
	if len(rep.Lost) > 0 {
		rep.problem("%d of %d messages were not handled (first: %v)", len(rep.Lost), rep.Enqueued, rep.Lost)
	}
	d.say("== messages: %d enqueued, %d handled, %d not handled", rep.Enqueued, rep.Handled, len(rep.Lost))
}

// draw reads what Prometheus recorded over w, prints the alerts, checks the data and writes the
// picture.
func (d *show) draw(ctx context.Context, w Window, back time.Time) error {
	rep := d.rep
	rep.Window = w
	ownSeries, err := d.pc.rangeQuery(ctx, queryOwnership, w)
	if err != nil {
		return err
	}
	backlog, err := d.pc.rangeQuery(ctx, queryBacklog, w)
	if err != nil {
		return err
	}
	alerts, err := d.pc.rangeQuery(ctx, queryAlerts, w)
	if err != nil {
		return err
	}
	rep.Ownership = OwnershipSegments(ownSeries, demoSlices, w)
	rep.Alerts = AlertSpans(alerts, w)
	rep.Fired = Fired(rep.Alerts)
	d.say("== alerts, from Prometheus' ALERTS series over the run (rules evaluated every %s%s):", d.t.Scrape, forNote(d.t.ForDivisor))
	for _, line := range SummarizeAlerts(rep.Alerts, rep.Killed, d.instances) {
		d.say("   %s", line)
	}
	d.say("   (Pending is not firing: an alert fires only once its condition has held for its for:. A slice seen")
	d.say("   unowned while it moves, or owned twice for one step of a hand-over (the two nodes scraped at")
	d.say("   different instants), stays pending.)")
	if !slices.ContainsFunc(rep.Fired, func(k string) bool { return strings.HasPrefix(k, "QsliceNodeDown{") }) {
		rep.problem("Prometheus' ALERTS has no firing QsliceNodeDown")
	}
	// The takeover is faster than their for:, and ownership is exclusive.
	for _, k := range rep.Fired {
		if strings.HasPrefix(k, "QsliceSliceUnowned{") || strings.HasPrefix(k, "QsliceSliceOwnedTwice{") {
			rep.problem("%s fired", k)
		}
	}
	checkFromPrometheus(rep, backlog)

	var names []string
	for _, n := range d.cl.Nodes {
		names = append(names, n.Name)
	}
	chart := Chart{
		Title: fmt.Sprintf("qslice: node %s killed (kill -9), its slices taken over, then given back", rep.Victim),
		Subtitle: fmt.Sprintf("%d nodes, queue \"in\" of %d slices, %.0f messages/s; %s (demo hold-down); from Prometheus, every %s",
			demoNodes, demoSlices, d.t.Rate, d.timing(), d.t.Scrape),
		Window: w, Nodes: names, Instances: d.instances, Ownership: rep.Ownership, Backlog: backlog, Alerts: rep.Alerts,
		Marks: []Mark{{rep.Killed, "kill -9 " + rep.Victim}, {rep.Restarted, rep.Victim + " restarted"}},
	}
	if !back.IsZero() {
		chart.Marks = append(chart.Marks, Mark{back, "slices back on " + rep.Victim})
	}
	if err := os.MkdirAll(d.o.Out, 0o755); err != nil {
		return fmt.Errorf("picture: %w", err)
	}
	rep.Picture = filepath.Join(d.o.Out, PictureName)
	if err := os.WriteFile(rep.Picture, RenderSVG(chart), 0o644); err != nil {
		return fmt.Errorf("picture: %w", err)
	}
	d.say("== picture: %s", rep.Picture)
	return nil
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
func (d *show) cli(ctx context.Context, n *chaos.Node, cmd string) {
	d.say("$ qslice %s    # asking %s", cmd, n.Name)
	out, err := n.CLI(ctx, cmd)
	d.say("%s", strings.TrimRight(out, "\n"))
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		d.say("(exit status %d%s)", ee.ExitCode(), map[bool]string{true: ": a member is down or a slice is unowned"}[ee.ExitCode() == 3])
	} else if err != nil {
		d.say("(%v)", err)
	}
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
