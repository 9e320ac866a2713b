package chaos

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Print writes the report's figures.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "chaos run: seed %d, %d nodes, %s\n", r.Seed, r.Nodes, r.Duration.Round(time.Second))
	var kinds []string
	total := 0
	for _, k := range Kinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, r.Faults[k]))
		total += r.Faults[k]
	}
	fmt.Fprintf(w, "faults injected:          %d (%s)\n", total, strings.Join(kinds, ", "))
	fmt.Fprintf(w, "messages:                 %d\n", r.Messages)
	fmt.Fprintf(w, "handlings:                %d started, %d completed, %d cut off\n", r.Handlings, r.Completed, r.CutOff)
	fmt.Fprintf(w, "lost:                     %d\n", r.Lost)
	fmt.Fprintf(w, "left on disk:             %d (%d explained)\n", r.Stranded, r.StrandedExplained)
	fmt.Fprintf(w, "concurrent duplicates:    %d\n", r.ConcurrentDuplicates)
	fmt.Fprintf(w, "repeats after crash:      %d\n", r.RepeatsAfterCrash)
	fmt.Fprintf(w, "unexplained repeats:      %d\n", r.UnexplainedRepeats)
	if r.Faults[KindPartition]+r.Faults[KindBlackhole]+r.Faults[KindFSCut] > 0 {
		fmt.Fprintf(w, "handled while cut off:    %d (partitions and blackholes without a lapsed lease: %d)\n", r.HandledWhileCut, r.PartitionsUnlapsed)
	}
	if n := r.Faults[KindBlackhole]; n > 0 {
		fmt.Fprintf(w, "blackhole heal to lease:  %s (of %d)\n", r.BlackholeLeaseBack, n)
		fmt.Fprintf(w, "blackhole heal to slices: %s (of %d)\n", r.BlackholeSlicesBack, n)
	}
	if n := r.Faults[KindFSCut]; n > 0 {
		fmt.Fprintf(w, "fscut to unavailable:     %s (of %d)\n", r.FSCutDetected, n)
		fmt.Fprintf(w, "fscut to processed else:  %s (of %d)\n", r.FSCutElsewhere, n)
		fmt.Fprintf(w, "fscut heal to slices:     %s (of %d)\n", r.FSCutSlicesBack, n)
		fmt.Fprintf(w, "late after fence:         %d filesystem operations returned after their queue was fenced\n", r.LateAfterFence)
	}
	fmt.Fprintf(w, "ownership changes:        metrics %s (last scrape of each process); log lines %s (all)\n",
		formatCounts(r.OwnershipChanges), formatCounts(r.LoggedChanges))
	fmt.Fprintf(w, "counters vs log lines:    %d mismatches\n", len(r.MetricMismatches))
	r.Churn.Print(w, r.Faults)
	if r.MalformedLedgerLine > 0 {
		fmt.Fprintf(w, "malformed ledger lines:   %d\n", r.MalformedLedgerLine)
	}
	for _, list := range []struct {
		title string
		items []string
	}{
		{"lost", r.LostIDs}, {"left on disk", r.StrandedDetails}, {"concurrent duplicates", r.DuplicateDetails},
		{"unexplained repeats", r.UnexplainedDetails}, {"cut off Consul, not stopped", r.PartitionDetails},
		{"blackholes (lease and slices back: from the healing)", r.BlackholeDetails},
		{"filesystem cuts", r.FSCutDetails},
		{"metrics vs log", r.MetricMismatches}, {"moves beyond the minimum", r.Churn.Details}, {"problems", r.Problems},
		{"ERROR lines in the node logs that no fault explains", r.NodeErrors},
	} {
		if len(list.items) == 0 {
			continue
		}
		fmt.Fprintf(w, "%s:\n", list.title)
		for _, s := range list.items {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
}

// formatCounts writes counts by key, sorted by key ("acquired=3 failover=2"), or "none".
func formatCounts[V int | float64](m map[string]V) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%v", k, m[k])) // %v: %g for a float64, %d for an int
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// Stats summarizes latency samples.
type Stats struct {
	N                     int
	Min, Median, P95, Max time.Duration
	Samples               []time.Duration
}

// Summarize computes min, median, 95th percentile (nearest rank) and max.
func Summarize(samples []time.Duration) Stats {
	s := Stats{N: len(samples), Samples: slices.Clone(samples)}
	if s.N == 0 {
		return s
	}
	slices.Sort(s.Samples)
	rank := func(p float64) time.Duration {
		i := int(p*float64(s.N)+0.999999) - 1 // nearest rank: ceil(p*N), 1-based
		return s.Samples[min(max(i, 0), s.N-1)]
	}
	s.Min, s.Max = s.Samples[0], s.Samples[s.N-1]
	if s.N%2 == 1 {
		s.Median = s.Samples[s.N/2]
	} else {
		s.Median = (s.Samples[s.N/2-1] + s.Samples[s.N/2]) / 2
	}
	s.P95 = rank(0.95)
	return s
}

func (s Stats) String() string {
	if s.N == 0 {
		return "no samples"
	}
	r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	return fmt.Sprintf("n=%d min %s median %s p95 %s max %s", s.N, r(s.Min), r(s.Median), r(s.P95), r(s.Max))
}

// Print writes the moves per fault kind (faults counts the faults of each kind).
func (c Churn) Print(w io.Writer, faults map[Kind]int) {
	var parts []string
	for _, k := range Kinds {
		if faults[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d/%d", k, c.Moves[k], c.Min[k]))
		}
	}
	fmt.Fprintf(w, "moves per fault kind:     %s (moves/least needed); %d before the first fault\n", strings.Join(parts, ", "), c.Boot)
	fmt.Fprintf(w, "moves beyond the minimum: %d\n", c.Excess)
	fmt.Fprintf(w, "spurious moves:           %d (during stalls, blips, Consul restarts, and pauses or cuts the session survived)\n", c.Spurious)
}
