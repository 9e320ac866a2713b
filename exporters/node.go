package exporters

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qslice/qslice/runner/supervise"
)

// NodeInfo is what the agent says about itself on each scrape: identity, drain state, the health
// of the slices it owns and the state of its supervised worker processes.
type NodeInfo struct {
	Node, Cluster, Mode string // mode: standalone or consul
	Draining            bool
	// Health lists the slices this node owns with their health state: passing, warning or critical.
	Health []SliceHealth
	// QueueSlices is each configured queue's slice count. The health of a queue cut into more
	// slices than the collector's cap is exported with slice="all"; an unlisted queue is folded
	// when this node reports more health entries for it than the cap.
	QueueSlices map[string]int
	// Workers are the supervisors' snapshots (queues whose workers are external processes).
	Workers []supervise.Snapshot
}

// SliceHealth is the health of one owned slice.
type SliceHealth struct {
	Queue string
	Slice int
	State string
}

// NodeSource reports NodeInfo; called on every scrape, it must answer at once.
type NodeSource interface {
	NodeInfo() NodeInfo
}

// NodeCollector exports the node's identity, drain state, slice health and supervised workers.
//
// Bounds: one qslice_node_info series; slice health per owned slice x 3 states, where a queue of
// more than maxSliceLabels slices is one slice="all" series per state (1 when any owned slice of
// the queue is in that state); worker metrics per supervised slice seen by this node (at most the
// configured slices of supervised queues).
type NodeCollector struct {
	src       NodeSource
	maxSlices int
}

// NewNodeCollector returns a collector over src; maxSliceLabels is the per-queue cap on slice
// labels, 0 for DefaultMaxSliceLabels (use the same value as the Collector's, so joins match).
func NewNodeCollector(src NodeSource, maxSliceLabels int) *NodeCollector {
	if maxSliceLabels <= 0 {
		maxSliceLabels = DefaultMaxSliceLabels
	}
	return &NodeCollector{src: src, maxSlices: maxSliceLabels}
}

var (
	descNodeInfo     = desc("qslice_node_info", "Always 1; the labels name this node, its cluster and its mode (standalone or consul).", "node", "cluster", "mode")
	descNodeDraining = desc("qslice_node_draining", "Whether this node is drained (1): it holds no slice and takes none until undrained.")
	descSliceHealth  = desc("qslice_slice_health", "Health of each slice this node owns: 1 for its current state (passing, warning: backlog old or stalled, critical: worker failing), 0 for the others.", "queue", "slice", "state")
	descWorkerUp     = desc("qslice_worker_up", "Whether the supervised worker process of the slice runs (1) or not (0).", qs...)
	descWorkerRest   = desc("qslice_worker_restarts_total", "Restarts of the supervised worker of the slice after it exited unexpectedly.", qs...)
	descWorkerExits  = desc("qslice_worker_unexpected_exits_total", "Exits of the supervised worker of the slice that nobody asked for (failed starts included).", qs...)
	nodeDescs        = []*prometheus.Desc{descNodeInfo, descNodeDraining, descSliceHealth, descWorkerUp, descWorkerRest, descWorkerExits}
	healthStates     = []string{"passing", "warning", "critical"}
)

// Describe implements prometheus.Collector.
func (c *NodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range nodeDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *NodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.src.NodeInfo()
	gauge(ch, descNodeInfo, 1, n.Node, n.Cluster, n.Mode)
	gauge(ch, descNodeDraining, boolf(n.Draining))
	c.collectHealth(ch, n)
	for _, snap := range n.Workers {
		for _, w := range snap.Workers {
			s := strconv.Itoa(w.Slice)
			gauge(ch, descWorkerUp, boolf(w.Up), snap.Queue, s)
			ch <- prometheus.MustNewConstMetric(descWorkerRest, prometheus.CounterValue, float64(w.RestartsTotal), snap.Queue, s)
			ch <- prometheus.MustNewConstMetric(descWorkerExits, prometheus.CounterValue, float64(w.UnexpectedExitsTotal), snap.Queue, s)
		}
	}
}

// collectHealth exports slice health per slice, folding queues above the cap into slice="all".
func (c *NodeCollector) collectHealth(ch chan<- prometheus.Metric, n NodeInfo) {
	entries := map[string]int{}
	for _, h := range n.Health {
		entries[h.Queue]++
	}
	folded := map[string]map[string]bool{} // queue -> states some owned slice is in
	for _, h := range n.Health {
		size, known := n.QueueSlices[h.Queue]
		if (known && size > c.maxSlices) || (!known && entries[h.Queue] > c.maxSlices) {
			if folded[h.Queue] == nil {
				folded[h.Queue] = map[string]bool{}
			}
			folded[h.Queue][h.State] = true
			continue
		}
		s := strconv.Itoa(h.Slice)
		for _, st := range healthStates {
			gauge(ch, descSliceHealth, boolf(h.State == st), h.Queue, s, st)
		}
	}
	for q, states := range folded {
		for _, st := range healthStates {
			gauge(ch, descSliceHealth, boolf(states[st]), q, SliceAll, st)
		}
	}
}
