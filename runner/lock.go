package runner

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/qslice/qslice/runner/lockfile"
)

// acquireLock takes the message's lock file, waiting at most LockTimeout, and records the wait. A
// timeout turns into a retry of the message, not a failure: the lock's holder is alive and busy.
func (r *Runner) acquireLock(ctx context.Context, msg *Message, path string) (release func(), err error) {
	l, err := lockfile.New(path, lockfile.Options{Lifetime: r.cfg.LockLifetime, Host: r.cfg.Hostname})
	if err != nil {
		return nil, fmt.Errorf("lock for message %s: %w", msg.Name.Base, err)
	}
	wctx, cancel := context.WithTimeout(ctx, r.cfg.LockTimeout)
	defer cancel()
	start := r.cfg.Clock.Now()
	_, span := r.tracer.Start(ctx, "lock wait", trace.WithAttributes(attribute.String("qslice.lock", path)))
	got, err := l.Lock(wctx)
	switch {
	case err == nil && got.Broke:
		span.SetAttributes(attribute.String("qslice.lock.result", string(LockBroke)))
	case err == nil:
		span.SetAttributes(attribute.String("qslice.lock.result", string(LockAcquired)))
	case ctx.Err() != nil:
		span.SetAttributes(attribute.String("qslice.lock.result", "cancelled"))
	default:
		span.SetAttributes(attribute.String("qslice.lock.result", string(LockTimeout)))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	waited := r.cfg.Clock.Now().Sub(start)
	switch {
	case err == nil && got.Broke:
		r.cfg.Observer.LockWait(r.cfg.Queue, msg.Slice, waited, LockBroke)
		r.log.Warn("broke an expired lock", "lock", path, "file", msg.Name.Base)
	case err == nil:
		r.cfg.Observer.LockWait(r.cfg.Queue, msg.Slice, waited, LockAcquired)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("wait for lock %s: %w", path, context.Cause(ctx))
	default:
		if errors.Is(err, lockfile.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
			r.cfg.Observer.LockWait(r.cfg.Queue, msg.Slice, waited, LockTimeout)
			return nil, fmt.Errorf("%w: %w", ErrRetry, err)
		}
		// The lock directory failed (EACCES, ENOSPC, EIO, a FIFO under the lock's name): the
		// message goes back to ready and the runner backs off; it is not the message's fault.
		return nil, &DiskFault{Reason: FaultLockDir, Err: fmt.Errorf("take lock %s: %w", path, err)}
	}
	r.faults.clear(FaultLockDir)
	return func() {
		if err := l.Unlock(); err != nil {
			r.log.Error("could not release lock", "lock", path, "err", err)
		}
	}, nil
}
