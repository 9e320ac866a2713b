package runner

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/qslice/qslice/internal/retry"
	"github.com/qslice/qslice/runner/proctree"
	"github.com/qslice/qslice/runner/queue"
)

// process claims and handles one message (or the retry of one already in flight here). Once
// runCtx is cancelled nothing more is claimed (items still buffered are left, retries released);
// handlers already running get the shutdown grace. buf is the worker's read buffer; the one to
// reuse next time is returned.
func (r *Runner) process(runCtx, shutdownCtx context.Context, it item, buf []byte) []byte {
	n, slice := it.name, it.slice
	var lease *leaseGen
	stopping := runCtx.Err() != nil
	if it.retry == nil {
		r.mu.Lock()
		if lease = r.liveLeaseLocked(); !r.owned[slice] || lease == nil || stopping || r.faults.wait() > 0 {
			// (A disk fault's backoff also holds back items already handed out.)
			r.mu.Unlock()
			return buf
		}
		_, dup := r.inflight[n.Base]
		if _, stuck := r.abandoned[n.Base]; dup || stuck {
			r.mu.Unlock()
			return buf
		}
		r.inflight[n.Base] = slice
		r.count[slice]++
		r.mu.Unlock()
		if err := r.cfg.Dir.Claim(n); err != nil {
			r.done(n.Base, slice)
			if !errors.Is(err, queue.ErrGone) {
				// EACCES, EROFS, EIO, ...: the file stays ready; claiming pauses (backoff).
				r.faults.report(FaultClaim, err)
				r.avoidClaim(n.Base)
			}
			return buf
		}
		if r.abandonedNow(n.Base) {
			// The claim was blocked in the filesystem while the queue was fenced and landed
			// afterwards: nobody else knows this file is in flight, so give it back at once.
			if err := r.cfg.Dir.Release(n); err != nil {
				r.log.Error("a claim landed after the queue was fenced and could not be given back; it is recovered when its slice is next taken", "file", n.Base, "slice", slice, "err", err)
			} else {
				r.log.Warn("a claim landed after the queue was fenced; the message was given back to ready, not handled", "file", n.Base, "slice", slice)
			}
			r.done(n.Base, slice)
			return buf
		}
		r.faults.clear(FaultClaim)
	} else {
		r.mu.Lock()
		owned := r.owned[slice]
		lease = r.liveLeaseLocked()
		r.mu.Unlock()
		if !owned || lease == nil || stopping {
			r.readDone(it)
			r.giveBack(n, slice)
			r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeReleased, 0)
			r.done(n.Base, slice)
			return buf
		}
	}
	settled, buf := r.handle(shutdownCtx, lease, it, buf)
	if settled {
		r.done(n.Base, slice)
	}
	return buf
}

