package probes

import (
	"context"
	"crypto/sha1"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
)

// Benchmarks of the queue probe against a bare directory listing of the same directory.
//
//	go test ./probes -run '^$' -bench ScanQueue -benchtime 3x
//	QSLICE_BENCH_FILES=1000000 go test ./probes -run '^$' -bench ScanQueue -benchtime 3x
//
// The directory is created once per size under $QSLICE_BENCH_DIR, else /dev/shm when present,
// else os.TempDir(); it is removed afterwards unless QSLICE_BENCH_KEEP=1 (creating a million files
// takes ~10 s and ~1 GiB of tmpfs).

const benchSlices = 64

func benchFiles(b *testing.B) int {
	n := 100_000
	if s := os.Getenv("QSLICE_BENCH_FILES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			b.Fatalf("QSLICE_BENCH_FILES=%q: want a positive integer", s)
		}
		n = v
	}
	return n
}

func benchBase() string {
	if d := os.Getenv("QSLICE_BENCH_DIR"); d != "" {
		return d
	}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// benchQueue returns a queue directory holding n ready messages (Mailman names, empty files) and
// one in-flight message per slice.
func benchQueue(b *testing.B, n int) string {
	dir := filepath.Join(benchBase(), fmt.Sprintf("qslice-bench-queue-%d", n))
	marker := filepath.Join(dir, ".complete")
	if os.Getenv("QSLICE_BENCH_KEEP") != "1" {
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	if _, err := os.Stat(marker); err == nil {
		return dir
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for i := range n {
		sum := sha1.Sum([]byte(strconv.Itoa(i)))
		suffix := ".pck"
		if i < benchSlices {
			suffix = ".bak"
		}
		name := fmt.Sprintf("%d.%06d+%x%s", 1700000000+i/1000, i%1000*997, sum, suffix)
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("created %d files in %s in %v", n, dir, time.Since(start).Round(time.Millisecond))
	return dir
}

// listAll is the baseline: a bare Readdirnames loop over dir.
func listAll(dir string) (int, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	count := 0
	for {
		names, err := f.Readdirnames(4096)
		count += len(names)
		if err == io.EOF {
			return count, nil
		}
		if err != nil {
			return count, err
		}
	}
}

// resetPeakRSS resets the kernel's high-water mark of this process' resident set (Linux 4.0+);
// peakRSS reads it back. Both return false where that is not available.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

func peakRSS() (int64, bool) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

func BenchmarkScanQueue(b *testing.B) {
	n := benchFiles(b)
	dir := benchQueue(b, n)
	report := func(b *testing.B, listing time.Duration, rssOK bool) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/file")
		if listing > 0 {
			b.ReportMetric(float64(b.Elapsed())/float64(listing), "x-listing")
		}
		if rss, ok := peakRSS(); ok && rssOK {
			b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
		}
	}
	b.Run("listing", func(b *testing.B) {
		b.ReportAllocs()
		rssOK := resetPeakRSS()
		for b.Loop() {
			if got, err := listAll(dir); err != nil || got != n+1 {
				b.Fatalf("listed %d, err %v", got, err)
			}
		}
		report(b, 0, rssOK)
	})
	// probe-default is the agent's default (bytes counted up to 50,000 ready files).
	for _, v := range []struct {
		name     string
		noBytes  bool
		maxFiles int
	}{{"probe-nobytes", true, 0}, {"probe-bytes", false, 0}, {"probe-default", false, 50_000}} {
		b.Run(v.name, func(b *testing.B) {
			cfg := QueueConfig{Name: "bench", Dir: dir, Slices: benchSlices, NoBytes: v.noBytes, BytesMaxFiles: v.maxFiles}
			b.ReportAllocs()
			rssOK := resetPeakRSS()
			var listing time.Duration
			for b.Loop() {
				// The listing runs in the same iteration, outside the timer, so that the ratio
				// compares both under the same cache and machine load.
				b.StopTimer()
				t := time.Now()
				if _, err := listAll(dir); err != nil {
					b.Fatal(err)
				}
				listing += time.Since(t)
				b.StartTimer()
				q := ScanQueue(context.Background(), cfg, clock.System{})
				if q.Err != nil || q.Ready+q.InFlight != n {
					b.Fatalf("scan: err %v, %d ready + %d in flight, want %d", q.Err, q.Ready, q.InFlight, n)
				}
			}
			report(b, listing, rssOK)
		})
	}
}
