package runner

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/errgroup"

	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/runner/proctree"
	"github.com/qslice/qslice/runner/queue"
)

// Config configures a Runner for one queue directory. Zero values select the defaults in
// DefaultConfig.
type Config struct {
	Queue       string     // queue name: a metric label and part of log lines
	Dir         *queue.Dir // the queue directory with its shunt and bad directories
	Slices      int        // slice count of the queue (every node of the cluster must agree)
	Concurrency int        // handlers running at once
	// BatchSize bounds how many of the oldest ready files one directory scan keeps. One scan costs a
	// listing of the whole directory, so a larger batch amortises it over more messages; memory is
	// O(BatchSize), never O(files in the queue).
	BatchSize int
	// PollInterval is how long the runner waits before scanning an empty queue again.
	PollInterval time.Duration

	Handler        Handler
	HandlerTimeout time.Duration // 0: no timeout
	// RawPayloads hands a file that is not a native qslice payload (a pickle Mailman wrote, say)
	// to the handler whole, with empty metadata, instead of moving it to bad. Shunting stores it
	// in the native format with the file as body; recovery after a crash moves it to bad.
	RawPayloads bool

	// LockDir is where lock files named by messages live (Meta.Lock is relative to it).
	LockDir      string
	LockTimeout  time.Duration // give up waiting for a message's lock after this; the message is retried later
	LockLifetime time.Duration // expiry written into the lock file; must exceed HandlerTimeout

	Retry RetryPolicy

	// FaultInitial and FaultMax bound the pause after a disk fault (a claim, the lock directory,
	// the shunt or bad directory failing): exponential from FaultInitial, capped at FaultMax,
	// jittered. Defaults 500ms and 1m.
	FaultInitial, FaultMax time.Duration
	// TmpMaxAge: a "*.tmp" file of an owned slice whose last change is older than this is a
	// leftover of a crashed or failed writer (ENOSPC) and is removed. Default 1h; negative: never.
	TmpMaxAge time.Duration

	// ShutdownGrace is how long running handlers may go on after Run's context is cancelled before
	// they are cancelled too; their messages are then released back to ready.
	ShutdownGrace time.Duration

	Lease    Lease // nil: ForeverLease (standalone)
	Observer Observer
	Tracer   trace.TracerProvider
	Logger   *slog.Logger
	Clock    clock.Clock // nil: the system clock
	Hostname string      // for lock files; default os.Hostname
}

// RetryPolicy is the exponential backoff for messages whose handler asked to retry later.
type RetryPolicy struct {
	Initial    time.Duration
	Max        time.Duration
	MaxElapsed time.Duration // after this the message is shunted
}

// DefaultConfig holds the defaults that Config's zero values stand for.
var DefaultConfig = Config{
	Concurrency:    2,
	BatchSize:      8192,
	PollInterval:   time.Second,
	HandlerTimeout: 5 * time.Minute,
	LockTimeout:    30 * time.Second,
	Retry:          RetryPolicy{Initial: time.Second, Max: 5 * time.Minute, MaxElapsed: time.Hour},
	ShutdownGrace:  30 * time.Second,
	FaultInitial:   500 * time.Millisecond,
	FaultMax:       time.Minute,
	TmpMaxAge:      time.Hour,
}

