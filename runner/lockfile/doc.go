// Package lockfile implements NFS-safe lock files that interoperate, on the same file, with
// Python's flufl.lock (Mailman 3) and Mailman 2.1's LockFile, and inspects such locks
// read-only for the probes.
//
// # Protocol (flufl.lock 5, Mailman 2.1)
//
// A lock is a path L. To claim it, a process writes a claim file in L's directory whose content
// is the claim's own path (no newline), named
//
//	L|<host>|<pid>|<random>        flufl.lock (Naming Flufl, the default)
//	L.<host>.<pid>.<counter>       Mailman 2.1 (Naming Mailman21; "L.<host>.<pid>" after a fork hand-over)
//
// and sets the claim's mtime to now + lifetime. It then link(2)s the claim to L. The process
// holds the lock while L exists with link count 2 and content equal to its claim's path. L's
// mtime is the lock's expiry; the holder refreshes by setting its claim's mtime (the same inode)
// to now + lifetime again. A process whose link fails pauses and tries again. A waiter may break
// the lock once its own clock is past L's mtime plus a clock slop (10s): it removes L and the
// holder's claim. Releasing removes L, then the claim. A waiter or holder that gives up removes
// its claim. No other file and no other state is involved, so any mix of processes of this
// package, flufl.lock and Mailman 2.1, on any hosts sharing the directory, exclude each other.
//
// # What this package adds, and why it stays compatible
//
//   - Ownership is tested by identity: the lock and our claim are the same inode. Claim names
//     are unique, so this is flufl.lock's content test without the read.
//   - Breaking first renames L to a private name "L|<host>|<pid>|<random>|break" and checks that
//     what it moved is the very inode it judged expired, and that it is still expired. If not (a
//     new holder linked L meanwhile, or the holder refreshed), it links it back. flufl.lock
//     unlinks L blindly, which can remove a lock taken an instant earlier by another breaker.
//     The old holder's claim is removed only if it is that same inode, and it is looked up by
//     base name in L's directory: content pointing elsewhere is never followed (flufl.lock
//     unlinks whatever path the content names), and hosts may mount the directory at different
//     places.
//   - Breakers take turns: a waiter that judged L expired first links its claim to "L|break"
//     (failing that, it waits as for a held lock), then looks at L again, and breaks only the
//     inode it judged expired. Without turns, a breaker slowed down between its look and its
//     rename would move away a lock that a faster breaker's waiter had just taken, and a third
//     waiter linking L in the instant it is away would make two holders. The turn is a link to
//     the breaker's claim, so it carries that claim's expiry: a turn left by a breaker that died
//     in it is removed like an expired lock (moved, checked, unlinked), its claim left for
//     inspection to report as orphaned. flufl.lock and Mailman 2.1 never look at it.
//   - A holder that finds L missing while its claim still has a second name (a breaker that
//     takes no turns, such as an older qslice, has moved it to look at it) waits, at most a
//     second, for the put-back before it reports the lock lost.
//   - Unlock likewise renames L to "L|...|release", removes it if it is ours and puts it back if
//     it is not, so it never removes another holder's lock, even after our own expired.
//   - A waiting Lock re-stamps its claim every Lifetime/2, so inspection can tell a long wait
//     from a leftover.
//
// A process that sees L missing for the instant of such a rename simply links; a flufl.lock
// waiter that sees a link count of 3 for the instant of a put-back logs it and retries.
//
// # Invariants
//
//   - A Lock removes only its own claim and temporary names, its own lock, and a lock that was
//     expired beyond the slop (with that lock's claim, if it is the same inode). Any other lock
//     it moves while breaking or releasing it is linked back in place.
//   - A Lock touches (sets the mtime of) only its own claim; flufl.lock also touches a lock it
//     is about to break, we do not need to.
//   - Lock and TryLock leave no claim behind when they return without the lock; Unlock removes
//     the claim whatever happened, and is a no-op on a Lock that holds nothing.
//   - IsLocked and Refresh decide ownership on the disk, never from memory; unlike flufl.lock's
//     is_locked, IsLocked does not refresh.
//   - Inspect and ScanDir never modify the disk.
//   - Expiry stamps and break decisions use the Lock's Clock; times of different hosts are
//     compared only through the slop.
//
// # What the caller must do
//
//   - Refresh well within the lifetime (every Lifetime/3, say) for as long as it holds the
//     lock, and stop the protected work when Refresh returns ErrNotLocked.
//   - Keep clocks of the hosts sharing a lock directory synchronised well within the slop.
//   - Use the same lock names, host naming (Options.Host; flufl.lock writes the FQDN) and
//     lifetimes as the other parties where inspection or Mailman tooling reads them.
//
// # Limits
//
//   - No lock-file scheme can make breaking fully atomic: a third process that links L in the
//     instant a lock moved by a break or release is being put back makes two holders, until the
//     displaced one's next Refresh reports ErrNotLocked (and an error is logged). With turns
//     this needs a holder past its expiry by more than the slop to release or refresh in the
//     instant a breaker moves its lock, or a breaker that takes no turns (flufl.lock, Mailman
//     2.1, whose blind unlink has a wider window of the same kind).
//   - NFS clients cache attributes (acregmin, 3s by default). A stale view only delays an
//     acquisition (only link(2), which the server decides, grants the lock), but a waiter that
//     sees a stale mtime can break a lock refreshed within the cache time, as flufl.lock can:
//     keep lifetimes long against the attribute cache time (or mount lock directories with
//     actimeo=0), and refresh well before expiry.
//   - GlusterFS's client-side caches (performance.stat-prefetch, open-behind, quick-read) answer
//     from what a client saw before another client replaced the file, for any timeout the mount
//     sets: on a volume holding locks they must be off (docs/deploy.md), or a breaker can judge
//     expired a lock another host already broke and move its new holder's lock.
//   - Held-since is an estimate (see Info.HeldSince).
package lockfile
