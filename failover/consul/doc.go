// Package consul is the Consul driver of the ownership state machine (failover.Machine): it
// owns this node's slices through Consul and does every Consul call; the decisions are the
// Machine's. Coordinator implements failover.Coordinator.
//
// What it keeps in Consul (cluster c, node n):
//
//   - one "qslice" service instance per node (ID qslice-<c>-<n>), whose Meta lists the queues,
//     the owned slices ("in:1-2 out:0-3,7"), draining, unavailable queues and live_since; a TTL
//     check "<id>:alive" passed while HealthSource.NodeHealthy() is nil; one TTL check per queue
//     carrying the worst health of the node's slices of that queue;
//   - one session per node, bound to serfHealth and the alive check, behaviour release, with
//     the configured lock-delay;
//   - owning slice q/i means holding KV lock qslice/<c>/slices/<q>/<i> with that session; the
//     value (JSON, failover.LockValue) names the owner, and after a release why and to whom.
//
// The files follow the design, one concern each:
//
//	coordinator.go  the Coordinator: construction, the snapshots readers load, Drain/Undrain
//	loop.go         Run and the driver loop: events into the Machine, its Ready carried out
//	keeper.go       the keeper goroutine: session confirmation and creation, the lease
//	service.go      service registration and its TTL checks (alive, one per queue)
//	watch.go        the blocking-query loop the watches share, and the reset of its connections
//	kv.go           slice lock keys and values, and the KV watch that yields KV snapshots
//	members.go      the membership watch over the service's health
//	txn.go          the acquire and release transactions of one slice
//	calls.go        every request: timeout, error counts, explanations, outage logging
//	restart.go      restart in place: adopting the previous process's session, Leave, the record
//
// Goroutines, all owned by Run: the loop (the only one that touches the Machine), the keeper,
// the KV watch and the membership watch, and one short-lived waiter per pending narrowing. They
// share nothing mutable but atomically published immutable snapshots (the keeper's lease, the
// loop's status, Meta and fencing tokens), the watches' inbox and the request bookkeeping
// behind one mutex.
//
// Invariants:
//
//  1. The assignee is given a slice only while this node holds its lock and the lease is valid
//     (now < ValidUntil()); a slice is given to a new owner only after its lock was acquired.
//  2. ValidUntil() = min(tTTL + TTL, tConfirm + LockDelay) - LeaseMargin on the monotonic clock,
//     where tTTL / tConfirm are when the last successful TTL pass / consistent session read was
//     sent (failover.LeaseDeadline). Any other node can take a lock of ours no earlier than
//     ValidUntil() + LeaseMargin (argument next to the constants in failover/config.go). The
//     caller must stop claiming at ValidUntil() and stop handlers within LeaseMargin after it.
//  3. A slice is released (KV release, no lock-delay) only after the assignee reported it
//     released (the channel returned by SetSlices closed); a slice still releasing is never
//     given back to the assignee.
//  4. Nobody takes a held slice: slices change hands through the holder's release or the end of
//     its session. Consul's lock (one holder per key) is the final arbiter; the Machine only
//     decides who tries, and an acquisition checks the key's ModifyIndex against the snapshot
//     it was decided on.
//  5. Every Consul call is bounded by RequestTimeout (blocking queries by their wait) and
//     retried with exponential backoff and jitter; Run returns only when its context ends.
//  6. Every ownership change is one log line (slice, from, to, reason) and one count in
//     Status().OwnershipChanges; every change of Consul's state, of the lease and of node
//     health is one log line.
//
// What the caller must do: implement failover.Assignee (SetSlices returns at once; its channel
// closes when the removed slices have no message in flight), honour ValidUntil, give each node
// a unique NodeID, and cancel Run's context to stop. With SetRestart's store that is a stop for
// a restart (Run narrows the assignee and keeps the session, its locks and the registration for
// the next process, which adopts them: restart.go); without one, or through Leave, Run drains,
// releases, destroys the session and deregisters. A Coordinator runs once. See docs/failover.md for the protocol,
// the timing invariants, the check layout and its cost, and failure behaviour.
package consul