// Validate reports every field that makes c unusable, each a *FieldError named as the config
// file spells it (config maps them to their place in the file): the one definition of these
// rules. Call it after the defaults are applied (New does): zero values stand for defaults.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Queue: c.Queue, Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	if c.Dir == nil || c.Dir.Path == "" {
		bad("dir", "must be set to the queue directory")
	}
	if err := queue.ValidateSlices(c.Slices); err != nil {
		bad("slices", "%v", err)
	}
	if c.Handler == nil {
		bad("handler", "must be set")
	}
	if c.Concurrency < 0 {
		bad("concurrency", "must not be negative")
	}
	if c.BatchSize < 0 {
		bad("batch_size", "must not be negative")
	}
	if c.PollInterval < 0 {
		bad("poll_interval", "must be positive (%s), or an empty queue is rescanned in a busy loop", c.PollInterval)
	}
	if c.HandlerTimeout < 0 {
		bad("handler.timeout", "must not be negative (%s)", c.HandlerTimeout)
	}
	if c.LockTimeout < 0 {
		bad("lock_timeout", "must be positive (%s)", c.LockTimeout)
	}
	if c.ShutdownGrace < 0 {
		bad("shutdown_grace", "must be positive (%s)", c.ShutdownGrace)
	}
	if c.Retry.Initial < 0 {
		bad("retry.initial", "must be positive (%s)", c.Retry.Initial)
	}
	if c.Retry.Max < c.Retry.Initial {
		bad("retry.max", "must be at least retry.initial (%s), got %s", c.Retry.Initial, c.Retry.Max)
	}
	if c.Retry.MaxElapsed < 0 {
		bad("retry.max_elapsed", "must be positive (%s)", c.Retry.MaxElapsed)
	}
	if c.HandlerTimeout > 0 && c.LockLifetime > 0 && c.LockLifetime <= c.HandlerTimeout {
		bad("lock_lifetime", "(%s) must exceed handler_timeout (%s), or a lock could expire under a running handler", c.LockLifetime, c.HandlerTimeout)
	}
	return errors.Join(errs...)
}

// FieldError is one invalid field of a Config, named as the config file spells it.
type FieldError struct {
	Queue   string
	Field   string // e.g. "poll_interval", "retry.max"
	Problem string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("queue %q: %s: %s", e.Queue, e.Field, e.Problem)
}

// WithDefaults returns c with every zero field set to its default (DefaultConfig, and for the
// interfaces: ForeverLease, NopObserver, a no-op tracer, a discarding logger, time.Now).
func (c Config) WithDefaults() Config {
	c.applyDefaults()
	return c
}

