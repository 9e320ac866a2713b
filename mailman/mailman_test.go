package mailman

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qslice/qslice/internal/testenv"
)

// dumpScript prints the runners the installed Mailman 3 itself computes from a configuration:
// name, class, expanded queue path (as the Switchboard does), instances and start.
const dumpScript = `
import json, sys
from mailman.core.initialize import initialize_1
initialize_1(sys.argv[1])
from mailman.config import config
from mailman.utilities.string import expand
from lazr.config import as_boolean
out = []
for conf in config.runner_configs:
    name = conf.name.split('.')[-1]
    path = ''
    if conf.path:
        subs = config.paths
        subs['name'] = name
        path = expand(conf.path, None, subs)
    out.append(dict(name=name, cls=conf['class'], path=path, instances=int(conf.instances), start=as_boolean(conf.start)))
print(json.dumps(dict(runners=out, queue_dir=config.QUEUE_DIR, lock_dir=config.LOCK_DIR, bin_dir=config.BIN_DIR)))
`

type dumped struct {
	Runners []struct {
		Name, Cls, Path string
		Instances       int
		Start           bool
	}
	QueueDir string `json:"queue_dir"`
	LockDir  string `json:"lock_dir"`
	BinDir   string `json:"bin_dir"`
}

func mailmanDump(t *testing.T, python, cfg string) dumped {
	t.Helper()
	script := filepath.Join(t.TempDir(), "dump.py")
	os.WriteFile(script, []byte(dumpScript), 0o644)
	cmd := exec.Command(python, script, cfg)
	cmd.Dir = filepath.Dir(cfg)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("Mailman could not read %s: %v\n%s", cfg, err, stderr)
	}
	var d dumped
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	return d
}

