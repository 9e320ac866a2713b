// Package exporters publishes what the agent knows: Prometheus metrics over HTTP (with TLS and
// basic auth through the exporter-toolkit), health and readiness endpoints, and the
// OpenTelemetry tracer provider configured from the standard OTEL_* environment.
//
// # Pieces
//
//   - NewRegistry: a private registry with the Go, process and build-info collectors.
//   - Collector: builds const metrics on each scrape from the latest probes.Snapshot
//     (SnapshotSource), the slices this node owns (OwnershipSource) and the failover
//     coordinator's state (CoordinatorSource). This package does not import the failover
//     package: the agent adapts its coordinator to CoordinatorSource.
//   - RunnerMetrics: counters and histograms fed by the runner (it is a runner.Observer).
//   - Server: /metrics, /healthz, /readyz and any handler added with Handle (the status page).
//   - NewTracerProvider: OTLP / console / none from OTEL_* variables, a no-op provider when
//     none is set.
//
// Every metric, its type, labels and bound are listed in docs/metrics.md.
//
// # Invariants
//
//   - No default registry, no global state: everything is registered in the registry the caller
//     passes, and the Collector holds only its sources and its label caps.
//   - A scrape never scans and never waits for a scan: Collect reads one atomic snapshot pointer
//     and calls Owned and Status, which must return at once. Scrape cost depends only on the
//     number of series (see BenchmarkScrape), not on the number of files on disk.
//   - Label values are bounded: queue and lock come from the configuration; slice is 0..n-1 of a
//     configured queue, or "all" for queues with more than MaxSliceLabels slices; node is a
//     cluster member; operation, reason, outcome, result are capped at MaxEnumLabels values each
//     (the rest count under "other", and a value once admitted keeps its own series, so counters
//     stay monotonic). No file names, list names or pids ever become labels.
//   - Metrics of a failed scan are those of the last successful one, next to scan_success 0 and
//     the last success timestamp; a target that never succeeded exports only its scan metrics.
//   - Tracing dials nothing and exports nothing unless OTEL_TRACES_EXPORTER or an OTLP endpoint
//     variable is set.
//
// # What the caller must do
//
// Create the registry, register a Collector and a RunnerMetrics in it, pass the RunnerMetrics to
// the runners as their Observer, build a Server over the registry with a readiness func (the
// probe's Ready and the agent's own state), run Server.Run under the agent's errgroup, and call
// the tracer provider's shutdown with a deadline on the way out.
package exporters
