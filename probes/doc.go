// Package probes looks at queue directories and lock directories on the shared disk, read-only,
// and keeps the latest result as an immutable snapshot for the exporters, the CLI and the status
// page.
//
// # What is measured
//
// A queue scan lists one queue directory (qslice's own or a plain Mailman 3 queue/<name>) and
// sorts every entry by its name alone: per slice of any count 1..65536, the ready messages
// (.pck), their bytes (one statx per ready file, optional: QueueConfig.NoBytes), the oldest
// ready message by the time in its name, the in-flight messages (.bak) and how long the oldest
// has been claimed (the file's ctime, which the claiming rename sets); per queue, the messages
// being written (.pck.tmp), the ignored entries (foreign or malformed names, subdirectories, and
// links, FIFOs, sockets or devices named like messages, by the type the listing reports),
// and the counts of the configured shunt and bad directories.
//
// A lock scan inspects every flufl.lock / Mailman 2.1 lock of a directory with
// lockfile.ScanDir and aggregates per directory: held, waiters, expired beyond the clock slop,
// orphaned claims, holders dead on this host, the longest hold.
//
// # Invariants
//
//   - A probe never modifies the disk: it opens directories and files read-only, lists and
//     stats; it never renames, writes, touches or removes.
//   - File names are classified by queue.ParseName, the one definition of a queue file name;
//     slices by queue.SliceOf, the exact slice math shared with the runner.
//   - Memory is flat in the number of files: a directory is read in fixed-size batches
//     (getdents64 into a 64 KiB buffer on Linux) and only per-slice counters are kept.
//   - A scan never fails as a whole and never panics out: a missing or unreadable directory, an
//     NFS ESTALE, an exhausted time budget (context deadline) is the target's Err; a file that
//     vanished or could not be stat'ed mid-scan is one of its Errors (bounded by MaxErrors) and
//     the scan goes on. Errors name the directory and carry a hint for the operator (Hint).
//   - A target whose scan failed keeps the data of its last successful scan (HasData, At) next
//     to the failure (Err, Attempted), so gauges do not drop to zero when a mount hiccups; the
//     success flag and the last-success time say how fresh the data is.
//   - Ages are relative to the scan's start on the injected Clock, never negative (a name or a
//     ctime from a clock ahead of ours counts as age 0).
//   - Snapshots are published with an atomic pointer and never modified afterwards: Latest is
//     wait-free, so a metrics scrape never waits for a scan.
//
// # What the caller must do
//
// Build a Probe with New, run Probe.Run(ctx) under its errgroup (it returns nil when ctx ends),
// read Probe.Latest (nil until the first cycle completed; Probe.Ready says so). Give every queue
// and lock directory a unique, configuration-defined Name: it becomes a metric label.
//
// # Limits
//
// A syscall blocked on a hard-mounted, unresponsive NFS server cannot be interrupted: the budget
// is checked between directory batches (and before a lock directory's scan, which
// lockfile.ScanDir performs in one go), so Run returns once that syscall does.
package probes
