package lockfile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qslice/qslice/internal/retry"
	"golang.org/x/sys/unix"

	"github.com/qslice/qslice/internal/safefile"
)

// Timing defaults. flufl.lock and Mailman 2.1 hard-code the first two; a lock shared with them
// should keep them, because a waiter decides on its own, with its own numbers, when it may
// break the holder's lock.
const (
	// DefaultLifetime is flufl.lock's DEFAULT_LOCK_LIFETIME: how far into the future an
	// acquisition or refresh sets the lock's expiry. A holder must refresh well within it
	// (every Lifetime/3 leaves two chances to fail), or finish, before it runs out.
	DefaultLifetime = 15 * time.Second

	// DefaultSlop is flufl.lock's CLOCK_SLOP: a waiter breaks a lock only once its own clock is
	// this far past the lock's expiry, so the hosts' clocks may disagree by up to this much
	// without an unexpired lock being broken. Keep the cluster's clocks (NTP) well within it.
	DefaultSlop = 10 * time.Second

	// DefaultRetryInterval caps the pause between two attempts of a waiting Lock. flufl.lock
	// pauses uniformly in [0.01s, 2.01s) (1s on average). A waiting Lock starts at
	// RetryInterval/64 (about 4ms) and doubles up to the cap, each pause jittered to [d/2, d),
	// so a short hold costs a waiter milliseconds while a long one costs at most about two
	// file-server round trips (link and stat) per waiter per 250ms.
	DefaultRetryInterval = 250 * time.Millisecond

	// maxImmediateRetries bounds the attempts made without pausing when the lock changed under
	// us (released between link and stat, broken, or our claim re-created).
	maxImmediateRetries = 4

	// maxContent bounds what is read from a lock or claim file: its content is a path.
	maxContent = 4096
)

// Sentinel errors; test them with errors.Is.
var (
	// ErrTimeout: Lock gave up because its context ended before the lock was free.
	// The returned error also wraps the context's error.
	ErrTimeout = errors.New("timed out waiting for the lock")
	// ErrNotLocked: we do not hold the lock (any more): it expired and was broken, or was
	// removed by hand. Whatever the caller did since its last successful Refresh may have
	// overlapped another holder.
	ErrNotLocked = errors.New("lock not held")
	// ErrAlreadyLocked: Lock or TryLock on a Lock that already holds it.
	ErrAlreadyLocked = errors.New("lock already held by this Lock")
	// ErrNotRegular: the lock's name is taken by something that is not a regular file (a FIFO,
	// a socket, a directory, a symbolic link): no lock program made it. It is never opened,
	// followed or broken; someone must remove it.
	ErrNotRegular = safefile.ErrNotRegular
)

// Options configure a Lock. The zero value gives flufl.lock's behaviour.
type Options struct {
	// Lifetime is how far ahead acquiring and Refresh(0) set the expiry. Default DefaultLifetime.
	Lifetime time.Duration
	// Host is written into claim names. Default os.Hostname(). flufl.lock uses the fully
	// qualified name (socket.getfqdn()), Mailman 2.1 the plain host name.
	Host string
	// Naming of our claim files. Default Flufl.
	Naming Naming
	// Clock stamps expiries and paces retries. Default SystemClock().
	Clock Clock
	// RetryInterval caps the pause between attempts while waiting. Default DefaultRetryInterval.
	RetryInterval time.Duration
	// Slop: an expired lock is broken only when now > expiry + Slop. Zero means DefaultSlop,
	// a negative value means no slop at all.
	Slop time.Duration
	// Logger receives breaks of expired locks (Warn) and races lost while putting a lock back
	// (Error). Default: discard.
	Logger *slog.Logger
}

// Acquired tells how an acquisition went.
type Acquired struct {
	Waited   time.Duration // from the call to holding the lock, on the Lock's clock
	Broke    bool          // we broke at least one expired lock on the way
	Attempts int           // link attempts made
}

