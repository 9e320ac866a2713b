package probes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/queuetest"
)

func TestConfigValidate(t *testing.T) {
	cfg := Config{
		Queues: []QueueConfig{
			{Name: "in", Dir: "q/in", Slices: 4},
			{Name: "in", Dir: "q/in2", Slices: 0},
			{Dir: "q/x", Slices: 1},
		},
		LockDirs: []LockDirConfig{{Name: "m", Dir: "locks"}, {Name: "m", Dir: "locks2"}},
		Interval: -1,
	}
	err := cfg.Validate()
	for _, want := range []string{"queues[1]: queue in: slices", "queues[1]: name \"in\": used twice",
		"queues[2]: queue \"q/x\": name", "lock_dirs[1]: name \"m\": used twice", "interval: must be >= 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
	if _, err := New(cfg); err == nil {
		t.Error("New accepted an invalid config")
	}
}

func TestProbeScanOnceKeepsLastGoodData(t *testing.T) {
	root := t.TempDir()
	cfg := buildQueue(t, root)
	locks := filepath.Join(root, "locks")
	mkdirs(t, locks)
	// A second queue sharing shunt and bad, as Mailman's do.
	out := filepath.Join(root, "queue", "out")
	mkdirs(t, out)
	p, err := New(Config{
		Queues:   []QueueConfig{cfg, {Name: "out", Dir: out, Slices: 1, ShuntDir: cfg.ShuntDir, BadDir: cfg.BadDir}},
		LockDirs: []LockDirConfig{{Name: "mailman", Dir: locks}},
		Clock:    clock.NewFake(t0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Latest() != nil || !errors.Is(p.Ready(), ErrNotReady) {
		t.Fatal("ready before the first scan")
	}
	s1 := p.ScanOnce(context.Background())
	if p.Latest() != s1 || p.Ready() != nil {
		t.Fatal("ScanOnce did not publish its snapshot")
	}
	if len(s1.Queues) != 2 || len(s1.Locks) != 1 || !s1.Queues[0].OK() || !s1.Locks[0].OK() {
		t.Fatalf("snapshot %+v", s1)
	}
	if q := s1.Queues[1]; q.Ready != 0 || q.Shunt != 3 || q.Bad != 3 {
		t.Errorf("out: ready %d shunt %d bad %d, want the shared 3 and 3", q.Ready, q.Shunt, q.Bad)
	}

	// The queue directory disappears (an unmounted file system): the scan fails, the counts stay.
	if err := os.Rename(cfg.Dir, cfg.Dir+".moved"); err != nil {
		t.Fatal(err)
	}
	s2 := p.ScanOnce(context.Background())
	q := s2.Queues[0]
	if q.OK() || !errors.Is(q.Err, fs.ErrNotExist) {
		t.Fatalf("Err = %v, want not-exist", q.Err)
	}
	if !q.HasData || q.Ready != 6 || !q.At.Equal(t0) {
		t.Errorf("failed scan lost the last good data: HasData %v ready %d At %v", q.HasData, q.Ready, q.At)
	}
	if s1.Queues[0].Err != nil {
		t.Error("the earlier snapshot was modified")
	}
	os.Rename(cfg.Dir+".moved", cfg.Dir)
	// A successful scan publishes its own data, not the carried one.
	writeFile(t, cfg.Dir, "1699999990.0+"+queuetest.DigestIn(1, 4, 5)+".pck", 1)
	claim := filepath.Join(locks, "x.lock|web9|99|1")
	if err := os.WriteFile(claim, []byte(claim), 0o644); err != nil {
		t.Fatal(err)
	}
	s3 := p.ScanOnce(context.Background())
	if !s3.Queues[0].OK() || s3.Queues[0].Ready != 7 || s3.Queues[0].PerSlice[1].Ready != 2 {
		t.Errorf("after recovery: err %v, ready %d, want 7", s3.Queues[0].Err, s3.Queues[0].Ready)
	}
	if len(s3.Locks[0].Locks) != 1 {
		t.Errorf("lock dir rescan: %d locks, want 1", len(s3.Locks[0].Locks))
	}
}

func TestProbeRun(t *testing.T) {
	dir := t.TempDir()
	p, err := New(Config{Queues: []QueueConfig{{Name: "q", Dir: dir, Slices: 2}}, Interval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	// Poll until a scan has seen a file written after Run started.
	writeFile(t, dir, "1699999000.0+"+queuetest.DigestIn(1, 2, 0)+".pck", 1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s := p.Latest(); s != nil && s.Queues[0].PerSlice[1].Ready == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run never rescanned")
		}
		time.Sleep(time.Millisecond) // polling interval, bounded by the deadline
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}

// A real Mailman 3 switchboard enqueues into, and claims from, a queue directory; the probe's
// per-slice counts must be what Mailman's own slicing (numslices a power of two) says.
func TestMailmanQueueAgrees(t *testing.T) {
	py := pythonWith("mailman.core.switchboard")
	if py == "" {
		t.Skip("no python3 with Mailman 3 (Debian package mailman3): set QSLICE_PYTHON")
	}
	root := t.TempDir()
	in := filepath.Join(root, "queue", "in")
	const n, slices, claimed = 300, 8, 10
	script := `
import sys, email.message
from mailman.core.switchboard import Switchboard
d, n, slices, claimed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sb = Switchboard('in', d)
for i in range(n):
    m = email.message.Message()
    m['Subject'] = 'message %d' % i
    m.set_payload('body %d\n' % i)
    sb.enqueue(m, listid='list%d.example.com' % (i % 7))
for fb in sb.files[:claimed]:
    sb.dequeue(fb)  # renames .pck to .bak, as a runner claiming it does
for i in range(slices):
    s = Switchboard('in', d, slice=i, numslices=slices)
    print(i, len(s.get_files('.pck')), len(s.get_files('.bak')))
`
	out, err := exec.Command(py, "-c", script, in, strconv.Itoa(n), strconv.Itoa(slices), strconv.Itoa(claimed)).CombinedOutput()
	if err != nil {
		t.Fatalf("mailman: %v\n%s", err, out)
	}
	q := ScanQueue(context.Background(), QueueConfig{Name: "in", Dir: in, Slices: slices}, clock.System{})
	if q.Err != nil || q.Ignored != 0 || q.Ready != n-claimed || q.InFlight != claimed {
		t.Fatalf("Err %v ignored %v ready %d in flight %d", q.Err, q.IgnoredSome, q.Ready, q.InFlight)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var i, ready, inFlight int
		if _, err := fmt.Sscan(line, &i, &ready, &inFlight); err != nil {
			t.Fatalf("mailman output %q: %v", line, err)
		}
		if s := q.PerSlice[i]; s.Ready != ready || s.InFlight != inFlight {
			t.Errorf("slice %d: probe %d ready %d in flight, Mailman %d and %d", i, s.Ready, s.InFlight, ready, inFlight)
		}
		if s := q.PerSlice[i]; s.Ready > 0 && (s.Bytes == 0 || s.OldestReadyAge(time.Now()) <= 0) {
			t.Errorf("slice %d: bytes %d age %v", i, s.Bytes, s.OldestReadyAge(time.Now()))
		}
	}
}
