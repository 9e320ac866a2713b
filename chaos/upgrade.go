package chaos

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/qslice/qslice/agent"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/runner/queue"
)

// UpgradeOptions configure a rolling upgrade.
type UpgradeOptions struct {
	// Binary is the new qslice binary (BuildVersion) and Version the version it reports.
	Binary, Version string
	// Rate is the feed in messages per second while the upgrade runs (default 10).
	Rate float64
	// SettleTimeout bounds the wait after each restart for every slice to be back at its home
	// node (default 60 s).
	SettleTimeout time.Duration
	// Between is how long the cluster runs on the feed after one node's upgrade before the next
	// (an operator looks at the node; default 3 s).
	Between time.Duration
	// Rounds: restart every node this many times, one node at a time (default 1).
	Rounds int
	// Crash: SIGKILL qslice alone (Node.Crash) instead of SIGTERM, and start it again at once:
	// a crash restarted by systemd. Each is a KindKill fault in the report.
	Crash bool
	Log   *slog.Logger
}

// UpgradeReport is the outcome of a rolling upgrade.
type UpgradeReport struct {
	// Check is the ledger check of the run; its Churn counts the moves of each restart
	// (Moves[KindRestart]) against the least they needed.
	Check *Report
	// Restarts lists, per node, how many slices it held before its restart, how long its
	// restart took (SIGTERM until the new process runs) and how long until every slice was
	// processed by its home node again.
	Restarts []UpgradeStep
	// MaxReady is the largest number of ready messages in the queue seen during the upgrade
	// (sampled every 100 ms), and BaseReady the largest before it, on the same feed.
	MaxReady, BaseReady int
}

// UpgradeStep is one node's restart. Stop: from SIGTERM until the new process runs; Resumed:
// from the new process's start until it processes every slice it held before (polled every
// 20 ms; zero when it did not within SettleTimeout); Settled: from SIGTERM until every slice is
// processed by its home node again.
type UpgradeStep struct {
	Node                   string
	Owned                  int
	Stop, Resumed, Settled time.Duration
}

// RunRollingUpgrade runs the cluster on a feed, then restarts its nodes one at a time the way
// an operator upgrades them (SIGTERM, start the new binary, wait until every slice is processed
// by its home node again), stops the feed, waits until everything is handled and checks the
// ledger. Every restart is a KindRestart fault in the report, so Check.Churn counts its moves.
func RunRollingUpgrade(ctx context.Context, cl *Cluster, o UpgradeOptions) (*UpgradeReport, error) {
	o.Rate = cmp.Or(o.Rate, 10)
	o.SettleTimeout = cmp.Or(o.SettleTimeout, time.Minute)
	o.Between = cmp.Or(o.Between, 3*time.Second)
	o.Rounds = cmp.Or(o.Rounds, 1)
	run := newRunLog(o.Log)
	log, problem := run.Logger, run.problem
	began := time.Now()
	rep := &UpgradeReport{}
	if err := startSettled(ctx, cl, o.SettleTimeout); err != nil {
		return nil, err
	}
	dir := queue.NewDir(cl.QueueDir, "", "")
	feeder := &Feeder{Dir: dir, Rate: o.Rate}
	feed := startFeeder(ctx, feeder)
	defer feed.stop()
	backlog := startBacklogSampler(ctx, cl.QueueDir)
	defer backlog.stop()
	clock.Sleep(ctx, clock.System{}, 3*time.Second) // the steady backlog on this feed, before any restart
	rep.BaseReady = backlog.reset()

	var records []FaultRecord
	var restarts []*Node
	for range o.Rounds {
		restarts = append(restarts, cl.Nodes...)
	}
	kind := KindRestart
	if o.Crash {
		kind = KindKill
	}
	for i, n := range restarts {
		own, err := cl.Ownership(ctx)
		if err != nil {
			return nil, err
		}
		rec := FaultRecord{Fault: Fault{Seq: i, Kind: kind, Node: n.Index}, NodeName: n.Name, Owned: len(own.Held[n.Name])}
		held := own.Held[n.Name]
		rec.At = time.Now()
		if o.Crash {
			if err := n.Crash(); err != nil {
				problem("crash %s: %v", n.Name, err)
			}
		} else if err := n.Stop(time.Minute); err != nil {
			problem("stop %s: %v", n.Name, err)
		}
		rec.Done = time.Now()
		n.SetBinary(o.Binary)
		if err := n.Start(); err != nil {
			return nil, err
		}
		rec.End = time.Now()
		step := UpgradeStep{Node: n.Name, Owned: rec.Owned, Stop: rec.End.Sub(rec.At)}
		if d, err := waitResumed(ctx, n, held, rec.End, o.SettleTimeout); err != nil {
			problem("after the restart of %s: %v", n.Name, err)
		} else {
			step.Resumed = d
		}
		if err := cl.WaitRejoined(ctx, n, rec.Owned > 0, o.SettleTimeout); err != nil {
			problem("after the restart of %s: %v", n.Name, err)
		}
		if err := cl.WaitOwned(ctx, o.SettleTimeout, true); err != nil {
			problem("after the restart of %s: slices not all back at their home nodes within %s: %v", n.Name, o.SettleTimeout, err)
		}
		step.Settled = time.Since(rec.At)
		if v, err := n.Version(ctx); err != nil || v != o.Version {
			problem("%s runs version %q (%v) after its upgrade, want %q", n.Name, v, err, o.Version)
		}
		log.Info("node upgraded", "node", n.Name, "owned", step.Owned, "stop", step.Stop.Round(time.Millisecond),
			"resumed", step.Resumed.Round(time.Millisecond), "settled", step.Settled.Round(time.Millisecond))
		records = append(records, rec)
		rep.Restarts = append(rep.Restarts, step)
		clock.Sleep(ctx, clock.System{}, o.Between)
	}
	rep.MaxReady = backlog.reset()
	if err := feed.stop(); err != nil {
		problem("feeder: %v", err)
	}
	check, err := run.finish(ctx, cl, nil, feeder.Enqueued(), records, 2*time.Minute, began)
	if err != nil {
		return nil, err
	}
	rep.Check = check
	return rep, nil
}

