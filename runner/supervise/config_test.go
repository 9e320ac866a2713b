//go:build linux

package supervise

import (
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	ok := Config{Command: []string{"runner", "--runner=out:{slice}:{slices}"}}
	tests := []struct {
		name string
		edit func(*Config)
		want []string // exact error lines, in order
	}{
		{name: "valid", edit: func(*Config) {}},
		{name: "mailman", edit: func(c *Config) {
			c.Command = []string{"/usr/lib/mailman3/bin/runner", "-C", "{queue}.cfg", "--runner={queue}:{slice}:{slices}"}
			c.Env = map[string]string{"MAILMAN_SLICE": "{slice}"}
			c.Dir = "/srv/{queue}"
		}},
		{name: "literal braces", edit: func(c *Config) { c.Command = []string{"sh", "-c", "echo ${{HOME}}"} }},
		{name: "empty command", edit: func(c *Config) { c.Command = nil },
			want: []string{"supervise.command: must not be empty"}},
		{name: "empty program", edit: func(c *Config) { c.Command = []string{""} },
			want: []string{"supervise.command[0]: program must not be empty"}},
		{name: "unknown placeholder", edit: func(c *Config) { c.Command = []string{"runner", "--runner=out:{sliec}:{slices}"} },
			want: []string{"supervise.command[1]: unknown placeholder {sliec} (known: {queue}, {slice}, {slices}; '{{' for a literal brace)"}},
		{name: "shell variable needs escaping", edit: func(c *Config) { c.Command = []string{"sh", "-c", "echo ${HOME}"} },
			want: []string{"supervise.command[2]: unknown placeholder {HOME} (known: {queue}, {slice}, {slices}; '{{' for a literal brace)"}},
		{name: "unterminated", edit: func(c *Config) { c.Command = []string{"runner", "{slice"} },
			want: []string{"supervise.command[1]: unterminated placeholder at offset 0"}},
		{name: "single close brace", edit: func(c *Config) { c.Command = []string{"runner", "a}"} },
			want: []string{"supervise.command[1]: single '}' at offset 1 (write '}}' for a literal brace)"}},
		{name: "env", edit: func(c *Config) {
			c.Env = map[string]string{"": "x", "A=B": "x", "QSLICE_SLICE": "1", "OK": "{nope}"}
		}, want: []string{
			`supervise.env: invalid variable name ""`,
			`supervise.env: invalid variable name "A=B"`,
			"supervise.env.OK: unknown placeholder {nope} (known: {queue}, {slice}, {slices}; '{{' for a literal brace)",
			"supervise.env.QSLICE_SLICE: QSLICE_ variables are set by qslice",
		}},
		{name: "dir", edit: func(c *Config) { c.Dir = "/srv/{q}" },
			want: []string{"supervise.dir: unknown placeholder {q} (known: {queue}, {slice}, {slices}; '{{' for a literal brace)"}},
		{name: "signal out of range", edit: func(c *Config) { c.StopSignal = 99 },
			want: []string{"supervise.stop_signal: 99 is not a signal"}},
		{name: "signal suspends", edit: func(c *Config) { c.StopSignal = syscall.SIGSTOP },
			want: []string{"supervise.stop_signal: SIGSTOP would suspend the worker, not stop it"}},
		{name: "negative durations", edit: func(c *Config) {
			c.Grace = -1
			c.StableAfter = -time.Second
			c.CrashLoopWindow = -time.Second
		}, want: []string{
			"supervise.grace: must not be negative",
			"supervise.crash_loop_window: must not be negative",
			"supervise.stable_after: must not be negative",
		}},
		{name: "backoff", edit: func(c *Config) {
			c.RestartBackoff = Backoff{Initial: time.Minute, Max: time.Second, Multiplier: 0.5, Jitter: 1}
		}, want: []string{
			"supervise.restart_backoff.max: must be >= restart_backoff.initial (1m0s)",
			"supervise.restart_backoff.multiplier: must be >= 1",
			"supervise.restart_backoff.jitter: must be in [0, 1)",
		}},
		{name: "threshold", edit: func(c *Config) { c.CrashLoopThreshold = -1 },
			want: []string{"supervise.crash_loop_threshold: must be in [1, 1000]"}},
		{name: "window too short for the backoff", edit: func(c *Config) {
			// 1s+2s+4s+8s, x1.2 jitter = 18s before the 5th exit.
			c.CrashLoopWindow = 18 * time.Second
		}, want: []string{"supervise.crash_loop_window: must exceed the 4 restart delays before exit 5 (up to 18s)"}},
		{name: "window just long enough", edit: func(c *Config) { c.CrashLoopWindow = 18*time.Second + 1 }},
		{name: "user and group", edit: func(c *Config) { c.User = "root"; c.Group = "0" }},
		{name: "numeric user with group", edit: func(c *Config) { c.User = "64999"; c.Group = "64999" }},
		{name: "unknown user", edit: func(c *Config) { c.User = "qslice-no-such-user" },
			want: []string{`supervise.user: unknown user "qslice-no-such-user"`}},
		{name: "numeric user without passwd entry", edit: func(c *Config) { c.User = "64999" },
			want: []string{"supervise.user: user ID 64999 has no passwd entry: set group too"}},
		{name: "unknown group", edit: func(c *Config) { c.User = "root"; c.Group = "qslice-no-such-group" },
			want: []string{`supervise.group: unknown group "qslice-no-such-group"`}},
		{name: "group without user", edit: func(c *Config) { c.Group = "root" },
			want: []string{"supervise.group: needs user"}},
		{name: "line bytes", edit: func(c *Config) { c.MaxLineBytes = 8 },
			want: []string{"supervise.max_line_bytes: must be >= 16"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			c.Command = append([]string(nil), ok.Command...)
			tt.edit(&c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tt.want)
			}
			if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("Validate() =\n%s\nwant\n%s", err, strings.Join(tt.want, "\n"))
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("errors.Is(err, ErrInvalidConfig) = false")
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !strings.HasPrefix(fe.Field, "supervise.") {
				t.Errorf("errors.As(*FieldError) = %v, %+v", errors.As(err, &fe), fe)
			}
		})
	}
}

