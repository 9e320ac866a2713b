// Package worker runs persistent workers: handler.worker keeps `concurrency` long-lived processes
// per queue and feeds them the messages of the owned slices over the framed protocol of
// docs/worker-protocol.md (a hello/ready handshake, then message frames answered by done, retry or
// fail). A Pool is the runner.Handler of such a queue, so the runner's promises hold unchanged:
// lock files, spans, metrics, settling only under a valid lease, shutdown grace.
//
// What the pool adds, and what callers must do:
//   - Run the pool (Pool.Run) while the runner runs, and stop it only after the runner returned:
//     a worker stopped under a running handler counts as ended.
//   - Give the runner RunnerConcurrency() goroutines, one per message in flight.
//   - A Handle call whose context ends kills its worker's process group; the worker's other
//     messages in flight are retried. A timeout counts as an attempt of its message; a crash
//     counts for every message in flight; MaxKills of them shunt the message.
//   - While the lease is not valid no worker process runs.
//   - Crashes (exits nobody asked for, protocol errors, failed handshakes) restart the worker
//     with backoff; CrashLoop of them in a row make Health critical, until a worker answers or
//     runs StableAfter without ending.
package worker
