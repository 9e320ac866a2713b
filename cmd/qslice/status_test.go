package main

import (
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/agent"
)

// TestStatusTableShowsWorkerPools: `qslice status` prints each persistent worker pool with its
// live workers, restarts, crash loop and last protocol error; without pools, no pool table.
func TestStatusTableShowsWorkerPools(t *testing.T) {
	st := agent.Status{Node: "mail1", Mode: "standalone", LeaseValid: true, WorkerPools: []agent.PoolView{
		{Queue: "broken", Size: 1, Restarts: 5, CrashLoop: true, CrashLoopReason: "3 crashes in a row without an answer",
			LastProtocolError: `protocol error (handshake): "oops\n" is not a frame header line`, LastProtocolErrorAt: time.Date(2026, 12, 6, 13, 4, 5, 0, time.Local)},
		{Queue: "good", Size: 2, Live: 2, PIDs: []int{10, 11}},
	}}
	var b strings.Builder
	writeStatusTable(&b, st)
	lines := strings.Split(b.String(), "\n")
	var pools []string
	for i, l := range lines {
		if strings.HasPrefix(l, "WORKER POOL") {
			pools = lines[i : i+3]
		}
	}
	if pools == nil {
		t.Fatalf("no worker pool table in:\n%s", b.String())
	}
	for _, want := range []string{"LIVE", "RESTARTS", "CRASH LOOP", "LAST PROTOCOL ERROR"} {
		if !strings.Contains(pools[0], want) {
			t.Errorf("header %q lacks %s", pools[0], want)
		}
	}
	if f := strings.Fields(pools[1]); f[0] != "broken" || f[1] != "0" || f[3] != "1" || f[4] != "5" || !strings.Contains(pools[1], "YES: 3 crashes in a row") ||
		!strings.Contains(pools[1], `13:04:05 protocol error (handshake)`) {
		t.Errorf("broken row %q", pools[1])
	}
	if f := strings.Fields(pools[2]); f[0] != "good" || f[1] != "2" || f[3] != "2" || f[4] != "0" || f[5] != "no" || f[6] != "none" {
		t.Errorf("good row %q", pools[2])
	}
	b.Reset()
	st.WorkerPools = nil
	writeStatusTable(&b, st)
	if strings.Contains(b.String(), "WORKER POOL") {
		t.Errorf("a pool table without pools:\n%s", b.String())
	}
}

// TestConfigCheckExplainsHandlerKinds: `config check --help` explains the three handler kinds,
// and the shipped worker example passes `config check`, which says how each queue is worked.
func TestConfigCheckExplainsHandlerKinds(t *testing.T) {
	code, out, stderr := runCLI(t, "", "config", "check", "--help")
	if code != 0 {
		t.Fatalf("config check --help: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"exec runs one process per message", "worker keeps concurrency long-lived processes",
		"docs/worker-protocol.md", "a Go handler runs in process"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check --help lacks %q:\n%s", want, out)
		}
	}
	code, out, stderr = runCLI(t, "", "config", "check", "../../examples/qslice-worker.yaml")
	if code != 0 {
		t.Fatalf("config check examples/qslice-worker.yaml: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"valid", "queue in: handler.worker: 2 long-lived /usr/bin/python3 processes per node",
		"queue archive: handler.worker: 1 long-lived", "worker protocol v1"} {
		if !strings.Contains(out+stderr, want) {
			t.Errorf("config check examples/qslice-worker.yaml lacks %q:\n%s%s", want, out, stderr)
		}
	}
}
