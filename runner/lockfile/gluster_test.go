package lockfile

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/glustertest"
	"github.com/qslice/qslice/internal/testenv"
)

// TestInteropAcrossGlusterMounts: flufl.lock (Python) and this package share lock files
// through two different FUSE mounts of one GlusterFS volume, each client in its own network
// namespace, as two mail hosts share Mailman's locks/ over a network filesystem. A lock held
// through one mount is seen held (holder, waiters) and waited on through the other, and passes
// to the waiter when released, both ways.
func TestInteropAcrossGlusterMounts(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the GlusterFS bed takes a few seconds")
	}
	py := testenv.RequirePython(t, "flufl.lock", "python3-flufl.lock")
	bed := glustertest.New(t, glustertest.Options{Clients: 2})
	for _, m := range bed.Mounts {
		if err := os.MkdirAll(filepath.Join(m, "locks"), 0o755); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	pathA := filepath.Join(bed.Mounts[0], "locks", "list.lock") // host A's view
	pathB := filepath.Join(bed.Mounts[1], "locks", "list.lock") // host B's view of the same file

	// Python holds through mount A; Go, through mount B, sees it held and waits.
	p := startPy(t, py, "hold", pathA, "60", "30")
	ev := p.next("locked", 30*time.Second)
	in := pollInspect(t, pathB, InspectOptions{}, "python's lock through the other mount", func(in Info) bool { return in.Held })
	if in.HolderHost != ev.Host || in.HolderPID != ev.PID || in.Naming != Flufl || in.LinkCount != 2 {
		t.Fatalf("Inspect through mount B = %+v, python (mount A) says %+v", in, ev)
	}
	g := newTestLock(t, pathB, SystemClock(), func(o *Options) { o.Host = "host-b"; o.Lifetime = time.Minute })
	if ok, err := g.TryLock(); ok || err != nil {
		t.Fatalf("TryLock through mount B while python holds through mount A = %v, %v", ok, err)
	}
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, err := g.Lock(ctx)
		got <- err
	}()
	pollInspect(t, pathA, InspectOptions{}, "Go's waiter seen through mount A", func(in Info) bool { return in.Waiters == 1 })
	p.send("release")
	p.next("released", 10*time.Second)
	if err := <-got; err != nil {
		t.Fatalf("Go waiting through mount B did not get the lock python released: %v", err)
	}
	if code := p.exit(10 * time.Second); code != 0 {
		t.Fatalf("python exited %d", code)
	}

	// Go holds through mount B; Python through mount A gives up after its timeout, then waits
	// and gets the lock when Go releases.
	if code := startPy(t, py, "try", pathA, "15", "1").exit(30 * time.Second); code != 3 {
		t.Fatalf("python try through mount A with 1s timeout exited %d, want 3 (TimeOutError): Go holds through mount B", code)
	}
	p2 := startPy(t, py, "hold", pathA, "15", "60")
	pollInspect(t, pathB, InspectOptions{}, "python's waiter seen through mount B", func(in Info) bool { return in.Waiters == 1 })
	if err := g.Unlock(); err != nil {
		t.Fatal(err)
	}
	ev2 := p2.next("locked", 30*time.Second)
	in = pollInspect(t, pathB, InspectOptions{}, "python holder through mount B", func(in Info) bool { return in.Held && in.HolderPID == ev2.PID })
	if in.HolderHost != ev2.Host {
		t.Errorf("Inspect through mount B = %+v, python says %+v", in, ev2)
	}
	p2.send("release")
	p2.next("released", 10*time.Second)
	p2.exit(10 * time.Second)
}

// TestConcurrentBreakersAcrossGlusterMounts: waiters on two FUSE mounts of one GlusterFS
// volume (two hosts) all find an expired lock at once; breakers take turns across the mounts,
// so each round one of them breaks it and the lock still passes one holder at a time.
func TestConcurrentBreakersAcrossGlusterMounts(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the GlusterFS bed takes a few seconds")
	}
	bed := glustertest.New(t, glustertest.Options{Clients: 2})
	var paths []string
	for _, m := range bed.Mounts {
		if err := os.MkdirAll(filepath.Join(m, "breakers"), 0o755); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		paths = append(paths, filepath.Join(m, "breakers", "L"))
	}
	breakRounds(t, paths, 10, 6)
}