// RestartResumeTarget: a node restarted in place processes its own slices again within this
// long of its new process's start (issue 16).
const RestartResumeTarget = 2 * time.Second

// Resumed summarizes how long each restarted node took, from its new process's start, to
// process every slice it held before again.
func (r *UpgradeReport) Resumed() Stats {
	var d []time.Duration
	for _, s := range r.Restarts {
		if s.Resumed > 0 {
			d = append(d, s.Resumed)
		}
	}
	return Summarize(d)
}

// Moves is how many times the restarts moved a slice, and how many moves they needed at least.
func (r *UpgradeReport) Moves() (moves, least int) {
	for k, n := range r.Check.Churn.Moves {
		if k == KindRestart || k == KindKill {
			moves += n
			least += r.Check.Churn.Min[k]
		}
	}
	return moves, least
}

// Print writes the ledger check, every restart, the resume times, the moves and the backlog.
func (r *UpgradeReport) Print(w io.Writer) {
	r.Check.Print(w)
	for _, s := range r.Restarts {
		fmt.Fprintf(w, "restart of %s: %d slices; new process after %s; its slices processed again %s after it started; every slice home after %s\n",
			s.Node, s.Owned, s.Stop.Round(time.Millisecond), s.Resumed.Round(time.Millisecond), s.Settled.Round(time.Millisecond))
	}
	moves, least := r.Moves()
	fmt.Fprintf(w, "restarts: %d; slices processed again after the new process started: %s (target: every one within %s)\n",
		len(r.Restarts), r.Resumed(), RestartResumeTarget)
	fmt.Fprintf(w, "moves: %d (least needed %d); ready messages: at most %d during the restarts, %d before\n", moves, least, r.MaxReady, r.BaseReady)
}

// waitResumed polls n's own status until it processes every slice of held again, and returns
// how long after start that was.
func waitResumed(ctx context.Context, n *Node, held []int, start time.Time, timeout time.Duration) (time.Duration, error) {
	err := n.waitStatus(ctx, timeout, func(st agent.Status) error {
		processing := map[int]bool{}
		for _, s := range st.Slices {
			if s.Owner == n.Name && s.State == "owned" {
				processing[s.Slice] = true
			}
		}
		for _, s := range held {
			if !processing[s] {
				return fmt.Errorf("%s does not process slice %d (it held %v before its restart)", n.Name, s, held)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// backlogSampler records the largest number of ready messages in a queue directory, sampled
// every 100 ms, on a goroutine its starter stops.
type backlogSampler struct {
	cancel context.CancelFunc
	done   chan struct{}
	max    chan chan int // reset: answers the maximum since the last reset
}

func startBacklogSampler(ctx context.Context, queueDir string) *backlogSampler {
	ctx, cancel := context.WithCancel(ctx)
	b := &backlogSampler{cancel: cancel, done: make(chan struct{}), max: make(chan chan int)}
	go func() {
		defer close(b.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		peak := 0
		for {
			select {
			case <-ctx.Done():
				return
			case reply := <-b.max:
				reply <- peak
				peak = 0
			case <-t.C:
				left, err := Leftovers(queueDir)
				if err != nil {
					continue
				}
				ready := 0
				for _, l := range left {
					if l.Where == "ready" {
						ready++
					}
				}
				peak = max(peak, ready)
			}
		}
	}()
	return b
}

// reset returns the largest backlog since the last reset (0 once stopped).
func (b *backlogSampler) reset() int {
	reply := make(chan int, 1)
	select {
	case b.max <- reply:
		return <-reply
	case <-b.done:
		return 0
	}
}

func (b *backlogSampler) stop() {
	b.cancel()
	<-b.done
}
