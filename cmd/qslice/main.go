// Command qslice runs Mailman-style file-queue workers on a cluster: slice-aware processing of
// shared queue directories, slice ownership on Consul with automatic failover, and observation of
// the shared disk for Prometheus, OpenTelemetry and Grafana.
//
// Exit codes: 0 success; 1 an operation failed; 2 bad usage or configuration; 3 `status` found a
// slice unowned or unhealthy or a member down, or `members` a member down.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/qslice/qslice/internal/buildinfo"
)

// Exit codes.
const (
	exitOK        = 0
	exitFailure   = 1
	exitUsage     = 2
	exitUnhealthy = 3
)

// build is this binary's version, revision and date (see internal/buildinfo).
var build = buildinfo.Get()

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go onSignals(sigs, cancel, gracefulCommand(os.Args[1:]), os.Stderr, os.Exit)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}

// onSignals turns SIGINT/SIGTERM into what the command needs. `qslice run` shuts down gracefully:
// the first signal cancels ctx (running handlers get shutdown_grace), a second exits at once.
// Every other command exits at once, whatever it is blocked on: each of their steps is atomic on
// disk (a half-written enqueue is a *.tmp that runners clean up), so stopping anywhere is safe.
func onSignals(sigs <-chan os.Signal, cancel context.CancelFunc, graceful bool, stderr io.Writer, exit func(int)) {
	s := <-sigs
	cancel()
	if graceful {
		s = <-sigs
		fmt.Fprintln(stderr, "qslice: second signal, exiting at once")
	}
	code := 128 + 2 // SIGINT
	if s == syscall.SIGTERM {
		code = 128 + 15
	}
	exit(code)
}

// gracefulCommand reports whether args run the node, which stops gracefully on a signal.
func gracefulCommand(args []string) bool {
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--log-format" || a == "--log-level":
			i++ // the flag's value
		case !strings.HasPrefix(a, "-"):
			return a == "run"
		}
	}
	return false
}

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// globals are the flags every subcommand shares.
type globals struct {
	logFormat string
	logLevel  string
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
}

// validate checks the log flags as promslog does: a bad value is a usage error, never ignored.
func (g *globals) validate() error {
	switch g.logLevel {
	case "debug", "info", "warn", "error":
	default:
		return usageErr("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	switch g.logFormat {
	case "text", "logfmt", "json":
	default:
		return usageErr("--log-format %q: want text (or logfmt) or json", g.logFormat)
	}
	return nil
}

func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(g.logLevel)) // validate accepted it
	opts := &slog.HandlerOptions{Level: lvl}
	if g.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(g.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(g.stderr, opts))
}

// interactive reports whether w is a terminal: progress is shown only there.
func interactive(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.code != exitUnhealthy {
			fmt.Fprintln(stderr, "qslice:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "qslice:", err)
	if isUsage(err) {
		return exitUsage
	}
	return exitFailure
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "qslice",
		Short: "Run Mailman-style queue workers on a cluster, with automatic slice failover",
		Long: `qslice runs file-queue workers ("qrunners") over queue directories shared by several hosts.
Each queue's SHA-1 hash space is cut into slices; each slice is worked by exactly one node, chosen
through Consul, and moves to another node when its owner stops reporting.

Exit codes: 0 success, 1 failure, 2 bad usage or configuration, 3 unhealthy (status, members).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       build.String(),
	}
	root.SetVersionTemplate("qslice {{.Version}}\n")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text (logfmt) or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.PersistentPreRunE = func(*cobra.Command, []string) error { return g.validate() }
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErr("%v (see %s --help)", err, c.CommandPath())
	})
	root.AddCommand(
		newRunCmd(g, false),
		newRunCmd(g, true),
		newStatusCmd(g),
		newDrainCmd(g),
		newLeaveCmd(g),
		newMembersCmd(g),
		newQueueCmd(g),
		newLocksCmd(),
		newConfigCmd(g),
		newMailmanCmd(g),
		newVersionCmd(g),
		newGenerateCmd(),
	)
	return root
}

func isUsage(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "accepts ", "requires at least", "required flag"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

func newVersionCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print qslice's version, VCS revision and build date",
		Long: `Print the version (the module version for ` + "`go install`" + `, the tag for a release, "dev" for a
local build), the VCS commit and its date, from the build information Go embeds. --json prints
them as an object.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(build)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "qslice", build)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