// A site configuration that exercises what the import must follow: its own layout with
// variables, a runner with more instances, one switched off, one the site adds, one whose path
// moves, a value on a continuation line, and a file it extends.
func writeSite(t *testing.T, dir string) string {
	t.Helper()
	base := `[runner.bounces]
instances: 2
`
	site := fmt.Sprintf(`# A site configuration.
[meta]
extends: base.cfg

[mailman]
layout: testsite

[paths.testsite]
var_dir: %s/var
queue_dir = $var_dir/spool
bin_dir: /usr/lib/mailman3/bin
lock_dir: ${var_dir}/locks

[runner.out]
instances: 4
start: no

[runner.in]
instances:
    8

[runner.archive]
start: off

[runner.digest]
path: $VAR_DIR/digests/$name

[runner.extra]
class: example.ExtraRunner
instances: 2
`, dir)
	os.WriteFile(filepath.Join(dir, "base.cfg"), []byte(base), 0o644)
	p := filepath.Join(dir, "mailman.cfg")
	if err := os.WriteFile(p, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The import sees exactly the runners, queue directories, instance counts and start flags that
// the installed Mailman 3 computes from the same files.
func TestImportMatchesMailman(t *testing.T) {
	python := testenv.RequirePython(t, "mailman.core.initialize", "mailman3")
	cfgs := []string{writeSite(t, t.TempDir())}
	if _, err := os.Stat("/etc/mailman3/mailman.cfg"); err == nil {
		cfgs = append(cfgs, "/etc/mailman3/mailman.cfg") // Debian's own, as installed
	}
	for _, cfg := range cfgs {
		want := mailmanDump(t, python, cfg)
		got, err := LoadMailman3(cfg)
		if err != nil {
			t.Fatalf("%s: %v", cfg, err)
		}
		if len(got.Runners) != len(want.Runners) {
			t.Errorf("%s: %d runners, Mailman has %d: %+v", cfg, len(got.Runners), len(want.Runners), want.Runners)
		}
		for _, w := range want.Runners {
			r, ok := got.Runner(w.Name)
			if !ok {
				t.Errorf("%s: runner %s missing", cfg, w.Name)
				continue
			}
			if r.Class != w.Cls || r.QueueDir != w.Path || r.Instances != w.Instances || r.Start != w.Start {
				t.Errorf("%s: runner %s = {class %s, dir %q, instances %d, start %v}, Mailman says {%s, %q, %d, %v}",
					cfg, w.Name, r.Class, r.QueueDir, r.Instances, r.Start, w.Cls, w.Path, w.Instances, w.Start)
			}
		}
		if got.QueueDir != want.QueueDir || got.LockDir != want.LockDir || got.BinDir != want.BinDir {
			t.Errorf("%s: paths queue %s lock %s bin %s, Mailman says %s %s %s", cfg, got.QueueDir, got.LockDir, got.BinDir, want.QueueDir, want.LockDir, want.BinDir)
		}
	}
}

func TestLoadMailman3Errors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ text, want string }{
		{"[mailman]\nlayout: nowhere\n", "no [paths.nowhere] section"},
		{"[runner.out]\ninstances: four\n", `instances: "four" is not a positive whole number`},
		{"[runner.out]\nstart: maybe\n", `"maybe" is not a boolean`},
		{"[runner.out]\ninstances: 2\ninstances: 4\n", "mailman.cfg:3: [runner.out] instances is set twice"},
		{"instances: 2\n", "comes before any [section]"},
		{"[paths.here]\nvar_dir: $queue_dir/x\nqueue_dir: $var_dir/q\n", "do not resolve"},
	}
	for _, c := range cases {
		p := filepath.Join(dir, "mailman.cfg")
		os.WriteFile(p, []byte(c.text), 0o644)
		_, err := LoadMailman3(p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want %q", c.text, err, c.want)
		}
	}
	if _, err := LoadMailman3(filepath.Join(dir, "missing.cfg")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestSubstitute(t *testing.T) {
	vars := map[string]string{"var_dir": "/v", "name": "out"}
	for in, want := range map[string]string{
		"$var_dir/queue":    "/v/queue",
		"${var_dir}x/$name": "/vx/out",
		"$$var_dir":         "$var_dir",
		"$unknown/$name":    "$unknown/out",
		"${bad name}":       "${bad name}",
		"cost: 5$":          "cost: 5$",
	} {
		if got := substitute(in, vars); got != want {
			t.Errorf("substitute(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoadMailman2(t *testing.T) {
	s, err := LoadMailman2("testdata/mm21/Defaults.py", "testdata/mm21/mm_cfg.py")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range s.Runners {
		got = append(got, fmt.Sprintf("%s:%d:%s", r.Name, r.Instances, r.QueueDir))
	}
	want := []string{
		"ArchRunner:1:/var/spool/mailman/archive", "BounceRunner:1:/var/spool/mailman/bounces",
		"CommandRunner:1:/var/spool/mailman/commands", "IncomingRunner:1:/var/spool/mailman/in",
		"NewsRunner:1:/var/spool/mailman/news", "VirginRunner:1:/var/spool/mailman/virgin",
		"RetryRunner:1:/var/spool/mailman/retry", "OutgoingRunner:4:/var/spool/mailman/out",
		"MaildirRunner:1:", "shunt:1:/var/spool/mailman/shunt", "bad:1:/var/spool/mailman/bad",
	}
	if !slices.Equal(got, want) {
		t.Errorf("runners\n got %v\nwant %v", got, want)
	}
	if s.BinDir != "/usr/lib/mailman/bin" || s.LockDir != "/var/lock/mailman" {
		t.Errorf("bin %s lock %s", s.BinDir, s.LockDir)
	}
	notes := strings.Join(s.Notes, "\n")
	for _, w := range []string{"mm_cfg.py:13: OUTQUEUE_DIR = get_outqueue() is not understood", "MaildirRunner (", "mm_cfg.py:10)",
		`mm_cfg.py:12: "QUEUE_DIR = '/srv/mailman/qfiles'" is inside a block`} {
		if !strings.Contains(notes, w) {
			t.Errorf("notes lack %q:\n%s", w, notes)
		}
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	cfg := writeSite(t, dir)
	cmd := func(spec string) []string {
		return []string{"/usr/lib/mailman3/bin/runner", "-C", cfg, "--runner=" + spec}
	}
	spool := filepath.Join(dir, "var", "spool")
	cases := []struct {
		name string
		q    Supervised
		want []string // substrings, one problem each; none: valid
	}{
		{"matches", Supervised{Queue: "out", Dir: spool + "/out", Slices: 4, Command: cmd("{queue}:{slice}:{slices}")}, nil},
		{"not mailman", Supervised{Queue: "out", Slices: 3, Command: []string{"/bin/worker", "{slice}"}}, nil},
		{"not a power of two", Supervised{Queue: "out", Dir: spool + "/out", Slices: 3, Command: cmd("{queue}:{slice}:{slices}")},
			[]string{"slices: 3 is not a power of two", "slices: 3, but runner out has instances: 4 (" + cfg + ":15)"}},
		{"instances differ", Supervised{Queue: "bounces", Dir: spool + "/bounces", Slices: 4, Command: cmd("{queue}:{slice}:{slices}")},
			[]string{"slices: 4, but runner bounces has instances: 2 (" + filepath.Join(dir, "base.cfg") + ":2)"}},
		{"wrong dir", Supervised{Queue: "out", Dir: "/var/lib/mailman3/queue/out", Slices: 4, Command: cmd("{queue}:{slice}:{slices}")},
			[]string{"dir: /var/lib/mailman3/queue/out, but Mailman's runner out scans " + spool + "/out"}},
		{"named runner", Supervised{Queue: "outgoing", Dir: spool + "/out", Slices: 4, Command: cmd("out:{slice}:{slices}")}, nil},
		{"unknown runner", Supervised{Queue: "outbound", Slices: 4, Command: cmd("{queue}:{slice}:{slices}")},
			[]string{`supervise.command: --runner=outbound: ` + cfg + ` defines no runner "outbound"`}},
		{"placeholder", Supervised{Queue: "shunt", Slices: 1, Command: cmd("{queue}:{slice}:{slices}")}, []string{"placeholder"}},
		{"no queue dir sliced", Supervised{Queue: "rest", Slices: 2, Command: cmd("{queue}:{slice}:{slices}")},
			[]string{"slices: runner rest has no queue directory", "slices: 2 is not a power"}[:1]},
		{"config from env", Supervised{Queue: "in", Slices: 2, Command: []string{"runner", "--runner={queue}:{slice}:{slices}"}, Env: map[string]string{"MAILMAN_CONFIG_FILE": cfg}},
			[]string{"slices: 2, but runner in has instances: 8"}},
		{"unreadable config", Supervised{Queue: "in", Slices: 2, Command: []string{"runner", "-C", filepath.Join(dir, "nope.cfg"), "--runner=in:{slice}:{slices}"}},
			[]string{"supervise.command: the runners' Mailman configuration cannot be read"}},
		{"mailman 2.1", Supervised{Queue: "OutgoingRunner", Slices: 6, Command: []string{"/usr/lib/mailman/bin/qrunner", "-s", "--runner={queue}:{slice}:{slices}"}},
			[]string{"slices: 6 is not a power of two, which Mailman's runners require"}},
	}
	for _, c := range cases {
		ps := Check(c.q, nil)
		var got []string
		for _, p := range ps {
			got = append(got, p.Field+": "+p.Msg)
		}
		if len(got) != len(c.want) {
			t.Errorf("%s: problems %q, want %d like %q", c.name, got, len(c.want), c.want)
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%s: problem %q lacks %q", c.name, got[i], w)
			}
		}
	}
}
