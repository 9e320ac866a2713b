package dashboards

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/testenv"

	"gopkg.in/yaml.v3"

	"github.com/qslice/qslice/internal/consultest"
	"github.com/qslice/qslice/runner/queue"
)

// e2eConfig: a queue worked by qslice's runner, with the lock directory, a queue whose
// supervised per-slice workers never take a message (sleep), so its slices stall, and a queue
// whose supervised worker exits at once, every time (a crash loop). Probes scan every 500ms so
// that Prometheus, scraping every second, sees fresh values.
const e2eConfig = `
node: e2e
listen: 127.0.0.1:0
control: {socket: ""}  # no drain here: no control socket
probes:
  interval: 500ms
  budget: 400ms
queues:
  - name: in
    dir: queue/in
    slices: 2
    poll_interval: 100ms
    lock_dir: locks
    shutdown_grace: 1s
    handler:
      exec: ["sh", "-c", "cat > /dev/null"]
      timeout: 10s
  - name: stuck
    dir: queue/stuck
    slices: 2
    supervise:
      command: ["sleep", "1000"]
      grace: 1s
  - name: crash
    dir: queue/crash
    slices: 1
    supervise:
      command: ["sh", "-c", "echo cannot start >&2; exit 3"]
      grace: 1s
  - name: wcrash
    dir: queue/wcrash
    slices: 1
    concurrency: 1
    handler:
      worker: ["sh", "-c", "echo not a frame; exec sleep 100"]
`

// e2eTimeout bounds the whole end-to-end test: the flufl.lock lock needs its lifetime (1s)
// plus the clock slop (10s) to count as expired, the crash-looping worker its 4th restart (the
// default backoff waits 1+2+4+8s, +20% jitter at most: 18s), the alerts one more for: period
// (1s) and a few scrape and evaluation intervals (1s each). 75s leaves room for a loaded machine.
const e2eTimeout = 75 * time.Second

