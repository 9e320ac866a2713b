// Package queuetest helps tests build queue file names that land in a chosen slice.
package queuetest

import (
	"bytes"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"

	"github.com/qslice/qslice/runner/queue"
)

// DigestIn returns the SHA-1 digest, as 40 hex digits, at offset k from the first digest of slice
// i of n: a name that lands in a chosen slice.
func DigestIn(i, n int, k int64) string {
	lo, _ := queue.SliceBounds(i, n)
	return fmt.Sprintf("%040x", lo.Add(lo, big.NewInt(k)))
}

// Fill writes n native messages with the body "hello" into dir quickly (no fsync: this is set-up
// for benchmarks, not the enqueue path), with distinct names in time order.
func Fill(tb testing.TB, dir string, n int) {
	var buf bytes.Buffer
	if err := queue.Encode(&buf, queue.Meta{}, []byte("hello")); err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%d.%06d+%040x.pck", 1_700_000_000+i/1000, i%1000, uint64(i)*0x9E3779B97F4A7C15)
		if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}