// Lock is one claimant of a lock file. Its methods may be called from several goroutines: they
// are serialised, and Lock holds the serialisation for as long as it waits. Create one Lock per
// claimant; two Locks (in one process or not) on one path exclude each other.
type Lock struct {
	path, dir, base string
	claim           string // our claim file (absolute path); also its content
	content         []byte
	tmpBreak        string // where we move a lock we break, before looking at it
	breakTurn       string // "<lock>|break": held (a link to a breaker's claim) while breaking
	tmpRelease      string // where we move our lock when releasing it
	lifetime        time.Duration
	slop            time.Duration
	retryMax        time.Duration
	clock           Clock
	log             *slog.Logger

	// afterLook, when set (tests only), runs between judging the lock expired and breaking it.
	afterLook func()

	mu       sync.Mutex
	held     bool
	claimSt  fileStat // our claim's stat, valid while claimStOK
	claimSOK bool
}

// New returns an unlocked Lock on path. It touches no file. The path is made absolute, since
// the claim file records its own path and others use it to find the claim.
func New(path string, opts Options) (*Lock, error) {
	if path == "" {
		return nil, errors.New("lockfile: empty lock path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("lock %s: make path absolute: %w", path, err)
	}
	dir, base := filepath.Split(abs)
	if base == "" || base == "." || strings.Contains(base, fluflSep) {
		return nil, fmt.Errorf("lock %s: the lock's name must be non-empty and without %q", abs, fluflSep)
	}
	if opts.Host == "" {
		if opts.Host, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("lock %s: host name: %w (set Options.Host)", abs, err)
		}
	}
	if err := validateHost(opts.Host); err != nil {
		return nil, fmt.Errorf("lock %s: %w", abs, err)
	}
	if opts.Naming != Flufl && opts.Naming != Mailman21 {
		return nil, fmt.Errorf("lock %s: unknown naming %v", abs, opts.Naming)
	}
	if opts.Lifetime == 0 {
		opts.Lifetime = DefaultLifetime
	}
	if opts.Lifetime < 0 {
		return nil, fmt.Errorf("lock %s: negative lifetime %s", abs, opts.Lifetime)
	}
	opts.Slop = effectiveSlop(opts.Slop)
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cn := claimName{
		Lock:   base,
		Host:   opts.Host,
		PID:    os.Getpid(),
		Tag:    strconv.FormatUint(rand.Uint64()>>1, 10), // flufl: random.randint(0, sys.maxsize)
		Naming: opts.Naming,
	}
	if n := len(cn.tempName(opRelease)); n > 255 {
		return nil, fmt.Errorf("lock %s: claim names would be %d bytes, over the 255 a file name may have: shorten the lock name or host", abs, n)
	}
	claim := filepath.Join(dir, cn.format())
	return &Lock{
		path:       abs,
		dir:        filepath.Clean(dir),
		base:       base,
		claim:      claim,
		content:    []byte(claim),
		tmpBreak:   filepath.Join(dir, cn.tempName(opBreak)),
		breakTurn:  filepath.Join(dir, base+fluflSep+opBreak),
		tmpRelease: filepath.Join(dir, cn.tempName(opRelease)),
		lifetime:   opts.Lifetime,
		slop:       opts.Slop,
		retryMax:   opts.RetryInterval,
		clock:      opts.Clock,
		log:        opts.Logger.With("lock", abs),
	}, nil
}

// Path is the lock file's absolute path.
func (l *Lock) Path() string { return l.path }

// ClaimPath is this Lock's claim file, which is also the content of the lock file while we hold it.
func (l *Lock) ClaimPath() string { return l.claim }

