package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/glustertest"
	"github.com/qslice/qslice/runner/lockfile"
	"github.com/qslice/qslice/runner/queue"
)

// TestLocksAndStatsAcrossGlusterMounts: `qslice locks` and `qslice queue stats` on one host's
// mount of a GlusterFS volume see the locks held, the waiters, and the messages enqueued and
// claimed through another host's mount.
func TestLocksAndStatsAcrossGlusterMounts(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the GlusterFS bed takes a few seconds")
	}
	bed := glustertest.New(t, glustertest.Options{Clients: 2})
	a, b := bed.Mounts[0], bed.Mounts[1]
	for _, d := range []string{"locks", "queue/in"} {
		if err := os.MkdirAll(filepath.Join(a, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Host A holds a lock (flufl.lock's format) and another process of host A waits for it.
	lk, err := lockfile.New(filepath.Join(a, "locks", "list.lock"), lockfile.Options{Host: "host-a", Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lk.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer lk.Unlock()
	waiter := filepath.Join(a, "locks", "list.lock|host-a|4242|1")
	if err := os.WriteFile(waiter, []byte(waiter), 0o644); err != nil {
		t.Fatal(err)
	}
	// Host A enqueues 5 messages and claims one.
	qa := queue.NewDir(filepath.Join(a, "queue", "in"), "", "")
	var names []queue.Name
	for i := 0; i < 5; i++ {
		n, err := qa.Enqueue(queue.Meta{}, []byte("hello"), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := qa.Claim(names[0]); err != nil {
		t.Fatal(err)
	}

	// Host B's view, through its own mount.
	var out bytes.Buffer
	if err := runLocks(context.Background(), &out, []string{filepath.Join(b, "locks")}, locksOptions{json: true, slop: lockfile.DefaultSlop, timeout: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	var locks []map[string]any
	if err := json.Unmarshal(out.Bytes(), &locks); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(locks) != 1 || locks[0]["holder_host"] != "host-a" || locks[0]["holder_pid"] != float64(os.Getpid()) ||
		locks[0]["waiters"] != 1.0 || locks[0]["expired"] != false {
		t.Fatalf("qslice locks through mount B:\n%s", out.String())
	}
	out.Reset()
	if err := runQueueStats(context.Background(), &out, filepath.Join(b, "queue", "in"), queueStatsOptions{slices: 1, json: true, timeout: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	var st queueStatsJSON
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if st.Ready != 4 || st.InFlight != 1 {
		t.Fatalf("qslice queue stats through mount B: ready %d, in flight %d, want 4 and 1:\n%s", st.Ready, st.InFlight, out.String())
	}
}