// handle runs the handler on a claimed message and settles the file. It returns false when the
// message stays in flight here (waiting for a retry).
func (r *Runner) handle(shutdownCtx context.Context, lease *leaseGen, it item, buf []byte) (settled bool, _ []byte) {
	n, slice := it.name, it.slice
	start := r.cfg.Clock.Now()
	path := filepath.Join(r.cfg.Dir.Path, n.FileName(queue.SuffixInFlight))
	if r.beforeRead != nil {
		r.beforeRead(n)
	}
	data, err := r.cfg.Dir.ReadInFlightInto(n, buf)
	if err != nil && r.abandonedNow(n.Base) {
		r.log.Warn("reading a claimed message failed after the queue was fenced; it is left in flight for the next owner", "file", n.Base, "slice", slice, "err", err)
		return true, buf
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			reads := 1 // this one
			if it.retry != nil {
				reads += it.retry.reads
			}
			if reads < maxVanishedReads {
				// Our own rename made this name: a network filesystem's client can still answer
				// from a view older than it for a moment (GlusterFS's md-cache, open-behind and
				// quick-read; an NFS negative lookup cache). Read again after a pause.
				return r.readFailed(it, fmt.Errorf("%w (claimed here, so read again: a network filesystem's client may show a rename late)", err)), buf
			}
			r.log.Error("claimed file vanished before it could be read (removed by hand?); nothing was handled", "file", path, "reads", reads)
			r.readDone(it)
			return true, buf
		}
		if queue.Unsafe(err) {
			// Not a regular file (a link, a FIFO, a socket, a device, a directory) or over
			// max_message_bytes: it was never opened for reading or never read past the limit.
			r.readDone(it)
			r.moveToBad(n, slice, "refused: "+err.Error(), 0)
			return true, buf
		}
		return r.readFailed(it, err), buf
	}
	r.readDone(it)
	buf = data
	meta, body, err := queue.Decode(data)
	if err != nil && r.cfg.RawPayloads && !bytes.HasPrefix(data, []byte("QSLICE")) {
		meta, body, err = queue.Meta{}, data, nil
	}
	if err != nil {
		r.moveToBad(n, slice, "unreadable payload: "+err.Error(), 0)
		return true, buf
	}
	msg := &Message{Queue: r.cfg.Queue, Slice: slice, Slices: r.cfg.Slices, Name: n, Meta: meta, Body: body,
		LeaseDeadline: r.cfg.Lease.ValidUntil()}
	if f, ok := r.cfg.Lease.(Fencer); ok {
		msg.FencingToken = f.FencingToken(r.cfg.Queue, slice)
	}
	if it.retry != nil {
		msg.Retry = it.retry.retries
	}
	msg.procsPath = r.procsPath(n)

	// The handler's context dies with the lease generation it was claimed under, at shutdown (after
	// the grace period), and at the handler timeout.
	hctx, hcancel := context.WithCancelCause(lease.ctx)
	defer hcancel(nil)
	stop := context.AfterFunc(shutdownCtx, func() { hcancel(context.Cause(shutdownCtx)) })
	defer stop()
	if r.cfg.HandlerTimeout > 0 {
		var c context.CancelFunc
		hctx, c = context.WithTimeoutCause(hctx, r.cfg.HandlerTimeout, fmt.Errorf("handler timed out after %s", r.cfg.HandlerTimeout))
		defer c()
	}
	hctx, span := r.startSpan(hctx, msg)
	defer span.End()

	herr := r.withLock(hctx, msg, func() error { return r.cfg.Handler.Handle(hctx, msg) })
	took := r.cfg.Clock.Now().Sub(start)
	if r.abandonedNow(n.Base) {
		// Fenced: the slice may already be another node's, which recovers the file; removing,
		// shunting or releasing it now could act on that node's claim of the same name.
		r.log.Warn("handler returned after the queue was fenced; the message is left in flight for the next owner", "file", n.Base, "slice", slice, "handler_error", herr)
		r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeReleased, took)
		return true, buf
	}
	if !r.leaseValid() {
		// Settle only while the lease proves the slice is still ours. A handler can return after
		// the lease lapsed (a paused machine resumes its handlers before qslice can kill them);
		// by then another node may have recovered the file and be handling it under the same
		// name, and removing, shunting or releasing it would act on that node's message. It is
		// left in flight for recovery instead: a repeat, never a loss.
		r.log.Warn("handler returned after the lease lapsed; the message is left in flight for the next owner", "file", n.Base, "slice", slice, "handler_error", herr)
		r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeReleased, took)
		return true, buf
	}
	if msg.procsWritten && !errors.Is(context.Cause(hctx), errLeaseLost) {
		// The handler's processes are gone (ExecHandler returns only then), and the lease still
		// holds, so the record is ours: it goes before the message is settled, as after that
		// another runner may claim the file and record its own handling.
		if err := os.Remove(r.procsPath(n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("could not remove the record of a finished handling's processes", "file", r.procsPath(n), "err", err)
		}
	}
	if herr == nil {
		if err := r.cfg.Dir.Finish(n); err != nil {
			// The handler succeeded but the file is still there: it will be handled again after a
			// recovery. Say so loudly; that is the at-least-once edge.
			r.log.Error("handler succeeded but the file could not be removed; it may be handled again", "file", path, "err", err)
		}
		r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeDone, took)
		r.faults.progress()
		return true, buf
	}
	span.RecordError(herr)
	span.SetStatus(codes.Error, herr.Error())

	switch cause := context.Cause(hctx); {
	case errors.Is(cause, errLeaseLost):
		// Fenced off: the next owner recovers the file. Touching it now could race with that owner.
		r.log.Warn("handler cancelled: lease lapsed; the message is left in flight for the next owner", "file", n.Base, "slice", slice)
		r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeReleased, took)
		return true, buf
	case errors.Is(cause, errShutdown):
		r.giveBack(n, slice)
		r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeReleased, took)
		return true, buf
	}
	var fault *DiskFault
	if errors.As(herr, &fault) {
		// The lock directory failed, not the message: it goes back to ready untouched and
		// claiming pauses (backoff).
		r.faults.report(fault.Reason, fault.Err)
		r.avoidClaim(n.Base)
		r.giveBack(n, slice)
		r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeReleased, took)
		return true, buf
	}
	if errors.Is(herr, ErrRetry) {
		return r.scheduleRetry(it, msg, herr, took), buf
	}
	r.shunt(n, slice, meta, body, herr, took)
	return true, buf
}