// Lock waits until it holds the lock or ctx ends. On the way it breaks locks whose expiry is
// more than the slop in the past. When ctx ends first it removes its claim and returns an error
// wrapping ErrTimeout and ctx.Err() that names the holder.
func (l *Lock) Lock(ctx context.Context) (Acquired, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held {
		return Acquired{}, fmt.Errorf("lock %s: %w", l.path, ErrAlreadyLocked)
	}
	start := l.clock.Now()
	if err := ctx.Err(); err != nil {
		return Acquired{}, l.timeoutErr(ctx, start, 0)
	}
	if err := l.writeClaim(start); err != nil {
		return Acquired{}, err
	}
	var acq Acquired
	// Pauses start at RetryInterval/64 and double up to RetryInterval, each uniform in [d/2, d]:
	// a backoff of 3d/4 with a jitter of 1/3.
	pauses := retry.New(retry.Policy{Initial: 3 * max(l.retryMax/64, time.Millisecond) / 4, Max: 3 * l.retryMax / 4, Jitter: 1.0 / 3}, l.clock)
	lastTouch := start
	for {
		again := 0
		for {
			out, err := l.attempt(&acq)
			if err != nil {
				l.dropClaim()
				return acq, err
			}
			if out == won {
				l.held = true
				acq.Waited = l.clock.Now().Sub(start)
				return acq, nil
			}
			if out == wait || again >= maxImmediateRetries {
				break
			}
			again++
		}
		t := l.clock.NewTimer(pauses.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			l.dropClaim()
			return acq, l.timeoutErr(ctx, start, acq.Attempts)
		case <-t.C():
		}
		// Keep a long wait's claim fresh, so that inspection does not take it for a leftover.
		if now := l.clock.Now(); now.Sub(lastTouch) >= l.lifetime/2 {
			lastTouch = now
			if err := touch(l.claim, now.Add(l.lifetime)); err != nil && !isGone(err) {
				l.dropClaim()
				return acq, fmt.Errorf("lock %s: touch claim %s: %w", l.path, l.claim, err)
			} // a vanished claim is re-created by the next attempt
		}
	}
}

// TryLock makes one attempt (breaking an expired lock if it finds one) and does not wait.
// It returns false, nil when someone else holds the lock.
func (l *Lock) TryLock() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held {
		return false, fmt.Errorf("lock %s: %w", l.path, ErrAlreadyLocked)
	}
	if err := l.writeClaim(l.clock.Now()); err != nil {
		return false, err
	}
	var acq Acquired
	for range maxImmediateRetries {
		out, err := l.attempt(&acq)
		if err != nil {
			l.dropClaim()
			return false, err
		}
		if out == won {
			l.held = true
			return true, nil
		}
		if out == wait {
			break
		}
	}
	l.dropClaim()
	return false, nil
}

// Refresh sets the lock's expiry to now + lifetime (Options.Lifetime when lifetime <= 0), then
// checks that the lock is still ours. If it is not, the Lock counts as unlocked and the error
// wraps ErrNotLocked. Another error (an I/O error) leaves the Lock believing it holds the lock.
func (l *Lock) Refresh(lifetime time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return fmt.Errorf("lock %s: refresh: %w", l.path, ErrNotLocked)
	}
	if lifetime <= 0 {
		lifetime = l.lifetime
	}
	// Touch by the claim's name: if the lock is no longer ours this touches only our claim.
	if err := touch(l.claim, l.clock.Now().Add(lifetime)); err != nil {
		if !isGone(err) {
			return fmt.Errorf("lock %s: refresh claim %s: %w", l.path, l.claim, err)
		}
		l.held = false
		return l.lostErr("refresh")
	}
	ok, err := l.holds()
	if err == nil && !ok && l.awaitPutBack() {
		ok, err = l.holds()
	}
	if err != nil {
		return fmt.Errorf("lock %s: refresh: check ownership: %w", l.path, err)
	}
	if !ok {
		l.held = false
		return l.lostErr("refresh")
	}
	return nil
}

// IsLocked reports whether the lock file is, right now, our claim. Unlike flufl.lock's
// is_locked it does not refresh the lock.
func (l *Lock) IsLocked() bool {
	ok, _ := l.holds()
	return ok
}

