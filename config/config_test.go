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

// Each invalid file maps to exactly the messages an operator sees, one per line: the file, the
// line, the field and what is wrong (blackbox_exporter's testdata/invalid-*.yml habit).
func TestInvalidConfigsNameFieldAndLine(t *testing.T) {
	cases := map[string][]string{
		"invalid-unknown-key.yml": {`invalid-unknown-key.yml:5: unknown key "concurency" (in Queue; check the spelling against examples/qslice.yaml)`},
		"invalid-slices.yml": {"invalid-slices.yml:4: queues[0].slices: must be between 1 and 65536 (got 0)",
			"invalid-slices.yml:9: queues[1].slices: must be between 1 and 65536 (got 70000)"},
		"invalid-no-handler.yml":            {"invalid-no-handler.yml:2: queues[0]: needs either handler (qslice runs each message) or supervise (qslice runs per-slice workers)"},
		"invalid-duration.yml":              {`invalid-duration.yml:2: value "soon" (str) is not a valid time.Duration`},
		"invalid-dup-queue.yml":             {`invalid-dup-queue.yml:3: queues[1].name: "in": used by two queues`},
		"invalid-consul-timing.yml":         {"invalid-consul-timing.yml:1: consul.lease_margin: 2*renew_interval + request_timeout + lease_margin (110ms) must be < min(ttl, lock_delay) (100ms), or the lease lapses after one lost renewal"},
		"invalid-supervise-placeholder.yml": {"invalid-supervise-placeholder.yml:6: queues[0].supervise.command[1]: unknown placeholder {nslices} (known: {queue}, {slice}, {slices}; '{{' for a literal brace)"},
		"invalid-both.yml":                  {"invalid-both.yml:2: queues[0]: has both handler and supervise; choose one"},
		"invalid-control.yml": {"invalid-control.yml:2: control.socket: path is 120 bytes; unix sockets allow at most 107",
			"invalid-control.yml:3: control.tcp: needs web_config that authenticates every request (basic_auth_users, or client_auth_type: RequireAndVerifyClientCert)",
			`invalid-control.yml:4: control.hosts[1]: "mail2:9466": want a bare host name, e.g. mail1.example.org`},
		"invalid-worker.yml": {"invalid-worker.yml:5: queues[0].handler: has both exec and worker; choose one",
			"invalid-worker.yml:9: queues[1].handler.in_flight: must be between 1 and 1024 (got 5000)",
			"invalid-worker.yml:13: queues[2].handler.in_flight: applies to worker handlers only",
			`invalid-worker.yml:17: queues[3].handler: needs exec (one process per message, e.g. ["/usr/local/bin/deliver"]) or worker (long-lived processes speaking the worker protocol, e.g. ["/usr/bin/python3", "/srv/runner.py"])`,
			`invalid-worker.yml:21: queues[4].handler.payload: "pickle": must be native or raw`},
		"invalid-fs-health.yml": {"invalid-fs-health.yml:4: health.filesystem.timeout: must be above health.filesystem.interval (5s), got 3s",
			"invalid-fs-health.yml:5: health.filesystem.recover_after: must be positive"},
		"invalid-durations.yml": {
			"invalid-durations.yml:5: health.max_age: must not be negative (-1m0s)",
			"invalid-durations.yml:10: queues[0].poll_interval: must be positive (-1s), or an empty queue is rescanned in a busy loop",
			"invalid-durations.yml:16: queues[0].handler.timeout: must not be negative (-1s)",
			"invalid-durations.yml:11: queues[0].lock_timeout: must be positive (-5s)",
			"invalid-durations.yml:12: queues[0].shutdown_grace: must be positive (-1s)",
			"invalid-durations.yml:13: queues[0].retry.max: must be at least retry.initial (10s), got 1s",
			"invalid-durations.yml:13: queues[0].retry.max_elapsed: must be positive (-1h0m0s)",
			"invalid-durations.yml:20: queues[1].poll_interval: 0 is not a valid value here (omit the key for the default)",
			"invalid-durations.yml:2: consul.ttl: 0 is not a valid value here (omit the key for the default)",
			"invalid-durations.yml:3: consul.stuck_after: must not be negative (-1s)"},
		"invalid-dirs.yml": {
			"invalid-dirs.yml:4: queues[1].dir: /srv/q/a: the same directory as queues[0].dir (/srv/q/a); two queues on one directory recover each other's in-flight files",
			"invalid-dirs.yml:6: queues[2].shunt_dir: /srv/q/c: the queue directory itself; a failing message would run again at every poll, forever",
			"invalid-dirs.yml:8: queues[3].bad_dir: /srv/q/d/bad: inside queues[3].dir (/srv/q/d); a queue directory holds that queue's messages only",
			"invalid-dirs.yml:10: queues[4].lock_dir: /srv/q/shunt: the same directory as the default queues[0].shunt_dir (/srv/q/shunt); lock files do not belong among messages",
			"invalid-dirs.yml:12: queues[5].shunt_dir: /srv/q/e: the same directory as queues[4].dir (/srv/q/e); a queue directory holds that queue's messages only"},
		"invalid-symlink-dir.yml": {"invalid-symlink-dir.yml:4: queues[1].dir: testdata/spool/link/in, really testdata/spool/real/in: the same directory as queues[0].dir (testdata/spool/real/in); two queues on one directory recover each other's in-flight files"},
		"invalid-names.yml": {
			`invalid-names.yml:1: node: "bad/node": must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
			`invalid-names.yml:5: queues[0].name: "mail.in": must be 1-63 letters, digits, '_' or '-', starting with a letter or digit (no '.')`,
			`invalid-names.yml:6: queues[1].home.1[1]: node "not ok": must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
			"invalid-names.yml:6: queues[1].home.5: slice 5 out of range 0..1"},
		"invalid-mailman-slices.yml": {
			`invalid-mailman-slices.yml:4: queues[0].slices: 3 is not a power of two, which Mailman's runners require (they die with "AssertionError: Not a power of 2"): use 4, and the same instances for runner out in mailman.cfg`,
			"invalid-mailman-slices.yml:4: queues[0].slices: 3, but runner out has instances: 4 (testdata/mailman.cfg:10); Mailman's runner takes its slice count from instances, so its processes would race for the same files: set [runner.out] instances and slices to the same power of two"},
	}
	for file, wants := range cases {
		t.Run(file, func(t *testing.T) {
			_, err := Load(filepath.Join("testdata", file))
			if err == nil {
				t.Fatal("accepted")
			}
			want := "testdata/" + strings.Join(wants, "\ntestdata/")
			if err.Error() != want {
				t.Errorf("error\n%v\nwant\n%s", err, want)
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

// "dir: /x/in/" means /x/in: its shunt and bad directories are siblings, not inside the queue.
func TestTrailingSlashKeepsMailmanLayout(t *testing.T) {
	c, err := Parse("c.yaml", []byte("queues:\n  - {name: in, dir: /x/in/, slices: 1, handler: {exec: [cat]}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if q := c.Queues[0]; q.Dir != "/x/in" || q.ShuntDir != "/x/shunt" || q.BadDir != "/x/bad" {
		t.Errorf("dir %q shunt %q bad %q, want /x/in /x/shunt /x/bad", q.Dir, q.ShuntDir, q.BadDir)
	}
}

func TestInlineTokenWarns(t *testing.T) {
	c, err := Parse("c.yaml", []byte("consul: {token: abc}\nqueues:\n  - {name: in, dir: /x/in, slices: 1, handler: {exec: [cat]}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	w := c.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "c.yaml: consul.token: the ACL token is written in the file in clear") || strings.Contains(w[0], "abc") {
		t.Errorf("warnings %q", w)
	}
	c, _ = Parse("c.yaml", []byte("queues:\n  - {name: in, dir: /x/in, slices: 1, handler: {exec: [cat]}}\n"))
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings %q for a file without a token", w)
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
