// Package agent wires one qslice node: runners (or supervisors of external workers) for the
// configured queues, the failover coordinator (standalone or Consul) that tells them which slices
// to work, the probes of the shared disk, and the exporters (Prometheus, OpenTelemetry, the HTTP
// endpoints with the status page and the drain API).
//
// Lifecycle: New builds and validates everything and binds the HTTP port, so mistakes surface
// before anything runs; Run starts every component under one errgroup and returns when ctx is
// cancelled, after the coordinator released this node's slices and the runners let their in-flight
// messages finish or released them. Any component that fails stops the node as a whole: a node
// that cannot do its job must not keep its slices.
package agent