// Unlock releases the lock. It never removes a lock that is not ours: the lock is first renamed
// to a private name, and put back if it turns out to be someone else's. Unlock on a Lock that
// does not hold the lock only makes sure its claim file is gone and returns nil; if the Lock
// believed it held the lock but had lost it, the error wraps ErrNotLocked.
func (l *Lock) Unlock() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		if err := removeFile(l.claim); err != nil {
			return fmt.Errorf("lock %s: remove claim: %w", l.path, err)
		}
		return nil
	}
	err := syscall.Rename(l.path, l.tmpRelease)
	if err != nil && isGone(err) && l.awaitPutBack() {
		err = syscall.Rename(l.path, l.tmpRelease)
	}
	if err != nil {
		if isGone(err) {
			l.held = false
			l.dropClaim()
			return fmt.Errorf("lock %s: unlock: it was gone (broken after it expired, or removed by hand, while we held it); work since the last successful refresh may have overlapped another holder: refresh more often than the lifetime: %w", l.path, ErrNotLocked)
		}
		return fmt.Errorf("lock %s: unlock: rename to %s: %w", l.path, l.tmpRelease, err)
	}
	l.held = false
	moved, err1 := lstat(l.tmpRelease)
	mine, err2 := lstat(l.claim)
	if err1 == nil && err2 == nil && sameFile(moved, mine) {
		err1, err2 = removeFile(l.tmpRelease), removeFile(l.claim)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("lock %s: unlock (the lock is released): %w", l.path, err)
		}
		return nil
	}
	if err1 == nil {
		// Our claim's name may have been removed by hand while the lock stayed ours: then the
		// content (flufl.lock's own test) still names our claim, and we finish the release.
		if b, err := readSmall(l.tmpRelease); err == nil && string(b) == string(l.content) {
			l.dropClaim()
			if err := removeFile(l.tmpRelease); err != nil {
				return fmt.Errorf("lock %s: unlock (the lock is released): %w", l.path, err)
			}
			return nil
		}
	}
	// Not ours: someone broke our (expired) lock and took it. Put theirs back.
	holder := describeFile(l.tmpRelease)
	if err1 == nil {
		l.restore(l.tmpRelease, "unlock")
	}
	l.dropClaim()
	return fmt.Errorf("lock %s: unlock: lost before unlock, now %s; left it in place; work since the last successful refresh may have overlapped that holder: refresh more often than the lifetime: %w", l.path, holder, ErrNotLocked)
}

type outcome int

const (
	wait  outcome = iota // someone else holds it
	won                  // we hold it
	again                // things changed under us: try again at once
)

// attempt is one link(2) of our claim to the lock and, if it fails, one look at the lock.
func (l *Lock) attempt(acq *Acquired) (outcome, error) {
	acq.Attempts++
	if out, taken, err := l.linkClaim(l.path, "take it"); !taken {
		return out, err
	}
	cur, err := lstat(l.path)
	if err != nil {
		if isGone(err) {
			return again, nil // released between our link and our look
		}
		return 0, fmt.Errorf("lock %s: stat: %w", l.path, err)
	}
	if !cur.regular {
		fi, _ := os.Lstat(l.path)
		kind := "special file"
		if fi != nil {
			kind = safefile.KindOf(fi.Mode())
		}
		return 0, fmt.Errorf("lock %s: %w (remove it by hand; no lock program makes one)", l.path, &safefile.NotRegularError{Path: l.path, Kind: kind})
	}
	if !l.claimSOK {
		mine, err := lstat(l.claim)
		if err != nil {
			if isGone(err) {
				if err := l.writeClaim(l.clock.Now()); err != nil {
					return 0, err
				}
				return again, nil
			}
			return 0, fmt.Errorf("lock %s: stat claim %s: %w", l.path, l.claim, err)
		}
		l.claimSt, l.claimSOK = mine, true
	}
	if sameFile(cur, l.claimSt) {
		// Over NFS a link whose reply was lost is retransmitted and answered EEXIST although it
		// succeeded: the lock is our claim, so we hold it.
		return won, nil
	}
	now := l.clock.Now()
	if !now.After(cur.mtime.Add(l.slop)) {
		return wait, nil
	}
	if l.afterLook != nil {
		l.afterLook()
	}
	turn, err := l.takeBreakTurn()
	if err != nil || turn != won {
		return turn, err
	}
	defer l.releaseBreakTurn()
	// Under the turn, only the expired holder itself can still move the lock: look again, since
	// another breaker may have broken it (and a new holder linked it) since our first look, and
	// look through an open file, since a network file system's client may still answer lstat
	// from its cache with the lock that other breaker removed through another mount.
	if cur2, err := freshStat(l.path); err != nil || !sameFile(cur2, cur) || !l.clock.Now().After(cur2.mtime.Add(l.slop)) {
		if err != nil && !isGone(err) {
			return 0, fmt.Errorf("lock %s: stat: %w", l.path, err)
		}
		return again, nil
	}
	broke, err := l.breakExpired(cur)
	if err != nil {
		return 0, err
	}
	acq.Broke = acq.Broke || broke
	return again, nil
}

