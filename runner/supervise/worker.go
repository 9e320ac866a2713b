//go:build unix

package supervise

import (
	"context"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sys/unix"

	"github.com/qslice/qslice/internal/retry"
)

// Wall-clock timings of the stop sequence. They detect events that Unix does
// not notify (a process group being empty) and do not change the outcome,
// only how soon it is seen; so they do not follow the injected Clock.
const (
	// pollMin and pollMax: after the leader exits, the rest of a group
	// usually follows within milliseconds; poll quickly first, then back off
	// so that a long grace period costs one /proc scan per pollMax.
	pollMin = 5 * time.Millisecond
	pollMax = 250 * time.Millisecond
	// killRepeat: a group member may fork between our SIGKILL and its own
	// death, putting a new child in the group; resend SIGKILL this often
	// until the group is gone.
	killRepeat = time.Second
	// killLogEvery: a group that outlives SIGKILL has a process in
	// uninterruptible sleep (a hung NFS mount, say). The slice stays
	// unreleased, as it must, and the log says why this often.
	killLogEvery = 10 * time.Second
	// outputDrain: once the group is gone its pipes are at EOF, unless a
	// process escaped the group with them open; the pumps get this long to
	// log what is buffered before the pipes are closed under them.
	outputDrain = 2 * time.Second
)

// runSlot is the life of one slice's worker: start, watch, restart after
// unexpected exits with backoff, stop when ctx is done. It returns only when
// no process of the slice's worker is left.
func (s *Supervisor) runSlot(ctx context.Context, sl *slot) {
	log := s.log.With("slice", sl.slice)
	bcfg := s.cfg.RestartBackoff
	b := retry.New(retry.Policy{Initial: bcfg.Initial, Max: bcfg.Max, Multiplier: bcfg.Multiplier,
		Jitter: bcfg.jitter()}, s.clock) // never gives up
	s.mu.Lock()
	s.stats[sl.slice].tracker.stable() // a new ownership starts with a clean record
	s.mu.Unlock()

	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return
		}
		p, err := s.start(sl.slice, attempt > 0, log)
		if err != nil {
			log.Error("worker failed to start", "err", err)
			s.recordExit(sl.slice, exitInfo{code: -1, desc: err.Error()}, true, log)
		} else if s.watch(ctx, sl.slice, p, b, log) {
			return // stopped on request
		}
		d := b.NextBackOff()
		s.mu.Lock()
		s.stats[sl.slice].nextStart = s.clock.Now().Add(d)
		s.mu.Unlock()
		log.Info("restarting worker after backoff", "in", d)
		t := s.clock.NewTimer(d)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// start starts the worker of slice and records it.
func (s *Supervisor) start(slice int, restart bool, log *slog.Logger) (*proc, error) {
	p, err := startProc(s.specs[slice], s.early, s.pump(log))
	s.mu.Lock()
	st := &s.stats[slice]
	st.starts++
	if restart {
		st.restarts++
	}
	if err == nil {
		st.up = true
		st.pid = p.pid
		st.startedAt = s.clock.Now()
		st.nextStart = time.Time{}
	}
	s.mu.Unlock()
	if err == nil {
		log.Info("worker started", "pid", p.pid, "restart", restart, "argv", s.specs[slice].argv)
	}
	return p, err
}

// watch waits for the worker to exit or for ctx to end, and reports whether
// it was stopped on request. Either way the process group is gone and the
// leader reaped when it returns.
func (s *Supervisor) watch(ctx context.Context, slice int, p *proc, b backoff.BackOff, log *slog.Logger) (requested bool) {
	log = log.With("pid", p.pid)
	stable := s.clock.NewTimer(s.cfg.StableAfter)
	defer stable.Stop()
	stableC := stable.C()
	for {
		select {
		case <-p.exited:
			info := s.finish(p, false, log)
			s.recordExit(slice, info, true, log)
			return false
		case <-ctx.Done():
			info := s.finish(p, true, log)
			s.recordExit(slice, info, false, log)
			return true
		case <-stableC:
			stableC = nil
			b.Reset()
			s.mu.Lock()
			st := &s.stats[slice]
			was := st.tracker.critical
			st.tracker.stable()
			s.mu.Unlock()
			if was {
				log.Info("worker stable again; slice no longer critical", "ran", s.cfg.StableAfter)
			}
		}
	}
}

