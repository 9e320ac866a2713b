//go:build linux

package exporters

import (
	"syscall"
	"testing"
	"time"
)

// fileCtime returns the inode change time of path, which the probe takes as the claim time.
func fileCtime(t testing.TB, path string) time.Time {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
}
