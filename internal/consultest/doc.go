// Package consultest runs a real Consul server for tests.
//
// Start finds the binary (QSLICE_CONSUL, then `consul` on PATH, then the cache that
// scripts/build-consul.sh fills), writes a JSON config and runs a single bootstrapped server on
// free loopback ports, with its data dir under t.TempDir(). The test is skipped with
// SkipMessage when no binary is found.
//
// Invariants:
//   - only 127.0.0.1 is used; WAN serf, DNS, HTTPS and gRPC are disabled;
//   - Stop and Restart keep the ports and the data dir, so KV, sessions and the agent's
//     registrations survive a restart the way they do in production;
//   - the server is stopped at test cleanup, before t.TempDir() is removed; its log is printed
//     when the test failed;
//   - every wait is a poll with a deadline.
//
// It execs the binary itself instead of using github.com/hashicorp/consul/sdk/testutil:
// testutil removes the data dir on Stop (no restart on the same state), finds the binary only
// on PATH (so tests would have to change the process environment), always waits its full
// two-second readiness loop, and needs modules not in go.sum.
package consultest