// linkClaim links our claim to name (the lock, or the turn to break it). taken reports that
// name exists already; otherwise it returns won when the link was made, again when our claim
// had vanished and was re-created, or an error saying what we were doing.
func (l *Lock) linkClaim(name, doing string) (out outcome, taken bool, _ error) {
	err := syscall.Link(l.claim, name)
	switch {
	case err == nil:
		return won, false, nil
	case errors.Is(err, syscall.EEXIST):
		return 0, true, nil
	case isGone(err):
		// Our claim vanished (flufl.lock has seen this on some NFS clients) or the directory
		// did. Re-create the claim; if the directory is gone that fails and says so.
		if err := l.writeClaim(l.clock.Now()); err != nil {
			return 0, false, err
		}
		return again, false, nil
	default:
		return 0, false, fmt.Errorf("lock %s: %s: link claim %s to %s: %w (the directory must be writable and its file system must support hard links)", l.path, doing, l.claim, name, err)
	}
}

// takeBreakTurn links our claim to "<lock>|break", so that breakers of one lock take turns: it
// returns won when we may break now, wait when another breaker is at it (the lock will be free,
// or fresh, in an instant) and again when it removed a turn left by a breaker that died in it.
// Without turns, a breaker slowed down after judging the lock expired would move away the lock a
// faster breaker's waiter had just taken, and a third waiter could link the lock in the instant
// it is away: two holders. The turn is a link to the breaker's claim, so it carries that claim's
// expiry and breaks like a lock; flufl.lock and Mailman 2.1 never look at it.
func (l *Lock) takeBreakTurn() (outcome, error) {
	if out, taken, err := l.linkClaim(l.breakTurn, "expired; take the turn to break it"); !taken {
		return out, err
	}
	cur, err := lstat(l.breakTurn)
	switch {
	case err != nil && isGone(err):
		return again, nil // the other breaker just finished
	case err != nil:
		return 0, fmt.Errorf("lock %s: stat %s: %w", l.path, l.breakTurn, err)
	case !cur.regular:
		return 0, fmt.Errorf("lock %s: breaking it: %w (remove it by hand; no lock program makes one)", l.path, &safefile.NotRegularError{Path: l.breakTurn, Kind: "special file"})
	case sameFile(cur, l.claimSt):
		return won, nil // our link's reply was lost and retransmitted (NFS)
	case !l.clock.Now().After(cur.mtime.Add(l.slop)):
		return wait, nil
	}
	// The turn of a breaker that died or hung in it: remove it the way an expired lock is
	// removed (move, check it is that inode and still expired, then unlink), keeping its claim,
	// which is that breaker's and which inspection reports as orphaned.
	if err := syscall.Rename(l.breakTurn, l.tmpBreak); err != nil {
		if isGone(err) {
			return again, nil
		}
		return 0, fmt.Errorf("lock %s: remove a stale turn to break it: rename %s to %s: %w", l.path, l.breakTurn, l.tmpBreak, err)
	}
	moved, err := lstat(l.tmpBreak)
	if err == nil && (!sameFile(moved, cur) || !l.clock.Now().After(moved.mtime.Add(l.slop))) {
		if err := syscall.Link(l.tmpBreak, l.breakTurn); err != nil {
			l.log.Warn("could not put back a turn to break the lock; two breakers may take turns at once", "err", err)
		}
	} else if err == nil {
		l.log.Warn("removed a stale turn to break the lock", "turn", describeFile(l.tmpBreak))
	}
	if err := removeFile(l.tmpBreak); err != nil {
		l.log.Error("could not remove temporary lock name", "name", l.tmpBreak, "err", err)
	}
	return again, nil
}

