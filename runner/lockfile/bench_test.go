package lockfile

// Benchmarks, on the test's temporary directory (normal disk) and, where /dev/shm exists, on
// tmpfs:
//
//	go test -run '^$' -bench . -benchtime=2s ./runner/lockfile/

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type benchDir struct{ name, dir string }

func benchDirs(b *testing.B) []benchDir {
	dirs := []benchDir{{"disk", b.TempDir()}}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "lockfile-bench-")
		if err == nil {
			b.Cleanup(func() { _ = os.RemoveAll(d) })
			dirs = append(dirs, benchDir{"tmpfs", d})
		}
	}
	return dirs
}

// BenchmarkUncontended: one Lock acquiring and releasing a free lock (5 + 5 system calls).
func BenchmarkUncontended(b *testing.B) {
	for _, d := range benchDirs(b) {
		b.Run(d.name, func(b *testing.B) {
			l, err := New(filepath.Join(d.dir, "L"), Options{})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ResetTimer()
			for range b.N {
				if _, err := l.Lock(ctx); err != nil {
					b.Fatal(err)
				}
				if err := l.Unlock(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "acq/s")
		})
	}
}

// BenchmarkContended8: 8 goroutines, each with its own Lock on one path, take turns with the
// default retry pacing; each critical section is a bare increment. Reports the distribution of
// the time from calling Lock to holding the lock.
func BenchmarkContended8(b *testing.B) {
	const workers = 8
	for _, d := range benchDirs(b) {
		b.Run(d.name, func(b *testing.B) {
			path := filepath.Join(d.dir, "L")
			locks := make([]*Lock, workers)
			for i := range locks {
				l, err := New(path, Options{})
				if err != nil {
					b.Fatal(err)
				}
				locks[i] = l
			}
			var (
				left    atomic.Int64
				mu      sync.Mutex
				waits   []time.Duration
				inside  atomic.Int32
				counter int // guarded by the lock file alone
				wg      sync.WaitGroup
				failMu  sync.Mutex
				failed  error
			)
			fail := func(err error) {
				failMu.Lock()
				defer failMu.Unlock()
				if failed == nil {
					failed = err
				}
			}
			left.Store(int64(b.N))
			ctx := context.Background()
			b.ResetTimer()
			for _, l := range locks {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var mine []time.Duration
					for left.Add(-1) >= 0 {
						acq, err := l.Lock(ctx)
						if err != nil {
							fail(err)
							return
						}
						if inside.Add(1) != 1 {
							fail(errors.New("two holders at once"))
						}
						counter++
						inside.Add(-1)
						if err := l.Unlock(); err != nil {
							fail(err)
							return
						}
						mine = append(mine, acq.Waited)
					}
					mu.Lock()
					waits = append(waits, mine...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			b.StopTimer()
			if failed != nil {
				b.Fatal(failed)
			}
			if counter != b.N {
				b.Fatalf("counter %d after %d acquisitions", counter, b.N)
			}
			slices.Sort(waits)
			q := func(p float64) float64 {
				return float64(waits[min(len(waits)-1, int(p*float64(len(waits))))]) / float64(time.Millisecond)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "acq/s")
			b.ReportMetric(q(0.50), "p50-wait-ms")
			b.ReportMetric(q(0.99), "p99-wait-ms")
			b.ReportMetric(float64(waits[len(waits)-1])/float64(time.Millisecond), "max-wait-ms")
		})
	}
}
