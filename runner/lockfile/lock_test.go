package lockfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newTestLock(t testing.TB, path string, clk Clock, mod func(*Options)) *Lock {
	t.Helper()
	opts := Options{Host: "node-a", Clock: clk}
	if mod != nil {
		mod(&opts)
	}
	l, err := New(path, opts)
	if err != nil {
		t.Fatalf("New(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = l.Unlock() })
	return l
}

func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	names, err := readDirNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func mustStat(t testing.TB, path string) fileStat {
	t.Helper()
	st, err := lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func mustRead(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestAcquireRelease(t *testing.T) {
	for _, naming := range []Naming{Flufl, Mailman21} {
		t.Run(naming.String(), func(t *testing.T) {
			clk := newFakeClock()
			dir := t.TempDir()
			path := filepath.Join(dir, "mylist.lock")
			l := newTestLock(t, path, clk, func(o *Options) { o.Naming = naming })

			acq, err := l.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if acq.Waited != 0 || acq.Broke || acq.Attempts != 1 {
				t.Errorf("uncontended Acquired = %+v, want no wait, no break, 1 attempt", acq)
			}
			want := map[Naming]string{
				Flufl:     `^` + regexp.QuoteMeta(path) + `\|node-a\|` + strconv.Itoa(os.Getpid()) + `\|\d+$`,
				Mailman21: `^` + regexp.QuoteMeta(path) + `\.node-a\.` + strconv.Itoa(os.Getpid()) + `\.\d+$`,
			}[naming]
			if !regexp.MustCompile(want).MatchString(l.ClaimPath()) {
				t.Errorf("claim %q does not match %s", l.ClaimPath(), want)
			}
			// The on-disk protocol: lock = claim (link count 2), content = claim path, mtime = expiry.
			st := mustStat(t, path)
			if st.nlink != 2 || !sameFile(st, mustStat(t, l.ClaimPath())) {
				t.Errorf("lock link count %d, same file as claim: %v", st.nlink, sameFile(st, mustStat(t, l.ClaimPath())))
			}
			if got := mustRead(t, path); got != l.ClaimPath() {
				t.Errorf("lock content %q, want %q", got, l.ClaimPath())
			}
			if want := clk.Now().Add(DefaultLifetime); !st.mtime.Equal(want) {
				t.Errorf("expiry (mtime) %v, want %v", st.mtime, want)
			}
			if !l.IsLocked() {
				t.Error("IsLocked false while held")
			}
			if _, err := l.Lock(context.Background()); !errors.Is(err, ErrAlreadyLocked) {
				t.Errorf("second Lock: %v, want ErrAlreadyLocked", err)
			}
			if _, err := l.TryLock(); !errors.Is(err, ErrAlreadyLocked) {
				t.Errorf("TryLock while held: %v, want ErrAlreadyLocked", err)
			}

			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("files left after Unlock: %q", names)
			}
			if l.IsLocked() {
				t.Error("IsLocked true after Unlock")
			}
			if err := l.Unlock(); err != nil {
				t.Errorf("second Unlock: %v, want nil", err)
			}
			// A Lock can be used again.
			if ok, err := l.TryLock(); !ok || err != nil {
				t.Fatalf("TryLock after Unlock = %v, %v", ok, err)
			}
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestTryLockContention(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	a := newTestLock(t, path, clk, nil)
	b := newTestLock(t, path, clk, func(o *Options) { o.Host = "node-b" })

	if ok, err := a.TryLock(); !ok || err != nil {
		t.Fatalf("a.TryLock = %v, %v", ok, err)
	}
	for range 3 {
		if ok, err := b.TryLock(); ok || err != nil {
			t.Fatalf("b.TryLock while a holds = %v, %v; want false, nil", ok, err)
		}
	}
	if got, want := dirNames(t, dir), []string{"L", filepath.Base(a.ClaimPath())}; !slices.Equal(got, want) {
		t.Errorf("after b's failed tries the directory has %q, want %q (b leaves no claim)", got, want)
	}
	if !a.IsLocked() || b.IsLocked() {
		t.Errorf("IsLocked: a %v b %v, want true false", a.IsLocked(), b.IsLocked())
	}
	if err := a.Unlock(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(); !ok || err != nil {
		t.Fatalf("b.TryLock after a released = %v, %v", ok, err)
	}
	if ok, err := a.TryLock(); ok || err != nil {
		t.Fatalf("a.TryLock while b holds = %v, %v", ok, err)
	}
	if err := b.Unlock(); err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Errorf("files left: %q", names)
	}
}

func TestRefresh(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "L")
	a := newTestLock(t, path, clk, nil)
	b := newTestLock(t, path, clk, nil)
	if err := a.Refresh(0); !errors.Is(err, ErrNotLocked) {
		t.Errorf("Refresh before Lock: %v, want ErrNotLocked", err)
	}
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 5 { // 5 x 10s: well past the first expiry + slop (25s), kept alive by refreshes
		clk.Advance(10 * time.Second)
		if err := a.Refresh(0); err != nil {
			t.Fatal(err)
		}
		if got, want := mustStat(t, path).mtime, clk.Now().Add(DefaultLifetime); !got.Equal(want) {
			t.Fatalf("after Refresh(0) expiry %v, want %v", got, want)
		}
		if ok, err := b.TryLock(); ok || err != nil {
			t.Fatalf("b.TryLock on a refreshed lock = %v, %v", ok, err)
		}
	}
	if err := a.Refresh(time.Hour); err != nil {
		t.Fatal(err)
	}
	if got, want := mustStat(t, path).mtime, clk.Now().Add(time.Hour); !got.Equal(want) {
		t.Errorf("after Refresh(1h) expiry %v, want %v", got, want)
	}
}

func TestExpiredLockIsBroken(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	var logs bytes.Buffer
	a := newTestLock(t, path, clk, nil)
	b := newTestLock(t, path, clk, func(o *Options) {
		o.Host = "node-b"
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultLifetime + DefaultSlop + time.Nanosecond)
	acq, err := b.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !acq.Broke || acq.Waited != 0 || acq.Attempts != 2 {
		t.Errorf("Acquired = %+v, want Broke, no wait, 2 attempts", acq)
	}
	if !strings.Contains(logs.String(), "broke expired lock") || !strings.Contains(logs.String(), "holder_host=node-a") {
		t.Errorf("break not logged with the holder: %s", logs.String())
	}
	if got, want := dirNames(t, dir), []string{"L", filepath.Base(b.ClaimPath())}; !slices.Equal(got, want) {
		t.Errorf("after the break the directory has %q, want %q (a's claim and no temporary left)", got, want)
	}
	if a.IsLocked() {
		t.Error("a.IsLocked after its lock was broken")
	}
	if err := a.Refresh(0); !errors.Is(err, ErrNotLocked) || !strings.Contains(err.Error(), "host node-b") {
		t.Errorf("a.Refresh = %v, want ErrNotLocked naming the new holder", err)
	}
	if err := a.Unlock(); err != nil {
		t.Errorf("a.Unlock after Refresh reported the loss: %v", err)
	}
	if !b.IsLocked() || mustRead(t, path) != b.ClaimPath() {
		t.Error("b lost the lock because of a's Refresh or Unlock")
	}
}

func TestUnexpiredLockIsNeverBroken(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "L")
	a := newTestLock(t, path, clk, nil)
	b := newTestLock(t, path, clk, func(o *Options) { o.Host = "node-b" })
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Exactly at expiry + slop the lock is not yet breakable.
	clk.Advance(DefaultLifetime + DefaultSlop)
	if ok, err := b.TryLock(); ok || err != nil {
		t.Fatalf("b.TryLock at expiry+slop = %v, %v; want false", ok, err)
	}
	if err := a.Refresh(0); err != nil {
		t.Fatal(err)
	}
	start := clk.Now()
	type result struct {
		acq Acquired
		err error
	}
	done := make(chan result, 1)
	go func() {
		acq, err := b.Lock(context.Background())
		done <- result{acq, err}
	}()
	// Two simulated minutes of b waiting while a refreshes every 5s.
	for i := range 120 {
		clk.waitTimer(t)
		select {
		case r := <-done:
			t.Fatalf("b got the lock after %d steps while a held and refreshed it: %+v", i, r)
		default:
		}
		clk.Advance(DefaultRetryInterval)
		if i%20 == 19 {
			if err := a.Refresh(0); err != nil {
				t.Fatalf("a.Refresh at step %d: %v", i, err)
			}
		}
	}
	clk.waitTimer(t)
	if err := a.Unlock(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultRetryInterval)
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("b did not get the lock after a released it")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if want := clk.Now().Sub(start); r.acq.Broke || r.acq.Waited != want {
		t.Errorf("b's Acquired = %+v, want Waited %s and no break", r.acq, want)
	}
	if !b.IsLocked() {
		t.Error("b does not hold the lock")
	}
}

func TestLockTimeoutNamesHolderAndLeavesNoClaim(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	a := newTestLock(t, path, clk, nil)
	b := newTestLock(t, path, clk, func(o *Options) { o.Host = "node-b" })
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.Lock(ctx)
		errc <- err
	}()
	clk.waitTimer(t)
	clk.Advance(time.Second)
	clk.waitTimer(t)
	cancel()
	var err error
	select {
	case err = <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("Lock did not return after its context was cancelled")
	}
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock = %v, want ErrTimeout and context.Canceled", err)
	}
	for _, want := range []string{path, "host node-a", fmt.Sprintf("pid %d", os.Getpid()), "gave up after 1s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if got, want := dirNames(t, dir), []string{"L", filepath.Base(a.ClaimPath())}; !slices.Equal(got, want) {
		t.Errorf("after the timeout the directory has %q, want %q", got, want)
	}
	// A context that is already done makes no attempt.
	if _, err := b.Lock(ctx); !errors.Is(err, ErrTimeout) {
		t.Errorf("Lock with a done context: %v", err)
	}
}

func TestUnlockOfLostLockKeepsOtherHolder(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	a := newTestLock(t, path, clk, nil)
	c := newTestLock(t, path, clk, func(o *Options) { o.Host = "node-c" })
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Someone removes a's lock by hand (a's claim stays), and c takes the free lock.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.TryLock(); !ok || err != nil {
		t.Fatalf("c.TryLock = %v, %v", ok, err)
	}
	err := a.Unlock()
	if !errors.Is(err, ErrNotLocked) || !strings.Contains(err.Error(), "host node-c") {
		t.Errorf("a.Unlock = %v, want ErrNotLocked naming node-c", err)
	}
	if !c.IsLocked() || mustStat(t, path).nlink != 2 || mustRead(t, path) != c.ClaimPath() {
		t.Error("a's Unlock disturbed c's lock")
	}
	if got, want := dirNames(t, dir), []string{"L", filepath.Base(c.ClaimPath())}; !slices.Equal(got, want) {
		t.Errorf("directory has %q, want %q (a's claim and temporaries gone)", got, want)
	}
}

func TestUnlockAfterClaimRemovedByHand(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	a := newTestLock(t, path, clk, nil)
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(a.ClaimPath()); err != nil {
		t.Fatal(err)
	}
	// flufl.lock's test (link count 2) now says "not held"; the lock file still names our claim,
	// so Unlock releases it instead of leaving it to block everyone until it expires.
	if err := a.Unlock(); err != nil {
		t.Errorf("Unlock: %v", err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Errorf("files left: %q", names)
	}
}

// A break that finds, after moving the lock, that it is not the expired lock it judged (a new
// holder linked it meanwhile, or the holder refreshed it) must put it back untouched.
func TestBreakPutsBackALockThatChanged(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	a := newTestLock(t, path, clk, nil)
	b := newTestLock(t, path, clk, func(o *Options) { o.Host = "node-b" })
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	fresh := mustStat(t, path)
	t.Run("another inode", func(t *testing.T) {
		stale := fresh
		stale.ino++ // what b judged expired was another, earlier lock
		broke, err := b.breakExpired(stale)
		if broke || err != nil {
			t.Fatalf("breakExpired = %v, %v", broke, err)
		}
	})
	t.Run("same inode, refreshed", func(t *testing.T) {
		clk.Advance(DefaultLifetime + DefaultSlop + time.Second)
		seen := mustStat(t, path)
		if err := a.Refresh(0); err != nil { // a refreshes between b's look and b's rename
			t.Fatal(err)
		}
		broke, err := b.breakExpired(seen)
		if broke || err != nil {
			t.Fatalf("breakExpired = %v, %v", broke, err)
		}
	})
	if !a.IsLocked() || mustStat(t, path).nlink != 2 {
		t.Error("a lost its lock to a break that should have put it back")
	}
	if got, want := dirNames(t, dir), []string{"L", filepath.Base(a.ClaimPath())}; !slices.Equal(got, want) {
		t.Errorf("directory has %q, want %q", got, want)
	}
	if err := a.Unlock(); err != nil {
		t.Errorf("a.Unlock: %v", err)
	}
}

// flufl.lock unlinks whatever path an expired lock's content names. We only remove the holder's
// claim if it is in the lock's directory, parses as a claim of this lock and is the same inode.
func TestBreakNeverFollowsContent(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	elsewhere := filepath.Join(t.TempDir(), "precious")
	victims := []string{
		elsewhere,
		filepath.Join(dir, "precious"),
		filepath.Join(dir, "L|node-x|1|2"), // a real-looking claim of L, but not the lock's inode
	}
	for _, v := range victims {
		if err := os.WriteFile(v, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "L")
	b := newTestLock(t, path, clk, nil)
	for _, v := range victims {
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		old := clk.Now().Add(-time.Hour)
		if err := os.Chtimes(path, old, old); err != nil {
			t.Fatal(err)
		}
		acq, err := b.Lock(context.Background())
		if err != nil || !acq.Broke {
			t.Fatalf("Lock over an expired lock naming %s = %+v, %v", v, acq, err)
		}
		if _, err := os.Stat(v); err != nil {
			t.Errorf("breaking a lock whose content named %s removed it: %v", v, err)
		}
		if err := b.Unlock(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestClaimVanishedWhileWaiting(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "L")
	a := newTestLock(t, path, clk, nil)
	b := newTestLock(t, path, clk, func(o *Options) { o.Host = "node-b" })
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Lock(context.Background())
		done <- err
	}()
	clk.waitTimer(t)
	if err := os.Remove(b.ClaimPath()); err != nil { // a cleaner removed it
		t.Fatal(err)
	}
	if err := a.Unlock(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultRetryInterval)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b did not get the lock")
	}
	if !b.IsLocked() {
		t.Error("b does not hold the lock")
	}
}

func TestWaitingClaimIsKeptFresh(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "L")
	a := newTestLock(t, path, clk, func(o *Options) { o.Lifetime = time.Hour })
	b := newTestLock(t, path, clk, func(o *Options) { o.Host = "node-b"; o.Lifetime = 10 * time.Second })
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := b.Lock(ctx)
		done <- err
	}()
	for range 400 { // 100s of simulated waiting
		clk.waitTimer(t)
		clk.Advance(DefaultRetryInterval)
	}
	clk.waitTimer(t)
	st := mustStat(t, b.ClaimPath())
	if age := clk.Now().Add(10 * time.Second).Sub(st.mtime); age < 0 || age > 5*time.Second+DefaultRetryInterval {
		t.Errorf("waiting claim's mtime %v is %s behind now+lifetime; want within Lifetime/2", st.mtime, age)
	}
	cancel()
	if err := <-done; !errors.Is(err, ErrTimeout) {
		t.Errorf("Lock after cancel: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		path string
		opts Options
		want string
	}{
		{"empty path", "", Options{Host: "h"}, "empty lock path"},
		{"separator in name", filepath.Join(dir, "a|b"), Options{Host: "h"}, "without"},
		{"separator in host", filepath.Join(dir, "L"), Options{Host: "h|x"}, "host name"},
		{"slash in host", filepath.Join(dir, "L"), Options{Host: "h/x"}, "host name"},
		{"negative lifetime", filepath.Join(dir, "L"), Options{Host: "h", Lifetime: -time.Second}, "negative lifetime"},
		{"unknown naming", filepath.Join(dir, "L"), Options{Host: "h", Naming: 7}, "unknown naming"},
		{"name too long", filepath.Join(dir, strings.Repeat("x", 240)), Options{Host: "h"}, "255"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.path, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// A relative path is made absolute (the claim's content must be usable from anywhere).
	l, err := New("rel.lock", Options{Host: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(l.Path()) || !filepath.IsAbs(l.ClaimPath()) {
		t.Errorf("paths not absolute: %s %s", l.Path(), l.ClaimPath())
	}
}

// Many waiters find one expired lock (its holder crashed) at the same instant: they break it
// concurrently, yet only one holds it at a time, and every one of them gets it in turn.
func TestConcurrentBreakersExcludeEachOther(t *testing.T) {
	dir := t.TempDir()
	breakRounds(t, []string{filepath.Join(dir, "L")}, 30, 8)
}

// breakRounds runs rounds of workers Locks, worker i on paths[i%len(paths)] (one lock seen
// through different mounts), all waiting on an expired lock planted through paths[0]: in every
// round exactly one of them breaks it, they take the lock one at a time, nothing is left.
func breakRounds(t *testing.T, paths []string, rounds, workers int) {
	dir := filepath.Dir(paths[0])
	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			lines := strings.Split(logs.String(), "\n")
			t.Logf("the last log lines:\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	locks := make([]*Lock, workers)
	for i := range locks {
		locks[i] = newTestLock(t, paths[i%len(paths)], SystemClock(), func(o *Options) {
			o.Host = fmt.Sprintf("node-%d", i)
			o.RetryInterval = 5 * time.Millisecond
			o.Logger = logger
		})
	}
	broke := 0
	for round := range rounds {
		plant(t, dir, "L|crashed|1|1", filepath.Base(paths[0]), time.Now().Add(-time.Hour))
		var inside, maxInside atomic.Int32
		type result struct {
			acq Acquired
			err error
		}
		results := make(chan result, workers)
		start := make(chan struct{})
		for _, l := range locks {
			go func() {
				<-start
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				acq, err := l.Lock(ctx)
				if err == nil {
					n := inside.Add(1)
					for m := maxInside.Load(); n > m && !maxInside.CompareAndSwap(m, n); m = maxInside.Load() {
					}
					runtime.Gosched()
					inside.Add(-1)
					err = l.Unlock()
				}
				results <- result{acq, err}
			}()
		}
		close(start)
		for range workers {
			r := <-results
			if r.err != nil {
				t.Fatalf("round %d: %v", round, r.err)
			}
			if r.acq.Broke {
				broke++
			}
		}
		if m := maxInside.Load(); m != 1 {
			t.Fatalf("round %d: %d holders at once", round, m)
		}
		if names := dirNames(t, dir); len(names) != 0 {
			t.Fatalf("round %d left %q", round, names)
		}
	}
	if broke < rounds {
		t.Errorf("%d breaks in %d rounds, want at least one per round", broke, rounds)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logs.String())
	}
	t.Logf("%d breaks, %d put-backs in %d rounds", broke, strings.Count(logs.String(), "put back"), rounds)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
