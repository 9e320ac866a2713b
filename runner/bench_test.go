package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/queuetest"
	"github.com/qslice/qslice/runner/queue"
)

// benchRoots returns the file systems to measure on: tmpfs when present, and the normal disk
// (QSLICE_BENCH_DIR, else the system temp dir).
func benchRoots(b *testing.B) map[string]string {
	roots := map[string]string{}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		roots["tmpfs"] = "/dev/shm"
	}
	disk := os.Getenv("QSLICE_BENCH_DIR")
	if disk == "" {
		disk = os.TempDir()
	}
	roots["disk"] = disk
	return roots
}

// rawDrain is the floor the engine is measured against: workers that rename each file to .bak,
// read it and unlink it, from a name list made by one listing. Every step must succeed and the
// directory must be empty at the end, or the benchmark fails: a floor that skips work is no floor.
func rawDrain(b *testing.B, dir string, workers, n int) {
	var names []string
	if err := queue.ScanNames(dir, func(n string) error { names = append(names, n); return nil }); err != nil {
		b.Fatal(err)
	}
	if len(names) != n {
		b.Fatalf("raw: %d files listed, want %d", len(names), n)
	}
	var next, drained atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(names) {
					return
				}
				p := filepath.Join(dir, names[i])
				bak := p[:len(p)-4] + ".bak"
				if err := syscall.Rename(p, bak); err != nil {
					b.Errorf("raw: rename %s: %v", p, err)
					continue
				}
				if _, err := os.ReadFile(bak); err != nil {
					b.Error(err)
				}
				if err := syscall.Unlink(bak); err != nil {
					b.Errorf("raw: unlink %s: %v", bak, err)
					continue
				}
				drained.Add(1)
			}
		}()
	}
	wg.Wait()
	if drained.Load() != int64(n) {
		b.Fatalf("raw: drained %d files, want %d", drained.Load(), n)
	}
	requireEmpty(b, dir)
}

// requireEmpty fails the benchmark unless dir holds nothing: every message was finished, none left
// ready, in flight or moved aside.
func requireEmpty(b *testing.B, dirs ...string) {
	b.Helper()
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			b.Fatal(err)
		}
		if len(ents) > 0 {
			b.Fatalf("%s holds %d entries after the drain (first %s): work was lost or left behind", dir, len(ents), ents[0].Name())
		}
	}
}

// engineDrain runs the engine over dir until the handler has seen all n messages, then checks the
// work: every message handled exactly once, the queue, shunt and bad directories empty.
func engineDrain(b *testing.B, dir string, workers, n int) {
	var done atomic.Int64
	var seen sync.Map // Name.Base -> struct{}
	all := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		if _, dup := seen.LoadOrStore(m.Name.Base, struct{}{}); dup {
			b.Errorf("engine: %s handled twice", m.Name.Base)
		}
		if done.Add(1) == int64(n) {
			close(all)
		}
		return nil
	})
	shunt, bad := filepath.Join(filepath.Dir(dir), "shunt"), filepath.Join(filepath.Dir(dir), "bad")
	d := queue.NewDir(dir, shunt, bad)
	r, err := New(Config{Queue: "bench", Dir: d, Slices: 1, Concurrency: workers, Handler: h, PollInterval: 5 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	r.SetSlices([]int{0})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { r.Run(ctx); close(ran) }()
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("engine handled %d of %d in 5 minutes", done.Load(), n)
	}
	// The last handlings' files are removed just after their handlers return: give them a moment.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if ents, err := os.ReadDir(dir); err == nil && len(ents) == 0 {
			break
		}
	}
	cancel()
	<-ran
	if got := done.Load(); got != int64(n) {
		b.Fatalf("engine: %d handlings, want %d", got, n)
	}
	requireEmpty(b, dir, shunt, bad)
}

// BenchmarkThroughput measures the runner with a no-op handler against the raw rename+read+unlink
// rate of the same directory, in the same run, on tmpfs and on the normal disk, with 2 workers.
// Reported: raw_files/s, engine_files/s and engine/raw.
func BenchmarkThroughput(b *testing.B) {
	n := 20000
	if s := os.Getenv("QSLICE_BENCH_FILES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for fs, root := range benchRoots(b) {
		b.Run(fs, func(b *testing.B) {
			base, err := os.MkdirTemp(root, "qslice-bench-")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(base)
			dir := filepath.Join(base, "in")
			os.MkdirAll(dir, 0o755)
			var rawTime, engTime time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				queuetest.Fill(b, dir, n)
				b.StartTimer()
				t0 := time.Now()
				rawDrain(b, dir, 2, n)
				rawTime += time.Since(t0)
				b.StopTimer()
				queuetest.Fill(b, dir, n)
				b.StartTimer()
				t0 = time.Now()
				engineDrain(b, dir, 2, n)
				engTime += time.Since(t0)
			}
			raw := float64(n*b.N) / rawTime.Seconds()
			eng := float64(n*b.N) / engTime.Seconds()
			b.ReportMetric(raw, "raw_files/s")
			b.ReportMetric(eng, "engine_files/s")
			b.ReportMetric(eng/raw, "engine/raw")
		})
	}
}

// BenchmarkPickBatch measures one scan that picks the oldest BatchSize files of the owned slices from
// a large queue (QSLICE_BENCH_FILES, default 100000; the figure uses 1000000), with the heap
// memory it needs. The files are empty: only names matter here.
func BenchmarkPickBatch(b *testing.B) {
	n := 100000
	if s := os.Getenv("QSLICE_BENCH_FILES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	root := benchRoots(b)["tmpfs"]
	if root == "" {
		root = benchRoots(b)["disk"]
	}
	base, err := os.MkdirTemp(root, "qslice-pick-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(base)
	dir := filepath.Join(base, "in")
	os.MkdirAll(dir, 0o755)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%d.%06d+%040x.pck", 1_700_000_000+(i*7919%n)/1000, i%1000, uint64(i)*0x9E3779B97F4A7C15)
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	d := queue.NewDir(dir, "", "")
	r, err := New(Config{Queue: "bench", Dir: d, Slices: 64, Handler: HandlerFunc(func(context.Context, *Message) error { return nil })})
	if err != nil {
		b.Fatal(err)
	}
	r.SetSlices(allSlices(64))
	r.recoverPending(context.Background())
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	var got int
	for i := 0; i < b.N; i++ {
		batch, err := r.scan()
		if err != nil {
			b.Fatal(err)
		}
		got = len(batch)
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	if got != min(n, r.cfg.BatchSize) {
		b.Fatalf("batch of %d, want %d", got, min(n, r.cfg.BatchSize))
	}
	b.ReportMetric(float64(n), "files")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N)/1e6, "MB_alloc/scan")
}
