package exporters

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/queuetest"
	"github.com/qslice/qslice/probes"
	"github.com/qslice/qslice/runner"
)

// BenchmarkScrape scrapes /metrics over loopback HTTP for 20 queues x 64 slices, with ownership,
// the cluster view (owner per slice) and runner histograms, and reports the per-scrape latency
// percentiles.
//
//	go test ./exporters -run '^$' -bench Scrape -benchtime 200x
func BenchmarkScrape(b *testing.B) {
	const queues, slices = 20, 64
	root := b.TempDir()
	var qcfg []probes.QueueConfig
	owned := ownership{}
	var owners []SliceOwner
	var names []string
	for qi := range queues {
		name := fmt.Sprintf("q%02d", qi)
		dir := filepath.Join(root, name)
		for s := range slices {
			for k := range 3 {
				writeFile(b, dir, fmt.Sprintf("%d.5+%s.pck", 1699990000+s*10+k, queuetest.DigestIn(s, slices, int64(k))), 100)
			}
			writeFile(b, dir, fmt.Sprintf("1699990000.0+%s.bak", queuetest.DigestIn(s, slices, 9)), 100)
			if s%2 == qi%2 {
				owned[name] = append(owned[name], s)
			}
			owners = append(owners, SliceOwner{name, s, fmt.Sprintf("node-%d", s%3)})
		}
		qcfg = append(qcfg, probes.QueueConfig{Name: name, Dir: dir, Slices: slices})
		names = append(names, name)
	}
	p, err := probes.New(probes.Config{Queues: qcfg, Clock: clock.NewFake(t0)})
	if err != nil {
		b.Fatal(err)
	}
	p.ScanOnce(context.Background())
	reg := NewRegistry("bench", "abc123")
	reg.MustRegister(NewCollector(CollectorOptions{
		Probe: p, Ownership: owned,
		Coordinator: coordinator{LeaseValid: true, LeaseRemaining: 10 * time.Second, Owners: owners,
			ConsulErrors: map[string]uint64{failover.OpSessionInfo.String(): 1}, OwnershipChanges: map[string]uint64{failover.ReasonAcquired: 640}},
	}))
	rm, err := NewRunnerMetrics(reg, names)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range names {
		rm.Handled(n, 0, runner.OutcomeDone, 30*time.Millisecond)
		rm.LockWait(n, 0, 5*time.Millisecond, runner.LockAcquired)
		rm.LockHold(n, 0, 30*time.Millisecond)
	}
	_, base := startServer(b, ServerConfig{Registry: reg}, "http")
	c := &http.Client{Timeout: 10 * time.Second}
	scrape := func() int {
		req, _ := http.NewRequest("GET", base+"/metrics", nil)
		req.Header.Set("Accept", "text/plain;version=0.0.4") // the classic text format
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
		return int(n)
	}
	size := scrape()
	var took []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t := time.Now()
		scrape()
		took = append(took, time.Since(t))
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	pct := func(p float64) float64 { return float64(took[int(p*float64(len(took)-1))]) / 1e6 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(size)/1024, "KiB/scrape")
}
