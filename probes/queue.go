package probes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/qslice/qslice/internal/clock"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qslice/qslice/runner/queue"
)

// QueueConfig names one queue directory to probe.
type QueueConfig struct {
	// Name is the queue's name from the configuration: the value of the "queue" label.
	Name string
	// Dir is the queue directory: qslice's own, or a Mailman 3 <var_dir>/queue/<name>.
	Dir string
	// Slices is how many slices the queue is cut into, 1..queue.MaxSlices.
	Slices int
	// ShuntDir and BadDir are counted as this queue's shunt and bad backlogs; "" leaves a count out.
	// Mailman's layout shares one queue/shunt and one queue/bad among all queues: every queue that
	// names the same directory reports the same count (the probe lists it once per cycle).
	ShuntDir, BadDir string
	// NoBytes skips the stat(2) of every ready file that the byte counts need: listing alone is
	// then enough (see the benchmarks for what the stat costs). In-flight files are always
	// stat'ed: their count is bounded by the runners' concurrency.
	NoBytes bool
	// BytesMaxFiles caps the stat(2) calls of one scan: once it has seen more ready files than
	// this, the scan stops counting bytes for the queue (QueueSnapshot.BytesCounted is false) and
	// costs little more than the listing. 0: no cap. The counts and ages are always complete.
	BytesMaxFiles int
	// Progress, when set, is called after each chunk of directory entries with the number of
	// names seen so far, from the scanning goroutine. For progress on a terminal; not a metric.
	Progress func(names int)
}

// Validate checks the configuration of one queue.
func (c QueueConfig) Validate() error {
	if c.Name == "" {
		return fmt.Errorf("queue %q: name: must not be empty", c.Dir)
	}
	if c.Dir == "" {
		return fmt.Errorf("queue %s: dir: must not be empty", c.Name)
	}
	if err := queue.ValidateSlices(c.Slices); err != nil {
		return fmt.Errorf("queue %s: slices: %w", c.Name, err)
	}
	return nil
}

// SliceStats is what one scan saw in one slice of a queue.
type SliceStats struct {
	Ready       int       // ready messages (.pck)
	Bytes       int64     // their total size in bytes (0 unless QueueSnapshot.BytesCounted)
	OldestReady time.Time // the time in the name of the oldest ready message; zero when none
	InFlight    int       // claimed messages (.bak)
	OldestClaim time.Time // when the in-flight message claimed longest ago was claimed (its ctime); zero when none
}

// OldestReadyAge is how old the oldest ready message was at time at, by the time in its name;
// 0 when the slice has none (or its clock is ahead of ours).
func (s SliceStats) OldestReadyAge(at time.Time) time.Duration { return age(s.OldestReady, at) }

// OldestInFlightAge is how long the oldest in-flight message had been claimed at time at; 0 when
// there is none.
func (s SliceStats) OldestInFlightAge(at time.Time) time.Duration { return age(s.OldestClaim, at) }

func age(t, at time.Time) time.Duration {
	if t.IsZero() || !at.After(t) {
		return 0
	}
	return at.Sub(t)
}

// QueueSnapshot is the result of the latest scan of one queue. When a scan fails, the counts are
// those of the last successful scan (HasData tells whether there was one), and At says how old they are.
type QueueSnapshot struct {
	Config QueueConfig

	// The last attempt.
	Attempted time.Time     // when the last scan started
	Duration  time.Duration // how long it took
	Err       error         // nil when it completed; else why not (the directory could not be listed)
	Errors    []error       // non-fatal problems it met (vanished files, failed stats), at most MaxErrors
	Dropped   int           // non-fatal problems beyond MaxErrors, only counted

	// The data, from the last successful scan.
	HasData  bool
	At       time.Time // when that scan started: ages are relative to it
	PerSlice []SliceStats
	Ready    int   // sum over the slices
	InFlight int   // sum over the slices
	Bytes    int64 // sum over the slices
	// BytesCounted says the byte counts are complete: false with NoBytes, or when the queue held
	// more ready files than BytesMaxFiles.
	BytesCounted bool
	HasShunt     bool // Shunt is known (a shunt directory is configured and was listed)
	Shunt        int  // messages in the shunt directory (.pck and .bak)
	HasBad       bool
	Bad          int      // messages in the bad directory (.psv)
	Temp         int      // messages being written (.pck.tmp)
	Ignored      int      // other entries: foreign names, malformed names, subdirectories, links, FIFOs, sockets, devices
	IgnoredSome  []string // up to MaxIgnoredSample of them, for a human to look at
	Vanished     int      // files listed but gone when looked at
}

// MaxIgnoredSample bounds QueueSnapshot.IgnoredSome.
const MaxIgnoredSample = 5

// OK reports whether the last scan completed.
func (q *QueueSnapshot) OK() bool { return q.Err == nil }

