package exporters

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qslice/qslice/fshealth"
)

func TestFSCollector(t *testing.T) {
	c := NewFSCollector(func() []fshealth.State {
		return []fshealth.State{
			{Name: "in", Available: true, LastLatency: 3 * time.Millisecond, Failures: 0},
			{Name: "out", Available: false, LastLatency: 12 * time.Second, Failures: 7},
		}
	})
	want := `
# HELP qslice_queue_filesystem_available Whether the queue directory's filesystem answers on this node (1), or has not answered a probe within health.filesystem.timeout, or not yet for the recover_after hold-down (0): the node then claims nothing from the queue and hands its slices off.
# TYPE qslice_queue_filesystem_available gauge
qslice_queue_filesystem_available{queue="in"} 1
qslice_queue_filesystem_available{queue="out"} 0
# HELP qslice_queue_filesystem_probe_failures_total Filesystem probes of the queue directory that failed or took longer than health.filesystem.timeout.
# TYPE qslice_queue_filesystem_probe_failures_total counter
qslice_queue_filesystem_probe_failures_total{queue="in"} 0
qslice_queue_filesystem_probe_failures_total{queue="out"} 7
# HELP qslice_queue_filesystem_probe_seconds Duration of the last completed filesystem probe of the queue directory (stat, readdir, canary create+fsync+remove).
# TYPE qslice_queue_filesystem_probe_seconds gauge
qslice_queue_filesystem_probe_seconds{queue="in"} 0.003
qslice_queue_filesystem_probe_seconds{queue="out"} 12
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	doc, err := os.ReadFile(filepath.Join("..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"qslice_queue_filesystem_available", "qslice_queue_filesystem_probe_seconds", "qslice_queue_filesystem_probe_failures_total"} {
		if !strings.Contains(string(doc), "`"+n+"`") {
			t.Errorf("%s is not in docs/metrics.md", n)
		}
	}
}
