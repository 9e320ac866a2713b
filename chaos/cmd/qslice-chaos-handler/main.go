// Command qslice-chaos-handler is the exec handler the chaos harness gives its qslice nodes. For
// each message it appends two lines to the node's ledger file:
//
//	<message id> <node> start <unix ns> slice=<slice> pid=<pid>
//	<message id> <node> end <unix ns> slice=<slice> pid=<pid>
//
// with one write(2) each on a file opened with O_APPEND (atomic for these short lines), and works
// for CHAOS_WORK between them. The "end" line is the handler's commit point: a handling without
// it had no effect. A handler that finds its lease deadline passed at the commit point writes
//
//	<message id> <node> fenced <unix ns> slice=<slice> pid=<pid>
//
// instead (no commit: the handling ended there) and exits 75.
//
// With CHAOS_CHILD=1 it hands each message to a child process of its own that writes the lines
// (and commits), adding "<id> <node> tick <unix ns> ..." lines while it works: the process tree
// that must die with the handling when qslice itself is killed (TestNoOverlapAfterKill9).
//
// With the argument -worker it is a persistent worker instead (handler.worker, protocol of
// docs/worker-protocol.md, built on sdk/go/qsworker): the same two lines per message, the same
// work and fence, answering retry where the exec handler exits 75; pid is the worker's.
//
// Environment: CHAOS_LEDGER (the ledger file), CHAOS_NODE (the node's name), CHAOS_WORK (a
// duration, default 5ms), and from qslice QSLICE_MESSAGE_ID, QSLICE_SLICE and, when the runner
// provides it, QSLICE_LEASE_DEADLINE (RFC 3339): a handler that finds itself past it (a paused
// machine that resumed) writes nothing more and exits 75, so that it never commits while another
// node may already handle the message.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/qslice/qslice/sdk/go/qsworker"
)

// tickEvery is how often a child handler ("-child") shows in the ledger that it still runs.
const tickEvery = 20 * time.Millisecond

// exitRetry asks qslice to retry the message later (EX_TEMPFAIL).
const exitRetry = 75

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-worker" {
		os.Exit(runWorker())
	}
	if len(os.Args) > 1 && os.Args[1] == "-child" {
		os.Exit(run(true))
	}
	if os.Getenv("CHAOS_CHILD") == "1" {
		os.Exit(runParent())
	}
	os.Exit(run(false))
}

// runParent reads the payload and leaves the handling to a child process ("-child"), which
// writes the ledger and commits; it waits for it and exits as it does. Killed alone (qslice's
// Pdeathsig when qslice dies), it leaves the child running: a handling's process tree.
func runParent() int {
	if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "qslice-chaos-handler: read payload: %v\n", err)
		return exitRetry
	}
	cmd := exec.Command(os.Args[0], "-child")
	// No pipe to qslice: the child must be able to outlive it without dying of SIGPIPE.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() >= 0 {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "qslice-chaos-handler: child: %v\n", err)
		return 1
	}
	return 0
}

// runWorker serves messages as a persistent worker until qslice closes stdin.
func runWorker() int {
	node, ledger := os.Getenv("CHAOS_NODE"), os.Getenv("CHAOS_LEDGER")
	work, err := workTime()
	if node == "" || ledger == "" || err != nil {
		fmt.Fprintln(os.Stderr, "qslice-chaos-handler -worker: CHAOS_NODE and CHAOS_LEDGER must be set, CHAOS_WORK a duration:", err)
		return 2
	}
	f, err := os.OpenFile(ledger, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "qslice-chaos-handler: open ledger: %v\n", err)
		return 1
	}
	defer f.Close()
	pid := strconv.Itoa(os.Getpid())
	err = qsworker.Run(func(m *qsworker.Message) error {
		var deadline time.Time
		if m.LeaseDeadline != "" {
			if deadline, err = time.Parse(time.RFC3339Nano, m.LeaseDeadline); err != nil {
				return fmt.Errorf("lease_deadline: %w", err)
			}
		}
		fenced := func() bool { return !deadline.IsZero() && !time.Now().Before(deadline) }
		line := func(what string) error {
			_, err := f.WriteString(m.MessageID + " " + node + " " + what + " " + strconv.FormatInt(time.Now().UnixNano(), 10) +
				" slice=" + strconv.Itoa(m.Slice) + " pid=" + pid + "\n")
			return err
		}
		if fenced() {
			return qsworker.Retry(0, "lease deadline passed before start")
		}
		if err := line("start"); err != nil {
			return qsworker.Retry(0, "write ledger: "+err.Error())
		}
		time.Sleep(work)
		if fenced() { // the commit point
			return qsworker.Retry(0, "lease deadline passed before commit")
		}
		if err := line("end"); err != nil {
			return qsworker.Retry(0, "write ledger: "+err.Error())
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "qslice-chaos-handler -worker: %v\n", err)
		return 1
	}
	return 0
}