// Oldest returns the aggregate over all slices: the earliest OldestReady and OldestClaim.
func (q *QueueSnapshot) Oldest() (ready, claim time.Time) {
	for _, s := range q.PerSlice {
		if !s.OldestReady.IsZero() && (ready.IsZero() || s.OldestReady.Before(ready)) {
			ready = s.OldestReady
		}
		if !s.OldestClaim.IsZero() && (claim.IsZero() || s.OldestClaim.Before(claim)) {
			claim = s.OldestClaim
		}
	}
	return ready, claim
}

// carry keeps the data of prev (an earlier snapshot of the same queue) in q when q's scan failed.
func (q *QueueSnapshot) carry(prev *QueueSnapshot) {
	if q.Err == nil || prev == nil || !prev.HasData {
		return
	}
	attempted, dur, err, errs, dropped := q.Attempted, q.Duration, q.Err, q.Errors, q.Dropped
	*q = *prev
	q.Attempted, q.Duration, q.Err, q.Errors, q.Dropped = attempted, dur, err, errs, dropped
}

// dirEnt is one directory entry as listDir reports it; its Name is valid only during the callback.
type dirEnt = queue.Entry

var sufTemp = []byte(queue.SuffixTemp)

// listDir lists dir with queue.List, turning a spent budget into ErrBudget and adding the
// operator's hint to errors.
func listDir(ctx context.Context, dir string, fn func(f *os.File, ents []dirEnt)) error {
	err := queue.List(ctx, dir, fn)
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return withHint(fmt.Errorf("list %s: %w: %w", dir, ErrBudget, ctx.Err()))
	}
	if err != nil {
		return withHint(err)
	}
	return nil
}

// auxCounts caches the counts of shunt and bad directories within one probe cycle, since Mailman's
// queues all share one of each.
type auxCounts map[string]auxResult

type auxResult struct {
	n   int
	err error
}

// ScanQueue scans one queue directory (and its shunt and bad directories) without changing
// anything. It never fails as a whole: problems are in the snapshot's Err and Errors. ctx bounds the
// scan: when it ends first, Err wraps ErrBudget.
func ScanQueue(ctx context.Context, cfg QueueConfig, clk clock.Clock) *QueueSnapshot {
	return scanQueue(ctx, cfg, clk, nil)
}

func scanQueue(ctx context.Context, cfg QueueConfig, clk clock.Clock, aux auxCounts) *QueueSnapshot {
	return scanQueueHook(ctx, cfg, clk, aux, nil)
}

func scanQueueHook(ctx context.Context, cfg QueueConfig, clk clock.Clock, aux auxCounts, afterChunk func([]dirEnt)) (snap *QueueSnapshot) {
	if clk == nil {
		clk = clock.System{}
	}
	start := clk.Now()
	snap = &QueueSnapshot{Config: cfg, Attempted: start}
	var errs errList
	defer func() {
		if r := recover(); r != nil {
			snap.Err = fmt.Errorf("scan queue %s: panic: %v", cfg.Dir, r)
			snap.HasData = false
		}
		snap.Errors, snap.Dropped = errs.errs, errs.dropped
		snap.Duration = clk.Now().Sub(start)
	}()
	if err := cfg.Validate(); err != nil {
		snap.Err = err
		return snap
	}
	acc := newQueueAcc(cfg.Slices)
	acc.afterChunk = afterChunk
	acc.progress = cfg.Progress
	acc.bytesLeft = -1 // no cap
	if cfg.BytesMaxFiles > 0 {
		acc.bytesLeft = cfg.BytesMaxFiles
	}
	if err := acc.scan(ctx, cfg.Dir, !cfg.NoBytes, &errs); err != nil {
		snap.Err = err
		return snap
	}
	snap.HasData = true
	snap.At = start
	acc.fill(snap)
	snap.BytesCounted = !cfg.NoBytes && !acc.bytesCapped
	if acc.bytesCapped { // partial sums would mislead
		snap.Bytes = 0
		for i := range snap.PerSlice {
			snap.PerSlice[i].Bytes = 0
		}
	}
	if cfg.ShuntDir != "" {
		n, err := countAux(ctx, aux, cfg.ShuntDir, isShunt)
		if err != nil {
			errs.add(fmt.Errorf("count shunt of queue %s: %w", cfg.Name, err))
		} else {
			snap.HasShunt, snap.Shunt = true, n
		}
	}
	if cfg.BadDir != "" {
		n, err := countAux(ctx, aux, cfg.BadDir, isBad)
		if err != nil {
			errs.add(fmt.Errorf("count bad of queue %s: %w", cfg.Name, err))
		} else {
			snap.HasBad, snap.Bad = true, n
		}
	}
	return snap
}

func isShunt(k kind) bool { return k == kindReady || k == kindInFlight }
func isBad(k kind) bool   { return k == kindBad }

func countAux(ctx context.Context, aux auxCounts, dir string, want func(kind) bool) (int, error) {
	if r, ok := aux[dir]; ok {
		return r.n, r.err
	}
	n := 0
	err := listDir(ctx, dir, func(_ *os.File, ents []dirEnt) {
		for _, e := range ents {
			if k, _, _ := parseName(e.Name); want(k) {
				n++
			}
		}
	})
	if aux != nil {
		aux[dir] = auxResult{n, err}
	}
	return n, err
}