func TestWithDefaults(t *testing.T) {
	c := Config{Command: []string{"x"}}.WithDefaults()
	want := Config{
		Command:    []string{"x"},
		StopSignal: syscall.SIGTERM,
		Grace:      DefaultGrace,
		RestartBackoff: Backoff{Initial: DefaultBackoffInitial, Max: DefaultBackoffMax,
			Multiplier: DefaultBackoffMultiplier, Jitter: DefaultBackoffJitter},
		CrashLoopThreshold: DefaultCrashLoopThreshold,
		CrashLoopWindow:    DefaultCrashLoopWindow,
		StableAfter:        DefaultStableAfter,
		MaxLineBytes:       DefaultMaxLineBytes,
	}
	if c.StopSignal != want.StopSignal || c.Grace != want.Grace || c.RestartBackoff != want.RestartBackoff ||
		c.CrashLoopThreshold != want.CrashLoopThreshold || c.CrashLoopWindow != want.CrashLoopWindow ||
		c.StableAfter != want.StableAfter || c.MaxLineBytes != want.MaxLineBytes {
		t.Errorf("WithDefaults() = %+v, want %+v", c, want)
	}
	// The defaults themselves must be valid, the crash loop reachable.
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	if got := maxDelays(c.RestartBackoff, c.CrashLoopThreshold-1); got != 18*time.Second {
		t.Errorf("maxDelays(defaults) = %v, want 18s", got)
	}
	if got := (Backoff{Jitter: NoJitter}).jitter(); got != 0 {
		t.Errorf("NoJitter.jitter() = %v", got)
	}
}

func TestExpand(t *testing.T) {
	v := vars{queue: "out", slice: 3, slices: 8}
	tests := []struct{ in, want, err string }{
		{in: "", want: ""},
		{in: "plain", want: "plain"},
		{in: "--runner={queue}:{slice}:{slices}", want: "--runner=out:3:8"},
		{in: "{slice}{slice}", want: "33"},
		{in: "{{slice}}", want: "{slice}"},
		{in: "a{{b}}c", want: "a{b}c"},
		{in: "${{X}}", want: "${X}"},
		{in: "{", err: "unterminated placeholder at offset 0"},
		{in: "x{}", err: "unknown placeholder {} (known: {queue}, {slice}, {slices}; '{{' for a literal brace)"},
		{in: "}", err: "single '}' at offset 0 (write '}}' for a literal brace)"},
	}
	for _, tt := range tests {
		got, err := expand(tt.in, v)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("expand(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("expand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestSpecEnvironment(t *testing.T) {
	c := Config{Command: []string{"run", "{queue}-{slice}"}, Env: map[string]string{"B": "b{slice}", "A": "a"}, Dir: "/d/{slices}"}
	ws, err := c.spec(vars{queue: "in", slice: 1, slices: 2}, []string{"PATH=/bin", "A=old"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ws.argv, " "); got != "run in-1" {
		t.Errorf("argv = %q", got)
	}
	if ws.dir != "/d/2" {
		t.Errorf("dir = %q", ws.dir)
	}
	want := "PATH=/bin A=old A=a B=b1 QSLICE_QUEUE=in QSLICE_SLICE=1 QSLICE_SLICES=2"
	if got := strings.Join(ws.env, " "); got != want {
		t.Errorf("env = %q, want %q (later entries win in exec)", got, want)
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want syscall.Signal
		err  bool
	}{
		{in: "SIGTERM", want: syscall.SIGTERM},
		{in: "TERM", want: syscall.SIGTERM},
		{in: "sigint", want: syscall.SIGINT},
		{in: "usr1", want: syscall.SIGUSR1},
		{in: "15", want: syscall.SIGTERM},
		{in: "0", err: true},
		{in: "SIGNOPE", err: true},
		{in: "", err: true},
	}
	for _, tt := range tests {
		got, err := ParseSignal(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestNewRejects(t *testing.T) {
	_, err := New("", 0, Config{}, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("New accepted an empty queue, 0 slices and no command")
	}
	want := `new supervisor for queue "": queue: must not be empty` + "\n" +
		"slices: must be >= 1\nsupervise.command: must not be empty"
	if err.Error() != want {
		t.Errorf("New() error =\n%s\nwant\n%s", err, want)
	}
	if !errors.Is(err, ErrInvalidConfig) {
		t.Error("New error does not match ErrInvalidConfig")
	}
}
