package sim

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/qslice/qslice/failover"
)

// FailureTraffic is what one node failure cost the other nodes' reads from Consul in a
// simulated run (MeasureFailure): the answers their watches got and the keys they read because
// of it, sized as Consul encodes them.
type FailureTraffic struct {
	Layout        string
	Nodes, Slices int
	Woken         int   // nodes that read at least one answer in the window
	Answers       int   // answers and single-key reads, all nodes
	Bytes         int64 // their bytes, all nodes
	MaxNodeBytes  int64 // the most one node read
	Writes        int   // member key and inbox writes (the scoped layout's own)
	FullReads     int   // periodic full reads in the window (not counted above)
	Violations    []string
	Events        int
}

// MeanWokenBytes is what a woken node read on average.
func (f FailureTraffic) MeanWokenBytes() int64 {
	if f.Woken == 0 {
		return 0
	}
	return f.Bytes / int64(f.Woken)
}

// MeasureFailure runs cfg with one fault, a crash of node failed once every node has been live
// for the hold-down and every slice is at home, and counts what the survivors read from Consul
// from the crash until its slices are processed elsewhere and one more watch interval passed
// (FailoverBound + WatchMinInterval). In the scoped layout the periodic full read is set to an
// hour unless cfg says otherwise (production's is minutes: none falls in the window). The
// invariants are checked as in any run (every checkEvery events; 0: each).
func MeasureFailure(cfg Config, failed string) FailureTraffic {
	return measureFailure(cfg, failed, 0)
}

func measureFailure(cfg Config, failed string, checkEvery int) FailureTraffic {
	if cfg.FullReadInterval == 0 {
		cfg.FullReadInterval = time.Hour
	}
	cfg = cfg.withDefaults()
	at := cfg.TTL + cfg.HoldDown + 2*time.Second
	window := cfg.FailoverBound() + cfg.WatchMinInterval
	cfg.Schedule = []Fault{{Kind: FaultCrash, Node: failed, At: at, For: window + time.Second}}
	cfg.stopAt, cfg.checkEvery = at+window+time.Millisecond, checkEvery
	out := FailureTraffic{Layout: cfg.Layout, Nodes: cfg.Nodes}
	for _, q := range cfg.Queues {
		out.Slices += q.Slices
	}
	var before []traffic
	cfg.probes = []probe{
		{at: at, fn: func(w *world) {
			for _, n := range w.nodes {
				before = append(before, n.traffic)
			}
		}},
		{at: at + window, fn: func(w *world) {
			for i, n := range w.nodes {
				if n.id == failed {
					continue
				}
				b := before[i]
				answers := n.traffic.answers + n.traffic.pokeReads - b.answers - b.pokeReads
				bytes := n.traffic.answerBytes - b.answerBytes
				if answers > 0 {
					out.Woken++
				}
				out.Answers += answers
				out.Bytes += bytes
				out.MaxNodeBytes = max(out.MaxNodeBytes, bytes)
				out.Writes += n.traffic.writes - b.writes
				out.FullReads += n.traffic.fullReads - b.fullReads
			}
		}},
	}
	r := Run(cfg)
	out.Violations, out.Events = r.Violations, r.Events
	return out
}

// BenchSimWatch prints the simulated cost of one node failure per layout at each cluster size
// of sizes (50: 50 nodes x 8 queues x 64 slices, both layouts; larger: x 16 x 256, the scoped
// layout only: the prefix layout's answers are the model's, and simulating them costs minutes),
// next to the model's figures (BenchWatch). Each size is one simulated run per failure; the
// per-step invariants are checked every 100 events (every 1,000 above 200 nodes).
func BenchSimWatch(ctx context.Context, w io.Writer, sizes []int) error {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Simulated (failover/sim: the real Machine, WatchScope, Pokes and ScopedView against the model of Consul, answers sized")
	fmt.Fprintln(w, "as Consul encodes them): one node crashes once every node is settled; what the survivors read from the crash until its")
	fmt.Fprintln(w, "slices run elsewhere plus one watch interval (TTL 2 s, lock-delay 1 s, watch interval 1 s; sim node names n1..nN).")
	fmt.Fprintf(w, "%-18s %-7s %5s %6s %8s %7s %11s %11s %10s %6s %8s\n", "cluster", "layout", "runs", "woken", "answers", "writes", "bytes", "mean woken", "max node", "viol.", "wall")
	for _, nodes := range sizes {
		queuesN, slicesN, layouts := 16, 256, []string{failover.LayoutScoped}
		if nodes <= 50 {
			queuesN, slicesN, layouts = 8, 64, []string{failover.LayoutPrefix, failover.LayoutScoped}
		}
		runs, checkEvery := 1, 100
		if nodes <= 50 {
			runs = 3
		}
		if nodes > 200 {
			checkEvery = 1000
		}
		var queues []failover.QueueSpec
		for q := 0; q < queuesN; q++ {
			queues = append(queues, failover.QueueSpec{Name: fmt.Sprintf("q%02d", q), Slices: slicesN})
		}
		for _, layout := range layouts {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			start := time.Now()
			var sum FailureTraffic
			viol := 0
			for i := 0; i < runs; i++ {
				failed := fmt.Sprintf("n%d", 1+i*nodes/runs)
				f := measureFailure(Config{Seed: uint64(i + 1), Nodes: nodes, Queues: queues, Layout: layout}, failed, checkEvery)
				sum.Woken += f.Woken
				sum.Answers += f.Answers
				sum.Writes += f.Writes
				sum.Bytes += f.Bytes
				sum.MaxNodeBytes = max(sum.MaxNodeBytes, f.MaxNodeBytes)
				viol += len(f.Violations)
			}
			n := float64(runs)
			mean := 0.0
			if sum.Woken > 0 {
				mean = float64(sum.Bytes) / float64(sum.Woken)
			}
			fmt.Fprintf(w, "%-18s %-7s %5d %6.1f %8.1f %7.1f %11s %11s %10s %6d %8s\n", fmt.Sprintf("%d x %d x %d", nodes, queuesN, slicesN), layout,
				runs, float64(sum.Woken)/n, float64(sum.Answers)/n, float64(sum.Writes)/n, humanBytes(float64(sum.Bytes)/n), humanBytes(mean),
				humanBytes(float64(sum.MaxNodeBytes)), viol, time.Since(start).Round(time.Second))
			if viol > 0 {
				return fmt.Errorf("%d x %d x %d, %s layout: %d invariant violations", nodes, queuesN, slicesN, layout, viol)
			}
		}
	}
	return nil
}
