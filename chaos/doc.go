// Package chaos proves qslice's failover promises on real processes: a real Consul
// (internal/consultest), N qslice nodes as separate processes on loopback sharing one queue
// directory, an exec handler that writes a ledger, a feeder, and faults from a seeded schedule.
//
// The handler (cmd/qslice-chaos-handler) appends "<id> <node> start <unix ns>" before its work
// and "<id> <node> end <unix ns>" after it, one O_APPEND write per line, to one ledger file per
// node. The end line is the handler's commit point.
//
// Faults: SIGKILL of every process of a node's session (qslice and its handlers), restarted
// later; SIGSTOP of the whole session for longer than the lease, then SIGCONT (a paused
// machine); Consul restart on the same data; SIGTERM and start (a clean restart); `qslice
// drain` and `qslice drain --undo`; a partition: the node cut off Consul for longer than it
// takes the others to take its slices, its processes running on, then reconnected; a blackhole:
// the same, but silent. Each node runs in its own session (Setsid) so that a signal reaches the
// handlers too, which qslice starts in process groups of their own. Each node reaches Consul
// through a TCP proxy of its own on 127.0.0.1 (its consul.address), which the partition cuts:
// every connection closed, new ones closed as soon as accepted. The blackhole silences it
// instead: no byte forwarded on the open connections, new ones accepted and held silent (never
// dialled through, never answered, never closed), and after the healing only connections made
// since are forwarded; the older ones stay silent until Cluster.Close, as after a partition that
// drops packets and loses the connections' state. After each blackhole the run measures how long
// the node takes, from the healing, to show a valid lease and to have its slices back. A stall
// (SIGSTOP) and a blip (a cut) shorter than what the timing tolerates must move nothing.
//
// Analyze checks, from the ledger, the faults and the nodes' logs:
//
//   - lost: every enqueued message has a completed handling, or is still on disk (queue,
//     shunt/, bad/) and is reported there with its reason;
//   - concurrent duplicates: no two handlings of one message overlap. A handling without an end
//     line ends when its node was killed or paused (every process stopped) or its runner
//     reported a lapsed lease, whichever came first; with none of these it never ends (a
//     partition alone ends nothing: the cut-off node's handlers run on until its runner kills
//     them on the lapse);
//   - repeats: a message handled again only after its earlier handling was cut off, or after its
//     node was killed, paused or lost its lease in between (a crash between the handler's
//     commit and the file's removal); any other repeat is unexplained;
//   - a node cut off Consul (partition or blackhole) stops: its runner logs a lapsed lease
//     within the lease (and a second), and no handling starts on it after the lease must have
//     ended until it is healed;
//   - churn: every move (a slice taken from another node) is attributed to the fault during
//     which it happened and set against the least that fault needed (MinMoves); moves during
//     faults that needed none are spurious.
//
// Invariants of the harness: every process it starts is in a session it kills in
// Cluster.Close, also on failure; only 127.0.0.1 is used; every wait is bounded in time and
// every loop in count; faults run one at a time, and the same seed gives the same schedule.
//
// TestNoOverlapAfterKill9 runs one standalone node whose handler leaves the work and the commit
// to a child process (CHAOS_CHILD=1, which also writes "tick" lines while it works), SIGKILLs
// qslice alone mid-handling, so that the children outlive it, restarts it at once, and checks
// from the ledger that no earlier handling of a message shows any line after the next one
// started (runner/proctree kills the survivors first).
//
// RunSoak is the chaos run (the CI test runs a short one; cmd/qslice-chaos a long one), RunBench
// the failover benchmark: from SIGKILL (or SIGSTOP) of an owner to the first message of each of
// its slices handled elsewhere, and from the restart of a home node to its slices handled by
// it again, with brief stalls and blips that must move nothing; RunRollingUpgrade restarts the
// nodes one at a time on a new binary and counts the moves.
package chaos
