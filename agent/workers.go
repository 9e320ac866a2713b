package agent

import (
	"context"
	"fmt"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/runner"
	workerpool "github.com/qslice/qslice/runner/worker"
)

// workerQueue is a queue with handler.worker: its runner, and the pool of persistent workers that
// is the runner's handler.
type workerQueue struct {
	r *runner.Runner
	p *workerpool.Pool
}

// Run runs the pool for as long as the runner runs: the runner stops first (claims end, handlers
// get shutdown_grace), then the workers are stopped, so none is stopped under a message.
func (w workerQueue) Run(ctx context.Context) error {
	poolCtx, stopPool := context.WithCancel(context.WithoutCancel(ctx))
	poolDone := make(chan error, 1)
	go func() { poolDone <- w.p.Run(poolCtx) }()
	err := w.r.Run(ctx)
	stopPool()
	if perr := <-poolDone; err == nil {
		err = perr
	}
	return err
}

func (w workerQueue) SetSlices(s []int) <-chan struct{} { return w.r.SetSlices(s) }

// newPools builds the worker pools of the queues with handler.worker (none overridden by
// Options.Handlers), with their metrics on the agent's registry.
func (a *Agent) newPools(queues []config.Queue) error {
	var names []string
	cfgs := map[string]workerpool.Config{}
	for _, q := range queues {
		if _, overridden := a.opts.Handlers[q.Name]; overridden {
			continue
		}
		if wc, ok := q.WorkerConfig(); ok {
			names = append(names, q.Name)
			cfgs[q.Name] = wc
		}
	}
	if len(names) == 0 {
		return nil
	}
	m, err := workerpool.NewMetrics(a.reg, names)
	if err != nil {
		return fmt.Errorf("worker metrics: %w", err)
	}
	for name, wc := range cfgs {
		wc.Lease = leaseProxy{&a.coord}
		wc.Metrics = m
		wc.Clock = a.opts.Clock
		wc.Logger = a.log.With("component", "worker")
		p, err := workerpool.New(wc)
		if err != nil {
			return err
		}
		a.pools[name] = p
	}
	return nil
}

// poolHealth reports a queue's worker crash loop as critical health of each of its slices.
func (a *Agent) poolHealth(q string) (failover.Health, bool) {
	p, ok := a.pools[q]
	if !ok {
		return failover.Health{}, false
	}
	if critical, why := p.Health(); critical {
		return failover.Health{Status: failover.StatusCritical, Output: why}, true
	}
	return failover.Health{}, false
}