// procsPath is where an exec handler records the process tree handling n (runner/proctree).
func (r *Runner) procsPath(n queue.Name) string {
	return filepath.Join(r.cfg.Dir.Path, n.Base+queue.SuffixProcs)
}

// killSurvivors kills the processes of an earlier handling of n that are still alive on this
// host, as recorded next to its in-flight file, before n is recovered and so can run again. It
// fails when some survive SIGKILL (stuck in the kernel): n must then stay in flight. A record of
// another host is that host's to act on (see proctree): it is logged and removed.
func (r *Runner) killSurvivors(ctx context.Context, n queue.Name, slice int) error {
	path := r.procsPath(n)
	rec, err := proctree.Read(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case errors.Is(err, proctree.ErrNoRecord):
		// The handling's starter died before it wrote the marker: nothing of it started.
	case err != nil:
		return fmt.Errorf("read the record of an earlier handling's processes: %w", err)
	case !rec.Local():
		r.log.Info("an earlier handling of this message ran on another host (or before a reboot); its processes are that host's to kill", "file", n.Base, "slice", slice, "handling", rec.String())
	default:
		kctx, cancel := context.WithTimeout(ctx, killWait)
		killed, err := proctree.Kill(kctx, rec)
		cancel()
		if err != nil {
			return err
		}
		if killed > 0 {
			r.log.Warn("killed processes of an earlier handling that outlived it, before recovering the message", "file", n.Base, "slice", slice, "killed", killed, "handling", rec.String())
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the record of an earlier handling: %w", err)
	}
	return nil
}

// giveBack returns an in-flight message of this runner to ready, unhandled: its slice moved away,
// the runner stops, or it waited for a retry. Only while the lease is valid: after a lapse another
// node may own the slice and have recovered and claimed the file under the same name, so it is
// left in flight for whoever recovers the slice next (counting an attempt).
func (r *Runner) giveBack(n queue.Name, slice int) {
	if r.abandonedNow(n.Base) {
		return
	}
	if !r.leaseValid() {
		r.log.Warn("not giving a message back: the lease lapsed; it is left in flight for the next owner", "file", n.Base, "slice", slice)
		return
	}
	if err := r.cfg.Dir.Release(n); err != nil {
		r.log.Error("could not give a message back to ready; it stays in flight and is recovered when its slice is next widened", "file", n.Base, "slice", slice, "err", err)
		r.faults.report(FaultRelease, err)
		return
	}
	r.faults.clear(FaultRelease)
}

func (r *Runner) shunt(n queue.Name, slice int, meta queue.Meta, body []byte, cause error, took time.Duration) {
	if err := r.cfg.Dir.Shunt(n, meta, body, cause, r.cfg.Clock.Now()); err != nil {
		// The shunt directory failed (EACCES, ENOSPC, EIO): the message goes back to ready and
		// is handled again after the backoff, rather than lost or stuck in flight.
		r.log.Warn("handler failed and the message could not be shunted; it goes back to ready", "file", n.Base, "handler_error", cause, "err", err)
		r.faults.report(FaultShunt, err)
		r.avoidClaim(n.Base)
		r.giveBack(n, slice)
		r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeReleased, took)
		return
	}
	r.faults.clear(FaultShunt)
	r.log.Warn("handler failed; message moved to the shunt queue (requeue it with `qslice queue requeue`)", "file", n.Base, "slice", slice, "err", cause, "shunt_dir", r.cfg.Dir.ShuntDir)
	r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeShunted, took)
}

