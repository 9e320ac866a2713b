package probes

import (
	"context"
	"fmt"
	"github.com/qslice/qslice/internal/clock"
	"os"
	"time"

	"github.com/qslice/qslice/runner/lockfile"
)

// LockDirConfig names one directory of lock files to probe, such as Mailman's <var_dir>/locks.
type LockDirConfig struct {
	// Name is the value of the "lock" label: a name from the configuration, one per directory.
	Name string
	// Dir holds flufl.lock or Mailman 2.1 lock files and their claims.
	Dir string
	// Inspect tunes how holders are judged: the names this host goes by (for "holder dead on this
	// host"), the clock slop, when a claim counts as orphaned. The zero value works.
	Inspect lockfile.InspectOptions
}

// Validate checks the configuration of one lock directory.
func (c LockDirConfig) Validate() error {
	if c.Name == "" {
		return fmt.Errorf("lock dir %q: name: must not be empty", c.Dir)
	}
	if c.Dir == "" {
		return fmt.Errorf("lock dir %s: dir: must not be empty", c.Name)
	}
	return nil
}

// LockDirSnapshot is the result of the latest scan of one lock directory. Like QueueSnapshot, a
// failed scan keeps the data of the last successful one.
type LockDirSnapshot struct {
	Config LockDirConfig

	// The last attempt.
	Attempted time.Time
	Duration  time.Duration
	Err       error   // nil when the directory was listed
	Errors    []error // files that could not be examined, at most MaxErrors
	Dropped   int

	// The data, from the last successful scan.
	HasData bool
	At      time.Time       // when that scan started: ages and expiries are relative to it
	Locks   []lockfile.Info // every lock of the directory (held, waited for, or only leftovers), by path

	// Aggregates over Locks (the metrics are per directory, never per lock file).
	Held           int           // locks whose file exists
	Waiters        int           // claims waiting for a held or free lock
	Expired        int           // held locks past their expiry plus the clock slop: any waiter would break them
	OrphanedClaims int           // claims left by dead processes on this host, or older than OrphanAfter
	HolderDead     int           // held locks whose holder is on this host and no longer runs
	Anomalous      int           // lock files that are not sound flufl.lock / Mailman 2.1 locks
	OldestHeld     time.Duration // the longest a held lock has been held (0 when none is)
}

// OK reports whether the last scan completed.
func (l *LockDirSnapshot) OK() bool { return l.Err == nil }

// carry keeps the data of prev in l when l's scan failed.
func (l *LockDirSnapshot) carry(prev *LockDirSnapshot) {
	if l.Err == nil || prev == nil || !prev.HasData {
		return
	}
	attempted, dur, err, errs, dropped := l.Attempted, l.Duration, l.Err, l.Errors, l.Dropped
	*l = *prev
	l.Attempted, l.Duration, l.Err, l.Errors, l.Dropped = attempted, dur, err, errs, dropped
}

// ScanLockDir inspects every lock of one directory without changing anything. It never fails as a
// whole: problems are in Err (the directory could not be listed) and Errors (single files).
//
// lockfile.ScanDir cannot be interrupted: ctx is checked before it starts, and a scan that
// finishes after ctx ended keeps its (complete) data and records ErrBudget among its Errors.
func ScanLockDir(ctx context.Context, cfg LockDirConfig, clk clock.Clock) (snap *LockDirSnapshot) {
	if clk == nil {
		clk = clock.System{}
	}
	start := clk.Now()
	snap = &LockDirSnapshot{Config: cfg, Attempted: start}
	var errs errList
	defer func() {
		if r := recover(); r != nil {
			snap.Err = fmt.Errorf("scan lock dir %s: panic: %v", cfg.Dir, r)
			snap.HasData, snap.Locks = false, nil
		}
		snap.Errors, snap.Dropped = errs.errs, errs.dropped
		snap.Duration = clk.Now().Sub(start)
	}()
	if err := cfg.Validate(); err != nil {
		snap.Err = err
		return snap
	}
	if err := ctx.Err(); err != nil {
		snap.Err = withHint(fmt.Errorf("scan lock dir %s: %w: %w", cfg.Dir, ErrBudget, err))
		return snap
	}
	// ScanDir reports a directory it cannot list as its only error, with no infos; any other
	// error is about one file. Listing first tells the two apart without parsing messages.
	if err := listDir(ctx, cfg.Dir, func(*os.File, []dirEnt) {}); err != nil {
		snap.Err = err
		return snap
	}
	infos, ferrs := lockfile.ScanDir(ctx, cfg.Dir, start, cfg.Inspect)
	if err := ctx.Err(); err != nil {
		// ScanDir stopped, or finished late: either way the budget is blown; keep the last data.
		snap.Err = withHint(fmt.Errorf("scan lock dir %s: stopped after %v: %w: %w", cfg.Dir, clk.Now().Sub(start), ErrBudget, err))
		return snap
	}
	for _, e := range ferrs {
		errs.add(withHint(e))
	}
	snap.HasData, snap.At, snap.Locks = true, start, infos
	for _, in := range infos {
		snap.Waiters += in.Waiters
		snap.OrphanedClaims += in.OrphanedClaims
		if in.Anomaly != "" {
			snap.Anomalous++
		}
		if !in.Held {
			continue
		}
		snap.Held++
		if in.Breakable {
			snap.Expired++
		}
		if in.HolderDeadOnThisHost {
			snap.HolderDead++
		}
		if !in.HeldSince.IsZero() {
			snap.OldestHeld = max(snap.OldestHeld, start.Sub(in.HeldSince))
		}
	}
	return snap
}
