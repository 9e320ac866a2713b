package failover

import (
	"context"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Spans of the Consul coordinator, for a timeline of a failover next to the message spans of the
// runners (which carry the same queue and partition attributes):
//
//	qslice.slice.acquire  the lock acquisition (KV transaction) of one slice: reason, previous
//	                      owner, fencing token
//	qslice.slice.handoff  from the planner's decision to give a slice away to its lock's release:
//	                      the wait for in-flight messages included; reason, target node, outcome
//	qslice.slice.lost     a lock lost without a hand-off (session ended, key taken): why
//	qslice.lease.lapsed   a stretch during which this node processed nothing for want of a
//	                      confirmed lease
//
// Spans are recorded after the fact with explicit timestamps (the Machine's, so a simulated run
// traces in virtual time): the loop never waits on the tracer.

const tracerName = "github.com/qslice/qslice/failover"

func sliceAttrs(s SliceID) []attribute.KeyValue {
	return []attribute.KeyValue{
		semconv.MessagingSystemKey.String("qslice"),
		semconv.MessagingDestinationName(s.Queue),
		semconv.MessagingDestinationPartitionID(strconv.Itoa(s.Index)),
	}
}

// span records one finished span from start to end.
func (m *Machine) span(name string, start, end time.Time, attrs ...attribute.KeyValue) {
	_, sp := m.tracer.Start(context.Background(), name, trace.WithTimestamp(start),
		trace.WithAttributes(attrs...), trace.WithAttributes(attribute.String("qslice.node", m.cfg.Self)))
	sp.End(trace.WithTimestamp(end))
}

func (m *Machine) traceAcquire(mv Move, start, end time.Time, token uint64) {
	m.span("qslice.slice.acquire", start, end, append(sliceAttrs(mv.Slice),
		attribute.String("qslice.reason", mv.Reason), attribute.String("qslice.from", mv.From),
		attribute.Int64("qslice.fencing_token", int64(token)))...)
}

func (m *Machine) traceHandoff(s SliceID, h *held, end time.Time, outcome string) {
	start := h.handoffSince
	if start.IsZero() {
		start = end
	}
	m.span("qslice.slice.handoff", start, end, append(sliceAttrs(s),
		attribute.String("qslice.reason", h.handoff.Reason), attribute.String("qslice.to", h.handoff.To),
		attribute.String("qslice.outcome", outcome))...)
}

func (m *Machine) traceLost(s SliceID, at time.Time, why string) {
	m.span("qslice.slice.lost", at, at, append(sliceAttrs(s), attribute.String("qslice.why", why))...)
}

func (m *Machine) traceLapse(start, end time.Time, owned int) {
	m.span("qslice.lease.lapsed", start, end, attribute.Int("qslice.owned_slices", owned))
}
