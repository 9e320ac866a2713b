// Package fshealth watches that the filesystem of a queue directory answers, without ever
// blocking its caller.
//
// A Watcher probes its directory every Interval from a goroutine of its own: stat the
// directory, read one name from it, create a canary file (`.qslice-fscheck-<node>.tmp`, a name
// every qslice component ignores), write and fsync it, and remove it. Each step is a round
// trip to the file server on NFS or GlusterFS. A probe that has not returned is never waited
// for: the watcher starts no second probe while one is outstanding (so a hung mount costs one
// goroutine per directory, blocked in the kernel, not one per interval), and when the process
// stops it is waited for at most a second (a healthy filesystem's probe then removes its
// canary), then abandoned, not joined.
//
// The verdict (Judge, a pure function of the observations and the clock) is:
//   - unavailable once no probe has succeeded within Timeout for longer than Timeout: a hang
//     (a probe outstanding for Timeout), errors (ENOTCONN, EIO, ESTALE, ...) or probes slower
//     than Timeout all count the same way;
//   - available again only after probes have succeeded without interruption for RecoverAfter
//     (the hold-down), so that a flapping link does not move slices back and forth;
//   - time the watcher itself did not run (its loop silent for Interval + Timeout/2: the process
//     or the machine was paused) is not held against the filesystem: the judgement counts from
//     the resumption, so a node resumed from SIGSTOP keeps its slices unless its filesystem then
//     fails to answer for Timeout.
//
// Defaults and why: Timeout 10 s: a working NFS or GlusterFS server answers these metadata
// operations in milliseconds, a badly loaded one in a second or two, so 10 s means "not
// answering"; it is well below the point where the client itself gives up (GlusterFS
// network.ping-timeout 42 s, NFS timeo=600 for the first "server not responding"), so the node
// acts before its operations start failing, and 10 s plus a hand-off (a renew interval and a
// KV watch round, ~4 s) keeps a cut node's slices still for well under 30 s. Interval 2 s:
// 5 metadata operations per queue per node every 2 s cost nothing on any server, and a hang is
// detected Timeout after it began whatever the interval. RecoverAfter 30 s: 15 clean probes in
// a row; shorter than Consul's 60 s hold-down, since a filesystem that answers again is already
// known, longer than a link that flaps every few seconds.
package fshealth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/qslice/qslice/internal/clock"
)

// Defaults (see the package comment for the reasoning).
const (
	DefaultInterval     = 2 * time.Second
	DefaultTimeout      = 10 * time.Second
	DefaultRecoverAfter = 30 * time.Second
)

// Config configures one Watcher.
type Config struct {
	Name         string        // queue name, for logs and status
	Dir          string        // directory to probe (the queue directory)
	Node         string        // names the canary, so that nodes sharing the directory never meet
	Interval     time.Duration // between probe starts; 0 = DefaultInterval
	Timeout      time.Duration // no successful probe for this long = unavailable; 0 = DefaultTimeout
	RecoverAfter time.Duration // clean probes for this long before available again; 0 = DefaultRecoverAfter
	Clock        clock.Clock   // nil = clock.System
	Logger       *slog.Logger  // nil = discard
	// OnChange, when set, is called (from the watcher's goroutine) each time availability flips.
	OnChange func(State)
	// probe replaces the filesystem probe in tests.
	probe func(dir, canary string) error
}

// Validate names the field at fault.
func (c *Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("dir: must be set"))
	}
	if c.Interval < 0 || c.Timeout < 0 || c.RecoverAfter < 0 {
		errs = append(errs, errors.New("interval, timeout, recover_after: must not be negative"))
	}
	if c.Timeout > 0 && c.Interval > 0 && c.Interval >= c.Timeout {
		errs = append(errs, fmt.Errorf("interval %s: must be below timeout %s (a hang is judged against probes that should have answered)", c.Interval, c.Timeout))
	}
	return errors.Join(errs...)
}

