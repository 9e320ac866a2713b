package probes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/qslice/qslice/internal/clock"
)

// Timing defaults.
//
// DefaultInterval matches Prometheus' default scrape interval, so every scrape sees a snapshot at
// most one interval old. A scan costs about one bare directory listing: ~0.5 s per million files
// on tmpfs in a small VM, ~2 s with byte counts (a statx per ready file; see BenchmarkScanQueue),
// more on NFS.
//
// DefaultTimeout bounds one target's scan (one queue, or one lock directory). It is below the
// interval so that a single stuck target delays the next cycle by less than one interval; a
// directory that cannot be listed within it is reported as failed (ErrBudget) and keeps its last
// good counts. A syscall blocked on a hard NFS mount cannot be interrupted: the budget is checked
// between directory chunks, so a scan overruns it by at most one chunk's worth of I/O.
const (
	DefaultInterval = 15 * time.Second
	DefaultTimeout  = 10 * time.Second
)

// Config lists what a Probe scans.
type Config struct {
	Queues   []QueueConfig
	LockDirs []LockDirConfig
	Interval time.Duration // between the starts of two cycles; 0 = DefaultInterval
	Timeout  time.Duration // budget of one target's scan; 0 = DefaultTimeout
	Clock    clock.Clock   // nil = clock.System
	Logger   *slog.Logger  // nil = discard
}

// Validate checks the configuration, naming the field at fault.
func (c *Config) Validate() error {
	var errs []error
	seen := map[string]bool{}
	for i, q := range c.Queues {
		if err := q.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("queues[%d]: %w", i, err))
		}
		if seen[q.Name] {
			errs = append(errs, fmt.Errorf("queues[%d]: name %q: used twice", i, q.Name))
		}
		seen[q.Name] = true
	}
	seen = map[string]bool{}
	for i, l := range c.LockDirs {
		if err := l.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("lock_dirs[%d]: %w", i, err))
		}
		if seen[l.Name] {
			errs = append(errs, fmt.Errorf("lock_dirs[%d]: name %q: used twice", i, l.Name))
		}
		seen[l.Name] = true
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("interval: must be >= 0"))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout: must be >= 0"))
	}
	return errors.Join(errs...)
}

// Snapshot is the result of one probe cycle. It is immutable once published: readers share it.
type Snapshot struct {
	At     time.Time         // when the cycle started
	Queues []QueueSnapshot   // one per configured queue, in configuration order
	Locks  []LockDirSnapshot // one per configured lock directory, in configuration order
}

// ErrNotReady is returned by Probe.Ready until the first cycle has completed.
var ErrNotReady = errors.New("probe: first scan not completed yet")

// Probe rescans its targets every interval and keeps the latest snapshot. It only reads the disk.
type Probe struct {
	cfg    Config
	clock  clock.Clock
	log    *slog.Logger
	latest atomic.Pointer[Snapshot]
}

// New returns a Probe for cfg after validating it.
func New(cfg Config) (*Probe, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("probe config: %w", err)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Probe{cfg: cfg, clock: cfg.Clock, log: cfg.Logger}, nil
}

// Config returns the probe's configuration, with defaults filled in.
func (p *Probe) Config() Config { return p.cfg }

// Latest returns the latest snapshot, nil before the first cycle completed. It never blocks.
func (p *Probe) Latest() *Snapshot { return p.latest.Load() }

// Ready returns nil once the first cycle has completed, ErrNotReady before.
func (p *Probe) Ready() error {
	if p.latest.Load() == nil {
		return ErrNotReady
	}
	return nil
}

// Run scans at once, then every interval, until ctx ends; it returns nil then. A cycle that takes
// longer than the interval is followed at once by the next one.
func (p *Probe) Run(ctx context.Context) error {
	wait := time.Duration(0)
	for {
		if !clock.Sleep(ctx, p.clock, wait) {
			return nil
		}
		start := p.clock.Now()
		p.ScanOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait = max(0, p.cfg.Interval-p.clock.Now().Sub(start))
	}
}

// ScanOnce runs one cycle over every target, publishes its snapshot and returns it. Each target
// gets its own budget (Timeout); a target whose scan fails keeps the counts of its last success.
func (p *Probe) ScanOnce(ctx context.Context) *Snapshot {
	prev := p.latest.Load()
	snap := &Snapshot{At: p.clock.Now()}
	aux := auxCounts{}
	for i, qc := range p.cfg.Queues {
		tctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
		q := scanQueue(tctx, qc, p.clock, aux)
		cancel()
		var before *QueueSnapshot
		if prev != nil {
			before = &prev.Queues[i]
		}
		p.logOutcome("queue", qc.Name, q.Err, q.Errors, before != nil && before.Err != nil)
		q.carry(before)
		snap.Queues = append(snap.Queues, *q)
	}
	for i, lc := range p.cfg.LockDirs {
		tctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
		l := ScanLockDir(tctx, lc, p.clock)
		cancel()
		var before *LockDirSnapshot
		if prev != nil {
			before = &prev.Locks[i]
		}
		p.logOutcome("lock", lc.Name, l.Err, l.Errors, before != nil && before.Err != nil)
		l.carry(before)
		snap.Locks = append(snap.Locks, *l)
	}
	p.latest.Store(snap)
	return snap
}

// logOutcome logs a failed scan at warning level when it starts failing and at debug level while it
// keeps failing, and a recovery once: a dead NFS server must not flood the log every interval.
func (p *Probe) logOutcome(kind, name string, err error, errs []error, wasFailing bool) {
	switch {
	case err != nil && !wasFailing:
		p.log.Warn("probe scan failed", kind, name, "err", err)
	case err != nil:
		p.log.Debug("probe scan still failing", kind, name, "err", err)
	case wasFailing:
		p.log.Info("probe scan recovered", kind, name)
	}
	for _, e := range errs {
		p.log.Debug("probe scan problem", kind, name, "err", e)
	}
}