// shortenedRules writes a copy of the rules with every for: duration cut to 1s, so that the
// alerts fire within seconds; expressions and thresholds are the real ones.
func shortenedRules(t *testing.T, dir string) string {
	t.Helper()
	rf := loadRules(t, rulesFile)
	for gi := range rf.Groups {
		for ri := range rf.Groups[gi].Rules {
			if r := &rf.Groups[gi].Rules[ri]; r.Alert != "" && r.For != "" {
				r.For = "1s"
			}
		}
	}
	data, err := yaml.Marshal(rf)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// lockedBuffer collects a process's output for the failure message.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startPrometheus runs a real Prometheus on loopback scraping target every second, with the
// given rule file evaluated every second. It returns its base URL; the test's cleanup stops it.
func startPrometheus(t *testing.T, target, rules string) string {
	t.Helper()
	bin := findTool(t, "prometheus", "QSLICE_PROMETHEUS", "prometheus")
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: qslice
    static_configs:
      - targets: [%q]
`, rules, target)
	return startPrometheusWith(t, bin, cfg)
}

// startPrometheusWith runs the Prometheus binary bin on loopback with the configuration text cfg.
// It returns its base URL; the test's cleanup stops it.
func startPrometheusWith(t *testing.T, bin, cfg string) string {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ports, err := consultest.FreePorts(1) // below the ephemeral range: no outgoing connection takes it
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second // then SIGKILL
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start prometheus: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
		if t.Failed() {
			t.Logf("prometheus output:\n%s", logs.String())
		}
	})
	url := "http://" + addr
	waitFor(t, 30*time.Second, "prometheus ready", func() (bool, string) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("prometheus exited: %v\n%s", err, logs.String())
		default:
		}
		code, body := httpGet(t, url+"/-/ready")
		return code == 200, fmt.Sprintf("%d %s", code, body)
	})
	return url
}

// promAlert is an entry of Prometheus' /api/v1/alerts.
type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
	Value  string            `json:"value"`
}

func alerts(t *testing.T, promURL string) ([]promAlert, string) {
	t.Helper()
	code, body := httpGet(t, promURL+"/api/v1/alerts")
	if code != 200 {
		return nil, fmt.Sprintf("/api/v1/alerts: %d %s", code, body)
	}
	var resp struct {
		Status string `json:"status"`
		Data   struct {
			Alerts []promAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil || resp.Status != "success" {
		t.Fatalf("/api/v1/alerts: %v: %s", err, body)
	}
	return resp.Data.Alerts, body
}

func describeAlerts(as []promAlert) string {
	var out []string
	for _, a := range as {
		out = append(out, fmt.Sprintf("%s%v=%s(%s)", a.Labels["alertname"], a.Labels, a.State, a.Value))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// matches tells whether alert a has every label of want.
func matches(a promAlert, want map[string]string) bool {
	for k, v := range want {
		if a.Labels[k] != v {
			return false
		}
	}
	return true
}

// TestEndToEndAlertsFire runs a real qslice agent with an abandoned flufl.lock lock, a stalled
// supervised queue, a crash-looping supervised worker and crash-looping persistent workers, and a real Prometheus with the rules
// (for: cut to 1s) scraping it: the stale-lock, stalled-slice, old-backlog and crash-loop alerts
// must reach "firing", and the ownership, node, drain and scan alerts must not.
func TestEndToEndAlertsFire(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a real Prometheus: skipped in -short mode")
	}
	findTool(t, "prometheus", "QSLICE_PROMETHEUS", "prometheus")
	testenv.RequirePython(t, "flufl.lock", "python3-flufl.lock")
	deadline := time.Now().Add(e2eTimeout)

	// Messages written two hours ago into the stalled queue: their age comes from their names.
	// wantStalled: the slices (of the config's 2) that hold them.
	wantStalled := map[string]bool{}
	n := startNode(t, e2eConfig, func(dir string) {
		qdir := filepath.Join(dir, "queue", "stuck")
		if err := os.MkdirAll(qdir, 0o755); err != nil {
			t.Fatal(err)
		}
		d := queue.NewDir(qdir, filepath.Join(dir, "queue", "shunt"), filepath.Join(dir, "queue", "bad"))
		for i := range 6 {
			name, err := d.Enqueue(queue.Meta{}, []byte(fmt.Sprintf("message %d", i)), time.Now().Add(-2*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			wantStalled[strconv.Itoa(queue.SliceOf(name.Digest, 2))] = true
		}
		// The crash-looping queue is empty: its alert comes from the worker, not the backlog.
		for _, q := range []string{"crash", "wcrash"} {
			if err := os.MkdirAll(filepath.Join(dir, "queue", q), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	})
	// A Mailman-style lock abandoned by its (exited) holder, with a 1s lifetime.
	abandonFluflLock(t, filepath.Join(n.dir, "locks", "list-a.lock"))

	promURL := startPrometheus(t, strings.TrimPrefix(n.url, "http://"), shortenedRules(t, t.TempDir()))

	want := []map[string]string{
		{"alertname": "QsliceLockExpired", "lock": "locks", "severity": "warning"},
		{"alertname": "QsliceSliceStalled", "queue": "stuck", "severity": "critical"},
		{"alertname": "QsliceSliceBacklogOld", "queue": "stuck", "severity": "warning"},
		{"alertname": "QsliceSliceBacklogOld", "queue": "stuck", "severity": "critical"},
		// Joined with qslice_node_info: the node's name and cluster (the defaults) are labels.
		{"alertname": "QsliceWorkerCrashLooping", "queue": "crash", "slice": "0", "node": "e2e", "cluster": "default", "severity": "warning"},
		// Persistent workers that print instead of answering the hello: a crash loop in under a second.
		{"alertname": "QsliceWorkerPoolCrashLooping", "queue": "wcrash", "node": "e2e", "cluster": "default", "severity": "warning"},
	}
	for slice := range wantStalled {
		want = append(want, map[string]string{"alertname": "QsliceSliceStalled", "queue": "stuck", "slice": slice})
	}
	var last []promAlert
	waitFor(t, time.Until(deadline), "stale-lock, stalled-slice, old-backlog and crash-loop alerts firing", func() (bool, string) {
		as, raw := alerts(t, promURL)
		if as == nil {
			return false, raw
		}
		last = as
		for _, w := range want {
			found := false
			for _, a := range as {
				if a.State == "firing" && matches(a, w) {
					found = true
				}
			}
			if !found {
				return false, fmt.Sprintf("no firing %v among: %s", w, describeAlerts(as))
			}
		}
		return true, ""
	})
	t.Logf("alerts: %s", describeAlerts(last))

	// The node owns every slice, is scraped and scans fine: none of these may fire. The
	// working queue "in" has no backlog and must not be flagged either.
	quiet := map[string]bool{
		"QsliceSliceUnowned": true, "QsliceSliceOwnedTwice": true, "QsliceNodeDown": true,
		"QsliceAgentAbsent": true, "QsliceQueueScanFailing": true, "QsliceLockScanFailing": true,
		"QsliceConsulUnreachable": true, "QsliceLeaseInvalid": true, "QsliceNodeDrainedTooLong": true,
		"QsliceRunnerDiskFault": true,
	}
	for _, a := range last {
		if a.State != "firing" {
			continue
		}
		// The sleeping workers of "stuck" run: their slices stall, but they do not crash.
		crashStuck := a.Labels["alertname"] == "QsliceWorkerCrashLooping" && a.Labels["queue"] == "stuck"
		if quiet[a.Labels["alertname"]] || a.Labels["queue"] == "in" || crashStuck {
			t.Errorf("alert %s fires for a healthy part: %v", a.Labels["alertname"], a.Labels)
		}
	}
	// Exactly the slices of "stuck" that hold messages are reported stalled.
	stalled := map[string]bool{}
	for _, a := range last {
		if a.State == "firing" && matches(a, map[string]string{"alertname": "QsliceSliceStalled", "queue": "stuck"}) {
			stalled[a.Labels["slice"]] = true
		}
	}
	if !maps.Equal(stalled, wantStalled) {
		t.Errorf("stalled slices of queue stuck reported: %v, want %v", stalled, wantStalled)
	}
}
