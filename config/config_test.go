package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidConfigGetsDefaults(t *testing.T) {
	c, err := Load("testdata/valid-standalone.yml")
	if err != nil {
		t.Fatal(err)
	}
	q := c.Queues[0]
	if !c.Standalone() || c.Listen != "127.0.0.1:9466" || q.Concurrency != 2 || q.Handler.Timeout != 5*time.Minute {
		t.Errorf("defaults not applied: %+v %+v", c, q)
	}
	if want := filepath.Join("testdata", "q", "in"); q.Dir != want {
		t.Errorf("dir = %q, want %q (relative to the config file)", q.Dir, want)
	}
	if want := filepath.Join("testdata", "q", "shunt"); q.ShuntDir != want {
		t.Errorf("shunt_dir = %q, want Mailman's sibling %q", q.ShuntDir, want)
	}
}

// Each invalid file maps to the messages an operator must see: the file, the line and the field.
func TestInvalidConfigsNameFieldAndLine(t *testing.T) {
	cases := map[string][]string{
		"invalid-unknown-key.yml":           {"invalid-unknown-key.yml: line 5:", `unknown key "concurency"`},
		"invalid-slices.yml":                {"invalid-slices.yml:4: queues[0].slices: must be between 1 and 65536 (got 0)", "invalid-slices.yml:9: queues[1].slices: must be between 1 and 65536 (got 70000)"},
		"invalid-no-handler.yml":            {"invalid-no-handler.yml:2: queues[0]: needs either handler"},
		"invalid-duration.yml":              {"invalid-duration.yml: line 2:", `"soon"`},
		"invalid-dup-queue.yml":             {`invalid-dup-queue.yml:3: queues[1].name: "in": used by two queues`},
		"invalid-consul-timing.yml":         {"consul.", "lock_delay"},
		"invalid-supervise-placeholder.yml": {"queues[0].supervise.command[1]: unknown placeholder {nslices}"},
		"invalid-both.yml":                  {"has both handler and supervise"},
		"invalid-worker.yml": {"invalid-worker.yml:5: queues[0].handler: has both exec and worker",
			"invalid-worker.yml:9: queues[1].handler.in_flight: must be between 1 and 1024 (got 5000)",
			"invalid-worker.yml:13: queues[2].handler.in_flight: applies to worker handlers only",
			"invalid-worker.yml:17: queues[3].handler: needs exec", "or worker",
			"invalid-worker.yml:21: queues[4].handler.payload: \"pickle\": must be native or raw"},
		"invalid-fs-health.yml": {"invalid-fs-health.yml:4: health.filesystem.timeout: must be above health.filesystem.interval (5s), got 3s", "health.filesystem.recover_after: must be positive"},
	}
	for file, wants := range cases {
		t.Run(file, func(t *testing.T) {
			_, err := Load(filepath.Join("testdata", file))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\nlacks %q", err, w)
				}
			}
		})
	}
	// Every invalid-* file has a case.
	files, _ := filepath.Glob("testdata/invalid-*.yml")
	for _, f := range files {
		if _, ok := cases[filepath.Base(f)]; !ok {
			t.Errorf("%s has no expected message", f)
		}
	}
}

func TestMissingFileSaysWhatToDo(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "examples/qslice.yaml") {
		t.Fatalf("err = %v", err)
	}
}

func TestTokenFileAndRedaction(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "token"), []byte("s3cret-token\n"), 0o600)
	cfgText := "consul:\n  token_file: token\nqueues:\n  - {name: in, dir: q, slices: 2, handler: {exec: [cat]}}\n"
	c, err := Parse(filepath.Join(dir, "c.yaml"), []byte(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	fc, err := c.FailoverConfig()
	if err != nil || fc.Token != "s3cret-token" {
		t.Fatalf("token = %q, %v", fc.Token, err)
	}
	c.Consul.Token = "inline-secret"
	out, err := c.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "inline-secret") || strings.Contains(string(out), "s3cret") {
		t.Errorf("secret printed:\n%s", out)
	}
}

// TestWorkerQueue: handler.worker gets its pool settings; in_flight defaults to 16 and the runner
// of the queue needs concurrency x in_flight goroutines.
func TestWorkerQueue(t *testing.T) {
	c, err := Parse(filepath.Join(t.TempDir(), "c.yaml"), []byte("queues:\n  - {name: in, dir: q, slices: 2, concurrency: 3, handler: {worker: [python3, w.py], env: {A: b}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	q := c.Queues[0]
	wc, ok := q.WorkerConfig()
	if !ok || wc.Workers != 3 || wc.InFlight != 16 || wc.RunnerConcurrency() != 48 || wc.Command[1] != "w.py" || wc.Env[0] != "A=b" {
		t.Errorf("worker config = %+v, ok %v", wc, ok)
	}
	if q.RunnerConfig().Handler != nil {
		t.Errorf("a worker queue's runner config has an exec handler")
	}
	if !strings.Contains(q.Explain(), "handler.worker: 3 long-lived python3 processes") {
		t.Errorf("explain: %s", q.Explain())
	}
}
