package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/qslice/qslice/runner/proctree"
	"github.com/qslice/qslice/runner/queue"
)

func execMsg() *Message {
	return &Message{Queue: "out", Slice: 3, Slices: 8, Name: queue.Name{Base: "1700000000.5+" + strings.Repeat("c", 40)},
		Meta: queue.Meta{Lock: "l.lck", Attempts: 1, Enqueued: time.Unix(1_700_000_000, 0), Extra: map[string]string{"list-id": "a.example.org"}},
		Body: []byte("payload\n"), LeaseDeadline: time.Date(2030, 1, 2, 3, 4, 5, 600_000_000, time.UTC), FencingToken: 4711}
}

func TestExecHandlerExitCodes(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	cases := []struct {
		name    string
		script  string
		wantErr string // "" none, "retry", or a substring
	}{
		{"success sees stdin and env", `cat > "$OUT"; env | grep -E '^(QSLICE_|TRACEPARENT)' | sort >> "$OUT"`, ""},
		{"exit 75 retries", `echo busy >&2; exit 75`, "retry"},
		{"other exit shunts with stderr", `echo 'no such list' >&2; exit 3`, "no such list"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := &ExecHandler{Command: []string{"sh", "-c", c.script}, Env: []string{"OUT=" + out}}
			err := h.Handle(context.Background(), execMsg())
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("err = %v", err)
			case c.wantErr == "retry" && !errors.Is(err, ErrRetry):
				t.Fatalf("err = %v, want ErrRetry", err)
			case c.wantErr != "" && c.wantErr != "retry" && (err == nil || errors.Is(err, ErrRetry) || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), "exit status 3")):
				t.Fatalf("err = %v, want a failure naming %q and the exit status", err, c.wantErr)
			}
		})
	}
	got, _ := os.ReadFile(out)
	for _, want := range []string{"payload\n", "QSLICE_QUEUE=out", "QSLICE_SLICE=3", "QSLICE_SLICES=8", "QSLICE_ATTEMPTS=1",
		"QSLICE_LOCK=l.lck", "QSLICE_META_LIST_ID=a.example.org", "QSLICE_MESSAGE_ID=1700000000.5+",
		"QSLICE_LEASE_DEADLINE=2030-01-02T03:04:05.6Z", "QSLICE_FENCING_TOKEN=4711"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("handler saw %q, missing %q", got, want)
		}
	}
}

func TestExecHandlerTimeoutKillsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The handler starts a grandchild that would outlive a plain kill of the shell.
	h := &ExecHandler{Command: []string{"sh", "-c", `sleep 300 & echo $! > "$PIDF"; wait`}, Env: []string{"PIDF=" + pidFile}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := h.Handle(ctx, execMsg())
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("err = %v, want killed", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Handle returned after %s", d)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	waitFor(t, "grandchild gone", 5*time.Second, func() bool { return syscall.Kill(pid, 0) != nil })
}

func TestConsumerSpanPerMessageLinkedToEnqueuer(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := trace.NewTracerProvider(trace.WithSpanProcessor(rec))
	d := newTestDir(t)
	parent := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if _, err := d.Enqueue(queue.Meta{Traceparent: parent}, []byte("x"), time.Unix(1_700_000_000, 0)); err != nil {
		t.Fatal(err)
	}
	var sawTrace string
	h := HandlerFunc(func(ctx context.Context, m *Message) error {
		for _, kv := range Env(ctx, m) {
			if strings.HasPrefix(kv, "TRACEPARENT=") {
				sawTrace = kv
			}
		}
		return nil
	})
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 4, Handler: h, Tracer: tp, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices(allSlices(4))
	startRunner(t, r)
	waitFor(t, "span ended", 10*time.Second, func() bool { return len(rec.Ended()) == 1 })
	s := rec.Ended()[0]
	if s.SpanKind() != oteltrace.SpanKindConsumer || s.Name() != "process in" {
		t.Errorf("span %q kind %v", s.Name(), s.SpanKind())
	}
	attrs := map[string]string{}
	for _, a := range s.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	for k, v := range map[string]string{"messaging.system": "qslice", "messaging.destination.name": "in", "messaging.operation.type": "process"} {
		if attrs[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, attrs[k], v)
		}
	}
	if attrs["messaging.destination.partition.id"] == "" || !strings.Contains(attrs["messaging.message.id"], "+") {
		t.Errorf("attributes %v lack partition or message id", attrs)
	}
	if len(s.Links()) != 1 || s.Links()[0].SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("links = %v, want the enqueuer's trace", s.Links())
	}
	if !strings.Contains(sawTrace, s.SpanContext().TraceID().String()) {
		t.Errorf("handler saw %q, want the span's own trace id %s", sawTrace, s.SpanContext().TraceID())
	}
}

