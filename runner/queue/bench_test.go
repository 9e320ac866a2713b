package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchDir returns a fresh directory for a benchmark under $QSLICE_BENCH_DIR, or under os.TempDir()
// when that is unset. fsync figures depend on that file system: point QSLICE_BENCH_DIR at the queue
// file system (or an NFS mount) to measure it.
func benchDir(b *testing.B) string {
	b.Helper()
	base := os.Getenv("QSLICE_BENCH_DIR")
	if base == "" {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "qslice-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// BenchmarkEnqueue measures durable enqueues (file fsync, rename, directory fsync) by 1 and by 8
// concurrent enqueuers into one directory; with 8 the group commit shares directory syncs, which
// the dirsyncs/msg figure shows.
func BenchmarkEnqueue(b *testing.B) {
	body := make([]byte, 4096)
	for _, workers := range []int{1, 8} {
		b.Run("enqueuers="+strconv.Itoa(workers), func(b *testing.B) {
			d := NewDir(filepath.Join(benchDir(b), "in"), "", "")
			if err := d.Ensure(); err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			var next atomic.Int64
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if _, err := d.Enqueue(Meta{Lock: "lists/bench"}, body, now); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			d.syncPath.mu.Lock()
			syncs := d.syncPath.done
			d.syncPath.mu.Unlock()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(syncs)/float64(b.N), "dirsyncs/msg")
		})
	}
}

// BenchmarkScanNames lists a directory of 100,000 queue files, alone and parsing every name (what a
// backlog probe does on each scrape).
func BenchmarkScanNames(b *testing.B) {
	const files = 100_000
	dir := benchDir(b)
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i := range files {
		var d Digest
		copy(d[:], fmt.Appendf(nil, "%020d", i))
		name := FormatWhen(t0.Add(time.Duration(i)*time.Millisecond)) + "+" + d.String() + SuffixReady
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	b.Run("names", func(b *testing.B) {
		for b.Loop() {
			n := 0
			if err := ScanNames(dir, func(string) error { n++; return nil }); err != nil {
				b.Fatal(err)
			}
			if n != files {
				b.Fatalf("scanned %d names, want %d", n, files)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/files, "ns/file")
	})
	b.Run("parse+slice", func(b *testing.B) {
		for b.Loop() {
			var perSlice [16]int
			if err := ScanNames(dir, func(file string) error {
				n, err := ParseName(file)
				if err != nil {
					return err
				}
				perSlice[SliceOf(n.Digest, 16)]++
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/files, "ns/file")
	})
}