func (c *Config) applyDefaults() {
	d := DefaultConfig
	if c.Concurrency == 0 {
		c.Concurrency = d.Concurrency
	}
	if c.BatchSize == 0 {
		c.BatchSize = d.BatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = d.PollInterval
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = d.LockTimeout
	}
	if c.LockLifetime == 0 {
		c.LockLifetime = c.HandlerTimeout + 30*time.Second
		if c.HandlerTimeout == 0 {
			c.LockLifetime = 15 * time.Minute
		}
	}
	if c.Retry.Initial == 0 {
		c.Retry.Initial = d.Retry.Initial
	}
	if c.Retry.Max == 0 {
		c.Retry.Max = d.Retry.Max
	}
	if c.Retry.MaxElapsed == 0 {
		c.Retry.MaxElapsed = d.Retry.MaxElapsed
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = d.ShutdownGrace
	}
	if c.FaultInitial <= 0 {
		c.FaultInitial = d.FaultInitial
	}
	if c.FaultMax <= 0 {
		c.FaultMax = d.FaultMax
	}
	if c.TmpMaxAge == 0 {
		c.TmpMaxAge = d.TmpMaxAge
	}
	if c.Lease == nil {
		c.Lease = ForeverLease{}
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
	if c.Tracer == nil {
		c.Tracer = noop.NewTracerProvider()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = clock.System{}
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
}

// Runner processes the messages of the slices it owns in one queue directory, oldest first.
//
// Invariants:
//   - A file is claimed only for a slice in the owned set, while the lease is valid, and after that
//     slice's in-flight files left by others were recovered (widening).
//   - Every claimed file is in inflight until it is finished, moved aside, released, or its handler
//     was cancelled by a lapsed lease (then it is left for the next owner's recovery, untouched).
//   - A narrowed slice is reported released only when no file of it is in flight here.
type Runner struct {
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer

	// beforeRead, when set (tests only), runs before each read of a claimed message.
	beforeRead func(queue.Name)

	mu       sync.Mutex
	owned    []bool         // by slice: claim from it
	pending  map[int]bool   // widened, waiting for recovery of in-flight files
	inflight map[string]int // base name -> slice, for every file this runner holds in flight
	count    []int          // by slice: files in flight
	waiters  []*releaseWaiter
	retries  retryHeap
	lease    *leaseGen // current lease generation; handlers started under it die with it
	skipped  map[string]bool
	wake     chan struct{}
	// fenced: the queue's filesystem does not answer here (Fence); nothing is claimed.
	fenced bool
	// abandoned: files in flight when the runner was fenced (or stopped with work stuck), whose
	// goroutines have not returned; nothing settles them. Base name -> slice.
	abandoned map[string]int
	faults    *faults
	reading   int                  // messages waiting to be read again after a read error (FaultRead)
	noClaim   map[string]time.Time // base name -> not before: files whose claim failed
}

type releaseWaiter struct {
	slices []int
	ch     chan struct{}
}

type leaseGen struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

var (
	errLeaseLost = errors.New("lease lapsed: this node can no longer prove it owns the slice")
	errShutdown  = errors.New("runner shutting down")
)

// New returns a Runner; it owns no slice until SetSlices is called.
func New(cfg Config) (*Runner, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Runner{
		cfg:      cfg,
		log:      cfg.Logger.With("queue", cfg.Queue),
		tracer:   cfg.Tracer.Tracer("github.com/qslice/qslice/runner"),
		owned:    make([]bool, cfg.Slices),
		pending:  map[int]bool{},
		inflight: map[string]int{},
		count:    make([]int, cfg.Slices),
		skipped:  map[string]bool{},
		noClaim:  map[string]time.Time{},
		wake:     make(chan struct{}, 1),
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	r.lease = &leaseGen{ctx: ctx, cancel: cancel}
	r.faults = newFaults(cfg.Queue, r.log, cfg.Observer, cfg.Clock, cfg.FaultInitial, cfg.FaultMax)
	return r, nil
}

// Queue returns the runner's queue name.
func (r *Runner) Queue() string { return r.cfg.Queue }

// Slices returns the slice count of the runner's queue.
func (r *Runner) Slices() int { return r.cfg.Slices }

// Owned returns the slices the runner currently claims from (recovered and active), in order.
func (r *Runner) Owned() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	for s, ok := range r.owned {
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// InFlight returns how many messages of each slice are in flight here.
func (r *Runner) InFlight() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.count)
}

// SetSlices replaces the owned slice set. Widening: the new slices' in-flight files (left by a
// crashed or fenced-off owner) are recovered first, then their messages are claimed. Narrowing: no
// new claim from the removed slices from now on; messages waiting for a retry are released at once;
// the returned channel is closed when no message of a removed slice is in flight here any more.
// Slices out of range are ignored with a log line.
func (r *Runner) SetSlices(want []int) <-chan struct{} {
	set := make([]bool, r.cfg.Slices)
	for _, s := range want {
		if s < 0 || s >= r.cfg.Slices {
			r.log.Error("ignoring slice out of range", "slice", s, "slices", r.cfg.Slices)
			continue
		}
		set[s] = true
	}
	r.mu.Lock()
	var removed []int
	for s := range set {
		switch {
		case set[s] && !r.owned[s] && !r.pending[s]:
			r.pending[s] = true
		case !set[s] && (r.owned[s] || r.pending[s]):
			r.owned[s] = false
			delete(r.pending, s)
			removed = append(removed, s)
		}
	}
	// Retry-waiting messages of removed slices go back to ready now rather than at their retry time.
	var giveBack []*retryEntry
	kept := r.retries[:0]
	for _, e := range r.retries {
		if !set[e.slice] {
			giveBack = append(giveBack, e)
		} else {
			kept = append(kept, e)
		}
	}
	r.retries = kept
	heap.Init(&r.retries)
	w := &releaseWaiter{slices: removed, ch: make(chan struct{})}
	r.waiters = append(r.waiters, w)
	r.mu.Unlock()

	for _, e := range giveBack {
		e.timer.Stop()
		r.readDone(item{retry: e})
		r.giveBack(e.name, e.slice)
		r.cfg.Observer.Handled(r.cfg.Queue, e.slice, OutcomeReleased, 0)
		r.done(e.name.Base, e.slice)
	}
	r.mu.Lock()
	r.notifyWaitersLocked()
	r.mu.Unlock()
	r.poke()
	return w.ch
}

func (r *Runner) notifyWaitersLocked() {
	kept := r.waiters[:0]
	for _, w := range r.waiters {
		busy := false
		for _, s := range w.slices {
			if r.count[s] > 0 && !r.owned[s] && !r.pending[s] {
				busy = true
				break
			}
		}
		if busy {
			kept = append(kept, w)
		} else {
			close(w.ch)
		}
	}
	r.waiters = kept
}

func (r *Runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Runner) leaseValid() bool {
	return r.cfg.Clock.Now().Before(r.cfg.Lease.ValidUntil())
}

// Run processes messages until ctx is cancelled. Then it stops claiming, lets running handlers finish
// for up to ShutdownGrace, cancels the rest and releases their messages, and returns nil.
func (r *Runner) Run(ctx context.Context) error {
	shutdownCtx, cancelShutdown := context.WithCancelCause(context.WithoutCancel(ctx))
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.NewTimer(r.cfg.ShutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelShutdown(errShutdown)
		case <-shutdownCtx.Done():
		}
	})
	defer stopGrace()
	defer cancelShutdown(errShutdown)

	// Handlers (exec commands, persistent workers and their children) of an earlier qslice on
	// this host that died (SIGKILL, OOM) may still run; their messages may be recovered and run
	// again here or elsewhere: kill them first. Whatever the handler kind: a Go handler may be a
	// pool of processes too.
	{
		kctx, cancel := context.WithTimeout(ctx, killWait)
		n, err := proctree.KillOrphans(kctx)
		cancel()
		if err != nil {
			r.log.Error("could not kill the handler processes of a dead qslice", "err", err)
		} else if n > 0 {
			r.log.Warn("killed handler processes left by a qslice that died", "killed", n)
		}
	}
	// A small buffer keeps workers busy while the dispatcher moves on; items are re-checked against
	// the owned set and the lease when a worker takes them, so a buffer never outlives a narrowing.
	work := make(chan item, r.cfg.Concurrency)
	g, gctx := errgroup.WithContext(ctx)
	var workers sync.WaitGroup
	for i := 0; i < r.cfg.Concurrency; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			var buf []byte // reused for every message this worker reads
			for it := range work {
				buf = r.process(ctx, shutdownCtx, it, buf)
			}
		}()
	}
	// The lease is watched until the last handler returned, not only until ctx ends: handlers
	// finishing within the shutdown grace must still die when the lease lapses.
	leaseCtx, stopLease := context.WithCancel(context.WithoutCancel(ctx))
	leaseDone := make(chan struct{})
	go func() {
		defer close(leaseDone)
		_ = r.watchLease(leaseCtx)
	}()
	g.Go(func() error {
		defer close(work)
		return r.dispatch(gctx, work)
	})
	finished := make(chan error, 1)
	go func() { // joined below, or left behind when blocked in the filesystem
		err := g.Wait()
		workers.Wait()
		finished <- err
	}()
	var err error
	select {
	case err = <-finished:
	case <-ctx.Done():
		t := time.NewTimer(r.cfg.ShutdownGrace + StuckSlack)
		select {
		case err = <-finished:
			t.Stop()
		case <-t.C:
			// Handlers were cancelled at the end of the grace; whoever has not returned since is
			// blocked in the filesystem. Stop anyway, leaving their files in flight.
			stopLease()
			<-leaseDone
			r.abandonStuck()
			return nil
		}
	}
	stopLease()
	<-leaseDone
	cancelShutdown(errShutdown)
	r.releaseRetries()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// StuckSlack is how long Run waits past ShutdownGrace for handlers it cancelled and for