// releaseBreakTurn ends our turn to break: it unlinks "<lock>|break" if that is still our link.
func (l *Lock) releaseBreakTurn() {
	cur, err := lstat(l.breakTurn)
	if err != nil || !sameFile(cur, l.claimSt) {
		return // removed as stale meanwhile: we were slower than the lifetime plus the slop
	}
	if err := removeFile(l.breakTurn); err != nil {
		l.log.Error("could not end the turn to break the lock; others may break it only once the turn expires", "turn", l.breakTurn, "err", err)
	}
}

// breakExpired removes the lock observed as seen (expired beyond the slop). It renames the lock
// to a private name first and checks that what it moved is the inode it judged expired, still
// expired; otherwise (a new holder linked it meanwhile, or the holder refreshed it) it puts it
// back. Only then it removes the old holder's claim, and only if that is the same inode.
func (l *Lock) breakExpired(seen fileStat) (bool, error) {
	if err := syscall.Rename(l.path, l.tmpBreak); err != nil {
		if isGone(err) {
			return false, nil // someone else released or broke it first
		}
		return false, fmt.Errorf("lock %s: expired at %s; break it: rename to %s: %w (fix the directory's permissions, or remove the lock by hand once its holder is surely gone)",
			l.path, seen.mtime.UTC().Format(time.RFC3339), l.tmpBreak, err)
	}
	moved, err := lstat(l.tmpBreak)
	if err != nil {
		if isGone(err) {
			return false, nil
		}
		return false, fmt.Errorf("lock %s: break: stat %s: %w", l.path, l.tmpBreak, err)
	}
	if !sameFile(moved, seen) || !l.clock.Now().After(moved.mtime.Add(l.slop)) {
		l.restore(l.tmpBreak, "break")
		return false, nil
	}
	holder := l.holderClaim(l.tmpBreak, moved)
	var hname claimName
	if holder != "" {
		hname, _ = l.parseOwnClaim(filepath.Base(holder))
		if err := removeFile(holder); err != nil {
			l.log.Warn("broke expired lock but could not remove its holder's claim", "claim", holder, "err", err)
		}
	}
	if err := removeFile(l.tmpBreak); err != nil {
		return true, fmt.Errorf("lock %s: break: remove %s: %w", l.path, l.tmpBreak, err)
	}
	l.log.Warn("broke expired lock", "holder_host", hname.Host, "holder_pid", hname.PID,
		"expired", moved.mtime, "slop", l.slop)
	return true, nil
}

// putBackWait bounds how long a holder that finds its lock's name missing waits for it to be
// put back (see awaitPutBack). A put-back is a rename, a stat and a link: microseconds on a
// local disk, a few round trips to a file server.
var putBackWait = time.Second

