//go:build !linux

package exporters

import (
	"os"
	"testing"
	"time"
)

// fileCtime returns what the probe takes as the claim time where there is no portable ctime.
func fileCtime(t testing.TB, path string) time.Time {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}