func (c *Config) applyDefaults() {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.RecoverAfter == 0 {
		c.RecoverAfter = DefaultRecoverAfter
	}
	if c.Clock == nil {
		c.Clock = clock.System{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.probe == nil {
		c.probe = Probe
	}
}

// Observations are what the watcher knows; Judge turns them into a State.
type Observations struct {
	Start       time.Time // when watching began
	LastGood    time.Time // end of the last probe that succeeded within Timeout (zero: none yet)
	GoodSince   time.Time // start of the current run of good probes (zero: last probe failed)
	PendingFrom time.Time // start of the probe still outstanding (zero: none)
	LastErr     error     // the last probe's error, nil if it succeeded
	LastTook    time.Duration
	// Beat is when the watcher's loop last ran; ResumedAt when it found it had not run for longer
	// than its stall gap (the process or the machine was paused, or starved): time before it
	// is not held against the filesystem, which nobody was watching then.
	Beat, ResumedAt time.Time
	// Unavailable is the previous verdict (for the hold-down).
	Unavailable      bool
	UnavailableSince time.Time
}

// State is the verdict on one directory.
type State struct {
	Name        string
	Dir         string
	Available   bool
	Since       time.Time // when the current availability began
	Reason      string    // why unavailable (or, while recovering, how long it has answered)
	LastGood    time.Time
	LastLatency time.Duration
	Probes      uint64 // probes completed
	Failures    uint64 // probes that failed or took longer than Timeout
	Hung        bool   // a probe has been outstanding for longer than Timeout
}

// Judge is the pure verdict: (available, reason). See the package comment.
func Judge(o Observations, now time.Time, timeout, recoverAfter time.Duration) (bool, string) {
	// A pause of the watcher itself is not the filesystem's silence: count from the resumption.
	if r := o.ResumedAt; !r.IsZero() {
		if o.Start.Before(r) {
			o.Start = r
		}
		if !o.LastGood.IsZero() && o.LastGood.Before(r) {
			o.LastGood = r
		}
		if !o.PendingFrom.IsZero() && o.PendingFrom.Before(r) {
			o.PendingFrom = r
		}
	}
	ref := o.LastGood
	if ref.IsZero() {
		ref = o.Start
	}
	silent := now.Sub(ref)
	if !o.Unavailable {
		if silent <= timeout {
			return true, ""
		}
		return false, failReason(o, now, timeout)
	}
	if !o.PendingFrom.IsZero() && now.Sub(o.PendingFrom) > timeout || o.GoodSince.IsZero() || silent > timeout {
		return false, failReason(o, now, timeout)
	}
	if answered := now.Sub(o.GoodSince); answered < recoverAfter {
		return false, fmt.Sprintf("answering again for %s of the %s hold-down", answered.Round(time.Second), recoverAfter)
	}
	return true, ""
}

func failReason(o Observations, now time.Time, timeout time.Duration) string {
	switch {
	case !o.PendingFrom.IsZero() && now.Sub(o.PendingFrom) > timeout:
		return fmt.Sprintf("filesystem not answering: a probe has been waiting for %s (bound %s)", now.Sub(o.PendingFrom).Round(100*time.Millisecond), timeout)
	case o.LastErr != nil:
		return fmt.Sprintf("filesystem failing: %v", o.LastErr)
	case o.LastTook > timeout:
		return fmt.Sprintf("filesystem too slow: the last probe took %s (bound %s)", o.LastTook.Round(100*time.Millisecond), timeout)
	default:
		return fmt.Sprintf("filesystem not answering: no successful probe for %s (bound %s)", now.Sub(o.LastGood).Round(100*time.Millisecond), timeout)
	}
}

// Watcher probes one directory; State is cheap and safe for concurrent use.
type Watcher struct {
	cfg    Config
	canary string

	mu       sync.Mutex
	obs      Observations
	state    State
	probes   uint64
	failures uint64
	// told is the availability last logged and passed to OnChange: State may flip the verdict
	// first (it judges at the time of the call), and the flip must still be told.
	told bool
}

// New returns a watcher; it probes once Run runs.
func New(cfg Config) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fshealth %s: %w", cfg.Name, err)
	}
	cfg.applyDefaults()
	node := cfg.Node
	if node == "" {
		node, _ = os.Hostname()
	}
	now := cfg.Clock.Now()
	w := &Watcher{cfg: cfg, canary: filepath.Join(cfg.Dir, ".qslice-fscheck-"+node+".tmp")}
	w.obs = Observations{Start: now}
	w.state = State{Name: cfg.Name, Dir: cfg.Dir, Available: true, Since: now}
	w.told = true
	return w, nil
}

// Config returns the configuration in use (defaults applied).
func (w *Watcher) Config() Config { return w.cfg }

// State returns the current verdict, judged at the time of the call.
func (w *Watcher) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.judgeLocked(w.cfg.Clock.Now())
	return w.state
}

// stallGap is how long the watcher's loop may go without running before it counts as paused:
// it wakes every Interval, so a gap of Interval + Timeout/2 is no scheduling delay but a stopped
// process (SIGSTOP, a suspended VM) or a starved one.
func (w *Watcher) stallGap() time.Duration { return w.cfg.Interval + w.cfg.Timeout/2 }

// beat records that the loop runs; after a gap past stallGap it restarts the judgement's clock.
func (w *Watcher) beat() {
	now := w.cfg.Clock.Now()
	w.mu.Lock()
	gap := now.Sub(w.obs.Beat)
	paused := !w.obs.Beat.IsZero() && gap > w.stallGap()
	if paused {
		w.obs.ResumedAt = now
	}
	w.obs.Beat = now
	w.mu.Unlock()
	if paused {
		w.cfg.Logger.Warn("filesystem watch did not run for a while (process or machine paused, or starved): judging the filesystem afresh from now",
			"queue", w.cfg.Name, "gap", gap.Round(time.Millisecond))
	}
}