// awaitPutBack is for a holder that finds the lock's name missing: while our claim's inode still
// has a second name, a breaker or releaser (a qslice without turns, or one whose turn expired)
// has moved our lock to its temporary name to look at it, and is about to link it back. It waits
// for that, in real time since it waits on another process's system calls, at most putBackWait,
// and reports whether the lock's name exists again.
func (l *Lock) awaitPutBack() bool {
	deadline := time.Now().Add(putBackWait)
	for pause := 50 * time.Microsecond; ; pause = min(2*pause, 20*time.Millisecond) {
		if _, err := lstat(l.path); err == nil || !isGone(err) {
			return err == nil
		}
		mine, err := lstat(l.claim)
		if err != nil || mine.nlink < 2 || !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(pause)
	}
}

// restore puts a lock we moved to tmp (by break or unlock) back in place and removes tmp.
func (l *Lock) restore(tmp, during string) {
	err := syscall.Link(tmp, l.path)
	if err == nil {
		l.log.Debug("put back a lock moved during "+during+": it was not the one we meant", "moved_holder", describeFile(tmp))
	} else {
		// Someone took the free lock in the instant it was away: its previous holder and the
		// new one may both believe they hold it until the previous one's next refresh.
		l.log.Error("could not put back a lock moved during "+during+"; two processes may believe they hold it",
			"err", err, "moved_holder", describeFile(tmp))
	}
	if err := removeFile(tmp); err != nil {
		l.log.Error("could not remove temporary lock name", "name", tmp, "err", err)
	}
}

// holderClaim returns the claim file (in the lock's directory) that the lock file at name
// designates, provided it parses as a claim of this lock and is the lock's own inode; else "".
// The path is rebuilt from the directory and the base name because hosts may mount the shared
// directory at different places; a content pointing anywhere else is never followed.
func (l *Lock) holderClaim(name string, st fileStat) string {
	b, err := readSmall(name)
	if err != nil {
		return ""
	}
	base := filepath.Base(strings.TrimSpace(string(b)))
	if _, ok := l.parseOwnClaim(base); !ok {
		return ""
	}
	p := filepath.Join(l.dir, base)
	cst, err := freshStat(p)
	if err != nil || !sameFile(cst, st) {
		return ""
	}
	return p
}

// parseOwnClaim parses base as a claim (not a temporary) of this lock, in either naming.
func (l *Lock) parseOwnClaim(base string) (claimName, bool) {
	if c, ok := parseFlufl(base); ok && c.Lock == l.base && c.Op == "" {
		return c, true
	}
	return parseMailman(base, l.base)
}

// holds reports whether the lock file and our claim are one inode. That is flufl.lock's test
// (link count 2 and content equal to our claim's path) with the content compared by identity:
// claim names are unique, so the lock is our claim exactly when it is the same file. It costs
// two stats and no read, and is not fooled by a claim whose content was copied.
func (l *Lock) holds() (bool, error) {
	mine, err := lstat(l.claim)
	if err != nil {
		if isGone(err) {
			return false, nil
		}
		return false, err
	}
	cur, err := lstat(l.path)
	if err != nil {
		if isGone(err) {
			return false, nil
		}
		return false, err
	}
	return sameFile(mine, cur), nil
}

// writeClaim creates our claim file with its own path as content and its mtime at
// now + lifetime, so that the lock is already stamped with its expiry the instant it is linked.
// open/write/close are raw system calls: os.OpenFile would add a poller registration attempt.
// The mtime is set after close, because an NFS client flushes written data at close and the
// server would stamp the flush over an earlier mtime.
func (l *Lock) writeClaim(now time.Time) error {
	l.claimSOK = false
	// O_NOFOLLOW|O_NONBLOCK: whatever sits under our claim's name, we never write through a link
	// nor wait for a FIFO's reader.
	fd, err := syscall.Open(l.claim, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC|syscall.O_CLOEXEC|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o666)
	if err != nil {
		return fmt.Errorf("lock %s: create claim %s: %w (the directory must exist and be writable)", l.path, l.claim, err)
	}
	for b := l.content; len(b) > 0; {
		n, err := syscall.Write(fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			_ = syscall.Close(fd)
			l.dropClaim()
			return fmt.Errorf("lock %s: write claim %s: %w", l.path, l.claim, err)
		}
		b = b[n:]
	}
	if err := syscall.Close(fd); err != nil {
		l.dropClaim()
		return fmt.Errorf("lock %s: write claim %s: %w", l.path, l.claim, err)
	}
	if err := touch(l.claim, now.Add(l.lifetime)); err != nil {
		l.dropClaim()
		return fmt.Errorf("lock %s: stamp claim %s: %w", l.path, l.claim, err)
	}
	return nil
}

