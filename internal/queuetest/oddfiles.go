package queuetest

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qslice/qslice/runner/queue"
)

// OddFiles puts, under ready queue names (suffix .pck) in dir, every kind of file a runner must
// refuse: symbolic links to /dev/zero, to outside (a file outside the configured directories) and
// to themselves (a loop), a FIFO, a Unix socket, a directory, a 1 GiB sparse file (over any sane
// max_message_bytes) and a character device like /dev/zero (when allowed to make one). It
// returns base name -> the words the reason for refusing it must contain. Names are older than
// any message a test enqueues now, so runners meet them first.
func OddFiles(t testing.TB, dir, outside string) map[string]string {
	t.Helper()
	odd := map[string]string{}
	mk := func(i int, want string, make func(path string) error) {
		base := "1600000000." + string(rune('0'+i)) + "+" + strings.Repeat(string("abcdef0123"[i]), 40)
		p := filepath.Join(dir, base+queue.SuffixReady)
		if err := make(p); err != nil {
			t.Logf("cannot make a %s here (%v); not part of this run", want, err)
			return
		}
		odd[base] = want
	}
	mk(0, "symbolic link", func(p string) error { return os.Symlink("/dev/zero", p) })
	mk(1, "symbolic link", func(p string) error { return os.Symlink(outside, p) })
	mk(2, "symbolic link", func(p string) error { return os.Symlink(filepath.Base(p), p) })
	mk(3, "FIFO", func(p string) error { return syscall.Mkfifo(p, 0o644) })
	mk(4, "socket", func(p string) error {
		// Bound under a short path (sun_path holds 108 bytes), then renamed into place.
		short, err := os.MkdirTemp("", "s")
		if err != nil {
			return err
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		l, err := net.Listen("unix", filepath.Join(short, "s"))
		if err != nil {
			return err
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		t.Cleanup(func() { l.Close() })
		return os.Rename(filepath.Join(short, "s"), p)
	})
	mk(5, "directory", func(p string) error { return os.Mkdir(p, 0o755) })
	mk(6, "over the limit", func(p string) error {
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Truncate(1 << 30)
	})
	mk(7, "device", func(p string) error { return syscall.Mknod(p, syscall.S_IFCHR|0o644, 1<<8|5) })
	return odd
}
