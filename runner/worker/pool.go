package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/propagation"

	"github.com/qslice/qslice/internal/clock"

	"github.com/qslice/qslice/runner"
)

// Config configures the worker pool of one queue.
type Config struct {
	Queue   string
	Command []string // program and arguments of the worker
	Dir     string   // working directory; empty: qslice's
	Env     []string // extra environment, KEY=VALUE

	Workers  int // worker processes (the queue's concurrency)
	InFlight int // messages in flight per worker process at most (pipelining); default 16

	// HandshakeTimeout bounds the wait for a new worker's ready frame.
	HandshakeTimeout time.Duration
	// StopGrace is how long a worker may take to exit after its stdin was closed (shutdown) before
	// its process group is killed.
	StopGrace time.Duration
	// MaxKills: a message in flight on a worker that died (or was killed for this message's
	// timeout) this many times is shunted instead of retried again. Default 3.
	MaxKills int
	// Restart backoff after a crash (exit nobody asked for, protocol error, failed handshake):
	// RestartInitial doubling up to RestartMax; reset once a worker answers.
	RestartInitial, RestartMax time.Duration
	// CrashLoop consecutive crashes without an answer in between make the pool critical (the
	// queue's slices report critical health, so in a cluster they move to another node).
	CrashLoop int
	// StableAfter: a worker that lived this long before it crashed ends a crash streak.
	StableAfter time.Duration

	Lease   runner.Lease // workers are stopped while it is not valid; nil: runner.ForeverLease
	Metrics *Metrics     // nil: none
	Logger  *slog.Logger
	Clock   clock.Clock // nil: the system clock
}

// Defaults for Config's zero values.
const (
	DefaultInFlight         = 16
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultStopGrace        = 10 * time.Second
	DefaultMaxKills         = 3
	DefaultRestartInitial   = 100 * time.Millisecond
	DefaultRestartMax       = 30 * time.Second
	DefaultCrashLoop        = 3
	DefaultStableAfter      = 30 * time.Second
)

// leaseTick is how often the pool checks the lease; the runner checks at the same rate, and kills
// the workers of in-flight messages itself when it sees the lapse first.
const leaseTick = 50 * time.Millisecond

func (c *Config) applyDefaults() {
	if c.Workers == 0 {
		c.Workers = runner.DefaultConfig.Concurrency
	}
	if c.InFlight == 0 {
		c.InFlight = DefaultInFlight
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.StopGrace == 0 {
		c.StopGrace = DefaultStopGrace
	}
	if c.MaxKills == 0 {
		c.MaxKills = DefaultMaxKills
	}
	if c.RestartInitial == 0 {
		c.RestartInitial = DefaultRestartInitial
	}
	if c.RestartMax == 0 {
		c.RestartMax = DefaultRestartMax
	}
	if c.CrashLoop == 0 {
		c.CrashLoop = DefaultCrashLoop
	}
	if c.StableAfter == 0 {
		c.StableAfter = DefaultStableAfter
	}
	if c.Lease == nil {
		c.Lease = runner.ForeverLease{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = clock.System{}
	}
}

// Validate reports what makes c unusable.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Command) == 0 || c.Command[0] == "" {
		errs = append(errs, errors.New("worker: must name a command, e.g. [\"/usr/bin/python3\", \"/srv/worker.py\"]"))
	}
	if c.Workers < 0 {
		errs = append(errs, errors.New("concurrency: must not be negative"))
	}
	if c.InFlight < 0 || c.InFlight > 1024 {
		errs = append(errs, fmt.Errorf("in_flight: must be between 1 and 1024 (got %d)", c.InFlight))
	}
	return errors.Join(errs...)
}

// RunnerConcurrency is the runner concurrency that keeps every worker's pipeline full: one runner
// goroutine per message in flight.
func (c Config) RunnerConcurrency() int {
	c.applyDefaults()
	return c.Workers * c.InFlight
}

// Pool keeps Workers long-lived worker processes of one queue and hands them messages; it is the
// runner.Handler of a queue configured with handler.worker.
//
// Invariants:
//   - Every message handed to Handle gets exactly one result: the worker's answer, or an error
//     when the worker ended first (then the message is retried, or shunted after MaxKills).
//   - A Handle call whose context ends (timeout, lapsed lease, shutdown past the grace) kills the
//     worker the message is on, so nothing of that handling outlives the call.
//   - While the lease is not valid no worker runs: running ones are killed, none is started.
//   - After Run returned no worker process of the pool is left.
type Pool struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	procs    []*proc // by slot; nil while not running or not ready
	avail    chan struct{}
	waiting  int
	kills    map[string]int // message base name -> worker ends while it was in flight
	streak   int            // consecutive crashes without an answer in between
	lastWhy  string
	critical bool
	started  []bool // by slot: a worker was started there before (the next start is a restart)
	restarts int
	protoErr string    // the last protocol error, for the status page
	protoAt  time.Time // when it happened
}

