package exporters

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qslice/qslice/runner"
)

// Histogram buckets. Classic buckets for every Prometheus; the same histograms also carry native
// (sparse) buckets for servers that negotiate them.
var (
	// handleBuckets: 5 ms to ~20 min in 12 steps of x2.5: a handler runs a mail pipeline stage,
	// milliseconds when all is well, minutes when an SMTP server stalls.
	handleBuckets = prometheus.ExponentialBuckets(0.005, 2.5, 12)
	// lockWaitBuckets: 1 ms to ~59 s in 11 steps of x3. An uncontended flufl.lock acquisition
	// is a few file operations (ms on NFS); a wait for an expired holder lasts up to lifetime +
	// slop (15 s + 10 s by default), which the top buckets cover.
	lockWaitBuckets = prometheus.ExponentialBuckets(0.001, 3, 11)
)

const (
	nativeFactor     = 1.1 // ~10% relative bucket width
	nativeMaxBuckets = 100
	nativeResetAfter = time.Hour
)

// RunnerMetrics turns the runner's events into metrics in a registry of the caller's. It satisfies
// runner.Observer: its methods never block beyond a metric update (and, for a queue not seen
// before, one map insertion under a mutex).
//
// Labels: queue (the configured queues; any other value is counted under "other"), outcome and
// result (fixed sets from the runner, capped at MaxEnumLabels), reason (capped likewise). There is
// no slice label: per-slice backlog comes from the probes, and a slice label on histograms would
// multiply their series by up to 65536.
type RunnerMetrics struct {
	handled    *prometheus.CounterVec
	perSlice   *prometheus.CounterVec
	handleDur  *prometheus.HistogramVec
	lockWait   *prometheus.HistogramVec
	lockHold   *prometheus.HistogramVec
	lockBreaks *prometheus.CounterVec
	lockTOs    *prometheus.CounterVec
	recovered  *prometheus.CounterVec
	skipped    *prometheus.CounterVec
	faults     *prometheus.CounterVec
	faultOn    *prometheus.GaugeVec

	queues                     map[string]bool // nil: any queue accepted
	outcomes, results, reasons labelCap
}

var _ runner.Observer = (*RunnerMetrics)(nil)

// NewRunnerMetrics creates the runner's metrics and registers them with reg. queues lists the
// configured queue names: their series start at zero, and events for any other queue are counted
// under queue="other". An empty list accepts every name (the caller then bounds them).
func NewRunnerMetrics(reg prometheus.Registerer, queues []string) (*RunnerMetrics, error) {
	native := func(o prometheus.HistogramOpts) prometheus.HistogramOpts {
		o.NativeHistogramBucketFactor = nativeFactor
		o.NativeHistogramMaxBucketNumber = nativeMaxBuckets
		o.NativeHistogramMinResetDuration = nativeResetAfter
		return o
	}
	m := &RunnerMetrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_messages_handled_total",
			Help: "Messages whose handling ended, by outcome: done (processed), retry, shunted or bad (failed), released.",
		}, []string{"queue", "outcome"}),
		perSlice: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_slice_messages_handled_total",
			Help: "Messages whose handling ended, per slice, by outcome (as qslice_messages_handled_total). Series appear with a slice's first message; slices from DefaultMaxSliceLabels up are counted under slice=\"all\".",
		}, []string{"queue", "slice", "outcome"}),
		handleDur: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name:    "qslice_message_handle_duration_seconds",
			Help:    "Time from claiming a message to the end of its handling, whatever the outcome.",
			Buckets: handleBuckets,
		}), []string{"queue"}),
		lockWait: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name:    "qslice_message_lock_wait_seconds",
			Help:    "Time spent waiting for a message's lock file, whatever the result.",
			Buckets: lockWaitBuckets,
		}), []string{"queue"}),
		lockHold: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name:    "qslice_message_lock_hold_seconds",
			Help:    "Time a message's lock file was held.",
			Buckets: handleBuckets,
		}), []string{"queue"}),
		lockBreaks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_message_lock_breaks_total",
			Help: "Message lock acquisitions that broke an expired lock first.",
		}, []string{"queue"}),
		lockTOs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_message_lock_timeouts_total",
			Help: "Waits for a message's lock file that gave up (the message is retried later).",
		}, []string{"queue"}),
		recovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_recovered_messages_total",
			Help: "In-flight messages found when taking over a slice, by result: requeued or bad.",
		}, []string{"queue", "result"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_skipped_files_total",
			Help: "Files the runner skipped while scanning its queue (foreign or malformed names), by reason.",
		}, []string{"queue", "reason"}),
		faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_runner_faults_total",
			Help: "Disk faults met by the runner (a claim, read, the lock, shunt or bad directory failing), by reason; each is retried with backoff, the message left in place.",
		}, []string{"queue", "reason"}),
		faultOn: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "qslice_runner_fault_active",
			Help: "1 while a disk fault of this reason persists in the queue's runner (it has not succeeded since), else 0.",
		}, []string{"queue", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.handled, m.perSlice, m.handleDur, m.lockWait, m.lockHold, m.lockBreaks, m.lockTOs, m.recovered, m.skipped, m.faults, m.faultOn} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register runner metrics: %w", err)
		}
	}
	if len(queues) > 0 {
		m.queues = make(map[string]bool, len(queues))
		for _, q := range queues {
			m.queues[q] = true
			for _, o := range []runner.Outcome{runner.OutcomeDone, runner.OutcomeRetry, runner.OutcomeShunted, runner.OutcomeBad, runner.OutcomeReleased} {
				m.handled.WithLabelValues(q, m.outcomes.value(string(o)))
			}
			m.handleDur.WithLabelValues(q)
			m.lockWait.WithLabelValues(q)
			m.lockHold.WithLabelValues(q)
			m.lockBreaks.WithLabelValues(q)
			m.lockTOs.WithLabelValues(q)
			for _, r := range []string{"requeued", "bad", "failed"} {
				m.recovered.WithLabelValues(q, m.results.value(r))
			}
			for _, r := range runner.FaultReasons {
				m.faults.WithLabelValues(q, string(r))
				m.faultOn.WithLabelValues(q, string(r))
			}
		}
	}
	return m, nil
}