// TestLockWaitSpan: a message with a lock key gets a "lock wait" span, child of its process span,
// naming the lock file and how the wait ended.
func TestLockWaitSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := trace.NewTracerProvider(trace.WithSpanProcessor(rec))
	d := newTestDir(t)
	lockDir := t.TempDir()
	if _, err := d.Enqueue(queue.Meta{Lock: "list-a.lck"}, []byte("x"), time.Unix(1_700_000_000, 0)); err != nil {
		t.Fatal(err)
	}
	h := HandlerFunc(func(ctx context.Context, m *Message) error { return nil })
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Tracer: tp, LockDir: lockDir, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "two spans ended", 10*time.Second, func() bool { return len(rec.Ended()) == 2 })
	byName := map[string]trace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		byName[s.Name()] = s
	}
	lw, proc := byName["lock wait"], byName["process in"]
	if lw == nil || proc == nil {
		t.Fatalf("spans %v, want 'lock wait' and 'process in'", byName)
	}
	if lw.Parent().SpanID() != proc.SpanContext().SpanID() {
		t.Error("the lock wait span is not a child of the process span")
	}
	attrs := map[string]string{}
	for _, a := range lw.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	if attrs["qslice.lock.result"] != "acquired" || attrs["qslice.lock"] != filepath.Join(lockDir, "list-a.lck") {
		t.Errorf("lock wait attributes %v", attrs)
	}
}

// Whatever way a handling ends, nothing it started still runs afterwards: what it left in its
// group (exit 0), and on a failure also what left the group but carries its marker (setsid),
// since the message may run again.
func TestExecHandlerLeavesNoProcessBehind(t *testing.T) {
	for _, c := range []struct{ name, script string }{
		{"exit 0, child in the group", `sleep 300 & echo $! > "$PIDF"; exit 0`},
		{"exit 75, detached child", `setsid sleep 300 & echo $! > "$PIDF"; sleep 0.2; exit 75`},
		{"exit 3, detached child", `setsid sleep 300 & echo $! > "$PIDF"; sleep 0.2; exit 3`},
	} {
		t.Run(c.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pid")
			h := &ExecHandler{Command: []string{"sh", "-c", c.script}, Env: []string{"PIDF=" + pidFile}}
			_ = h.Handle(context.Background(), execMsg())
			data, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
			t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
			if running(pid) {
				t.Fatalf("process %d of the handling still runs after Handle returned", pid)
			}
		})
	}
}

// running reports whether pid is a live process (not a zombie).
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// The runner records the handler's process tree next to the in-flight file while it runs and
// removes the record once the handling ended.
func TestExecHandlerTreeRecordedWhileRunning(t *testing.T) {
	d := newTestDir(t)
	enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))
	out := filepath.Join(t.TempDir(), "record")
	// The record's first line (the marker) is written before the start, its second (the group)
	// just after: the handler may run before it, so it waits for it (at most 10 s).
	h := &ExecHandler{Command: []string{"sh", "-c", `f="$QDIR/$QSLICE_MESSAGE_ID.procs.json"; i=0; ` +
		`while [ "$(wc -l < "$f")" -lt 2 ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; ` +
		`cat "$f" > "$OUT.tmp"; echo $$ >> "$OUT.tmp"; mv "$OUT.tmp" "$OUT"`},
		Env: []string{"QDIR=" + d.Path, "OUT=" + out}}
	r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
	r.SetSlices([]int{0})
	startRunner(t, r)
	waitFor(t, "message handled", 10*time.Second, func() bool { return len(dirFiles(t, d.Path, "")) == 0 })
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	rec, err := proctree.Read(writeTemp(t, strings.Join(lines[:len(lines)-1], "\n")))
	if err != nil {
		t.Fatalf("record seen by the handler %q: %v", b, err)
	}
	if strconv.Itoa(rec.PGID) != lines[len(lines)-1] || rec.StartTicks == 0 || !rec.Local() {
		t.Errorf("record %+v, want the handler's own group %s, its start time, this host", rec, lines[len(lines)-1])
	}
}