// Status is what the status page and /api/status show of a pool.
type Status struct {
	Queue               string
	Workers             int       // the pool's size (the queue's concurrency)
	Live                []int     // pids of the worker processes ready now, by slot
	Restarts            int       // worker processes started again after one ended (crashes and kills)
	CrashLoop           bool      // the queue's slices report critical (see Health)
	CrashLoopReason     string    // why, while CrashLoop
	LastProtocolError   string    // the last breach of the protocol by a worker, "" if none
	LastProtocolErrorAt time.Time // when
}

var _ runner.Handler = (*Pool)(nil)

// New returns a pool; Run starts its workers.
func New(cfg Config) (*Pool, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("queue %q: %w", cfg.Queue, err)
	}
	return &Pool{cfg: cfg, log: cfg.Logger.With("queue", cfg.Queue), procs: make([]*proc, cfg.Workers),
		started: make([]bool, cfg.Workers), avail: make(chan struct{}), kills: map[string]int{}}, nil
}

// Run keeps the workers running until ctx is cancelled, then stops them (stdin closed, StopGrace,
// then their process groups killed) and returns when none is left. Stop the runner first: a worker
// stopped under a running handler counts it as ended.
func (p *Pool) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i := range p.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.runSlot(ctx, i)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.watchLease(ctx)
	}()
	wg.Wait()
	return nil
}

func (p *Pool) leaseValid() bool { return p.cfg.Clock.Now().Before(p.cfg.Lease.ValidUntil()) }

// watchLease kills every worker as soon as the lease lapses: none of their work may overlap the
// next owner's.
func (p *Pool) watchLease(ctx context.Context) {
	t := time.NewTicker(leaseTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if p.leaseValid() {
			continue
		}
		p.mu.Lock()
		live := make([]*proc, 0, len(p.procs))
		for _, pr := range p.procs {
			if pr != nil {
				live = append(live, pr)
			}
		}
		p.mu.Unlock()
		for _, pr := range live {
			pr.kill(ExitLeaseLapsed, errors.New("the node's lease lapsed"))
		}
	}
}

