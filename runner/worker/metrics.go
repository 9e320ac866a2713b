package worker

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the pool's Prometheus metrics (docs/metrics.md). A nil *Metrics records nothing.
type Metrics struct {
	starts    *prometheus.CounterVec
	exits     *prometheus.CounterVec
	protocol  *prometheus.CounterVec
	readyProc *prometheus.GaugeVec
	loop      *prometheus.GaugeVec
}

// NewMetrics registers the pool metrics on reg, with series for each queue (so that rates start
// from zero).
func NewMetrics(reg prometheus.Registerer, queues []string) (*Metrics, error) {
	m := &Metrics{
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_worker_pool_starts_total",
			Help: "Persistent worker processes started (handler.worker), restarts included.",
		}, []string{"queue"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_worker_pool_exits_total",
			Help: "Persistent worker processes that ended, by reason: stopped, timeout, lease_lapsed, cancelled (killed by qslice); died, protocol_error, handshake_failed (crashes).",
		}, []string{"queue", "reason"}),
		protocol: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qslice_worker_pool_protocol_errors_total",
			Help: "Breaches of the worker protocol by a persistent worker, by kind: bad_frame, bad_json, unknown_type, unknown_id, handshake, closed_stdout.",
		}, []string{"queue", "error"}),
		readyProc: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "qslice_worker_pool_ready",
			Help: "Persistent worker processes ready for messages (handshake done, not ended).",
		}, []string{"queue"}),
		loop: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "qslice_worker_pool_crash_loop",
			Help: "1 while the queue's persistent workers crash in a row without answering (its slices report critical) and none has run 30s since, else 0.",
		}, []string{"queue"}),
	}
	for _, c := range []prometheus.Collector{m.starts, m.exits, m.protocol, m.readyProc, m.loop} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, q := range queues {
		m.starts.WithLabelValues(q)
		for _, r := range []string{ExitStopped, ExitTimeout, ExitLeaseLapsed, ExitCancelled, ExitDied, ExitProtocol, ExitHandshake} {
			m.exits.WithLabelValues(q, r)
		}
		m.readyProc.WithLabelValues(q)
		m.loop.WithLabelValues(q)
	}
	return m, nil
}

func (m *Metrics) started(q string) {
	if m != nil {
		m.starts.WithLabelValues(q).Inc()
	}
}

func (m *Metrics) exited(q, reason string) {
	if m != nil {
		m.exits.WithLabelValues(q, reason).Inc()
	}
}

func (m *Metrics) protocolError(q, kind string) {
	if m != nil {
		m.protocol.WithLabelValues(q, kind).Inc()
	}
}

func (m *Metrics) ready(q string, n int) {
	if m != nil {
		m.readyProc.WithLabelValues(q).Set(float64(n))
	}
}

func (m *Metrics) crashLoop(q string, on bool) {
	if m != nil {
		v := 0.0
		if on {
			v = 1
		}
		m.loop.WithLabelValues(q).Set(v)
	}
}
