package sim

import (
	"flag"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
)

var seeds = flag.Int("sim.seeds", 60, "number of seeds TestSimulatedFaults runs")

// TestSimulatedFaults runs a bounded number of seeds (QSLICE_SIM_SEEDS or -sim.seeds) for each
// watch layout; every invariant is checked after every event. A failing seed prints its
// schedule; replay it with go run ./failover/sim/cmd/qslice-sim -layout L -seed N -v.
func TestSimulatedFaults(t *testing.T) {
	n := *seeds
	if s := os.Getenv("QSLICE_SIM_SEEDS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	if testing.Short() {
		n = min(n, 10)
	}
	for _, layout := range []string{failover.LayoutPrefix, failover.LayoutScoped} {
		t.Run(layout, func(t *testing.T) {
			start := time.Now()
			failed := 0
			var reowned []time.Duration
			for seed := uint64(1); seed <= uint64(n); seed++ {
				r := Run(Config{Seed: seed, Faults: 6, Layout: layout})
				reowned = append(reowned, r.ReownedAfter...)
				if r.Failed() {
					failed++
					if failed <= 3 {
						t.Errorf("%s", r.Report())
					}
				}
			}
			t.Logf("%d seeds, %d failed, %d takeovers, in %s", n, failed, len(reowned), time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestSimulatorIsDeterministic: one seed, one run, in each layout.
func TestSimulatorIsDeterministic(t *testing.T) {
	for _, layout := range []string{failover.LayoutPrefix, failover.LayoutScoped} {
		a, b := Run(Config{Seed: 42, Faults: 5, Layout: layout}), Run(Config{Seed: 42, Faults: 5, Layout: layout})
		if a.Report() != b.Report() || a.Events != b.Events || a.Moves != b.Moves {
			t.Fatalf("%s: seed 42 ran twice differently:\n%s\n%s", layout, a.Report(), b.Report())
		}
		if a.Events < 1000 || a.Moves < 12 {
			t.Fatalf("%s: the run did almost nothing: %s", layout, a.Report())
		}
	}
}

// TestSimulatorCatchesABrokenLease: with leases 5 s too long, a node cut off or
// paused keeps processing after its slices were taken over, and the checks must say so.
func TestSimulatorCatchesABrokenLease(t *testing.T) {
	found := 0
	for seed := uint64(1); seed <= 10 && found == 0; seed++ {
		r := Run(Config{Seed: seed, Faults: 4, Kinds: []string{FaultPause, FaultPartition}, BrokenLease: 5 * time.Second})
		for _, v := range r.Violations {
			if strings.Contains(v, "processed by") || strings.Contains(v, "while") {
				found++
			}
		}
	}
	if found == 0 {
		t.Fatal("leases 5s too long went unnoticed: the overlap check cannot fail")
	}
}

// TestSimulatorCatchesNoFailover: the only node is cut off for longer than the bound: nobody
// processes its slices, and the "processed again within the bound" check must say so.
func TestSimulatorCatchesNoFailover(t *testing.T) {
	cfg := Config{Seed: 3, Nodes: 1}
	r := Run(Config{Seed: 3, Nodes: 1, Schedule: []Fault{{Kind: FaultPartition, Node: "n1", At: 7 * time.Second, For: 3 * cfg.FailoverBound()}}})
	found := false
	for _, v := range r.Violations {
		found = found || strings.Contains(v, "not processed again")
	}
	if !found {
		t.Fatalf("a cluster without its only node went unnoticed: %s", r.Report())
	}
}

// TestSimulatorCatchesARestartThatMoves: without adoption a restarted process starts a new
// session, and the restart checks must report that it did not resume its slices in place.
func TestSimulatorCatchesARestartThatMoves(t *testing.T) {
	ok := Run(Config{Seed: 5, Faults: 4, Kinds: []string{FaultRestart, FaultStopRestart}})
	if ok.Failed() || len(ok.ResumedAfter) == 0 {
		t.Fatalf("restarts in place: %d resumed, want some and no violation:\n%s", len(ok.ResumedAfter), ok.Report())
	}
	r := Run(Config{Seed: 5, Faults: 4, Kinds: []string{FaultRestart, FaultStopRestart}, NoAdopt: true})
	found := false
	for _, v := range r.Violations {
		found = found || strings.Contains(v, "restarted in place")
	}
	if !found {
		t.Fatalf("restarts without adoption went unnoticed: %s", r.Report())
	}
}