// directory listings to return before it stops without them: a cancelled handler's process
// group is killed at once, so only a goroutine blocked in the filesystem takes longer.
const StuckSlack = 2 * time.Second

// abandonStuck is Run's last act when work is stuck in the filesystem at shutdown: it abandons
// every message still in flight here (nothing settles it later) and says what it left behind.
func (r *Runner) abandonStuck() {
	r.mu.Lock()
	if r.abandoned == nil {
		r.abandoned = map[string]int{}
	}
	var names []string
	for base, s := range r.inflight {
		r.abandoned[base] = s
		r.count[s]--
		names = append(names, base)
	}
	clear(r.inflight)
	for _, e := range r.retries {
		e.timer.Stop()
	}
	r.retries = r.retries[:0]
	r.notifyWaitersLocked()
	r.mu.Unlock()
	slices.Sort(names)
	r.log.Error("stopped with work stuck in the filesystem: these messages stay in flight for the next owner's recovery",
		"in_flight_left", len(names), "files", names, "waited", r.cfg.ShutdownGrace+StuckSlack)
}

// releaseRetries returns every message waiting for a retry to ready (at shutdown).
func (r *Runner) releaseRetries() {
	r.mu.Lock()
	entries := slices.Clone(r.retries)
	r.retries = r.retries[:0]
	r.mu.Unlock()
	for _, e := range entries {
		e.timer.Stop()
		r.readDone(item{retry: e})
		r.giveBack(e.name, e.slice)
		r.done(e.name.Base, e.slice)
	}
}

