// Package glustertest runs a real GlusterFS volume for tests, with one FUSE client mount per
// node, each client in a network namespace of its own so that one node's filesystem can be cut,
// slowed or healed alone.
//
// Layout (all names carry the owning process's pid, so that concurrent beds never meet):
//
//	netns qg<pid>s  (server)  lo: 10.213.255.1/32 ── glusterd :24007, one brick (glusterfsd)
//	   │ veth qg<pid>s<i>: 10.213.<i>.1/24
//	   │
//	netns qg<pid>c<i> (client i)  veth qg<pid>c<i>: 10.213.<i>.2/24, route to 10.213.255.1
//	   └── glusterfs FUSE client (only its sockets live here: it is started with
//	       `nsenter --net`, so its mount is in the test's own mount namespace) ── <dir>/mnt<i>
//
// glusterd refuses loopback addresses for bricks, hence the namespace address. The server runs
// in a mount namespace of its own (what `ip netns exec` gives) with a tmpfs on /run and its
// working and log directories bound from the bed's directory, so it never touches the host's
// /var/lib/glusterd, /var/log/glusterfs or /run/glusterd.socket.
//
// Faults act on the server's end of client i's veth pair:
//   - Cut: the link goes down. The client's packets are dropped silently (its end has no
//     carrier), so its filesystem operations hang until GlusterFS's network.ping-timeout (42 s
//     unless Options.PingTimeout says otherwise), then fail with ENOTCONN until Heal.
//   - Slow: a token bucket (tc tbf) on the server's egress towards client i.
//   - Heal: the link up, the token bucket gone; the client reconnects within a few seconds.
//
// Invariants:
//   - Close (and the test cleanup of New) always runs the whole teardown, whatever failed: lazy
//     unmounts, SIGKILL of the FUSE clients (which aborts every request still waiting, so no
//     process stays in D state on the mount), SIGKILL of every process in the server namespace,
//     deletion of the namespaces; the directory is removed only once nothing is mounted in it.
//   - Start first tears down beds whose owning process is gone (a test killed by its timeout).
//   - Only namespaces the bed created are touched; nothing listens outside them.
//
// Root, glusterd/glusterfs (Debian glusterfs-server, glusterfs-client), iproute2, nsenter and
// /dev/fuse are needed; New skips the test with SkipMessage (and the reason) otherwise.
package glustertest
