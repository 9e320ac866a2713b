package lockfile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Something that no lock program makes, under the lock's name: refused at once with
// ErrNotRegular, never opened (a FIFO would block a reader), followed or broken, and left there.
func TestOddFileUnderTheLockNameIsRefusedNotBroken(t *testing.T) {
	for _, c := range []struct {
		name string
		make func(p string) error
	}{
		{"FIFO", func(p string) error { return syscall.Mkfifo(p, 0o644) }},
		{"link to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "list.lck")
			if err := c.make(p); err != nil {
				t.Fatal(err)
			}
			// Old enough to be "expired" twice over: it must still not be broken.
			old := time.Now().Add(-time.Hour)
			_ = os.Chtimes(p, old, old)
			l, err := New(p, Options{Lifetime: time.Second, Host: "h"})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			_, err = l.Lock(ctx)
			if !errors.Is(err, ErrNotRegular) {
				t.Fatalf("Lock: %v, want ErrNotRegular", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Lock took %s to refuse", d)
			}
			if _, err := os.Lstat(p); err != nil {
				t.Errorf("the odd file was removed or moved: %v", err)
			}
			if ok, err := l.TryLock(); ok || !errors.Is(err, ErrNotRegular) {
				t.Errorf("TryLock: %v, %v", ok, err)
			}
			if m, _ := filepath.Glob(filepath.Join(filepath.Dir(p), "list.lck|*")); len(m) != 0 {
				t.Errorf("claim files left: %v", m)
			}
		})
	}
}
