package chaos

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"
)

// runLog is the logger of a harness run (a soak, the failover benchmark, a rolling upgrade) and
// the problems the run found: each is logged as a warning when found and listed in its report.
type runLog struct {
	*slog.Logger
	problems []string
}

// newRunLog logs to l, or nowhere when l is nil.
func newRunLog(l *slog.Logger) *runLog {
	return &runLog{Logger: cmp.Or(l, slog.New(slog.DiscardHandler))}
}

func (r *runLog) problem(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.Warn("problem", "what", s)
	r.problems = append(r.problems, s)
}

// startSettled starts every node of cl and waits up to timeout until every slice is processed
// by its home node.
func startSettled(ctx context.Context, cl *Cluster, timeout time.Duration) error {
	if err := cl.StartAll(); err != nil {
		return err
	}
	if err := cl.WaitOwned(ctx, timeout, true); err != nil {
		return fmt.Errorf("cluster did not come up: %w", err)
	}
	return nil
}