func workTime() (time.Duration, error) {
	if s := os.Getenv("CHAOS_WORK"); s != "" {
		return time.ParseDuration(s)
	}
	return 5 * time.Millisecond, nil
}

// run handles one message; child is the child of runParent, which also writes a "tick" line
// every tickEvery while it works, so that the ledger shows until when it ran.
func run(child bool) int {
	id, node, ledger := os.Getenv("QSLICE_MESSAGE_ID"), os.Getenv("CHAOS_NODE"), os.Getenv("CHAOS_LEDGER")
	if id == "" || node == "" || ledger == "" {
		fmt.Fprintln(os.Stderr, "qslice-chaos-handler: QSLICE_MESSAGE_ID, CHAOS_NODE and CHAOS_LEDGER must be set")
		return 2
	}
	work, err := workTime()
	if err != nil {
		fmt.Fprintf(os.Stderr, "qslice-chaos-handler: CHAOS_WORK: %v\n", err)
		return 2
	}
	var deadline time.Time
	if s := os.Getenv("QSLICE_LEASE_DEADLINE"); s != "" {
		d, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "qslice-chaos-handler: QSLICE_LEASE_DEADLINE: %v\n", err)
			return 2
		}
		deadline = d
	}
	fenced := func() bool { return !deadline.IsZero() && !time.Now().Before(deadline) }

	if !child {
		if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
			fmt.Fprintf(os.Stderr, "qslice-chaos-handler: read payload: %v\n", err)
			return exitRetry
		}
	}
	f, err := os.OpenFile(ledger, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "qslice-chaos-handler: open ledger: %v\n", err)
		return exitRetry
	}
	defer f.Close()
	slice, pid := os.Getenv("QSLICE_SLICE"), strconv.Itoa(os.Getpid())
	line := func(what string) error {
		_, err := f.WriteString(id + " " + node + " " + what + " " + strconv.FormatInt(time.Now().UnixNano(), 10) +
			" slice=" + slice + " pid=" + pid + "\n")
		return err
	}
	if fenced() {
		fmt.Fprintln(os.Stderr, "qslice-chaos-handler: lease deadline passed before start")
		return exitRetry
	}
	if err := line("start"); err != nil {
		fmt.Fprintf(os.Stderr, "qslice-chaos-handler: write ledger: %v\n", err)
		return exitRetry
	}
	if child {
		for end := time.Now().Add(work); time.Now().Before(end); {
			time.Sleep(min(tickEvery, time.Until(end)))
			if err := line("tick"); err != nil {
				return exitRetry
			}
		}
	} else {
		time.Sleep(work)
	}
	if fenced() { // the commit point
		fmt.Fprintln(os.Stderr, "qslice-chaos-handler: lease deadline passed before commit")
		_ = line("fenced") // not a commit: tells the analysis this handling ended here, uncommitted
		return exitRetry
	}
	if err := line("end"); err != nil {
		fmt.Fprintf(os.Stderr, "qslice-chaos-handler: write ledger: %v\n", err)
		return exitRetry
	}
	return 0
}