// watchLease cancels the current lease generation, and so every handler started under it, as soon
// as the lease lapses, and starts a new generation when it is valid again. It runs until every
// handler has returned (Run stops it then).
func (r *Runner) watchLease(ctx context.Context) error {
	const tick = 50 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	// A node starts without a lease under Consul: that is not a lapse worth a warning.
	lapsed := !r.leaseValid()
	if lapsed {
		r.mu.Lock()
		r.lease.cancel(errLeaseLost)
		r.mu.Unlock()
		r.log.Info("waiting for a lease before claiming")
	}
	for {
		valid := r.leaseValid()
		switch {
		case !valid:
			lapsed = true
			// Cancel whatever generation is live, even if this watcher saw no valid lease since
			// the last lapse: a claim may have started a new one in between (liveLeaseLocked).
			r.mu.Lock()
			live := r.lease.ctx.Err() == nil
			if live {
				r.lease.cancel(errLeaseLost)
			}
			n := len(r.inflight)
			r.mu.Unlock()
			if live {
				r.log.Warn("lease lapsed: stopped claiming and cancelled running handlers; their files stay in flight for the next owner to recover", "in_flight", n)
			}
		case valid && lapsed:
			lapsed = false
			r.mu.Lock()
			r.liveLeaseLocked()
			r.mu.Unlock()
			r.log.Info("lease valid: claiming")
			r.poke()
		}
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.lease.cancel(errShutdown)
			r.mu.Unlock()
			return nil
		case <-t.C:
		}
	}
}

// liveLeaseLocked returns the lease generation a handler may start under, or nil when the lease
// is not valid now (or the runner is shutting down). A generation cancelled because the lease
// lapsed is replaced as soon as the lease is valid again, by whichever of this and watchLease
// sees it first: a message claimed under the cancelled generation would have its handler
// cancelled before it ran, and its file left in flight with nobody to recover it while this node
// keeps the slice. There is only ever one live generation, so a lapse cancels every handler.
// r.mu must be held.
func (r *Runner) liveLeaseLocked() *leaseGen {
	if r.fenced || !r.leaseValid() {
		return nil
	}
	if cause := context.Cause(r.lease.ctx); errors.Is(cause, errLeaseLost) || errors.Is(cause, errFenced) {
		c, cancel := context.WithCancelCause(context.Background())
		r.lease = &leaseGen{ctx: c, cancel: cancel}
	}
	if r.lease.ctx.Err() != nil {
		return nil
	}
	return r.lease
}

type item struct {
	name  queue.Name
	slice int
	retry *retryEntry // set when this is a retry of a message already in flight here
}

