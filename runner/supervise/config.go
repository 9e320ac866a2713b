//go:build unix

package supervise

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"os/user"

	"golang.org/x/sys/unix"
)

// Config describes the worker of one queue. The zero value of every field
// but Command means "use the default" (see [Config.WithDefaults]).
//
// Command, the values of Env and Dir may use the placeholders {queue},
// {slice} and {slices}; `{{` and `}}` stand for literal braces. Mailman's
// runner for the out queue, for example:
//
//	Command: []string{"/usr/lib/mailman3/bin/runner", "-C", "/etc/mailman3/mailman.cfg",
//		"--runner=out:{slice}:{slices}"}
//
// Besides Env, every worker gets QSLICE_QUEUE, QSLICE_SLICE and QSLICE_SLICES,
// on top of qslice's own environment.
type Config struct {
	// Command is the program and its arguments. The program is looked up in
	// qslice's PATH when it has no slash.
	Command []string
	// Env is added to qslice's environment (and overrides it).
	Env map[string]string
	// Dir is the working directory; empty means qslice's own.
	Dir string
	// User runs the worker as this user (a name or a numeric ID), with the
	// user's primary and supplementary groups; empty means qslice's own
	// user. Switching needs qslice to run as root (or with CAP_SETUID and
	// CAP_SETGID); Debian runs Mailman as "list". Pdeathsig survives the
	// switch (it is set after the credentials change).
	User string
	// Group overrides the primary group of User (a name or numeric ID).
	Group string
	// StopSignal asks a worker to stop (default SIGTERM, which Mailman's
	// runners take as "finish the message in hand and exit").
	StopSignal syscall.Signal
	// Grace is how long a worker's process group has after StopSignal before
	// it is killed with SIGKILL (default DefaultGrace).
	Grace time.Duration
	// RestartBackoff spaces restarts of a worker that exits unexpectedly.
	RestartBackoff Backoff
	// CrashLoopThreshold unexpected exits within CrashLoopWindow make the
	// slice critical (defaults DefaultCrashLoopThreshold, DefaultCrashLoopWindow).
	CrashLoopThreshold int
	CrashLoopWindow    time.Duration
	// StableAfter is how long a worker must run for its run to count as
	// stable: the restart backoff starts again from Initial, earlier exits
	// stop counting and a critical slice is passing again (default
	// DefaultStableAfter).
	StableAfter time.Duration
	// MaxLineBytes bounds one logged line of worker output (default
	// DefaultMaxLineBytes).
	MaxLineBytes int
}

// Backoff is the exponential restart backoff: the n-th consecutive restart
// waits min(Initial*Multiplier^(n-1), Max), spread by ±Jitter.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
	// Jitter is the randomization factor in [0, 1): a delay d is drawn
	// from [d*(1-Jitter), d*(1+Jitter)]. 0 means the default; NoJitter asks
	// for exact delays.
	Jitter float64
}

// NoJitter is the Jitter value that asks for an exact, unrandomized backoff
// (the zero value means "use the default").
const NoJitter = -1

// Defaults and their reasoning.
const (
	// DefaultGrace: Mailman's runners finish the message in hand on SIGTERM;
	// the slow case is an outgoing runner in an SMTP transaction with a
	// large recipient batch. 30s covers that, and it is what a slice handover
	// costs at most on top of the lock-delay.
	DefaultGrace = 30 * time.Second
	// DefaultBackoffInitial and DefaultBackoffMax: restart a worker that died
	// of a passing hiccup at once, and one that cannot start at most once a
	// minute, so a broken worker costs little CPU and logs little.
	DefaultBackoffInitial    = time.Second
	DefaultBackoffMax        = time.Minute
	DefaultBackoffMultiplier = 2.0
	DefaultBackoffJitter     = 0.2
	// DefaultCrashLoopThreshold and DefaultCrashLoopWindow: a worker that
	// cannot start exits after delays of 1+2+4+8 s (x1.2 jitter at most)
	// before its 5th exit, so it is critical within about 20s plus its start
	// times; a worker that crashes on every message keeps 5 exits in 5
	// minutes even at the 1 minute backoff cap, so it stays critical.
	// Validate checks this reachability for any setting.
	DefaultCrashLoopThreshold = 5
	DefaultCrashLoopWindow    = 5 * time.Minute
	// DefaultStableAfter: a worker that has run for a minute started
	// properly; its next exit is a fresh incident.
	DefaultStableAfter = time.Minute
	// DefaultMaxLineBytes keeps one log record bounded; Mailman's tracebacks
	// arrive one line at a time and are far shorter.
	DefaultMaxLineBytes = 4096
	// maxThreshold bounds CrashLoopThreshold (and the loop in Validate).
	maxThreshold = 1000
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.StopSignal == 0 {
		c.StopSignal = syscall.SIGTERM
	}
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	b := &c.RestartBackoff
	if b.Initial == 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max == 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Multiplier == 0 {
		b.Multiplier = DefaultBackoffMultiplier
	}
	if b.Jitter == 0 {
		b.Jitter = DefaultBackoffJitter
	}
	if c.CrashLoopThreshold == 0 {
		c.CrashLoopThreshold = DefaultCrashLoopThreshold
	}
	if c.CrashLoopWindow == 0 {
		c.CrashLoopWindow = DefaultCrashLoopWindow
	}
	if c.StableAfter == 0 {
		c.StableAfter = DefaultStableAfter
	}
	if c.MaxLineBytes == 0 {
		c.MaxLineBytes = DefaultMaxLineBytes
	}
	return c
}

