//go:build linux

package testenv

import (
	"syscall"
	"testing"
	"time"
)

// FileCtime returns the inode change time of path, which the probes take as a claim time.
func FileCtime(t testing.TB, path string) time.Time {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
}
