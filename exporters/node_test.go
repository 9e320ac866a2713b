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
	})
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
