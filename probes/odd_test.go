package probes

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/queuetest"
	"github.com/qslice/qslice/runner/queue"
)

// Odd files named like messages are counted as ignored (qslice_queue_ignored_files) and named,
// never counted as messages, never followed, and the scan does not block on a FIFO.
func TestScanCountsOddFilesAsIgnored(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "in")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := queue.NewDir(dir, "", "")
	if _, err := d.Enqueue(queue.Meta{}, []byte("x"), time.Now()); err != nil {
		t.Fatal(err)
	}
	odd := queuetest.OddFiles(t, dir, filepath.Join(root, "outside"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	snap := ScanQueue(ctx, QueueConfig{Name: "in", Dir: dir, Slices: 1}, nil)
	if snap.Err != nil {
		t.Fatal(snap.Err)
	}
	// The sparse file is a regular file: a ready message by its name, its size counted (1 GiB,
	// from lstat, nothing read); every other odd file is ignored.
	want := len(odd) - 1
	if snap.Ignored != want || snap.Ready != 2 {
		t.Errorf("ignored %d (want %d), ready %d (want 2: the message and the sparse file); sample %v", snap.Ignored, want, snap.Ready, snap.IgnoredSome)
	}
	for _, s := range snap.IgnoredSome {
		if !slices.ContainsFunc(keys(odd), func(b string) bool { return s == b+queue.SuffixReady }) {
			t.Errorf("ignored %q, not one of the odd files", s)
		}
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
