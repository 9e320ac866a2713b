//go:build !linux

package testenv

import (
	"os"
	"testing"
	"time"
)

// FileCtime returns what the probes take as a claim time where there is no portable ctime: the
// modification time.
func FileCtime(t testing.TB, path string) time.Time {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}