// runSlot keeps one worker process running: start, handshake, serve until it ends, restart with
// backoff after a crash. While the lease is not valid it starts none.
func (p *Pool) runSlot(ctx context.Context, i int) {
	delay := p.cfg.RestartInitial
	log := p.log.With("worker", i)
	for {
		for !p.leaseValid() {
			if !clock.Sleep(ctx, p.cfg.Clock, leaseTick) {
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		started := p.cfg.Clock.Now()
		p.mu.Lock()
		if p.started[i] {
			p.restarts++
		}
		p.started[i] = true
		p.mu.Unlock()
		pr, err := startProc(&p.cfg, i, log)
		if err == nil {
			p.cfg.Metrics.started(p.cfg.Queue)
			err = pr.handshake(&p.cfg, p.cfg.HandshakeTimeout)
			if err != nil {
				<-pr.exited
			}
		}
		if err != nil {
			p.noteProtocolError(err)
			p.cfg.Metrics.exited(p.cfg.Queue, ExitHandshake)
			p.crashed(log, fmt.Sprintf("worker did not start: %v", err), false)
			if !clock.Sleep(ctx, p.cfg.Clock, delay) {
				return
			}
			delay = min(2*delay, p.cfg.RestartMax)
			continue
		}
		log.Info("worker ready", "pid", pr.pgid, "in_flight", pr.maxInFlight)
		p.setProc(i, pr)
		// A worker that runs StableAfter without ending works, messages or not: that ends a
		// crash loop even on a node whose slices moved away because of it.
		stable := p.cfg.Clock.NewTimer(p.cfg.StableAfter)
	serve:
		for {
			select {
			case <-pr.done:
				break serve
			case <-ctx.Done():
				pr.stop(p.cfg.StopGrace)
				<-pr.done
				break serve
			case <-stable.C():
				p.streakOver("a worker has run " + p.cfg.StableAfter.String() + " without ending")
			}
		}
		stable.Stop()
		p.setProc(i, nil)
		reason, err, answered := pr.outcome()
		p.cfg.Metrics.exited(p.cfg.Queue, reason)
		p.noteProtocolError(err)
		lived := p.cfg.Clock.Now().Sub(started)
		switch {
		case reason == ExitStopped:
			log.Info("worker stopped", "pid", pr.pgid, "exit", pr.waitExit(0))
			return
		case crash(reason):
			log.Error("worker crashed; restarting it after a backoff", "pid", pr.pgid, "reason", reason, "err", err, "exit", pr.waitExit(0), "lived", lived.Round(time.Millisecond), "backoff", delay)
			if answered || lived >= p.cfg.StableAfter {
				delay = p.cfg.RestartInitial
			}
			p.crashed(log, fmt.Sprintf("%s: %v", reason, err), answered || lived >= p.cfg.StableAfter)
			if !clock.Sleep(ctx, p.cfg.Clock, delay) {
				return
			}
			delay = min(2*delay, p.cfg.RestartMax)
		default:
			log.Warn("worker killed; restarting it", "pid", pr.pgid, "reason", reason, "err", err)
			if answered {
				delay = p.cfg.RestartInitial
			}
		}
	}
}

// crashed counts a crash towards the crash loop; fresh: the worker had worked before it crashed.
func (p *Pool) crashed(log *slog.Logger, why string, fresh bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if fresh {
		p.streak = 0
	}
	p.streak++
	p.lastWhy = why
	if p.streak >= p.cfg.CrashLoop && !p.critical {
		p.critical = true
		log.Error("worker crash loop: the queue's slices report critical health until a worker answers again", "crashes", p.streak, "last", why)
		p.cfg.Metrics.crashLoop(p.cfg.Queue, true)
		p.signalLocked()
	}
}

// streakOver ends a crash streak (and a crash loop): a worker answered, or ran StableAfter.
func (p *Pool) streakOver(why string) {
	p.mu.Lock()
	if p.streak == 0 {
		p.mu.Unlock()
		return
	}
	p.streak = 0
	was := p.critical
	p.critical = false
	if was {
		// Under the lock, as at the loop's onset: a reader that sees the health passing must see
		// the gauge at 0 too (TestCrashLoopEndsOnceAWorkerRuns caught them apart).
		p.cfg.Metrics.crashLoop(p.cfg.Queue, false)
	}
	p.mu.Unlock()
	if was {
		p.log.Info("worker crash loop over: " + why)
	}
}

// noteProtocolError counts err if it is a protocol error, and keeps it for Status.
func (p *Pool) noteProtocolError(err error) {
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		return
	}
	p.cfg.Metrics.protocolError(p.cfg.Queue, pe.Kind)
	p.mu.Lock()
	p.protoErr, p.protoAt = err.Error(), p.cfg.Clock.Now()
	p.mu.Unlock()
}

// Status returns a snapshot of the pool.
func (p *Pool) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Status{Queue: p.cfg.Queue, Workers: p.cfg.Workers, Live: []int{}, Restarts: p.restarts,
		CrashLoop: p.critical, LastProtocolError: p.protoErr, LastProtocolErrorAt: p.protoAt}
	for _, pr := range p.procs {
		if pr != nil {
			st.Live = append(st.Live, pr.pgid)
		}
	}
	if p.critical {
		st.CrashLoopReason = fmt.Sprintf("%d crashes in a row without an answer; last: %s", p.streak, p.lastWhy)
	}
	return st
}

// Health reports whether the pool is in a crash loop, and why.
func (p *Pool) Health() (critical bool, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.critical {
		return false, ""
	}
	return true, fmt.Sprintf("worker crash loop: %d crashes in a row without an answer; last: %s", p.streak, p.lastWhy)
}

// Ready returns how many worker processes are ready now.
func (p *Pool) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pr := range p.procs {
		if pr != nil {
			n++
		}
	}
	return n
}

func (p *Pool) setProc(i int, pr *proc) {
	p.mu.Lock()
	p.procs[i] = pr
	n := 0
	for _, x := range p.procs {
		if x != nil {
			n++
		}
	}
	p.signalLocked()
	p.mu.Unlock()
	p.cfg.Metrics.ready(p.cfg.Queue, n)
}

// signalLocked wakes Handle calls waiting for a place on a worker.
func (p *Pool) signalLocked() {
	if p.waiting > 0 {
		close(p.avail)
		p.avail = make(chan struct{})
	}
}

// pick reserves a place on the least loaded ready worker, or returns a channel that is closed when
// one may have become free, or neither when no worker is ready and the pool is in a crash loop.
func (p *Pool) pick() (*proc, *call, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		var best *proc
		bestLoad := 0
		for _, pr := range p.procs {
			if pr == nil {
				continue
			}
			n, limit, ok := pr.load()
			if ok && n < limit && (best == nil || n < bestLoad) {
				best, bestLoad = pr, n
			}
		}
		if best == nil {
			if p.critical {
				return nil, nil, nil
			}
			p.waiting++
			return nil, nil, p.avail
		}
		if c, ok := best.reserve(); ok {
			return best, c, nil
		}
	}
}