// jitter is the effective randomization factor.
func (b Backoff) jitter() float64 {
	if b.Jitter < 0 {
		return 0
	}
	return b.Jitter
}

// FieldError is one invalid configuration field. Field is the path of the
// field as a qslice configuration file spells it, e.g. "supervise.command".
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// ErrInvalidConfig is matched (errors.Is) by every error that Validate and
// New return for a bad configuration.
var ErrInvalidConfig = errors.New("invalid supervise configuration")

// Is makes a *FieldError match ErrInvalidConfig.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidConfig }

// Validate checks c after applying defaults and returns every problem as a
// *FieldError, joined with errors.Join, or nil.
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: "supervise." + field, Msg: fmt.Sprintf(format, args...)})
	}
	if len(c.Command) == 0 {
		bad("command", "must not be empty")
	} else if c.Command[0] == "" {
		bad("command[0]", "program must not be empty")
	}
	for i, arg := range c.Command {
		if err := checkTemplate(arg); err != nil {
			bad(fmt.Sprintf("command[%d]", i), "%v", err)
		}
	}
	keys := make([]string, 0, len(c.Env))
	for k := range c.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == "" || strings.ContainsAny(k, "=\x00"):
			bad("env", "invalid variable name %q", k)
		case strings.HasPrefix(k, "QSLICE_"):
			bad("env."+k, "QSLICE_ variables are set by qslice")
		case strings.ContainsRune(c.Env[k], 0):
			bad("env."+k, "must not contain NUL")
		default:
			if err := checkTemplate(c.Env[k]); err != nil {
				bad("env."+k, "%v", err)
			}
		}
	}
	if err := checkTemplate(c.Dir); err != nil {
		bad("dir", "%v", err)
	}
	if _, err := credential(c.User, c.Group); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			bad(fe.Field, "%s", fe.Msg)
		}
	}
	switch {
	case c.StopSignal < 1 || c.StopSignal > 64:
		bad("stop_signal", "%d is not a signal", int(c.StopSignal))
	case c.StopSignal == syscall.SIGSTOP || c.StopSignal == syscall.SIGTSTP:
		bad("stop_signal", "%s would suspend the worker, not stop it", unix.SignalName(c.StopSignal))
	}
	if c.Grace < 0 {
		bad("grace", "must not be negative")
	}
	b := c.RestartBackoff
	if b.Initial < 0 {
		bad("restart_backoff.initial", "must not be negative")
	}
	if b.Max < b.Initial {
		bad("restart_backoff.max", "must be >= restart_backoff.initial (%v)", b.Initial)
	}
	if b.Multiplier < 1 || math.IsInf(b.Multiplier, 0) || math.IsNaN(b.Multiplier) {
		bad("restart_backoff.multiplier", "must be >= 1")
	}
	if b.Jitter != NoJitter && (b.Jitter < 0 || b.Jitter >= 1 || math.IsNaN(b.Jitter)) {
		bad("restart_backoff.jitter", "must be in [0, 1)")
	}
	thresholdOK := c.CrashLoopThreshold >= 1 && c.CrashLoopThreshold <= maxThreshold
	if !thresholdOK {
		bad("crash_loop_threshold", "must be in [1, %d]", maxThreshold)
	}
	if c.CrashLoopWindow < 0 {
		bad("crash_loop_window", "must not be negative")
	} else if thresholdOK && len(errs) == 0 {
		// A worker that dies at once must be able to reach the threshold:
		// the longest the restart delays before its last counted exit can
		// take must fit in the window.
		if need := maxDelays(b, c.CrashLoopThreshold-1); c.CrashLoopWindow <= need {
			bad("crash_loop_window", "must exceed the %d restart delays before exit %d (up to %v)",
				c.CrashLoopThreshold-1, c.CrashLoopThreshold, need)
		}
	}
	if c.StableAfter < 0 {
		bad("stable_after", "must not be negative")
	}
	if c.MaxLineBytes < 16 {
		bad("max_line_bytes", "must be >= 16")
	}
	return errors.Join(errs...)
}

// maxDelays is the longest n consecutive restart delays can add up to.
func maxDelays(b Backoff, n int) time.Duration {
	total := 0.0
	d := float64(b.Initial)
	for range n {
		total += math.Min(d, float64(b.Max)) * (1 + b.jitter())
		d *= b.Multiplier
		if total > float64(math.MaxInt64/2) {
			break
		}
	}
	return time.Duration(total)
}