// queueAcc accumulates one scan. Per slice it keeps counts and the oldest times as raw numbers, so
// that the per-file work is a parse, a slice computation and a few compares.
type queueAcc struct {
	afterChunk  func(ents []dirEnt) // test hook: runs between listing a chunk and looking at it
	progress    func(names int)     // QueueConfig.Progress
	seen        int                 // names listed so far
	bytesLeft   int                 // ready files still to stat; -1: no cap
	bytesCapped bool                // a ready file went unstat'ed: the byte counts are incomplete
	slices      []sliceAcc
	temp        int
	ignored     int
	ignoredSome []string
	vanished    int
}

type sliceAcc struct {
	ready, inFlight int
	bytes           int64
	oldestWhen      float64 // Unix seconds from the name; +Inf when none
	oldestClaim     int64   // UnixNano ctime; MaxInt64 when none
}

func newQueueAcc(n int) *queueAcc {
	a := &queueAcc{slices: make([]sliceAcc, n)}
	for i := range a.slices {
		a.slices[i].oldestWhen = math.Inf(1)
		a.slices[i].oldestClaim = math.MaxInt64
	}
	return a
}

func (a *queueAcc) scan(ctx context.Context, dir string, statReady bool, errs *errList) error {
	n := len(a.slices)
	var vanished []string // a few names, for the error message
	var st dirStatter
	haveStat := false
	err := listDir(ctx, dir, func(f *os.File, ents []dirEnt) {
		if !haveStat {
			st, haveStat = newDirStatter(f, dir), true
		}
		if a.afterChunk != nil {
			a.afterChunk(ents)
		}
		for _, e := range ents {
			if e.IsDir || e.Special {
				// Not a message whatever its name (a directory, link, FIFO, socket or device named
				// like one): counted as ignored and named in the sample, never stat'ed through.
				// The owner of its slice moves it to bad/ unread.
				a.ignore(e.Name)
				continue
			}
			k, when, digest := parseName(e.Name)
			if k == kindForeign {
				if bytes.HasSuffix(e.Name, sufTemp) {
					a.temp++
				} else {
					a.ignore(e.Name)
				}
				continue
			}
			s := &a.slices[queue.SliceOf(digest, n)]
			switch k {
			case kindReady:
				if statReady && a.bytesLeft == 0 {
					statReady, a.bytesCapped = false, true // over BytesMaxFiles: counts and ages only
				}
				if statReady {
					if a.bytesLeft > 0 {
						a.bytesLeft--
					}
					size, _, err := st.stat(string(e.Name))
					if err != nil {
						if errors.Is(err, fs.ErrNotExist) {
							a.vanish(e.Name, &vanished)
							continue
						}
						errs.add(withHint(fmt.Errorf("stat %s: %w", filepath.Join(dir, string(e.Name)), err)))
					}
					s.bytes += size
				}
				s.ready++
				if when < s.oldestWhen {
					s.oldestWhen = when
				}
			case kindInFlight:
				_, ctime, err := st.stat(string(e.Name))
				if err != nil {
					if errors.Is(err, fs.ErrNotExist) {
						a.vanish(e.Name, &vanished)
						continue
					}
					errs.add(withHint(fmt.Errorf("stat %s: %w", filepath.Join(dir, string(e.Name)), err)))
				}
				s.inFlight++
				if !ctime.IsZero() && ctime.UnixNano() < s.oldestClaim {
					s.oldestClaim = ctime.UnixNano()
				}
			default: // a .psv lying in a queue directory
				a.ignore(e.Name)
			}
		}
		a.seen += len(ents)
		if a.progress != nil {
			a.progress(a.seen)
		}
	})
	if a.vanished > 0 {
		errs.add(fmt.Errorf("scan %s: %d %w (claimed, finished or removed meanwhile; e.g. %s)",
			dir, a.vanished, ErrVanished, strings.Join(vanished, ", ")))
	}
	return err
}

func (a *queueAcc) ignore(name []byte) {
	a.ignored++
	if len(a.ignoredSome) < MaxIgnoredSample {
		a.ignoredSome = append(a.ignoredSome, string(name))
	}
}

func (a *queueAcc) vanish(name []byte, some *[]string) {
	a.vanished++
	if len(*some) < 3 {
		*some = append(*some, string(name))
	}
}

func (a *queueAcc) fill(q *QueueSnapshot) {
	q.PerSlice = make([]SliceStats, len(a.slices))
	for i, s := range a.slices {
		out := SliceStats{Ready: s.ready, Bytes: s.bytes, InFlight: s.inFlight}
		if s.ready > 0 {
			out.OldestReady = queue.Name{When: s.oldestWhen}.Time()
		}
		if s.oldestClaim != math.MaxInt64 {
			out.OldestClaim = time.Unix(0, s.oldestClaim)
		}
		q.PerSlice[i] = out
		q.Ready += s.ready
		q.InFlight += s.inFlight
		q.Bytes += s.bytes
	}
	q.Temp, q.Ignored, q.IgnoredSome, q.Vanished = a.temp, a.ignored, a.ignoredSome, a.vanished
}
