package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/nodestate"
	"github.com/qslice/qslice/runner/proctree"
)

// Restart in place (docs/failover.md): New takes the node's local lock in state_dir (a second
// process of the node refuses to start), Run hands the coordinator what the previous process
// left, once that process's handler process trees are dead, and a store for its own session.

// orphanKillWait bounds the wait for the previous run's handler processes to die.
const orphanKillWait = 10 * time.Second

// lockNode takes the node's local lock when a state directory is configured.
func lockNode(stateDir, node string) (*nodestate.Lock, error) {
	if stateDir == "" {
		return nil, nil
	}
	l, err := nodestate.Acquire(stateDir, node)
	if err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	return l, nil
}

// runStore records the coordinator's session in the node's state file.
type runStore struct {
	l             *nodestate.Lock
	cluster, node string
}

func (s runStore) SaveRun(p failover.PreviousRun) error {
	st := nodestate.State{Cluster: s.cluster, Node: s.node, Session: p.Session, LiveSince: p.LiveSince}
	for _, sl := range p.Releasing {
		st.Releasing = append(st.Releasing, sl.String())
	}
	return s.l.Save(st)
}

func (s runStore) ForgetRun() error { return s.l.Forget() }

// prepareRestart runs in Run before the coordinator starts. It tells a restartable coordinator
// what to adopt: the previous process's session, if its state file is this node's and the
// handler process trees it left are dead (the lock says the process itself is).
func (a *Agent) prepareRestart(ctx context.Context) {
	r, ok := a.coord.(failover.Restartable)
	if !ok {
		return // standalone: nothing to adopt
	}
	if a.lock == nil {
		a.log.Info("restart in place off: no state_dir (a restart hands every slice off and takes it back after the hold-down)")
		return
	}
	store := runStore{l: a.lock, cluster: a.cfg.Cluster, node: a.cfg.Node}
	prev, why := a.previousRun(ctx)
	if prev == nil {
		a.log.Info("restart in place: starting with a new session", "why", why, "state_file", a.lock.Path())
	}
	r.SetRestart(prev, store)
}

func (a *Agent) previousRun(ctx context.Context) (*failover.PreviousRun, string) {
	st, err := a.lock.Load()
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, "no state file: the previous process handed its slices off, or this is the first start"
	case err != nil:
		return nil, err.Error()
	}
	if err := st.Check(a.cfg.Cluster, a.cfg.Node); err != nil {
		return nil, err.Error()
	}
	// No process of the previous run may act once its locks are ours: the process is gone (we
	// hold the lock), its handlers' process trees must be too.
	kctx, cancel := context.WithTimeout(ctx, orphanKillWait)
	n, err := proctree.KillOrphans(kctx)
	cancel()
	if err != nil {
		return nil, "could not kill the previous process's handler processes: " + err.Error()
	}
	prev := &failover.PreviousRun{Session: st.Session, LiveSince: st.LiveSince}
	for _, r := range st.Releasing {
		s, ok := parseSlice(r)
		if !ok {
			return nil, fmt.Sprintf("state file: releasing %q is not a slice (queue/index)", r)
		}
		prev.Releasing = append(prev.Releasing, s)
	}
	a.log.Info("restart in place: adopting the previous process's session if Consul confirms it",
		"session", st.Session, "previous_pid", st.PID, "written", st.Written, "handler_processes_killed", n, "being_released", len(prev.Releasing))
	return prev, ""
}

// Leave hands every slice to other nodes, ends the session and stops the node (qslice leave):
// for a decommission or maintenance. A standalone node just stops.
func (a *Agent) Leave(ctx context.Context) error {
	a.mu.Lock()
	stop := a.stopRun
	a.mu.Unlock()
	if stop == nil {
		return errors.New("leave: the node is not running")
	}
	a.log.Info("leave: handing every slice to other nodes, then stopping")
	var err error
	if l, ok := a.coord.(failover.Leaver); ok {
		err = l.Leave(ctx)
	}
	stop()
	return err
}

// parseSlice reads a SliceID as SliceID.String writes it ("in/3").
func parseSlice(s string) (failover.SliceID, bool) {
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return failover.SliceID{}, false
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil || n < 0 {
		return failover.SliceID{}, false
	}
	return failover.SliceID{Queue: s[:i], Index: n}, true
}
