package exporters

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qslice/qslice/runner/supervise"
)

type nodeInfo NodeInfo

func (n nodeInfo) NodeInfo() NodeInfo { return NodeInfo(n) }

func TestNodeCollector(t *testing.T) {
	c := NewNodeCollector(nodeInfo{Node: "mail1", Cluster: "prod", Mode: "consul", Draining: true,
		Health: []SliceHealth{{Queue: "out", Slice: 2, State: "critical"}},
		Workers: []supervise.Snapshot{{Queue: "out", Slices: 4, Workers: []supervise.WorkerStats{
			{Slice: 2, Up: false, RestartsTotal: 5, UnexpectedExitsTotal: 6},
		}}},
	}, 0)
	want := `
# HELP qslice_node_draining Whether this node is drained (1): it holds no slice and takes none until undrained.
# TYPE qslice_node_draining gauge
qslice_node_draining 1
# HELP qslice_node_info Always 1; the labels name this node, its cluster and its mode (standalone or consul).
# TYPE qslice_node_info gauge
qslice_node_info{cluster="prod",mode="consul",node="mail1"} 1
# HELP qslice_slice_health Health of each slice this node owns: 1 for its current state (passing, warning: backlog old or stalled, critical: worker failing), 0 for the others.
# TYPE qslice_slice_health gauge
qslice_slice_health{queue="out",slice="2",state="critical"} 1
qslice_slice_health{queue="out",slice="2",state="passing"} 0
qslice_slice_health{queue="out",slice="2",state="warning"} 0
# HELP qslice_worker_restarts_total Restarts of the supervised worker of the slice after it exited unexpectedly.
# TYPE qslice_worker_restarts_total counter
qslice_worker_restarts_total{queue="out",slice="2"} 5
# HELP qslice_worker_unexpected_exits_total Exits of the supervised worker of the slice that nobody asked for (failed starts included).
# TYPE qslice_worker_unexpected_exits_total counter
qslice_worker_unexpected_exits_total{queue="out",slice="2"} 6
# HELP qslice_worker_up Whether the supervised worker process of the slice runs (1) or not (0).
# TYPE qslice_worker_up gauge
qslice_worker_up{queue="out",slice="2"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if probs, err := testutil.CollectAndLint(c); err != nil || len(probs) > 0 {
		t.Fatalf("lint: %v %v", err, probs)
	}
}

// TestNodeCollectorFoldsBigQueues: a queue of more slices than the cap is one series per state,
// 1 when any owned slice is in it, like the Collector's slice="all".
func TestNodeCollectorFoldsBigQueues(t *testing.T) {
	var health []SliceHealth
	for i := range 5 {
		health = append(health, SliceHealth{Queue: "big", Slice: i, State: "passing"})
	}
	health[3].State = "critical"
	health = append(health, SliceHealth{Queue: "small", Slice: 1, State: "warning"})
	for i := range 4 { // not configured, but more entries than the cap
		health = append(health, SliceHealth{Queue: "unlisted", Slice: i, State: "passing"})
	}
	c := NewNodeCollector(nodeInfo{Node: "n", Cluster: "c", Mode: "consul", Health: health,
		QueueSlices: map[string]int{"big": 4096, "small": 2}}, 3)
	want := `
# HELP qslice_slice_health Health of each slice this node owns: 1 for its current state (passing, warning: backlog old or stalled, critical: worker failing), 0 for the others.
# TYPE qslice_slice_health gauge
qslice_slice_health{queue="big",slice="all",state="critical"} 1
qslice_slice_health{queue="big",slice="all",state="passing"} 1
qslice_slice_health{queue="big",slice="all",state="warning"} 0
qslice_slice_health{queue="small",slice="1",state="passing"} 0
qslice_slice_health{queue="small",slice="1",state="warning"} 1
qslice_slice_health{queue="small",slice="1",state="critical"} 0
qslice_slice_health{queue="unlisted",slice="all",state="critical"} 0
qslice_slice_health{queue="unlisted",slice="all",state="passing"} 1
qslice_slice_health{queue="unlisted",slice="all",state="warning"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "qslice_slice_health"); err != nil {
		t.Fatal(err)
	}
}