// dispatch scans the directory for the oldest ready files of owned slices and feeds them to the
// workers; between batches it recovers widened slices and hands out due retries.
func (r *Runner) dispatch(ctx context.Context, work chan<- item) error {
	for {
		if ctx.Err() != nil {
			return nil
		}
		if !r.leaseValid() || r.Fenced() {
			if !r.sleep(ctx, 100*time.Millisecond) {
				return nil
			}
			continue
		}
		if d := r.faults.wait(); d > 0 {
			// A disk fault: no claim before its backoff has passed. Only the context ends the
			// pause early; pokes (slice changes, retries) wait for it too.
			if !clock.Sleep(ctx, r.cfg.Clock, d) {
				return nil
			}
			continue
		}
		r.recoverPending(ctx)
		for _, e := range r.dueRetries() {
			select {
			case work <- item{name: e.name, slice: e.slice, retry: e}:
			case <-ctx.Done():
				r.requeueRetry(e)
				return nil
			}
		}
		batch, err := r.scan()
		if err != nil {
			r.faults.report(FaultScan, fmt.Errorf("list %s: %w", r.cfg.Dir.Path, err))
			continue
		}
		r.faults.clear(FaultScan)
		if len(batch) == 0 {
			if !r.sleep(ctx, r.untilNextRetry(r.cfg.PollInterval)) {
				return nil
			}
			continue
		}
	batch:
		for _, n := range batch {
			select {
			case <-r.wake:
				// Slices changed or a retry is due: start over from the top of the loop, which
				// recovers widened slices and hands out due retries before scanning again.
				break batch
			default:
			}
			if r.faults.wait() > 0 {
				break batch
			}
			select {
			case work <- item{name: n, slice: queue.SliceOf(n.Digest, r.cfg.Slices)}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

func (r *Runner) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-r.wake:
		return true
	case <-t.C:
		return true
	}
}

// scan lists the directory once and returns the oldest BatchSize ready files of owned slices, oldest
// first. Memory is O(BatchSize) whatever the directory holds: names are classified in the listing's
// buffer and copied only when they enter the batch.
func (r *Runner) scan() ([]queue.Name, error) {
	r.mu.Lock()
	owned := slices.Clone(r.owned)
	now := r.cfg.Clock.Now()
	for b, until := range r.noClaim {
		if !now.Before(until) {
			delete(r.noClaim, b)
		}
	}
	avoid := len(r.noClaim) > 0
	r.mu.Unlock()
	if !slices.Contains(owned, true) {
		return nil, nil
	}
	h := &nameHeap{}
	limit := r.cfg.BatchSize
	var tmpOld float64 // names whose time is before this may be leftovers
	if r.cfg.TmpMaxAge > 0 {
		tmpOld = float64(r.cfg.Clock.Now().Add(-r.cfg.TmpMaxAge).UnixNano()) / 1e9
	}
	err := queue.List(context.Background(), r.cfg.Dir.Path, func(f *os.File, ents []queue.Entry) {
		for _, e := range ents {
			k, when, digest := queue.ClassifyName(e.Name)
			if k != queue.KindReady {
				if k == queue.KindForeign && !isExpectedOther(e.Name) {
					r.noteSkipped(e.Name)
				} else if k == queue.KindForeign && tmpOld > 0 {
					r.cleanTmp(f, e.Name, tmpOld, owned)
				}
				continue
			}
			if !owned[queue.SliceOf(digest, r.cfg.Slices)] {
				continue
			}
			if h.Len() >= limit && !older(when, e.Name, (*h)[0]) {
				continue
			}
			n := queue.Name{Base: string(e.Name[:len(e.Name)-len(queue.SuffixReady)]), When: when, Digest: digest, Suffix: queue.SuffixReady}
			if avoid && r.claimAvoided(n.Base) {
				continue
			}
			if h.Len() < limit {
				heap.Push(h, n)
			} else {
				(*h)[0] = n
				heap.Fix(h, 0)
			}
		}
	})
	out := make([]queue.Name, h.Len())
	for i := len(out) - 1; i >= 0; i-- {
		out[i] = heap.Pop(h).(queue.Name)
	}
	return out, err
}

// isExpectedOther reports foreign names that are a normal part of a queue directory's life:
// temporaries of files being written or recovered, and the records of handlers' processes.
func isExpectedOther(file []byte) bool {
	return bytes.HasSuffix(file, []byte(".tmp")) || bytes.HasSuffix(file, []byte(queue.SuffixProcs))
}

// maxNoClaim bounds the names remembered as failing to claim.
const maxNoClaim = 10000

// avoidClaim keeps a file whose claim failed out of the next scans for FaultMax, so that one
// file the directory refuses to rename (say a directory sits under its in-flight name) cannot
// keep the queue's other files waiting; a fault of the whole directory still backs off.
func (r *Runner) avoidClaim(base string) {
	r.mu.Lock()
	if len(r.noClaim) < maxNoClaim {
		r.noClaim[base] = r.cfg.Clock.Now().Add(r.cfg.FaultMax)
	}
	r.mu.Unlock()
}

func (r *Runner) claimAvoided(base string) bool {
	r.mu.Lock()
	_, ok := r.noClaim[base]
	r.mu.Unlock()
	return ok
}

// cleanTmp removes "<base>.pck.tmp" or "<base>.bak.tmp" of an owned slice when it was last changed
// more than TmpMaxAge ago: a writer that crashed or failed (ENOSPC) left it, and nothing else ever
// renames or reads it. The time in the name is checked first (it is never after the file's
// mtime), so a young name costs nothing; an old one costs one fstatat.
func (r *Runner) cleanTmp(dir *os.File, name []byte, before float64, owned []bool) {
	base, ok := bytes.CutSuffix(name, []byte(".tmp"))
	if !ok {
		return
	}
	k, when, digest := queue.ClassifyName(base)
	if (k != queue.KindReady && k != queue.KindInFlight) || when >= before || !owned[queue.SliceOf(digest, r.cfg.Slices)] {
		return
	}
	file := string(name)
	mtime, err := mtimeAt(dir, file)
	if err != nil || float64(mtime.UnixNano())/1e9 >= before {
		return
	}
	path := filepath.Join(r.cfg.Dir.Path, file)
	if err := os.Remove(path); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("could not remove a leftover temporary file", "file", path, "err", err)
		}
		return
	}
	r.log.Info("removed a leftover temporary file (a writer crashed or failed)", "file", path, "modified", mtime)
	r.cfg.Observer.Skipped(r.cfg.Queue, "tmp_removed")
}

