package testenv

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Background runs a component's Run(ctx) for a test: it starts run at once, and Stop (also called
// when the test ends) cancels ctx and fails the test if run returned an error or did not return
// within the timeout.
type Background struct {
	t       testing.TB
	what    string
	timeout time.Duration
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once

	mu     sync.Mutex
	exited bool
	err    error
}

// Start runs run(ctx) in the background until the test ends or Stop is called.
func Start(t testing.TB, what string, timeout time.Duration, run func(context.Context) error) *Background {
	ctx, cancel := context.WithCancel(context.Background())
	b := &Background{t: t, what: what, timeout: timeout, cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := run(ctx)
		b.mu.Lock()
		b.exited, b.err = true, err
		b.mu.Unlock()
		b.done <- err
	}()
	t.Cleanup(b.Stop)
	return b
}

// Exited reports whether run has returned, and its error.
func (b *Background) Exited() (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.exited, b.err
}

// Stop cancels run and waits for it; it is idempotent.
func (b *Background) Stop() {
	b.once.Do(func() {
		b.cancel()
		select {
		case err := <-b.done:
			if err != nil {
				b.t.Errorf("%s: Run: %v", b.what, err)
			}
		case <-time.After(b.timeout):
			b.t.Errorf("%s did not stop within %s of cancel", b.what, b.timeout)
		}
	})
}
