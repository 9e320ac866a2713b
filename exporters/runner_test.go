package exporters

import (
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qslice/qslice/runner"
)

func TestRunnerMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewRunnerMetrics(reg, []string{"in", "out"})
	if err != nil {
		t.Fatal(err)
	}
	// Registering twice into one registry fails cleanly.
	if _, err := NewRunnerMetrics(reg, nil); err == nil {
		t.Error("second registration succeeded")
	}
	var obs runner.Observer = m
	obs.Handled("in", 3, runner.OutcomeDone, 20*time.Millisecond)
	obs.Handled("in", 1, runner.OutcomeDone, 2*time.Second)
	obs.Handled("in", 0, runner.OutcomeShunted, time.Second)
	obs.Handled("mystery", 0, runner.OutcomeBad, time.Second) // not configured: queue="other"
	obs.LockWait("in", 0, 2*time.Millisecond, runner.LockAcquired)
	obs.LockWait("in", 0, 26*time.Second, runner.LockBroke)
	obs.LockWait("out", 0, 30*time.Second, runner.LockTimeout)
	obs.LockHold("in", 0, 150*time.Millisecond)
	obs.Recovered("in", 2, "requeued")
	obs.Recovered("in", 2, "bad")
	obs.Skipped("out", "malformed")
	eacces := fmt.Errorf("claim: %w", syscall.EACCES)
	obs.Fault("in", runner.FaultClaim, eacces)
	obs.Fault("in", runner.FaultClaim, eacces)
	obs.Fault("in", runner.FaultLockDir, syscall.ENOSPC)
	obs.Fault("in", runner.FaultLockDir, nil) // cleared

	want := `
# HELP qslice_messages_handled_total Messages whose handling ended, by outcome: done (processed), retry, shunted or bad (failed), released.
# TYPE qslice_messages_handled_total counter
qslice_messages_handled_total{outcome="bad",queue="in"} 0
qslice_messages_handled_total{outcome="bad",queue="other"} 1
qslice_messages_handled_total{outcome="bad",queue="out"} 0
qslice_messages_handled_total{outcome="done",queue="in"} 2
qslice_messages_handled_total{outcome="done",queue="out"} 0
qslice_messages_handled_total{outcome="released",queue="in"} 0
qslice_messages_handled_total{outcome="released",queue="out"} 0
qslice_messages_handled_total{outcome="retry",queue="in"} 0
qslice_messages_handled_total{outcome="retry",queue="out"} 0
qslice_messages_handled_total{outcome="shunted",queue="in"} 1
qslice_messages_handled_total{outcome="shunted",queue="out"} 0
# HELP qslice_message_lock_breaks_total Message lock acquisitions that broke an expired lock first.
# TYPE qslice_message_lock_breaks_total counter
qslice_message_lock_breaks_total{queue="in"} 1
qslice_message_lock_breaks_total{queue="out"} 0
# HELP qslice_message_lock_timeouts_total Waits for a message's lock file that gave up (the message is retried later).
# TYPE qslice_message_lock_timeouts_total counter
qslice_message_lock_timeouts_total{queue="in"} 0
qslice_message_lock_timeouts_total{queue="out"} 1
# HELP qslice_recovered_messages_total In-flight messages found when taking over a slice, by result: requeued or bad.
# TYPE qslice_recovered_messages_total counter
qslice_recovered_messages_total{queue="in",result="bad"} 1
qslice_recovered_messages_total{queue="in",result="failed"} 0
qslice_recovered_messages_total{queue="in",result="requeued"} 1
qslice_recovered_messages_total{queue="out",result="bad"} 0
qslice_recovered_messages_total{queue="out",result="failed"} 0
qslice_recovered_messages_total{queue="out",result="requeued"} 0
# HELP qslice_skipped_files_total Files the runner skipped while scanning its queue (foreign or malformed names), by reason.
# TYPE qslice_skipped_files_total counter
qslice_skipped_files_total{queue="out",reason="malformed"} 1
`
	names := []string{"qslice_messages_handled_total", "qslice_message_lock_breaks_total", "qslice_message_lock_timeouts_total",
		"qslice_recovered_messages_total", "qslice_skipped_files_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	for _, c := range []struct {
		reason       runner.FaultReason
		total, alive float64
	}{{runner.FaultClaim, 2, 1}, {runner.FaultLockDir, 1, 0}, {runner.FaultShunt, 0, 0}} {
		if got := testutil.ToFloat64(m.faults.WithLabelValues("in", string(c.reason))); got != c.total {
			t.Errorf("qslice_runner_faults_total{reason=%q} = %v, want %v", c.reason, got, c.total)
		}
		if got := testutil.ToFloat64(m.faultOn.WithLabelValues("in", string(c.reason))); got != c.alive {
			t.Errorf("qslice_runner_fault_active{reason=%q} = %v, want %v", c.reason, got, c.alive)
		}
	}
	// Histograms: counts and sums.
	for _, c := range []struct {
		name  string
		count uint64
		sum   float64
	}{
		{"qslice_message_handle_duration_seconds", 3, 3.02},
		{"qslice_message_lock_wait_seconds", 2, 26.002},
		{"qslice_message_lock_hold_seconds", 1, 0.15},
	} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, mf := range mfs {
			if mf.GetName() != c.name {
				continue
			}
			for _, met := range mf.GetMetric() {
				if met.GetLabel()[0].GetValue() != "in" {
					continue
				}
				found = true
				h := met.GetHistogram()
				if h.GetSampleCount() != c.count || fmt.Sprintf("%.3f", h.GetSampleSum()) != fmt.Sprintf("%.3f", c.sum) {
					t.Errorf("%s{queue=in}: count %d sum %v, want %d %v", c.name, h.GetSampleCount(), h.GetSampleSum(), c.count, c.sum)
				}
			}
		}
		if !found {
			t.Errorf("%s{queue=in} missing", c.name)
		}
	}
}

// Observer calls come from many goroutines; run with -race.
func TestRunnerMetricsConcurrent(t *testing.T) {
	m, err := NewRunnerMetrics(prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				m.Handled(fmt.Sprint("q", g%2), i, runner.OutcomeDone, time.Millisecond)
				m.Skipped("q0", fmt.Sprint("reason", i%50)) // beyond the cap: folded into "other"
			}
		}()
	}
	wg.Wait()
	if got := testutil.ToFloat64(m.handled.WithLabelValues("q0", "done")); got != 800 {
		t.Errorf("q0 done = %v, want 800", got)
	}
	if n := testutil.CollectAndCount(m.skipped); n != MaxEnumLabels {
		t.Errorf("%d skipped series, want the cap %d", n, MaxEnumLabels)
	}
}