func writeTemp(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "f")
	must(t, os.WriteFile(p, []byte(s), 0o644))
	return p
}

// A qslice killed with SIGKILL leaves a handler's grandchild running and its record next to the
// in-flight file. The runner that recovers the message kills the survivor first: the message
// runs again only when no process of the earlier handling runs. A record of another host is
// left to that host.
func TestRecoveryKillsSurvivorsOfEarlierHandling(t *testing.T) {
	for _, foreign := range []bool{false, true} {
		t.Run(map[bool]string{false: "this host", true: "another host"}[foreign], func(t *testing.T) {
			d := newTestDir(t)
			n := enqueueN(t, d, 1, time.Unix(1_700_000_000, 0))[0]
			must(t, d.Claim(n))
			// The earlier handling: started here, as the dead qslice would have.
			rec, err := proctree.New()
			must(t, err)
			if foreign {
				rec.Host += "-elsewhere"
			}
			old := exec.Command("sh", "-c", "sleep 300 & echo $! >&3; wait")
			rec.Prepare(old)
			pr, pw, err := os.Pipe()
			must(t, err)
			old.ExtraFiles = []*os.File{pw}
			f, err := proctree.Create(filepath.Join(d.Path, n.Base+queue.SuffixProcs), rec)
			must(t, err)
			must(t, proctree.Start(old, &rec))
			must(t, f.Started(rec))
			pw.Close()
			var sleeper int
			_, err = fmt.Fscan(pr, &sleeper)
			must(t, err)
			t.Cleanup(func() {
				_ = syscall.Kill(-rec.PGID, syscall.SIGKILL)
				_ = syscall.Kill(sleeper, syscall.SIGKILL)
				_ = old.Wait()
			})

			ran := filepath.Join(t.TempDir(), "ran")
			// The new handling records whether the old one's processes still ran when it started.
			// (kill -0 would count a zombie, which runs nothing: the state in /proc tells.)
			h := &ExecHandler{Command: []string{"sh", "-c", `case "$(cut -d' ' -f3 /proc/$OLD/stat 2>/dev/null)" in ""|Z|X) echo alone;; *) echo overlap;; esac > "$RAN.tmp"; mv "$RAN.tmp" "$RAN"`},
				Env: []string{"OLD=" + strconv.Itoa(sleeper), "RAN=" + ran}}
			r, _ := New(Config{Queue: "in", Dir: d, Slices: 1, Handler: h, Logger: testLogger(t), PollInterval: 10 * time.Millisecond})
			startRunner(t, r)
			r.SetSlices([]int{0})
			waitFor(t, "message handled again", 10*time.Second, func() bool { _, err := os.Stat(ran); return err == nil })
			got, _ := os.ReadFile(ran)
			want := "alone\n"
			if foreign {
				want = "overlap\n" // this host cannot kill another's processes: that host does
			}
			if string(got) != want {
				t.Errorf("the new handling saw %q, want %q", got, want)
			}
			if foreign != running(sleeper) {
				t.Errorf("earlier handling's grandchild running = %v, want %v", running(sleeper), foreign)
			}
			waitFor(t, "records gone", 10*time.Second, func() bool { return len(dirFiles(t, d.Path, queue.SuffixProcs)) == 0 })
		})
	}
}