// maxSkippedNames bounds the memory spent remembering foreign files already reported.
const maxSkippedNames = 10000

// noteSkipped logs and counts a file the runner will not touch, once per name; past
// maxSkippedNames distinct names, new ones are no longer reported.
func (r *Runner) noteSkipped(name []byte) {
	r.mu.Lock()
	seen := r.skipped[string(name)] || len(r.skipped) >= maxSkippedNames
	if !seen {
		r.skipped[string(name)] = true
	}
	r.mu.Unlock()
	if seen {
		return
	}
	file := string(name)
	why, reason := "foreign file name", "foreign"
	if _, err := queue.ParseName(file); err != nil && !errors.Is(err, queue.ErrForeign) {
		why, reason = err.Error(), "malformed"
	}
	r.log.Warn("skipping a file that is not a queue message; it is left in place", "file", filepath.Join(r.cfg.Dir.Path, file), "reason", why)
	r.cfg.Observer.Skipped(r.cfg.Queue, reason)
}

// older orders by the time in the name, then by name: the message (when, file) against b.
func older(when float64, file []byte, b queue.Name) bool {
	if when != b.When {
		return when < b.When
	}
	return string(file[:len(file)-len(queue.SuffixReady)]) < b.Base
}

// nameHeap is a max-heap on age order: its root is the youngest of the kept names.
type nameHeap []queue.Name

func (h nameHeap) Len() int { return len(h) }
func (h nameHeap) Less(i, j int) bool {
	if h[i].When != h[j].When {
		return h[i].When > h[j].When
	}
	return h[i].Base > h[j].Base
}
func (h nameHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *nameHeap) Push(x any)   { *h = append(*h, x.(queue.Name)) }
func (h *nameHeap) Pop() any {
	old := *h
	n := old[len(old)-1]
	*h = old[:len(old)-1]
	return n
}

