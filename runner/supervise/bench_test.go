//go:build linux

package supervise

import (
	"io"
	"strings"
	"syscall"
	"testing"
)

// BenchmarkLiveMember is the cost of one "is the process group gone" check
// after a leader exited: a scan of /proc. The stop sequence does it at most
// every pollMax (250ms) per stopping worker.
func BenchmarkLiveMember(b *testing.B) {
	pg := syscall.Getpgrp()
	for b.Loop() {
		if _, err := liveMember(pg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadLines is the cost of splitting worker output into log lines
// (without the logging itself).
func BenchmarkReadLines(b *testing.B) {
	text := strings.Repeat("Nov 29 00:14:48 2026 (14193) out runner started.\n", 1000)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		n := 0
		readLines(io.NopCloser(strings.NewReader(text)), DefaultMaxLineBytes, func(string, int) { n++ })
		if n != 1000 {
			b.Fatal(n)
		}
	}
}
