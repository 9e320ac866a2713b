package exporters

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qslice/qslice/fshealth"
)

// FSCollector exports the filesystem health of each queue directory worked on this node
// (package fshealth). Bounds: three series per configured queue.
type FSCollector struct {
	states func() []fshealth.State // must answer at once (it never touches the filesystem)
}

// NewFSCollector returns a collector over states.
func NewFSCollector(states func() []fshealth.State) *FSCollector { return &FSCollector{states: states} }

var (
	descFSAvailable = desc("qslice_queue_filesystem_available",
		"Whether the queue directory's filesystem answers on this node (1), or has not answered a probe within health.filesystem.timeout, or not yet for the recover_after hold-down (0): the node then claims nothing from the queue and hands its slices off.", "queue")
	descFSProbeSeconds = desc("qslice_queue_filesystem_probe_seconds",
		"Duration of the last completed filesystem probe of the queue directory (stat, readdir, canary create+fsync+remove).", "queue")
	descFSProbeFailures = desc("qslice_queue_filesystem_probe_failures_total",
		"Filesystem probes of the queue directory that failed or took longer than health.filesystem.timeout.", "queue")
)

// Describe implements prometheus.Collector.
func (c *FSCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descFSAvailable
	ch <- descFSProbeSeconds
	ch <- descFSProbeFailures
}

// Collect implements prometheus.Collector.
func (c *FSCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.states() {
		avail := 0.0
		if st.Available {
			avail = 1
		}
		ch <- prometheus.MustNewConstMetric(descFSAvailable, prometheus.GaugeValue, avail, st.Name)
		ch <- prometheus.MustNewConstMetric(descFSProbeSeconds, prometheus.GaugeValue, st.LastLatency.Seconds(), st.Name)
		ch <- prometheus.MustNewConstMetric(descFSProbeFailures, prometheus.CounterValue, float64(st.Failures), st.Name)
	}
}
