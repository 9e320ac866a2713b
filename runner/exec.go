package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/propagation"

	"github.com/qslice/qslice/runner/proctree"
	"github.com/qslice/qslice/runner/queue"
)

// killWait bounds how long killing a handling's processes may take before qslice gives up on
// them: SIGKILL is immediate except for a process blocked in the kernel (a hung NFS server).
const killWait = 10 * time.Second

// ExitRetry is the exit status with which an exec handler asks to be retried later (EX_TEMPFAIL
// from sysexits.h, as mail software uses it).
const ExitRetry = 75

// ExecHandler runs one command per message: the payload body on stdin, the metadata in environment
// variables (see Env). Exit 0 means done, exit 75 retry later, anything else shunts the message with
// the exit status and the tail of stderr. When the handler's context ends (timeout, lost lease,
// shutdown) the command's whole process group is killed, and when the command exits, whatever
// it left in its group is killed too. The process tree is recorded next to the in-flight file
// (queue.SuffixProcs) so that it can be killed after a crash of qslice (runner/proctree).
type ExecHandler struct {
	Command []string // program and arguments
	Dir     string   // working directory; empty: the runner's
	Env     []string // extra environment, KEY=VALUE, on top of the runner's own
}

// Handle implements Handler.
func (h *ExecHandler) Handle(ctx context.Context, m *Message) error {
	if len(h.Command) == 0 {
		return errors.New("exec handler: no command configured")
	}
	cmd := exec.CommandContext(ctx, h.Command[0], h.Command[1:]...)
	cmd.Dir = h.Dir
	cmd.Env = append(append(os.Environ(), h.Env...), Env(ctx, m)...)
	cmd.Stdin = bytes.NewReader(m.Body)
	var stderr tailBuffer
	cmd.Stdout = nil
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	// Its own process group, marked in the environment, recorded next to the in-flight file
	// before it starts: whatever ends this handling, even a SIGKILL of qslice, no process of it
	// runs when the message runs again (runner/proctree).
	rec, err := proctree.New()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRetry, err)
	}
	rec.Prepare(cmd)
	var file *proctree.File
	if m.procsPath != "" {
		if file, err = proctree.Create(m.procsPath, rec); err != nil {
			return fmt.Errorf("%w: %w", ErrRetry, err)
		}
		m.procsWritten = true
	}
	if err := proctree.Start(cmd, &rec); err != nil {
		if file != nil {
			file.Close()
		}
		return fmt.Errorf("run %s: %w", h.Command[0], err)
	}
	if file != nil {
		if err := file.Started(rec); err != nil {
			_ = cmd.Cancel()
			if _, survivors := proctree.Wait(cmd, &rec); survivors != nil {
				return fmt.Errorf("%s: %w; not retried: %w", h.Command[0], err, survivors)
			}
			return fmt.Errorf("%w: %w", ErrRetry, err)
		}
	}
	// When Wait returns, the group is gone and, after a failure (the message may run again: a
	// retry, a requeue from shunt), so is every process marked as this handling's. A survivor
	// of SIGKILL (stuck in the kernel) must not overlap a retry: the message is shunted.
	err, survivors := proctree.Wait(cmd, &rec)
	if err == nil {
		return nil // done: the message is removed and never runs again
	}
	if survivors != nil {
		return fmt.Errorf("%s: %w; not retried: %w", h.Command[0], err, survivors)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: killed: %w", h.Command[0], context.Cause(ctx))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		msg := strings.TrimSpace(stderr.String())
		if ee.ExitCode() == ExitRetry {
			return fmt.Errorf("%w: %s exited %d: %s", ErrRetry, h.Command[0], ExitRetry, msg)
		}
		return fmt.Errorf("%s: %s: %s", h.Command[0], ee.ProcessState.String(), msg)
	}
	return fmt.Errorf("run %s: %w", h.Command[0], err)
}

// Env returns the environment an exec handler sees for m:
//
//	QSLICE_QUEUE, QSLICE_SLICE, QSLICE_SLICES, QSLICE_MESSAGE_ID (the file's base name),
//	QSLICE_ENQUEUED (RFC 3339), QSLICE_ATTEMPTS (crash recoveries so far), QSLICE_RETRY (retries
//	asked so far), QSLICE_LOCK, TRACEPARENT (the span of this handling, W3C format),
//	QSLICE_LEASE_DEADLINE (RFC 3339, UTC: Message.LeaseDeadline), QSLICE_FENCING_TOKEN (decimal,
//	when the lease has one: Message.FencingToken), and QSLICE_META_<KEY> for each extra metadata
//	key (upper-cased, non-alphanumerics as '_').
//
// QSLICE_LEASE_DEADLINE fences a paused machine: qslice kills a handler whose lease lapsed, but
// after a pause (VM suspended, SIGSTOP) the handler resumes at the same instant as qslice and can
// finish before it is killed, while another node already handles the message. A handler whose
// side effects must never overlap checks, right before committing them, that the time is still
// before QSLICE_LEASE_DEADLINE, and otherwise exits 75 without committing. The deadline is the
// lease at the handler's start (min(ttl, lock_delay) minus the margin ahead at most), so this
// suits handlers shorter than that.
func Env(ctx context.Context, m *Message) []string {
	env := []string{
		"QSLICE_QUEUE=" + m.Queue,
		"QSLICE_SLICE=" + strconv.Itoa(m.Slice),
		"QSLICE_SLICES=" + strconv.Itoa(m.Slices),
		"QSLICE_MESSAGE_ID=" + m.Name.Base,
		"QSLICE_ENQUEUED=" + m.Meta.Enqueued.UTC().Format(time.RFC3339Nano),
		"QSLICE_ATTEMPTS=" + strconv.Itoa(m.Meta.Attempts),
		"QSLICE_RETRY=" + strconv.Itoa(m.Retry),
		"QSLICE_LOCK=" + m.Meta.Lock,
	}
	if !m.LeaseDeadline.IsZero() {
		env = append(env, "QSLICE_LEASE_DEADLINE="+m.LeaseDeadline.UTC().Format(time.RFC3339Nano))
	}
	if m.FencingToken != 0 {
		env = append(env, "QSLICE_FENCING_TOKEN="+strconv.FormatUint(m.FencingToken, 10))
	}
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	if tp := carrier.Get("traceparent"); tp != "" {
		env = append(env, "TRACEPARENT="+tp)
	}
	keys := make([]string, 0, len(m.Meta.Extra))
	for k := range m.Meta.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, "QSLICE_META_"+queue.EnvKey(k)+"="+m.Meta.Extra[k])
	}
	return env
}

// tailBuffer keeps the last 4 KiB written to it: enough of stderr to say why a handler failed.
type tailBuffer struct{ b []byte }

const tailMax = 4096

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > tailMax {
		t.b = append(t.b[:0], t.b[len(t.b)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }
