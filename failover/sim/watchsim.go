package sim

import (
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

// benchSimWatch prints the simulated cost of one failure per layout, next to the model's.
func benchSimWatch(w io.Writer) {
	type size struct {
		nodes, queues, slices int
		layouts               []string
		failures              int
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Simulated (failover/sim, the real Machine and WatchScope/Pokes/ScopedView, answers sized as Consul encodes them): one")
	fmt.Fprintln(w, "node crashes once every node is settled; what the survivors read from the crash until its slices run elsewhere and one")
	fmt.Fprintln(w, "watch interval passed (TTL 2 s, lock-delay 1 s, watch interval 1 s; sim node names are shorter than production's).")
	fmt.Fprintf(w, "%-18s %-7s %8s %6s %8s %7s %11s %11s %10s %6s %9s\n", "cluster", "layout", "failures", "woken", "answers", "writes", "bytes", "mean woken", "max node", "viol.", "wall")
	for _, c := range []size{
		{50, 8, 64, []string{failover.LayoutPrefix, failover.LayoutScoped}, 3},
		{200, 16, 256, []string{failover.LayoutScoped}, 2},
		{1000, 16, 256, []string{failover.LayoutScoped}, 1},
	} {
		var queues []failover.QueueSpec
		for q := 0; q < c.queues; q++ {
			queues = append(queues, failover.QueueSpec{Name: fmt.Sprintf("q%02d", q), Slices: c.slices})
		}
		for _, layout := range c.layouts {
			start := time.Now()
			var sum FailureTraffic
			viol := 0
			for i := 0; i < c.failures; i++ {
				failed := fmt.Sprintf("n%d", 1+i*c.nodes/c.failures)
				f := measureFailure(Config{Seed: uint64(i + 1), Nodes: c.nodes, Queues: queues, Layout: layout, Kinds: []string{FaultCrash}}, failed, 10)
				sum.Woken += f.Woken
				sum.Answers += f.Answers
				sum.Writes += f.Writes
				sum.Bytes += f.Bytes
				sum.MaxNodeBytes = max(sum.MaxNodeBytes, f.MaxNodeBytes)
				viol += len(f.Violations)
			}
			n := float64(c.failures)
			mean := 0.0
			if sum.Woken > 0 {
				mean = float64(sum.Bytes) / float64(sum.Woken)
			}
			fmt.Fprintf(w, "%-18s %-7s %8d %6.1f %8.1f %7.1f %11s %11s %10s %6d %9s\n", fmt.Sprintf("%d x %d x %d", c.nodes, c.queues, c.slices), layout,
				c.failures, float64(sum.Woken)/n, float64(sum.Answers)/n, float64(sum.Writes)/n, humanBytes(float64(sum.Bytes)/n), humanBytes(mean),
				humanBytes(float64(sum.MaxNodeBytes)), viol, time.Since(start).Round(100*time.Millisecond))
		}
	}
}
