// Command qslice-sim runs the deterministic ownership simulator over many seeds, replays one
// seed with its logs, or prints the scale figures of the planner and the simulated Consul.
//
//	qslice-sim -seeds 1000                 # seeds 1..1000, 6 faults each; failing seeds print their schedule
//	qslice-sim -seed 169 -v                # replay one seed with every node's log
//	qslice-sim -layout scoped -seeds 1000  # the same with the scoped watch layout
//	qslice-sim -bench scale                # 1,000 nodes x 16 queues x 256 slices: plan time, allocations, moves
//	qslice-sim -bench watch                # Consul load of one failover per watch layout at 50, 200, 1,000 nodes (model),
//	                                       # and simulated at 50 (-sim-nodes 50,200 adds 200: minutes)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "qslice-sim:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("qslice-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	seed := fs.Uint64("seed", 0, "run only this seed")
	seeds := fs.Int("seeds", 200, "run seeds 1..N")
	faults := fs.Int("faults", 6, "faults per run")
	nodes := fs.Int("nodes", 4, "nodes")
	kinds := fs.String("kinds", "", "comma-separated fault kinds (default all: "+strings.Join(sim.AllKinds, ",")+")")
	verbose := fs.Bool("v", false, "print every node's log (with -seed)")
	bench := fs.String("bench", "", `"scale": planner and watch figures at 1,000 nodes x 16 queues x 256 slices; "watch": Consul load of one failover per watch layout at 50, 200, 1,000 nodes`)
	benchNodes := fs.Int("bench-nodes", 1000, "nodes for -bench scale")
	layout := fs.String("layout", failover.LayoutPrefix, `what the nodes watch: "prefix" (the whole KV and membership) or "scoped" (single keys, member and inbox keys)`)
	simNodes := fs.String("sim-nodes", "50", "with -bench watch: cluster sizes to simulate, comma-separated (200 takes minutes)")
	fullRead := fs.Duration("full-read", 0, "with -layout scoped: how often each node reads every key (default 3 TTLs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *bench {
	case "":
	case "scale":
		return sim.BenchScale(ctx, stdout, *benchNodes)
	case "watch":
		if err := sim.BenchWatch(stdout); err != nil {
			return err
		}
		var sizes []int
		for _, f := range strings.Split(*simNodes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 4 {
				return fmt.Errorf("-sim-nodes: %q is not a node count >= 4", f)
			}
			sizes = append(sizes, n)
		}
		return sim.BenchSimWatch(ctx, stdout, sizes)
	default:
		return fmt.Errorf("-bench %q: \"scale\" or \"watch\"", *bench)
	}
	if *layout != failover.LayoutPrefix && *layout != failover.LayoutScoped {
		return fmt.Errorf("-layout %q: %q or %q", *layout, failover.LayoutPrefix, failover.LayoutScoped)
	}
	cfg := sim.Config{Nodes: *nodes, Faults: *faults, Layout: *layout, FullReadInterval: *fullRead}
	if *kinds != "" {
		for _, k := range strings.Split(*kinds, ",") {
			if !slices.Contains(sim.AllKinds, k) {
				return fmt.Errorf("-kinds: unknown fault %q (known: %s)", k, strings.Join(sim.AllKinds, ","))
			}
			cfg.Kinds = append(cfg.Kinds, k)
		}
	}
	if *seed != 0 {
		cfg.Seed = *seed
		if *verbose {
			cfg.Log = stdout
		}
		r := sim.Run(cfg)
		fmt.Fprint(stdout, r.Report())
		if r.Failed() {
			return errors.New("invariants violated")
		}
		return nil
	}
	start := time.Now()
	failed := 0
	var reowned, resumed []time.Duration
	events := 0
	for s := uint64(1); s <= uint64(*seeds) && ctx.Err() == nil; s++ {
		cfg.Seed = s
		r := sim.Run(cfg)
		events += r.Events
		reowned = append(reowned, r.ReownedAfter...)
		resumed = append(resumed, r.ResumedAfter...)
		if r.Failed() {
			failed++
			fmt.Fprint(stdout, r.Report())
		}
	}
	q := func(d []time.Duration, p float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		slices.Sort(d)
		return d[min(len(d)-1, int(p*float64(len(d))))]
	}
	c := cfg.WithDefaults()
	fmt.Fprintf(stdout, "%d seeds, %d failed, %d events, %s; slices of a faulted node processed again after: n=%d median %.2fs p95 %.2fs max %.2fs (target TTL + lock-delay + 2 renew intervals = %.2fs, checked bound %.2fs)\n",
		*seeds, failed, events, time.Since(start).Round(time.Millisecond), len(reowned), q(reowned, 0.5).Seconds(), q(reowned, 0.95).Seconds(), q(reowned, 1).Seconds(),
		(c.TTL + c.LockDelay + 2*c.RenewInterval).Seconds(), cfg.FailoverBound().Seconds())
	fmt.Fprintf(stdout, "restarts in place: n=%d, every home slice processed again after the new process started: median %.3fs p95 %.3fs max %.3fs (checked bound %.2fs), moves 0 (checked)\n",
		len(resumed), q(resumed, 0.5).Seconds(), q(resumed, 0.95).Seconds(), q(resumed, 1).Seconds(), cfg.ResumeBound().Seconds())
	if failed > 0 {
		return fmt.Errorf("%d seeds violated invariants", failed)
	}
	return nil
}
