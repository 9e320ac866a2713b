// Package queue is qslice's model of a Mailman-compatible queue directory: file names, slice math,
// the native payload format, and the atomic file moves that make processing crash-safe.
//
// Invariants:
//   - A ready message is "<when>+<digest>.pck", where when is a Unix time written as a decimal float
//     and digest is 40 lowercase hex digits of SHA-1. Files with any other name are never touched.
//   - Slice i of n is the half-open digest range [floor(2^160*i/n), floor(2^160*(i+1)/n)), computed in
//     exact integer arithmetic: every digest lies in exactly one slice for every n >= 1. This is exactly
//     the integer form of Mailman's switchboard bounds (lower = (shamax+1)*i // n, upper =
//     (shamax+1)*(i+1) // n - 1, inclusive; Mailman 2.1 computes them so). Mailman 3 writes "/", so its
//     bounds are floats: for n a power of two (the only counts it accepts) the assignment is the same
//     except that a digest exactly on a boundary, (shamax+1)*i/n for 0 < i < n, is in both Mailman
//     slices i-1 and i (the "- 1" is lost to float rounding); qslice puts it in slice i only.
//   - Every change of state is one rename(2) within a file system, so of two processes racing for one
//     file exactly one wins and a crash leaves the message in exactly one place.
//   - A file is only ever removed after its handler succeeded; anything else moves it aside (shunt, bad)
//     with the reason recorded, byte for byte intact in the bad case.
package queue