func (m *RunnerMetrics) queue(q string) string {
	if m.queues == nil || m.queues[q] {
		return q
	}
	return OtherLabel
}

// Handled records the end of one message's handling.
func (m *RunnerMetrics) Handled(queue string, slice int, outcome runner.Outcome, took time.Duration) {
	q := m.queue(queue)
	o := m.outcomes.value(string(outcome))
	m.handled.WithLabelValues(q, o).Inc()
	sl := SliceAll
	if slice >= 0 && slice < DefaultMaxSliceLabels {
		sl = strconv.Itoa(slice)
	}
	m.perSlice.WithLabelValues(q, sl, o).Inc()
	m.handleDur.WithLabelValues(q).Observe(took.Seconds())
}

// LockWait records one wait for a message's lock file.
func (m *RunnerMetrics) LockWait(queue string, _ int, waited time.Duration, result runner.LockResult) {
	q := m.queue(queue)
	m.lockWait.WithLabelValues(q).Observe(waited.Seconds())
	switch result {
	case runner.LockBroke:
		m.lockBreaks.WithLabelValues(q).Inc()
	case runner.LockTimeout:
		m.lockTOs.WithLabelValues(q).Inc()
	}
}

// LockHold records how long a message's lock file was held.
func (m *RunnerMetrics) LockHold(queue string, _ int, held time.Duration) {
	m.lockHold.WithLabelValues(m.queue(queue)).Observe(held.Seconds())
}

// Recovered records an in-flight file found when widening.
func (m *RunnerMetrics) Recovered(queue string, _ int, result string) {
	m.recovered.WithLabelValues(m.queue(queue), m.results.value(result)).Inc()
}

// Skipped records a file the runner skipped.
func (m *RunnerMetrics) Skipped(queue string, reason string) {
	m.skipped.WithLabelValues(m.queue(queue), m.reasons.value(reason)).Inc()
}

// Fault records a disk fault of the runner, or that it cleared (err == nil). Reasons are the
// runner's fixed set.
func (m *RunnerMetrics) Fault(queue string, reason runner.FaultReason, err error) {
	q := m.queue(queue)
	if err == nil {
		m.faultOn.WithLabelValues(q, string(reason)).Set(0)
		return
	}
	m.faults.WithLabelValues(q, string(reason)).Inc()
	m.faultOn.WithLabelValues(q, string(reason)).Set(1)
}

// labelCap admits the first MaxEnumLabels-1 distinct values of a label and maps the rest to
// OtherLabel; admission is permanent, so a series never changes meaning.
type labelCap struct {
	mu   sync.RWMutex
	seen map[string]bool
}

func (c *labelCap) value(v string) string {
	c.mu.RLock()
	ok, n := c.seen[v], len(c.seen)
	c.mu.RUnlock()
	if ok {
		return v
	}
	if n >= MaxEnumLabels-1 || v == OtherLabel {
		return OtherLabel
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	if !c.seen[v] && len(c.seen) >= MaxEnumLabels-1 {
		return OtherLabel
	}
	c.seen[v] = true
	return v
}
