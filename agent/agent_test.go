package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/qslice/qslice/internal/testenv"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/runner"
	"github.com/qslice/qslice/runner/queue"
)

func standaloneConfig(t *testing.T, extra string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	text := fmt.Sprintf(`listen: 127.0.0.1:0
probes: {interval: 200ms, budget: 150ms}
queues:
  - name: in
    dir: q/in
    slices: 4
    lock_dir: locks
    poll_interval: 20ms
    shutdown_grace: 1s
    handler: {exec: [cat]}
%s`, extra)
	cfg, err := config.Parse(filepath.Join(dir, "qslice.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Control.Socket == config.DefaultControlSocket {
		cfg.Control.Socket = testenv.SocketPath(t, "qslice.sock")
	}
	return cfg
}

func startAgent(t *testing.T, cfg *config.Config, opts Options) *Agent {
	t.Helper()
	a, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, "agent", 30*time.Second, a.Run)
	return a
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func poll(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStandaloneNodeProcessesEverySliceAndReports(t *testing.T) {
	cfg := standaloneConfig(t, "")
	var handled atomic.Int64
	a := startAgent(t, cfg, Options{Version: "test", Handlers: map[string]runner.Handler{
		"in": runner.HandlerFunc(func(ctx context.Context, m *runner.Message) error { handled.Add(1); return nil }),
	}})
	d := queue.NewDir(cfg.Queues[0].Dir, "", "")
	for i := 0; i < 40; i++ {
		if _, err := d.Enqueue(queue.Meta{}, []byte("x"), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, "40 handled", 10*time.Second, func() bool { return handled.Load() == 40 })

	base := "http://" + a.Addr()
	var st Status
	poll(t, "a status with 4 owned slices and no problem", 10*time.Second, func() bool {
		getJSON(t, base+"/api/status", &st)
		return len(st.Slices) == 4 && len(st.Problems) == 0
	})
	for _, s := range st.Slices {
		if s.Owner == "" || s.State != "owned" || s.Health != "passing" {
			t.Errorf("slice %+v: want owned and passing", s)
		}
	}
	if st.Mode != "standalone" || !st.LeaseValid {
		t.Errorf("mode %q lease %v", st.Mode, st.LeaseValid)
	}

	// The runner counts a message after its handler returned and its file was removed, so the
	// 40th count can trail the handler by a moment: wait for it, then check the whole page.
	var body []byte
	poll(t, "/metrics to count 40 handled", 10*time.Second, func() bool {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(body), `qslice_messages_handled_total{outcome="done",queue="in"} 40`)
	})
	for _, want := range []string{`qslice_messages_handled_total{outcome="done",queue="in"} 40`, `qslice_slice_owned{queue="in",slice="3"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(string(body))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool not installed (Debian package prometheus): skipping promtool check metrics")
	}

	page, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if !strings.Contains(string(html), "qslice status") {
		t.Errorf("status page: %.200s", html)
	}
}

func TestDrainStopsAndUndrainResumesStandalone(t *testing.T) {
	cfg := standaloneConfig(t, "")
	var handled atomic.Int64
	a := startAgent(t, cfg, Options{Handlers: map[string]runner.Handler{
		"in": runner.HandlerFunc(func(ctx context.Context, m *runner.Message) error { handled.Add(1); return nil }),
	}})
	base := "http://" + a.Addr()
	poll(t, "slices active", 10*time.Second, func() bool {
		var st Status
		getJSON(t, base+"/api/status", &st)
		return len(st.Slices) == 4
	})
	sock := socketClient(cfg.Control.Socket)
	if code, body := postJSON(t, sock, "http://qslice/api/drain", nil); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	d := queue.NewDir(cfg.Queues[0].Dir, "", "")
	d.Enqueue(queue.Meta{}, []byte("x"), time.Now())
	time.Sleep(300 * time.Millisecond) // a drained node must not take the message: give it the chance to misbehave
	if handled.Load() != 0 {
		t.Fatal("a drained node handled a message")
	}
	if code, body := postJSON(t, sock, "http://qslice/api/undrain", nil); code != 200 {
		t.Fatalf("undrain: %d %s", code, body)
	}
	poll(t, "message handled after undrain", 10*time.Second, func() bool { return handled.Load() == 1 })
}

func TestStalledSliceIsReportedUnhealthy(t *testing.T) {
	cfg := standaloneConfig(t, "health: {stall_after: 300ms, max_age: 1h}\n")
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	a := startAgent(t, cfg, Options{Handlers: map[string]runner.Handler{
		"in": runner.HandlerFunc(func(ctx context.Context, m *runner.Message) error {
			select {
			case <-block:
			case <-ctx.Done():
			}
			return nil
		}),
	}})
	d := queue.NewDir(cfg.Queues[0].Dir, "", "")
	for i := 0; i < 20; i++ {
		d.Enqueue(queue.Meta{}, []byte("x"), time.Now())
	}
	base := "http://" + a.Addr()
	var st Status
	poll(t, "a stalled slice reported", 15*time.Second, func() bool {
		getJSON(t, base+"/api/status", &st)
		for _, s := range st.Slices {
			if s.Health == "warning" && strings.Contains(s.HealthOutput, "stalled") {
				return true
			}
		}
		return false
	})
	if len(st.Problems) == 0 {
		t.Error("a stalled slice is not listed as a problem (status would exit 0)")
	}
	// Still no progress after twice stall_after: stuck, critical (what stuck_handoff acts on).
	poll(t, "a stuck slice reported critical", 15*time.Second, func() bool {
		getJSON(t, base+"/api/status", &st)
		for _, s := range st.Slices {
			if s.Health == "critical" && strings.Contains(s.HealthOutput, "stuck") {
				return true
			}
		}
		return false
	})
}

func TestBadQueueDirIsAClearError(t *testing.T) {
	// Root ignores permissions, so the unusable path is one below a regular file.
	cfg := standaloneConfig(t, "")
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	cfg.Queues[0].Dir = filepath.Join(file, "in")
	_, err := New(cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "queue in") || !strings.Contains(err.Error(), "check the path") {
		t.Fatalf("err = %v", err)
	}
}