// dropClaim removes our claim file, best effort (used on paths that already return an error).
func (l *Lock) dropClaim() {
	l.claimSOK = false
	if err := removeFile(l.claim); err != nil {
		l.log.Warn("could not remove claim file", "claim", l.claim, "err", err)
	}
}

func (l *Lock) timeoutErr(ctx context.Context, start time.Time, attempts int) error {
	now := l.clock.Now()
	return fmt.Errorf("lock %s: %s: gave up after %s and %d attempts (wait longer, or stop the holder): %w: %w",
		l.path, l.describeLock(now), now.Sub(start).Round(time.Millisecond), attempts, ErrTimeout, context.Cause(ctx))
}

func (l *Lock) lostErr(op string) error {
	return fmt.Errorf("lock %s: %s: lost it (it expired and was broken, or was removed by hand), now %s; stop the work it protects, since it may have overlapped another holder's since the last successful refresh, and refresh more often than the lifetime: %w",
		l.path, op, describeFile(l.path), ErrNotLocked)
}

// describeLock says who holds the lock and when a waiter may break it, for error messages.
func (l *Lock) describeLock(now time.Time) string {
	st, err := lstat(l.path)
	if err != nil {
		return describeFile(l.path)
	}
	s := describeFile(l.path)
	breakAt := st.mtime.Add(l.slop)
	if now.After(breakAt) {
		return s + ", expired beyond the slop (breakable now)"
	}
	return s + ", breakable after " + breakAt.UTC().Format(time.RFC3339)
}

// describeFile says who holds the lock file (or a moved copy of it) at name.
func describeFile(name string) string {
	st, err := lstat(name)
	if err != nil {
		if isGone(err) {
			return "free"
		}
		return "unreadable (" + err.Error() + ")"
	}
	b, err := readSmall(name)
	if err != nil {
		return "unreadable (" + err.Error() + ")"
	}
	exp := st.mtime.UTC().Format(time.RFC3339)
	base := filepath.Base(strings.TrimSpace(string(b)))
	c, ok := parseFlufl(base)
	if !ok {
		c, ok = parseMailmanGuess(base, nil)
	}
	if !ok {
		return fmt.Sprintf("held by an unrecognised claim %q until %s", base, exp)
	}
	return fmt.Sprintf("held by host %s pid %d until %s", c.Host, c.PID, exp)
}

// touch sets a file's atime and mtime, as flufl.lock's _touch does, without following a link.
func touch(path string, t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: path, Err: err}
	}
	return nil
}

// removeFile unlinks name; a file already gone is not an error.
func removeFile(name string) error {
	if err := syscall.Unlink(name); err != nil && !isGone(err) {
		return &os.PathError{Op: "unlink", Path: name, Err: err}
	}
	return nil
}

// readSmall reads a lock or claim file of at most maxContent bytes: only a regular file, never
// through a link, never waiting on a FIFO.
func readSmall(name string) ([]byte, error) {
	return safefile.Read(name, maxContent, nil)
}

// effectiveSlop is the clock slop an option asks for: 0 means DefaultSlop, a negative value none.
func effectiveSlop(s time.Duration) time.Duration {
	switch {
	case s == 0:
		return DefaultSlop
	case s < 0:
		return 0
	}
	return s
}