func (r *Runner) moveToBad(n queue.Name, slice int, reason string, attempts int) {
	if r.abandonedNow(n.Base) {
		r.log.Warn("not moving a message to bad/: the queue was fenced; it is left in flight for the next owner", "file", n.Base, "reason", reason)
		return
	}
	if err := r.cfg.Dir.MoveToBad(n, queue.SuffixInFlight, reason, attempts, r.cfg.Clock.Now()); err != nil {
		if errors.Is(err, queue.ErrGone) {
			return
		}
		r.log.Warn("could not move a bad message aside; it goes back to ready", "file", n.Base, "reason", reason, "err", err)
		r.faults.report(FaultBad, err)
		r.avoidClaim(n.Base)
		r.giveBack(n, slice)
		r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeReleased, 0)
		return
	}
	r.faults.clear(FaultBad)
	r.log.Warn("message moved to bad/", "file", n.Base, "slice", slice, "reason", reason, "bad_dir", r.cfg.Dir.BadDir)
	r.cfg.Observer.Handled(r.cfg.Queue, slice, OutcomeBad, 0)
}

// withLock runs fn while holding the message's lock file, when it names one.
func (r *Runner) withLock(ctx context.Context, msg *Message, fn func() error) error {
	key := msg.Meta.Lock
	if key == "" {
		return fn()
	}
	if r.cfg.LockDir == "" {
		return fmt.Errorf("message names lock %q but the queue has no lock_dir configured", key)
	}
	if err := queue.ValidateLockKey(key); err != nil {
		return err
	}
	release, err := r.acquireLock(ctx, msg, filepath.Join(r.cfg.LockDir, key))
	if err != nil {
		return err
	}
	held := r.cfg.Clock.Now()
	defer func() {
		release()
		r.cfg.Observer.LockHold(r.cfg.Queue, msg.Slice, r.cfg.Clock.Now().Sub(held))
	}()
	return fn()
}

// startSpan opens the CONSUMER span of one message, linked to the trace context stored at enqueue.
func (r *Runner) startSpan(ctx context.Context, msg *Message) (context.Context, trace.Span) {
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			semconv.MessagingSystemKey.String("qslice"),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingDestinationName(msg.Queue),
			semconv.MessagingDestinationPartitionID(strconv.Itoa(msg.Slice)),
			semconv.MessagingMessageID(msg.Name.Base),
			attribute.Int("qslice.attempts", msg.Meta.Attempts),
			attribute.Int("qslice.retry", msg.Retry),
		),
	}
	if msg.Meta.Traceparent != "" {
		pctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": msg.Meta.Traceparent})
		if sc := trace.SpanContextFromContext(pctx); sc.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
	}
	return r.tracer.Start(ctx, "process "+msg.Queue, opts...)
}

// retryEntry is a message held in flight here until its retry time.
type retryEntry struct {
	name    queue.Name
	slice   int
	due     time.Time
	retries int
	bo      *backoff.ExponentialBackOff
	timer   *time.Timer
	index   int
	reads   int       // failed reads of the file (EACCES, EIO, ...)
	readErr time.Time // first failed read
}

type retryHeap []*retryEntry

