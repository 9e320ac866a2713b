package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qslice/qslice/runner/queue"
)

// Message is one claimed message handed to a Handler.
type Message struct {
	Queue  string     // queue name from the config
	Slice  int        // slice of the message's digest
	Slices int        // slice count of the queue
	Name   queue.Name // file name; Name.Base identifies the message
	Meta   queue.Meta // metadata from the payload
	Body   []byte     // payload body; valid only during Handle
	Retry  int        // how many times a handler asked to retry this message in this runner
	// LeaseDeadline is the end of this node's lease on the slice when the handler started (a
	// time carrying a monotonic reading). qslice cancels the handler when the lease lapses, but a
	// machine that was paused resumes its handlers before qslice can; a handler that must never
	// commit while another node handles the same message checks, right before its commit point,
	// that the time is still before it. See Env for exec handlers.
	LeaseDeadline time.Time
	// FencingToken is this node's fencing token for the slice when the handler started, 0 when
	// the lease has none (standalone): a later owner of the slice always has a larger one. A
	// handler writing to a system that can check it passes it along so that system refuses the
	// writes of an owner that lost the slice (QSLICE_FENCING_TOKEN for exec handlers).
	FencingToken uint64

	procsPath    string // where ExecHandler records its process tree; "": nowhere
	procsWritten bool   // ExecHandler wrote procsPath
}

// Handler processes one message. Returning nil means done: the file is removed. Returning an error
// that wraps ErrRetry asks for another try later, with exponential backoff. Any other error moves the
// message to the shunt queue with the error recorded. ctx is cancelled when the handler times out,
// when this node's lease on the slice can no longer be confirmed, or at shutdown.
type Handler interface {
	Handle(ctx context.Context, m *Message) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, m *Message) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, m *Message) error { return f(ctx, m) }

// ErrRetry, wrapped in a handler's error, asks the runner to try the message again later.
var ErrRetry = errors.New("retry later")

// RetryAfter returns an error that asks the runner to try the message again after delay instead of
// the backoff's next interval (it wraps ErrRetry and reason). The retry still counts against
// retry.max_elapsed.
func RetryAfter(delay time.Duration, reason error) error {
	return &retryAfterError{delay: delay, err: reason}
}

type retryAfterError struct {
	delay time.Duration
	err   error
}

func (e *retryAfterError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("retry later (after %s)", e.delay)
	}
	return fmt.Sprintf("retry later (after %s): %v", e.delay, e.err)
}
func (e *retryAfterError) Unwrap() []error { return []error{ErrRetry, e.err} }

// retryDelay returns the delay an error from RetryAfter asks for.
func retryDelay(err error) (time.Duration, bool) {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		return ra.delay, true
	}
	return 0, false
}

// Lease tells until when this node may process its slices. The runner claims a message only while
// now < ValidUntil(), and cancels every running handler once that instant has passed. The returned
// time should carry a monotonic clock reading.
type Lease interface {
	ValidUntil() time.Time
}

// Fencer is implemented by a Lease whose slices carry fencing tokens (consul.Coordinator in failover/consul:
// the ModifyIndex of the slice's lock at acquisition). FencingToken returns 0 for a slice this
// node does not hold.
type Fencer interface {
	FencingToken(queue string, slice int) uint64
}

// ForeverLease is the lease of a standalone node: it never ends.
type ForeverLease struct{}

// ValidUntil returns a time far in the future.
func (ForeverLease) ValidUntil() time.Time { return farFuture }

var farFuture = time.Now().Add(100 * 365 * 24 * time.Hour)
