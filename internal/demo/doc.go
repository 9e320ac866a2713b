// Package demo shows a qslice failover to a newcomer, end to end, with real parts: Consul in
// dev mode, three qslice nodes (the real binary, through package chaos's Cluster), a real
// Prometheus loaded with the shipped rules (dashboards/rules) scraping the nodes, and a feeder.
// Run kills the node owning the most slices with SIGKILL, shows the takeover, waits for
// QsliceNodeDown to fire, restarts the node and shows the fail-back after the hold-down, in
// `qslice members` and `qslice status` output; then it prints the alerts Prometheus' ALERTS
// series recorded and draws, from Prometheus' range queries, which node owned each slice over
// time, the alerts and the backlog of every slice (an SVG picture). scripts/demo.sh builds the
// binaries and runs internal/cmd/qslice-demo, which calls Run.
//
// Invariants: every process Run starts (Consul, Prometheus, the nodes and their handlers) runs
// in a session of its own with Pdeathsig and is stopped before Run returns, also on error or
// when its context ends; only free ports of 127.0.0.1 are used; every wait is a poll with a
// deadline and the whole run is bounded by Timing.Limit.
//
// The decisions are pure and tested alone: OwnershipSegments and AlertSpans turn range query
// results into runs of steps, SummarizeAlerts words them, ScaleRules shortens the rules' for:
// for the short mode, RenderSVG draws a Chart (deterministic, compared with a golden file) and
// ParseSVG reads a picture back.
package demo
