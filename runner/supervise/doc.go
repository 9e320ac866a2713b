// Package supervise runs one external worker process per owned slice of a
// queue and follows qslice's slice ownership: when the agent widens the set of
// owned slices the workers of the new slices start, and when it narrows the set
// the workers of the removed slices are stopped. It is how qslice gives
// programs that bring their own queue runner, GNU Mailman 3's
// `runner --runner=NAME:SLICE:COUNT` in particular, automatic takeover when
// slices move between nodes.
//
// # Invariants
//
//   - A slice has at most one worker process on this node at any time. A
//     slice that is removed and added back before its old worker has gone
//     gets a new worker only after the old one's process group is gone.
//   - A narrowed slice is reported released (the channel returned by
//     [Supervisor.SetSlices] is closed) only after the process group of its
//     worker is gone: every process in the group has exited, not just the
//     group leader. The leader is reaped only after that, so its process
//     group ID cannot be reused while qslice may still signal it.
//   - Every worker runs in its own process group (Setpgid). Stop and kill
//     signals go to the whole group, so children of a worker (a shell
//     wrapper's child, a helper it spawned) stop with it. A worker process
//     that leaves the group (setsid, setpgid) is outside this guarantee.
//   - Stopping is: the configured stop signal (SIGTERM by default) to the
//     group, then up to Config.Grace for the group to exit, then SIGKILL to
//     the group, repeated until the group is gone.
//   - On Linux the group leader gets Pdeathsig=SIGKILL: if qslice itself dies
//     without stopping its workers, the kernel kills the leaders, so a
//     surviving node cannot process a slice that a peer took over. (Only the
//     leader gets it; children that ignore their leader's death are not
//     covered. The kernel sends it when the thread that started the worker
//     exits; the Go runtime ends a thread only with a goroutine locked to it,
//     and workers are never started from a locked thread.)
//   - A worker that exits without being asked to is restarted after an
//     exponential backoff (Config.RestartBackoff), and counted. When
//     Config.CrashLoopThreshold unexpected exits fall within
//     Config.CrashLoopWindow the slice is critical (see [Supervisor.Health]);
//     it stays critical until a worker has run for Config.StableAfter
//     without exiting. The supervisor keeps restarting a critical slice: it is
//     the agent's job to report the health and move the slice.
//   - Worker stdout and stderr go to the logger one line at a time, with the
//     queue, slice, pid and stream as fields. A line longer than
//     Config.MaxLineBytes is cut there and the rest of it dropped (counted).
//
// # What the caller must do
//
//   - Build a Supervisor with [New], call [Supervisor.Run] once, from a
//     goroutine it owns, and cancel its context to stop: Run returns only
//     after every worker's process group is gone.
//   - Call [Supervisor.SetSlices] with the full set of owned slices whenever
//     ownership changes (before or while Run runs), and wait on the returned
//     channel before releasing any removed slice to another node.
//   - Make the worker agree with qslice on the slice count. Mailman's runner
//     takes its slice count from `instances` in its own configuration, not
//     from the command line (see docs/mailman.md), and Mailman accepts only
//     powers of two.
//
// Durations that carry meaning (grace, backoff, crash window, stable run)
// follow the injected [Clock]. Detecting that a process group is gone has no
// notification in Unix, so it is polled on the wall clock (see pollMin and
// pollMax), as is the short drain of worker output after a worker is gone.
//
// The package does not import other qslice packages. The exporters package
// builds metrics from [Supervisor.Snapshot]; the agent maps
// [Supervisor.Health] to Consul checks.
package supervise