// ParseSignal parses a signal name ("SIGTERM", "TERM", "sigterm") or number
// ("15").
func ParseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("parse signal %q: out of range", s)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("parse signal %q: unknown signal", s)
}

// vars are the values of the placeholders for one worker.
type vars struct {
	queue  string
	slice  int
	slices int
}

// expand replaces {queue}, {slice} and {slices} in s; {{ and }} are literal
// braces. Any other use of a brace is an error.
func expand(s string, v vars) (string, error) {
	if !strings.ContainsAny(s, "{}") {
		return s, nil
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '{' && i+1 < len(s) && s[i+1] == '{':
			out.WriteByte('{')
			i++
		case c == '}' && i+1 < len(s) && s[i+1] == '}':
			out.WriteByte('}')
			i++
		case c == '}':
			return "", fmt.Errorf("single '}' at offset %d (write '}}' for a literal brace)", i)
		case c == '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated placeholder at offset %d", i)
			}
			name := s[i+1 : i+end]
			switch name {
			case "queue":
				out.WriteString(v.queue)
			case "slice":
				out.WriteString(strconv.Itoa(v.slice))
			case "slices":
				out.WriteString(strconv.Itoa(v.slices))
			default:
				return "", fmt.Errorf("unknown placeholder {%s} (known: {queue}, {slice}, {slices}; '{{' for a literal brace)", name)
			}
			i += end
		default:
			out.WriteByte(c)
		}
	}
	return out.String(), nil
}

func checkTemplate(s string) error {
	_, err := expand(s, vars{queue: "q", slice: 0, slices: 1})
	return err
}

// credential resolves User and Group; nil when the worker keeps qslice's
// own credentials. Errors are *FieldError with the field name only.
func credential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" {
		if groupName != "" {
			return nil, &FieldError{Field: "group", Msg: "needs user"}
		}
		return nil, nil
	}
	u, err := lookupUser(userName, groupName != "")
	if err != nil {
		return nil, &FieldError{Field: "user", Msg: err.Error()}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, &FieldError{Field: "user", Msg: fmt.Sprintf("user %q has non-numeric IDs", userName)}
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil && u.Username != "" {
		for _, id := range ids {
			if n, err := strconv.ParseUint(id, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	if groupName != "" {
		g, err := lookupGroup(groupName)
		if err != nil {
			return nil, &FieldError{Field: "group", Msg: err.Error()}
		}
		n, err := strconv.ParseUint(g.Gid, 10, 32)
		if err != nil {
			return nil, &FieldError{Field: "group", Msg: fmt.Sprintf("group %q has a non-numeric ID", groupName)}
		}
		cred.Gid = uint32(n)
	}
	return cred, nil
}

func lookupUser(s string, haveGroup bool) (*user.User, error) {
	if _, err := strconv.ParseUint(s, 10, 32); err == nil {
		if u, err := user.LookupId(s); err == nil {
			return u, nil
		}
		if !haveGroup {
			return nil, fmt.Errorf("user ID %s has no passwd entry: set group too", s)
		}
		return &user.User{Uid: s, Gid: "0"}, nil // Gid replaced by the group
	}
	u, err := user.Lookup(s)
	if err != nil {
		return nil, fmt.Errorf("unknown user %q", s)
	}
	return u, nil
}

func lookupGroup(s string) (*user.Group, error) {
	if _, err := strconv.ParseUint(s, 10, 32); err == nil {
		return &user.Group{Gid: s}, nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return nil, fmt.Errorf("unknown group %q", s)
	}
	return g, nil
}

// workerSpec is a Config expanded for one slice.
type workerSpec struct {
	argv []string
	env  []string // full environment, qslice's own first
	dir  string
	cred *syscall.Credential // nil: qslice's own
}

func (c Config) spec(v vars, base []string) (workerSpec, error) {
	var ws workerSpec
	for i, a := range c.Command {
		e, err := expand(a, v)
		if err != nil {
			return ws, fmt.Errorf("expand command[%d]: %w", i, err)
		}
		ws.argv = append(ws.argv, e)
	}
	dir, err := expand(c.Dir, v)
	if err != nil {
		return ws, fmt.Errorf("expand dir: %w", err)
	}
	ws.dir = dir
	if ws.cred, err = credential(c.User, c.Group); err != nil {
		return ws, fmt.Errorf("resolve user: %w", err)
	}
	ws.env = append(ws.env, base...)
	keys := make([]string, 0, len(c.Env))
	for k := range c.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		val, err := expand(c.Env[k], v)
		if err != nil {
			return ws, fmt.Errorf("expand env %s: %w", k, err)
		}
		ws.env = append(ws.env, k+"="+val)
	}
	ws.env = append(ws.env,
		"QSLICE_QUEUE="+v.queue,
		"QSLICE_SLICE="+strconv.Itoa(v.slice),
		"QSLICE_SLICES="+strconv.Itoa(v.slices))
	return ws, nil
}
