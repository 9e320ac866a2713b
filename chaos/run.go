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

// finish ends a run once its feeder stopped: it waits up to drain for every enqueued message to
// be handled, scrapes the ownership counters a last time (scr: nil for none), stops the nodes,
// and checks the ledgers against the faults (records) and the counters against the log lines.
// A failed drain or stop is one of the run's problems, which the report lists.
func (r *runLog) finish(ctx context.Context, cl *Cluster, scr *scraper, enqueued []string, records []FaultRecord, drain time.Duration, began time.Time) (*Report, error) {
	if err := waitHandled(ctx, cl, enqueued, drain); err != nil {
		r.problem("final drain: %v", err)
	}
	if scr != nil {
		scr.scrape(ctx)
	}
	if err := cl.StopAll(time.Minute); err != nil {
		r.problem("stop nodes: %v", err)
	}
	rep, err := Collect(cl, enqueued, records)
	if err != nil {
		return nil, err
	}
	rep.Nodes, rep.Duration = len(cl.Nodes), time.Since(began)
	if scr != nil {
		rep.OwnershipChanges = scr.total()
		if rep.MetricMismatches, err = scr.crossCheck(); err != nil {
			return nil, err
		}
	}
	rep.Problems = r.problems
	return rep, nil
}
