// Command qslice-demo runs the failover demo of package demo: a real Consul (dev mode), three
// qslice nodes, a real Prometheus with the shipped rules, a feeder; it kills a node, shows the
// takeover, the alert and the fail-back, and draws the picture. scripts/demo.sh builds it and
// the binaries it runs, and calls it:
//
//	qslice-demo -consul PATH -prometheus PATH -bin DIR -rules FILE -work DIR [-out DIR] [-short]
//
// Exit status: 0 when the demo showed everything it promises, 1 when not (the report says
// what), 2 on bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/qslice/qslice/chaos"
	"github.com/qslice/qslice/internal/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var usage usageError
	switch {
	case errors.As(err, &usage):
		fmt.Fprintf(os.Stderr, "qslice-demo: %v\n", err)
		os.Exit(2)
	case err != nil:
		fmt.Fprintf(os.Stderr, "qslice-demo: %v\n", err)
		os.Exit(1)
	}
}

type usageError struct{ error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("qslice-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		short   = fs.Bool("short", false, "the short demo (about a minute): TTL 2s, lock-delay 1s, hold-down 5s, the rules' for: divided by 10")
		consul  = fs.String("consul", "", "the consul binary (required)")
		prom    = fs.String("prometheus", "", "the prometheus binary (required)")
		bin     = fs.String("bin", "", "directory holding qslice and qslice-chaos-handler (required)")
		rules   = fs.String("rules", "", "the shipped rules file, dashboards/rules/qslice-rules.yaml (required)")
		work    = fs.String("work", "", "scratch directory: queue, configs, logs, Prometheus data (required)")
		out     = fs.String("out", "demo-out", "directory for the picture ("+demo.PictureName+") and report.json")
		verbose = fs.Bool("v", false, "log what the harness does")
	)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %v", fs.Args())}
	}
	for name, v := range map[string]string{"consul": *consul, "prometheus": *prom, "bin": *bin, "rules": *rules, "work": *work} {
		if v == "" {
			return usageError{fmt.Errorf("-%s is required", name)}
		}
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	timing := demo.Full
	if *short {
		timing = demo.Short
	}
	rep, err := demo.Run(ctx, demo.Options{
		Timing: timing, Short: *short,
		Bin:    chaos.Binaries{Qslice: filepath.Join(*bin, "qslice"), Handler: filepath.Join(*bin, "qslice-chaos-handler")},
		Consul: *consul, Prometheus: *prom, Rules: *rules, Dir: *work, Out: *out,
		Stdout: stdout, Log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	})
	if rep != nil && rep.Picture != "" {
		report := filepath.Join(*out, "report.json")
		if werr := demo.WriteReport(report, rep); werr != nil {
			err = errors.Join(err, werr)
		} else {
			fmt.Fprintf(stdout, "== report: %s\n", report)
		}
	}
	if err != nil {
		return err
	}
	if err := rep.Err(); err != nil {
		return fmt.Errorf("the demo did not show what it promises: %w", err)
	}
	return nil
}
