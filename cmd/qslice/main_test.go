package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runCLI runs the command line in process and returns its exit code and output.
func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	p := filepath.Join(dir, "qslice.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The common mistakes, each with the exit code and the words that tell the operator what to do.
func TestCommonMistakesSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	os.WriteFile(file, nil, 0o644)
	good := writeConfig(t, t.TempDir(), "listen: 127.0.0.1:1\nqueues:\n  - {name: in, dir: q, slices: 2, handler: {exec: [cat]}}\n")
	cases := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"no config", []string{"run"}, exitUsage, []string{"no configuration: pass --config FILE", "examples/qslice.yaml"}},
		{"missing config file", []string{"run", "--config", filepath.Join(dir, "nope.yaml")}, exitUsage, []string{"no such file", "examples/qslice.yaml"}},
		{"bad slice count", []string{"config", "check", writeConfig(t, t.TempDir(), "queues:\n  - {name: in, dir: q, slices: 0, handler: {exec: [cat]}}\n")},
			exitUsage, []string{"qslice.yaml:2: queues[0].slices: must be between 1 and 65536 (got 0)"}},
		{"unknown key", []string{"config", "check", writeConfig(t, t.TempDir(), "queues:\n  - {name: in, dir: q, slice: 2, handler: {exec: [cat]}}\n")},
			exitUsage, []string{`qslice.yaml:2: unknown key "slice"`}},
		{"busy-looping poll interval", []string{"config", "check", writeConfig(t, t.TempDir(), "queues:\n  - {name: in, dir: q, slices: 1, poll_interval: -1s, handler: {exec: [cat]}}\n")},
			exitUsage, []string{"qslice.yaml:2: queues[0].poll_interval: must be positive (-1s)"}},
		{"two queues on one directory", []string{"config", "check", writeConfig(t, t.TempDir(), "queues:\n  - {name: a, dir: q, slices: 1, handler: {exec: [cat]}}\n  - {name: b, dir: q/, slices: 1, handler: {exec: [cat]}}\n")},
			exitUsage, []string{"qslice.yaml:3: queues[1].dir:", "the same directory as queues[0].dir"}},
		{"queue name refused by Consul refused standalone too", []string{"config", "check", writeConfig(t, t.TempDir(), "queues:\n  - {name: a.b, dir: q, slices: 1, handler: {exec: [cat]}}\n")},
			exitUsage, []string{`qslice.yaml:2: queues[0].name: "a.b": must be`}},
		{"queue dir cannot be created", []string{"run", "--config", writeConfig(t, t.TempDir(), "queues:\n  - {name: in, dir: "+filepath.Join(file, "q")+", slices: 2, handler: {exec: [cat]}}\n")},
			exitUsage, []string{"queue in", "check the path and its permissions"}},
		{"enqueue into a missing dir", []string{"queue", "enqueue", filepath.Join(dir, "missing")}, exitUsage, []string{"does not exist"}},
		{"stats of a missing dir", []string{"queue", "stats", filepath.Join(dir, "missing"), "--slices", "4"}, exitFailure, []string{"missing"}},
		{"stats with a bad slice count", []string{"queue", "stats", dir, "--slices", "0"}, exitUsage, []string{"slices"}},
		{"locks of a missing dir", []string{"locks", filepath.Join(dir, "missing")}, exitFailure, []string{"missing"}},
		{"status without a running agent", []string{"status", "--config", good}, exitFailure, []string{"cannot reach the qslice agent", "is `qslice run` running"}},
		{"unknown flag", []string{"queue", "ls", dir, "--bogus"}, exitUsage, []string{"unknown flag", "--help"}},
		{"unknown command", []string{"frobnicate"}, exitUsage, []string{"unknown command"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, "", c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, c.code, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

func TestEnqueueLsShowRequeueRoundTrip(t *testing.T) {
	root := t.TempDir()
	in := filepath.Join(root, "in")
	os.MkdirAll(in, 0o755)
	code, out, stderr := runCLI(t, "hello world", "queue", "enqueue", in, "--lock", "list-a", "--meta", "list=a@example.org")
	if code != 0 {
		t.Fatalf("enqueue: %d %s", code, stderr)
	}
	name := strings.TrimSpace(out)
	if !strings.HasSuffix(name, ".pck") {
		t.Fatalf("enqueue printed %q", name)
	}
	code, out, _ = runCLI(t, "", "queue", "ls", in, "--slices", "4")
	if code != 0 || !strings.Contains(out, name) || !strings.Contains(out, "ready") {
		t.Fatalf("ls: %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "", "queue", "show", filepath.Join(in, name))
	if code != 0 || !strings.Contains(out, `"lock": "list-a"`) || !strings.Contains(out, `"list": "a@example.org"`) {
		t.Fatalf("show: %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "", "queue", "show", "--body", filepath.Join(in, name))
	if code != 0 || out != "hello world" {
		t.Fatalf("show --body: %d %q", code, out)
	}
	// Simulate a failure: move it to the shunt queue by hand through the library, then requeue.
	shunt := filepath.Join(root, "shunt")
	os.MkdirAll(shunt, 0o755)
	data, _ := os.ReadFile(filepath.Join(in, name))
	os.WriteFile(filepath.Join(shunt, name), data, 0o644)
	os.Remove(filepath.Join(in, name))
	code, out, stderr = runCLI(t, "", "queue", "requeue", shunt, "--to", in)
	if code != 0 || !strings.Contains(out, "requeued 1 of 1") {
		t.Fatalf("requeue: %d %s %s", code, out, stderr)
	}
	if _, err := os.Stat(filepath.Join(in, name)); err != nil {
		t.Fatalf("requeued message not back: %v", err)
	}
}

func TestVersionAndHelp(t *testing.T) {
	code, out, _ := runCLI(t, "", "version")
	if code != 0 || !strings.HasPrefix(out, "qslice ") {
		t.Fatalf("version: %d %q", code, out)
	}
	for _, sub := range [][]string{{"run"}, {"agent"}, {"status"}, {"drain"}, {"queue", "enqueue"}, {"queue", "requeue"}, {"queue", "stats"}, {"locks"}, {"config", "check"}} {
		code, out, _ := runCLI(t, "", append(sub, "--help")...)
		if code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%v --help: %d\n%s", sub, code, out)
		}
	}
}

// A Consul token written in the file is accepted, with a warning on stderr that does not repeat it.
func TestConfigCheckWarnsAboutInlineToken(t *testing.T) {
	path := writeConfig(t, t.TempDir(), "consul: {token: s3cret}\nqueues:\n  - {name: in, dir: q, slices: 1, handler: {exec: [cat]}}\n")
	code, stdout, stderr := runCLI(t, "", "config", "check", path)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "warning: "+path+": consul.token: the ACL token is written in the file in clear") {
		t.Errorf("stderr lacks the warning:\n%s", stderr)
	}
	if strings.Contains(stderr+stdout, "s3cret") {
		t.Errorf("the token was printed:\n%s\n%s", stdout, stderr)
	}
}
