package chaos

import (
	"context"
	"fmt"
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

	// SIGTERM while the node's filesystem hangs: within shutdown_grace plus a few seconds the
	// node has stopped (a stop for a restart: its slice locks stay for its next process, the
	// harness gives it a state_dir) and said what it left behind. Its process exits
	// once its threads blocked in the mount return: the kernel closes the process's files on
	// exit, and a FUSE close waits for the server, uninterruptibly.
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
	logs := n.Logs()
	logPath := logs[len(logs)-1]
	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- n.Stop(3 * time.Minute) }()
	lim := grace + 8*time.Second
	err = pollUntil(lim, func() error {
		b, err := os.ReadFile(logPath)
		if err != nil {
			return err
		}
		for _, want := range []string{"failover coordinator stopped for a restart", "qslice stopped"} {
			if !strings.Contains(string(b), want) {
				return fmt.Errorf("no %q in its log yet", want)
			}
		}
		if !strings.Contains(string(b), "stopped with work stuck in the filesystem") && !strings.Contains(string(b), "stopping without waiting for a component blocked in the filesystem") {
			return fmt.Errorf("its log does not say what it left behind")
		}
		return nil
	})
	took := time.Since(start)
	if err != nil {
		t.Errorf("SIGTERM while the filesystem hangs: not stopped within shutdown_grace + 8 s = %s: %v", lim, err)
	} else {
		t.Logf("SIGTERM while the filesystem hangs: node stopped in %s (shutdown_grace %s)", took.Round(time.Millisecond), grace)
	}
	healAt := time.Now()
	if err := bed.Heal(0); err != nil {
		t.Error(err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("process exit after the healing: %v", err)
	}
	t.Logf("its process exited %s after the healing", time.Since(healAt).Round(time.Millisecond))
}
