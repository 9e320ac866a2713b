package chaos

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/consultest"
	"github.com/qslice/qslice/internal/glustertest"
)

// TestChaosGlusterFS runs the chaos harness on a real shared filesystem: a GlusterFS volume with
// one FUSE mount per node, each in a network namespace of its own, and a fifth mount for the
// feeder and the final checks. Besides a kill and a partition, two nodes in turn lose their
// mount for 15-17 s (their client's packets dropped; operations hang, then are carried out late
// at the healing): each must report its queue's filesystem unavailable within the filesystem
// timeout, hand its slices to the others, take them back after the healing and the hold-down,
// and the ledger must show 0 lost, 0 concurrent duplicates and every repeat explained, although
// claims and removals blocked in the cut mount complete after others took the slices.
func TestChaosGlusterFS(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos run on GlusterFS takes about two minutes; skipped with -short")
	}
	consul := consultest.Start(t)                              // skips when Consul is absent
	bed := glustertest.New(t, glustertest.Options{Clients: 4}) // skips unless root with GlusterFS
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin, err := Build(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	const grace = 3 * time.Second
	fsh := FSHealthConfig{Interval: time.Second, Timeout: 5 * time.Second, RecoverAfter: 5 * time.Second}
	// Consul timings a little above the harness's defaults (request timeout 400 ms instead of
	// 200 ms): FUSE clients and glusterd load the machine, and a Consul request timing out is
	// an unexplained ERROR line.
	cl, err := NewCluster(ClusterConfig{Work: 20 * time.Millisecond, Dir: dir, ConsulAddr: consul.HTTPAddr, Bin: bin, Log: testLogger(t),
		TTL: 3 * time.Second, LockDelay: 2 * time.Second, HoldDown: 3 * time.Second, ShutdownGrace: grace,
		FS: bed, SharedRoot: bed.Mounts[3], NodeRoots: bed.Mounts[:3], FSHealth: fsh})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { saveArtifacts(t, dir) })
	t.Cleanup(cl.Close) // before the bed's teardown (registered earlier, runs later)
	faults := map[Kind]int{KindFSCut: 2, KindKill: 1, KindPartition: 1}
	rep, err := RunSoak(ctx, cl, consul, SoakOptions{Seed: 3, Faults: faults, Rate: 6, FSHold: 15 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rep.Print(&b)
	t.Log("\n" + b.String())
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	if rep.Faults[KindFSCut] != 2 || rep.FSCutElsewhere.N != 2 || rep.FSCutSlicesBack.N != 2 {
		t.Errorf("fscuts: %d injected, %d processed elsewhere, %d got their slices back; want 2 of each", rep.Faults[KindFSCut], rep.FSCutElsewhere.N, rep.FSCutSlicesBack.N)
	}
	// Detection within the timeout plus the probe interval and a status poll.
	if lim := fsh.Timeout + fsh.Interval + time.Second; rep.FSCutDetected.Max > lim {
		t.Errorf("filesystem cut detected after up to %s, want within %s", rep.FSCutDetected.Max, lim)
	}
	if rep.LoggedChanges["unavailable"] == 0 {
		t.Errorf("no slice was handed off with reason unavailable: %v", rep.LoggedChanges)
	}

	// SIGTERM while the node's filesystem hangs: it stops within shutdown_grace plus a few
	// seconds, and says what it left behind.
	n := cl.Nodes[0]
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitOwned(ctx, time.Minute, false); err != nil {
		t.Fatal(err)
	}
	if err := bed.Cut(0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // let its runner, probe and watch block in the mount (nothing asserted on it)
	start := time.Now()
	err = n.Stop(time.Minute)
	took := time.Since(start)
	if herr := bed.Heal(0); herr != nil {
		t.Error(herr)
	}
	if err != nil {
		t.Fatalf("SIGTERM while the filesystem hangs: %v", err)
	}
	if lim := grace + 8*time.Second; took > lim {
		t.Errorf("SIGTERM while the filesystem hangs: stopped after %s, want within shutdown_grace + 8 s = %s", took, lim)
	}
	logs := n.Logs()
	b2, rerr := os.ReadFile(logs[len(logs)-1])
	if rerr != nil {
		t.Fatal(rerr)
	}
	if !strings.Contains(string(b2), "stopped with work stuck in the filesystem") && !strings.Contains(string(b2), "stopping without waiting for a component blocked in the filesystem") {
		t.Errorf("stopped in %s while the filesystem hung, but the log does not say what was left behind", took)
	}
	t.Logf("SIGTERM while the filesystem hangs: stopped in %s (shutdown_grace %s)", took.Round(time.Millisecond), grace)
}
