// Package failover decides which node processes which slice of which queue, so that exactly
// one live node works each slice, a node that stops reporting loses its slices without a human,
// and a returning node gets them back after a hold-down.
//
// Two Coordinators implement it. Standalone (no Consul) owns every slice of every queue. The
// ConsulCoordinator owns slices through Consul:
//
//   - one "qslice" service instance per node (ID qslice-<cluster>-<node>), whose Meta lists the
//     queues, the owned slices ("in:1-2 out:0-3,7"), draining and live_since; a TTL check
//     "<id>:alive" passed while HealthSource.NodeHealthy() is nil; one TTL check per queue
//     carrying the worst health of the node's slices of that queue;
//   - one session per node, bound to serfHealth and the alive check, behaviour release, with
//     the configured lock-delay;
//   - owning slice q/i means holding KV lock qslice/<cluster>/slices/<q>/<i> with that session;
//     the value (JSON) names the owner, and after a release why it was released;
//   - one recursive blocking query over qslice/<cluster>/ and one over the service's health
//     feed a single loop, the driver of the ownership state machine (Machine: Step, Ready,
//     Advance, in the style of etcd-io/raft's RawNode), which runs the planner and says what to
//     do; the driver does the Consul calls and SetSlices and reports every outcome back.
//
// Files: machine.go (the state machine), planner.go (who should own what), consul.go (the
// driver and its loop), consul_watch.go (blocking queries), consul_txn.go (lock and unlock
// transactions), consul_calls.go (timeouts, error counts, explanations), lease.go (the keeper:
// registration, TTL checks, session, lease), ops.go (typed Consul operation names). Package
// failover/sim simulates N machines against a model of Consul with injected faults.
//
// Invariants (the Consul coordinator):
//
//  1. The assignee is given a slice only while this node holds its lock and the lease is valid
//     (now < ValidUntil()); a slice is given to a new owner only after its lock was acquired.
//  2. ValidUntil() = min(tTTL + TTL, tConfirm + LockDelay) - LeaseMargin on the monotonic clock,
//     where tTTL / tConfirm are when the last successful TTL pass / consistent session read was
//     sent. Any other node can take a lock of ours no earlier than ValidUntil() + LeaseMargin
//     (argument next to the constants in config.go). The caller must stop claiming at
//     ValidUntil() and stop handlers within LeaseMargin after it.
//  3. A slice is released (KV release, no lock-delay) only after the assignee reported it
//     released (the channel returned by SetSlices closed); a slice still releasing is never
//     given back to the assignee.
//  4. Nobody takes a held slice: slices change hands through the holder's release or the end of
//     its session. Consul's lock (one holder per key) is the final arbiter; the planner only
//     decides who tries.
//  5. Every Consul call is bounded by RequestTimeout (blocking queries by their wait) and
//     retried with exponential backoff and jitter; Run returns only when its context ends.
//  6. Every ownership change is one log line (slice, from, to, reason) and one count in
//     Status().OwnershipChanges; every change of Consul's state, of the lease and of node
//     health is one log line.
//
// What the caller must do: implement Assignee (SetSlices returns at once; its channel closes
// when the removed slices have no message in flight), honour ValidUntil, give each node a
// unique NodeID, and cancel Run's context to stop (Run then drains, releases, destroys the
// session and deregisters). A ConsulCoordinator runs once. See docs/failover.md for the
// protocol, the timing invariants, the check layout and its cost, and failure behaviour.
package failover
