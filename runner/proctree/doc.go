// Package proctree starts process trees that qslice can find and kill again later, even after
// qslice itself died (kill -9, the OOM killer) and restarted, without ever killing an unrelated
// process that reused a PID.
//
// # The invariant
//
// No process of a handling may still run when the same message runs again. A handling is one
// run of a handler (or one life of a persistent worker): its process tree is every process it
// started. Callers keep the invariant like this:
//
//  1. New returns a Record for the tree about to start (host, boot ID, a unique marker).
//     Create writes it to a file before the tree starts (for queue messages: the
//     "<base>.procs.json" next to the in-flight file, see runner/queue.SuffixProcs).
//  2. Prepare sets the command up: its own process group, SIGKILL when its parent thread dies
//     (Pdeathsig), and the marker in its environment (EnvMarker), which its descendants inherit.
//  3. Once started, Started adds the group ID and the leader's start time (field 22 of
//     /proc/<pid>/stat, in clock ticks since boot) to the file.
//  4. When the handling ends in the starter's lifetime, Wait kills the group before it reaps
//     the leader (so the group ID cannot be reused meanwhile) and returns once it is gone.
//  5. Before the message runs again after the starter died (recovery), the new starter reads
//     the file and calls Kill, which returns only when no survivor is left (or fails: then the
//     message must not run yet).
//
// # Identity
//
// A process is a survivor of a Record when it is alive (not a zombie) and either its
// environment holds EnvMarker=<marker> (the marker has 64 random bits: it cannot be guessed or
// reused), or it is in the recorded process group while the group's leader is still the very
// process recorded (same PID and same start time). A group whose leader is gone is only
// recognised through the marker: its number may have been reused since. So a reused PID or
// group ID never gets a stranger killed.
//
// # Hosts
//
// Records live next to queue files, which may be on NFS shared by several hosts. A process can
// only be seen and killed on its own host, so Kill refuses a Record of another host or of an
// earlier boot (Local is false): after a reboot nothing of it runs, and another host's
// survivors are that host's job. That host kills them (a) itself, when the handling ends or its
// lease lapses while qslice lives, (b) through Pdeathsig (the leader) and, under systemd with
// the default KillMode=control-group, the whole unit's cgroup when qslice dies, and (c) at its
// restart, through KillOrphans (every marked process whose qslice is dead). A node only
// recovers another node's message after that node's lease has lapsed (failover.md), and
// handlers fence commits with QSLICE_LEASE_DEADLINE, which covers the survivors of a host that
// stays down without restarting qslice.
//
// What escapes: a process that both leaves the group (setsid, daemonising) and clears its
// environment, or changes its user so that /proc/<pid>/environ is unreadable. Such a process
// is no longer part of the handling as far as qslice can tell.
package proctree