// recoverPending recovers the in-flight files of widened slices and then starts claiming from them.
// Files this runner itself holds in flight are left alone.
func (r *Runner) recoverPending(ctx context.Context) {
	r.mu.Lock()
	if len(r.pending) == 0 {
		r.mu.Unlock()
		return
	}
	pend := make([]bool, r.cfg.Slices)
	var list []int
	for s := range r.pending {
		pend[s] = true
		list = append(list, s)
	}
	r.mu.Unlock()
	slices.Sort(list)

	var found []queue.Name
	err := queue.ScanNames(r.cfg.Dir.Path, func(file string) error {
		if !strings.HasSuffix(file, queue.SuffixInFlight) {
			return nil
		}
		n, err := queue.ParseName(file)
		if err != nil {
			r.noteSkipped([]byte(file))
			return nil
		}
		if pend[queue.SliceOf(n.Digest, r.cfg.Slices)] {
			found = append(found, n)
		}
		return nil
	})
	if err != nil {
		// Not promoting the slices keeps them safe: nothing is claimed until recovery succeeded.
		r.log.Error("recovering in-flight files of new slices failed; will retry before claiming from them", "dir", r.cfg.Dir.Path, "slices", list, "err", err)
		return
	}
	now := r.cfg.Clock.Now()
	var requeued, bad, failed int
	for _, n := range found {
		if ctx.Err() != nil || !r.leaseValid() {
			return
		}
		s := queue.SliceOf(n.Digest, r.cfg.Slices)
		r.mu.Lock()
		_, mine := r.inflight[n.Base]
		if _, stuck := r.abandoned[n.Base]; stuck {
			mine = true // its earlier handling here is still blocked in the filesystem
		}
		stillPending := r.pending[s]
		r.mu.Unlock()
		if mine || !stillPending {
			continue
		}
		if err := r.killSurvivors(ctx, n, s); err != nil {
			r.log.Error("processes of an earlier handling of an in-flight file survive; it stays in flight and is not run again yet", "file", filepath.Join(r.cfg.Dir.Path, n.FileName(queue.SuffixInFlight)), "slice", s, "err", err)
			continue
		}
		res, err := r.cfg.Dir.Recover(n, now)
		switch {
		case errors.Is(err, queue.ErrGone):
		case err != nil:
			failed++
			r.log.Error("could not recover an in-flight file; it stays where it is", "file", filepath.Join(r.cfg.Dir.Path, n.FileName(queue.SuffixInFlight)), "slice", s, "err", err)
			r.cfg.Observer.Recovered(r.cfg.Queue, s, "failed")
		case res == queue.MovedBad:
			bad++
			r.log.Warn("moved an in-flight file to bad: attempts exhausted or unreadable", "file", n.Base, "slice", s, "bad_dir", r.cfg.Dir.BadDir)
			r.cfg.Observer.Recovered(r.cfg.Queue, s, "bad")
		default:
			requeued++
			r.log.Info("recovered an in-flight file left by a crashed or fenced-off runner", "file", n.Base, "slice", s)
			r.cfg.Observer.Recovered(r.cfg.Queue, s, "requeued")
		}
	}
	r.mu.Lock()
	var promoted []int
	for _, s := range list {
		if r.pending[s] {
			delete(r.pending, s)
			r.owned[s] = true
			promoted = append(promoted, s)
		}
	}
	r.mu.Unlock()
	if len(promoted) > 0 {
		r.log.Info("slices active", "slices", promoted, "requeued", requeued, "moved_bad", bad, "recover_failed", failed)
	}
}

// done forgets an in-flight file and wakes release waiters.
func (r *Runner) done(base string, slice int) {
	r.mu.Lock()
	if _, ok := r.inflight[base]; ok {
		delete(r.inflight, base)
		r.count[slice]--
	} else if _, ok := r.abandoned[base]; ok {
		delete(r.abandoned, base) // counted released when it was abandoned
	}
	r.notifyWaitersLocked()
	r.mu.Unlock()
}