func (h retryHeap) Len() int           { return len(h) }
func (h retryHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h retryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *retryHeap) Push(x any)        { e := x.(*retryEntry); e.index = len(*h); *h = append(*h, e) }
func (h *retryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// scheduleRetry keeps the message in flight and hands it out again after an exponential backoff;
// once the backoff's total time is used up, the message is shunted.
func (r *Runner) scheduleRetry(it item, msg *Message, herr error, took time.Duration) bool {
	e := it.retry
	if e == nil {
		bo := retry.New(retry.Policy{Initial: r.cfg.Retry.Initial, Max: r.cfg.Retry.Max, Jitter: backoff.DefaultRandomizationFactor,
			Multiplier: backoff.DefaultMultiplier, MaxElapsed: r.cfg.Retry.MaxElapsed}, r.cfg.Clock)
		e = &retryEntry{name: it.name, slice: it.slice, bo: bo}
	}
	d := e.bo.NextBackOff()
	if asked, ok := retryDelay(herr); ok && d != backoff.Stop {
		d = max(asked, 0) // the handler chose the delay; the backoff still bounds the total time
		if e.bo.GetElapsedTime()+d > r.cfg.Retry.MaxElapsed {
			d = backoff.Stop
		}
	}
	if d == backoff.Stop {
		r.shunt(it.name, it.slice, msg.Meta, msg.Body, fmt.Errorf("gave up after %d retries over %s: %w", e.retries, r.cfg.Retry.MaxElapsed, herr), took)
		return true
	}
	e.retries++
	n := e.retries
	r.pushRetry(e, d)
	r.log.Info("handler asked to retry later", "file", it.name.Base, "slice", it.slice, "retry", n, "in", d.Round(time.Millisecond), "err", herr)
	r.cfg.Observer.Handled(r.cfg.Queue, it.slice, OutcomeRetry, took)
	return false
}

// maxReadAttempts is how often a claimed file that cannot be read (EACCES on a mode-000 file, EIO)
// is tried, with the fault backoff in between (about 1 min with the defaults), before it is moved
// to bad/ with the reason. On a shared NFS spool a permission problem is often fixed, or a
// writer's late chmod lands, within that; after it the file is set aside, with `queue requeue`
// to bring it back, instead of blocking a worker or being retried forever.
const maxReadAttempts = 8

// maxVanishedReads bounds the reads of a claimed file that is not found: our own claim made it,
// so the first misses are a client's stale view; after these it was removed (by hand).
const maxVanishedReads = 3

// readFailed keeps a claimed file whose read failed in flight here and tries it again after a
// backoff; after maxReadAttempts it goes to bad/. It returns whether the message is settled.
func (r *Runner) readFailed(it item, err error) bool {
	e := it.retry
	if e == nil {
		e = &retryEntry{name: it.name, slice: it.slice, bo: newFaultBackoff(r.cfg.FaultInitial, r.cfg.FaultMax, r.cfg.Clock)}
	}
	now := r.cfg.Clock.Now()
	if e.reads == 0 {
		e.readErr = now
		r.mu.Lock()
		r.reading++
		r.mu.Unlock()
	}
	e.reads++
	r.faults.report(FaultRead, err)
	if e.reads >= maxReadAttempts {
		it.retry = e
		r.readDone(it)
		r.moveToBad(it.name, it.slice, fmt.Sprintf("cannot read it (%d attempts over %s): %v; fix it and requeue it with `qslice queue requeue`",
			e.reads, now.Sub(e.readErr).Round(time.Second), err), 0)
		return true
	}
	r.pushRetry(e, e.bo.NextBackOff())
	return false
}

// pushRetry makes e due after d and puts it on the retry heap with its timer set: once on the
// heap, e belongs to whoever pops it (a worker goroutine when it falls due; a narrowing, Fence or
// shutdown, which stop its timer), and the caller touches it no more. The timer is set under the
// lock, so that its poke finds e on the heap.
func (r *Runner) pushRetry(e *retryEntry, d time.Duration) {
	e.due = r.cfg.Clock.Now().Add(d)
	r.mu.Lock()
	e.timer = time.AfterFunc(d, r.poke)
	heap.Push(&r.retries, e)
	r.mu.Unlock()
}

// readDone ends the read retries of it, if any; FaultRead clears when none is left.
func (r *Runner) readDone(it item) {
	if it.retry == nil || it.retry.reads == 0 {
		return
	}
	it.retry.reads = 0
	r.mu.Lock()
	r.reading--
	left := r.reading
	r.mu.Unlock()
	if left == 0 {
		r.faults.clear(FaultRead)
	}
}

// dueRetries pops the retries whose time has come.
func (r *Runner) dueRetries() []*retryEntry {
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*retryEntry
	for len(r.retries) > 0 && !r.retries[0].due.After(now) {
		out = append(out, heap.Pop(&r.retries).(*retryEntry))
	}
	return out
}

// requeueRetry puts a popped retry back (dispatch stopped before handing it out).
func (r *Runner) requeueRetry(e *retryEntry) {
	r.mu.Lock()
	heap.Push(&r.retries, e)
	r.mu.Unlock()
}

// untilNextRetry returns how long to sleep: at most limit, less when a retry falls due sooner.
func (r *Runner) untilNextRetry(limit time.Duration) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.retries) == 0 {
		return limit
	}
	if d := r.retries[0].due.Sub(r.cfg.Clock.Now()); d < limit {
		return max(d, time.Millisecond)
	}
	return limit
}
