package lockfile

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The interleaving behind two holders at once: waiter a judges the lock expired, and before it
// breaks it, waiter b breaks it and waiter c takes it. With turns, a looks again under its turn
// and leaves c's fresh lock alone; before turns it moved c's lock away and put it back, and a
// fourth waiter linking in that instant (or c releasing) made two holders (or a lost release).
func TestSlowBreakerLeavesANewHolderAlone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := newTestLock(t, path, SystemClock(), func(o *Options) { o.Host = "node-a"; o.Logger = logger })
	b := newTestLock(t, path, SystemClock(), func(o *Options) { o.Host = "node-b"; o.Logger = logger })
	c := newTestLock(t, path, SystemClock(), func(o *Options) { o.Host = "node-c"; o.Logger = logger })
	plant(t, dir, "L|crashed|1|1", "L", time.Now().Add(-time.Hour))

	var once sync.Once
	a.afterLook = func() {
		once.Do(func() {
			if ok, err := b.TryLock(); !ok || err != nil {
				t.Errorf("b.TryLock = %v, %v; want it to break the expired lock and take it", ok, err)
			}
			if err := b.Unlock(); err != nil {
				t.Error(err)
			}
			if ok, err := c.TryLock(); !ok || err != nil {
				t.Errorf("c.TryLock = %v, %v", ok, err)
			}
		})
	}
	ok, err := a.TryLock()
	if ok || err != nil {
		t.Fatalf("a.TryLock = %v, %v; want false: c holds a fresh lock", ok, err)
	}
	if !c.IsLocked() {
		t.Fatal("c lost its fresh lock to a's late break")
	}
	if strings.Contains(logs.String(), "put back") {
		t.Errorf("a moved c's fresh lock (and put it back); a lock taken in that instant would have made two holders:\n%s", logs.String())
	}
	if err := c.Unlock(); err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Errorf("left %q", names)
	}
}

// A holder whose lock is, at that instant, moved away by a breaker that will put it back (a
// qslice without turns) waits for it instead of reporting the lock lost and leaving the
// put-back lock behind without its claim.
func TestHolderWaitsForAPutBack(t *testing.T) {
	for _, op := range []string{"unlock", "refresh"} {
		t.Run(op, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "L")
			c := newTestLock(t, path, SystemClock(), nil)
			if _, err := c.Lock(context.Background()); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(dir, "L|old|7|7|break")
			if err := os.Rename(path, tmp); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				time.Sleep(30 * time.Millisecond) // the old breaker looks at what it moved
				err := os.Link(tmp, path)
				done <- errors.Join(err, os.Remove(tmp))
			}()
			var err error
			if op == "unlock" {
				err = c.Unlock()
			} else {
				err = c.Refresh(0)
			}
			if err != nil {
				t.Errorf("%s during a put-back: %v", op, err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if op == "refresh" {
				if !c.IsLocked() {
					t.Error("lock lost after refresh")
				}
				if err := c.Unlock(); err != nil {
					t.Error(err)
				}
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("left %q", names)
			}
		})
	}
	// Without a second name for our inode nobody is going to put it back: no wait.
	t.Run("really gone", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "L")
		c := newTestLock(t, path, SystemClock(), nil)
		if _, err := c.Lock(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := c.Unlock(); !errors.Is(err, ErrNotLocked) {
			t.Errorf("Unlock = %v, want ErrNotLocked", err)
		}
		if d := time.Since(start); d >= putBackWait {
			t.Errorf("Unlock waited %s for a put-back nobody could make", d)
		}
	})
}

// A turn to break left by a breaker that died in it is removed once it expired beyond the slop;
// a live one makes others wait; one that is not a regular file is refused, named.
func TestBreakTurns(t *testing.T) {
	setup := func(t *testing.T, turnAge time.Duration) (string, string, *Lock, *lockedBuffer) {
		dir := t.TempDir()
		path := filepath.Join(dir, "L")
		var logs lockedBuffer
		a := newTestLock(t, path, SystemClock(), func(o *Options) {
			o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		})
		plant(t, dir, "L|crashed|1|1", "L", time.Now().Add(-time.Hour))
		plant(t, dir, "L|breaker|2|2", "L|break", time.Now().Add(turnAge))
		return dir, path, a, &logs
	}
	t.Run("stale", func(t *testing.T) {
		dir, _, a, logs := setup(t, -time.Hour)
		ok, err := a.TryLock()
		if !ok || err != nil {
			t.Fatalf("TryLock = %v, %v", ok, err)
		}
		if !strings.Contains(logs.String(), "removed a stale turn") || !strings.Contains(logs.String(), "broke expired lock") {
			t.Errorf("logs: %s", logs.String())
		}
		want := []string{"L", "L|breaker|2|2", filepath.Base(a.ClaimPath())}
		slices.Sort(want)
		if got := dirNames(t, dir); !slices.Equal(got, want) {
			t.Errorf("directory %q, want %q (the dead breaker's claim stays for inspection to report)", got, want)
		}
	})
	t.Run("live", func(t *testing.T) {
		dir, _, a, _ := setup(t, time.Minute)
		if ok, err := a.TryLock(); ok || err != nil {
			t.Fatalf("TryLock = %v, %v; want false while another breaker has its turn", ok, err)
		}
		if err := os.Remove(filepath.Join(dir, "L|break")); err != nil {
			t.Fatal(err)
		}
		if ok, err := a.TryLock(); !ok || err != nil {
			t.Fatalf("TryLock after the turn ended = %v, %v", ok, err)
		}
	})
	t.Run("fifo", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "L")
		a := newTestLock(t, path, SystemClock(), nil)
		plant(t, dir, "L|crashed|1|1", "L", time.Now().Add(-time.Hour))
		if err := syscall.Mkfifo(filepath.Join(dir, "L|break"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := a.TryLock()
		if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "L|break") {
			t.Fatalf("TryLock = %v, want ErrNotRegular naming L|break", err)
		}
	})
}
