package chaos

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/qslice/qslice/runner/queue"
)

// Feeder enqueues messages into a queue directory at a bounded rate, for a bounded count.
type Feeder struct {
	Dir   *queue.Dir
	Rate  float64 // messages per second (> 0)
	Count int     // stop after this many; 0: until the context ends

	mu  sync.Mutex
	ids []string
	at  []time.Time
}

// Run enqueues until Count messages are written or ctx ends. It returns the first enqueue error.
func (f *Feeder) Run(ctx context.Context) error {
	if f.Rate <= 0 {
		return fmt.Errorf("feeder: rate must be > 0, got %v", f.Rate)
	}
	t := time.NewTicker(time.Duration(float64(time.Second) / f.Rate))
	defer t.Stop()
	for seq := 0; f.Count == 0 || seq < f.Count; seq++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := time.Now()
		n, err := f.Dir.Enqueue(queue.Meta{}, fmt.Appendf(nil, "chaos message %d\n", seq), now)
		if err != nil {
			return fmt.Errorf("feeder: %w", err)
		}
		f.mu.Lock()
		f.ids = append(f.ids, n.Base)
		f.at = append(f.at, now)
		f.mu.Unlock()
	}
	return nil
}

// Enqueued returns the IDs of the messages written so far, in order.
func (f *Feeder) Enqueued() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ids...)
}

// feedRun is a Feeder running on a goroutine owned by its starter, who must call stop.
type feedRun struct {
	f      *Feeder
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func startFeeder(ctx context.Context, f *Feeder) *feedRun {
	ctx, cancel := context.WithCancel(ctx)
	r := &feedRun{f: f, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = f.Run(ctx)
	}()
	return r
}

// wait gives a bounded feeder up to timeout to write its last message, then stops it.
func (r *feedRun) wait(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
	}
	return r.stop()
}

// stop ends the feeder and waits for its goroutine; it returns the feeder's error. Idempotent.
func (r *feedRun) stop() error {
	r.cancel()
	<-r.done
	return r.err
}