// judgeLocked refreshes the verdict; it returns true when availability flipped. While the loop
// has not run for longer than stallGap (this process was paused: a reader may run first when it
// resumes) it keeps the last verdict: the loop judges afresh when it runs again.
func (w *Watcher) judgeLocked(now time.Time) bool {
	if !w.obs.Beat.IsZero() && now.Sub(w.obs.Beat) > w.stallGap() {
		return false
	}
	ok, reason := Judge(w.obs, now, w.cfg.Timeout, w.cfg.RecoverAfter)
	flipped := ok != w.state.Available
	if flipped {
		w.state.Since = now
		w.obs.Unavailable = !ok
		if !ok {
			w.obs.UnavailableSince = now
		}
	}
	w.state.Available, w.state.Reason = ok, reason
	w.state.LastGood, w.state.LastLatency = w.obs.LastGood, w.obs.LastTook
	w.state.Probes, w.state.Failures = w.probes, w.failures
	w.state.Hung = !w.obs.PendingFrom.IsZero() && now.Sub(w.obs.PendingFrom) > w.cfg.Timeout
	return flipped
}

type result struct {
	start, end time.Time
	err        error
}

// stopWait is how long Run, once stopped, waits for a probe in flight: a healthy filesystem
// answers in milliseconds, and the probe then removes its canary; a hung one is left behind.
const stopWait = time.Second

// Run probes every Interval until ctx ends, then returns nil within stopWait, leaving a probe
// stuck in the filesystem behind (it ends when its system call returns; its result is dropped).
func (w *Watcher) Run(ctx context.Context) error {
	results := make(chan result, 1) // buffered: a probe finishing after Run returned never blocks
	pending := false
	tick := w.cfg.Clock.NewTimer(0)
	defer func() { tick.Stop() }()
	for {
		select {
		case <-ctx.Done():
			if pending {
				// Real time, not the Clock: this waits on the filesystem, not on a schedule.
				t := time.NewTimer(stopWait)
				select {
				case <-results:
				case <-t.C:
				}
				t.Stop()
			}
			return nil
		case r := <-results:
			w.beat()
			pending = false
			w.record(r)
		case <-tick.C():
			w.beat()
			if !pending {
				pending = true
				start := w.cfg.Clock.Now()
				w.mu.Lock()
				w.obs.PendingFrom = start
				w.mu.Unlock()
				go func() {
					err := w.cfg.probe(w.cfg.Dir, w.canary)
					results <- result{start: start, end: w.cfg.Clock.Now(), err: err}
				}()
			}
			tick = w.cfg.Clock.NewTimer(w.cfg.Interval)
		}
		w.evaluate()
	}
}

func (w *Watcher) record(r result) {
	w.mu.Lock()
	start := r.start
	if start.Before(w.obs.ResumedAt) {
		start = w.obs.ResumedAt // the pause is not the probe's time
	}
	took := r.end.Sub(start)
	w.probes++
	w.obs.PendingFrom, w.obs.LastErr, w.obs.LastTook = time.Time{}, r.err, took
	if r.err == nil && took <= w.cfg.Timeout {
		w.obs.LastGood = r.end
		if w.obs.GoodSince.IsZero() {
			w.obs.GoodSince = r.start
		}
	} else {
		w.failures++
		w.obs.GoodSince = time.Time{}
	}
	w.mu.Unlock()
}

func (w *Watcher) evaluate() {
	w.mu.Lock()
	w.judgeLocked(w.cfg.Clock.Now())
	st := w.state
	flipped := st.Available != w.told
	w.told = st.Available
	w.mu.Unlock()
	if !flipped {
		return
	}
	if st.Available {
		w.cfg.Logger.Info("queue filesystem answers again: its slices may come back", "queue", st.Name, "dir", st.Dir, "hold_down", w.cfg.RecoverAfter)
	} else {
		w.cfg.Logger.Error("queue filesystem unavailable: not claiming from it, its slices go to nodes that can reach it",
			"queue", st.Name, "dir", st.Dir, "reason", st.Reason)
	}
	if w.cfg.OnChange != nil {
		w.cfg.OnChange(st)
	}
}

// Probe does one round of the filesystem operations a queue needs: stat the directory, read a
// name from it, create, write, fsync and remove the canary. It blocks as long as the
// filesystem does; callers bound it by not waiting.
func Probe(dir, canary string) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	_, err = d.Readdirnames(1)
	d.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read directory: %w", err)
	}
	f, err := os.OpenFile(canary, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create canary: %w", err)
	}
	_, err = f.WriteString(time.Now().UTC().Format(time.RFC3339Nano) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(canary)
		return fmt.Errorf("write canary: %w", err)
	}
	if err := os.Remove(canary); err != nil {
		return fmt.Errorf("remove canary: %w", err)
	}
	return nil
}