// recordExit records the end of a worker; unexpected exits count towards the
// crash loop.
func (s *Supervisor) recordExit(slice int, info exitInfo, unexpected bool, log *slog.Logger) {
	s.mu.Lock()
	st := &s.stats[slice]
	ran := time.Duration(0)
	if st.up {
		ran = s.clock.Now().Sub(st.startedAt)
	}
	st.up = false
	st.pid = 0
	st.exited = true
	st.lastExit = info
	st.lastAt = s.clock.Now()
	became := false
	if unexpected {
		st.crashes++
		was := st.tracker.critical
		st.tracker.recordExit(st.lastAt, info.desc)
		became = !was && st.tracker.critical
	}
	reason := st.tracker.reason
	s.mu.Unlock()
	switch {
	case !unexpected:
		log.Info("worker stopped", "exit", info.desc, "code", info.code, "ran", ran)
	default:
		log.Warn("worker exited unexpectedly", "exit", info.desc, "code", info.code, "ran", ran)
	}
	if became {
		log.Error("slice critical", "reason", reason)
	}
}

// finish ends a worker whose leader exited (requested false) or that is to
// stop (requested true): it stops what is left of the process group, reaps
// the leader and drains its output.
func (s *Supervisor) finish(p *proc, requested bool, log *slog.Logger) exitInfo {
	switch {
	case requested:
		log.Info("stopping worker", "signal", unix.SignalName(s.cfg.StopSignal), "grace", s.cfg.Grace)
		s.stopGroup(p, log)
	case !p.gone():
		log.Warn("worker exited but its process group did not; stopping the group")
		s.stopGroup(p, log)
	}
	ps := p.reap()
	s.drain(p, log)
	return describeExit(ps, p.waitErr)
}

// stopGroup sends the stop signal, waits up to Grace, then kills. It returns
// once the group is gone.
func (s *Supervisor) stopGroup(p *proc, log *slog.Logger) {
	if err := p.signal(s.cfg.StopSignal); err != nil {
		log.Warn("stop worker", "err", err)
	}
	grace := s.clock.NewTimer(s.cfg.Grace)
	gone := waitGone(p, grace.C())
	grace.Stop()
	if gone {
		return
	}
	log.Warn("grace period over; killing the process group", "grace", s.cfg.Grace)
	start := time.Now()
	lastLog := start
	for {
		if err := p.signal(syscall.SIGKILL); err != nil {
			log.Warn("kill worker", "err", err)
		}
		t := time.NewTimer(killRepeat)
		gone := waitGone(p, t.C)
		t.Stop()
		if gone {
			return
		}
		if time.Since(lastLog) >= killLogEvery {
			lastLog = time.Now()
			log.Error("process group survives SIGKILL; slice stays unreleased", "for", time.Since(start).Round(time.Second))
		}
	}
}

// waitGone waits until the process group is gone (true) or deadline fires
// (false, unless the group went meanwhile).
func waitGone(p *proc, deadline <-chan time.Time) bool {
	interval := pollMin
	for {
		if p.gone() {
			return true
		}
		if !p.leaderExited() {
			select {
			case <-p.exited:
				continue
			case <-deadline:
				return p.gone()
			}
		}
		t := time.NewTimer(interval)
		select {
		case <-t.C:
			interval = min(2*interval, pollMax)
		case <-deadline:
			t.Stop()
			return p.gone()
		}
	}
}

// drain lets the output pumps finish, closing the pipes if something outside
// the group still holds them.
func (s *Supervisor) drain(p *proc, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		p.pumps.Wait()
		close(done)
	}()
	t := time.NewTimer(outputDrain)
	select {
	case <-done:
	case <-t.C:
		log.Warn("worker output still open after its process group is gone; closing it")
	}
	t.Stop()
	for _, f := range p.outputs {
		f.Close()
	}
	<-done
}

// pump returns the function that logs one output stream of a worker.
func (s *Supervisor) pump(log *slog.Logger) func(r *os.File, stream string, pid int) {
	return func(r *os.File, stream string, pid int) {
		readLines(r, s.cfg.MaxLineBytes, func(line string, dropped int) {
			attrs := []slog.Attr{slog.Int("pid", pid), slog.String("stream", stream), slog.String("line", line)}
			if dropped > 0 {
				attrs = append(attrs, slog.Int("truncated_bytes", dropped))
			}
			log.LogAttrs(context.Background(), slog.LevelInfo, "worker output", attrs...)
		})
	}
}