// Handle implements runner.Handler: it sends m to a worker and waits for its answer. done is nil,
// retry wraps runner.ErrRetry (with the worker's delay, if any), fail is an error with the
// worker's reason. A worker that ends before answering makes it a retry (after MaxKills, a
// failure). When ctx ends first the worker is killed.
func (p *Pool) Handle(ctx context.Context, m *runner.Message) error {
	var pr *proc
	var c *call
	for {
		var wait <-chan struct{}
		pr, c, wait = p.pick()
		if c != nil {
			break
		}
		if wait == nil {
			// Crash loop: the message waits for a retry (released at once at shutdown or when
			// its slice moves) rather than for a worker that may never come.
			_, why := p.Health()
			return fmt.Errorf("%w: no worker: %s", runner.ErrRetry, why)
		}
		select {
		case <-wait:
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
		case <-ctx.Done():
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
			return fmt.Errorf("%w: no worker became ready: %w", runner.ErrRetry, context.Cause(ctx))
		}
	}
	pr.send(c, header(ctx, m), m.Body)
	var res result
	select {
	case res = <-c.res:
	case <-ctx.Done():
		reason := ExitCancelled
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			reason = ExitTimeout
		case !p.leaseValid():
			reason = ExitLeaseLapsed
		}
		pr.kill(reason, fmt.Errorf("message %s: %w", m.Name.Base, context.Cause(ctx)))
		res = <-c.res
		if res.err != nil && reason == ExitTimeout && !res.final {
			return p.ended(m, fmt.Errorf("worker killed: %w", context.Cause(ctx)), true)
		}
	}
	p.mu.Lock()
	p.signalLocked()
	p.mu.Unlock()
	if res.err != nil && res.final {
		return res.err // shunted: a retry could overlap the survivors
	}
	if res.err != nil {
		ownFault := false
		if r, _, _ := pr.outcome(); crash(r) {
			ownFault = true // nobody knows which message crashed it: each in flight counts
		}
		return p.ended(m, res.err, ownFault)
	}
	p.streakOver("a worker answered")
	p.forget(m)
	a := res.answer
	switch a.Type {
	case TypeDone:
		return nil
	case TypeRetry:
		why := a.Reason
		if why == "" {
			why = "the worker asked to retry later"
		}
		if a.Delay != nil {
			return runner.RetryAfter(time.Duration(*a.Delay*float64(time.Second)), errors.New(why))
		}
		return fmt.Errorf("%w: %s", runner.ErrRetry, why)
	default:
		why := a.Reason
		if why == "" {
			why = "the worker failed the message without a reason"
		}
		return errors.New(why)
	}
}

// ended turns a worker's end under message m into a retry, or into a failure once m was in flight
// on MaxKills ended workers (counted only when count: this message's timeout, or a crash).
func (p *Pool) ended(m *runner.Message, err error, count bool) error {
	p.mu.Lock()
	p.signalLocked()
	n := p.kills[m.Name.Base]
	if count {
		n++
		if len(p.kills) > 100_000 { // bound the memory of messages that moved elsewhere
			clear(p.kills)
		}
		p.kills[m.Name.Base] = n
	}
	if n >= p.cfg.MaxKills {
		delete(p.kills, m.Name.Base)
	}
	p.mu.Unlock()
	if n >= p.cfg.MaxKills {
		return fmt.Errorf("the worker ended %d times while handling this message; last: %w", n, err)
	}
	return fmt.Errorf("%w: %w", runner.ErrRetry, err)
}

func (p *Pool) forget(m *runner.Message) {
	p.mu.Lock()
	if len(p.kills) > 0 {
		delete(p.kills, m.Name.Base)
	}
	p.mu.Unlock()
}

// header builds a message frame's header: the metadata of runner.Env, field for field.
func header(ctx context.Context, m *runner.Message) *Header {
	h := &Header{Type: TypeMessage, Queue: m.Queue, Slice: m.Slice, Slices: m.Slices, MessageID: m.Name.Base,
		Enqueued: m.Meta.Enqueued.UTC().Format(time.RFC3339Nano), Attempts: m.Meta.Attempts, Retry: m.Retry,
		Lock: m.Meta.Lock, FencingToken: m.FencingToken, Meta: m.Meta.Extra}
	if !m.LeaseDeadline.IsZero() {
		h.LeaseDeadline = m.LeaseDeadline.UTC().Format(time.RFC3339Nano)
	}
	var c traceCarrier
	propagation.TraceContext{}.Inject(ctx, &c)
	h.Traceparent = c.traceparent
	return h
}

// traceCarrier keeps the traceparent the propagator injects (a message header has no
// tracestate), without the map of a propagation.MapCarrier.
type traceCarrier struct{ traceparent string }

func (c *traceCarrier) Get(key string) string {
	if key == "traceparent" {
		return c.traceparent
	}
	return ""
}

func (c *traceCarrier) Set(key, value string) {
	if key == "traceparent" {
		c.traceparent = value
	}
}

func (c *traceCarrier) Keys() []string { return []string{"traceparent"} }
