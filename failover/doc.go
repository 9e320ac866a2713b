// Package failover decides which node processes which slice of which queue, so that exactly
// one live node works each slice, a node that stops reporting loses its slices without a human,
// and a returning node gets them back after a hold-down.
//
// It holds the domain (SliceID, Assignee, HealthSource, Coordinator, Status), the pure
// decisions and the configuration; the I/O lives elsewhere:
//
//	machine.go     Machine, the ownership state machine (Step, Ready, Advance, in the style of
//	               etcd-io/raft's RawNode): events in, actions out, no I/O, no clock
//	planner.go     ComputePlan and Planner: who should own what (rendezvous, hold-down, drain)
//	lease.go       LeaseDeadline, the lease formula the timing argument rests on
//	config.go      ConsulConfig: defaults, validation, the timing constants and their reasoning
//	ops.go         ConsulOp, the typed Consul operation names shared by code, metrics and rules
//	scope.go       the scoped watch layout: WatchScope (which keys a node watches), Pokes
//	scopedview.go  ScopedView, what a node knows from full reads and single-key answers
//	scopedtrust.go ScopedTrust, when to believe the view: reset epochs, the membership hold
//	               after a reset, a new session's warm-up, an older peer's confirmation
//	standalone.go  Standalone: every slice of every queue, no Consul
//	tracing.go     the Machine's spans
//
// Two Coordinators implement it: Standalone (no Consul) and consul.Coordinator (package
// failover/consul, the Machine's Consul driver). Package failover/sim runs N Machines against a
// model of Consul with injected faults; package failovertest holds what coordinator tests share.
//
// The Machine's invariants, which any driver relies on: it hands a slice to the assignee only
// while it holds the slice's lock (an acquisition it saw granted) and the lease it was last told
// is valid; it releases a slice only after the assignee reported it released, and never gives a
// slice still releasing back; it never asks to take a slice someone holds; after a KV snapshot
// whose index went backwards it acquires nothing for max(TTL, LockDelay). See docs/failover.md
// for the protocol, the timing invariants and failure behaviour.
package failover
