package mailman

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Problem is one way a supervised queue disagrees with Mailman; Field is relative to the queue
// ("slices", "dir", "supervise.command").
type Problem struct {
	Field string
	Msg   string
}

// Supervised describes a qslice queue that supervises workers.
type Supervised struct {
	Queue   string
	Dir     string
	Slices  int
	Command []string
	Env     map[string]string
}

// RunnerSpec returns the NAME of a --runner=NAME:SLICE:COUNT argument ({queue} resolved), or
// false when the command does not start a Mailman runner.
func (q Supervised) RunnerSpec() (string, bool) {
	for _, a := range q.Command {
		if spec, ok := strings.CutPrefix(a, "--runner="); ok {
			name, _, _ := strings.Cut(spec, ":")
			return strings.ReplaceAll(name, "{queue}", q.Queue), true
		}
	}
	return "", false
}

// configFile returns the Mailman 3 configuration the command names with -C/--config, or
// MAILMAN_CONFIG_FILE from its environment; "" when neither.
func (q Supervised) configFile() string {
	for i, a := range q.Command {
		switch {
		case (a == "-C" || a == "--config") && i+1 < len(q.Command):
			return q.Command[i+1]
		case strings.HasPrefix(a, "--config="):
			return strings.TrimPrefix(a, "--config=")
		case strings.HasPrefix(a, "-C") && len(a) > 2:
			return a[2:]
		}
	}
	return q.Env["MAILMAN_CONFIG_FILE"]
}

// Check validates a queue that supervises Mailman's runners against Mailman's rules: the slice
// count is a power of two (Mailman's Switchboard asserts it) and equals the runner's instances
// in the mailman.cfg the runner reads (the runner takes its count from there, not from its
// command line), and dir is the runner's queue directory. A command that starts no Mailman
// runner (no --runner= argument) has no problems. load reads a Mailman 3 configuration (nil:
// LoadMailman3).
func Check(q Supervised, load func(string) (*Site, error)) []Problem {
	name, ok := q.RunnerSpec()
	if !ok {
		return nil
	}
	if load == nil {
		load = LoadMailman3
	}
	var ps []Problem
	if q.Slices > 0 && q.Slices&(q.Slices-1) != 0 {
		ps = append(ps, Problem{"slices", fmt.Sprintf("%d is not a power of two, which Mailman's runners require (they die with \"AssertionError: Not a power of 2\"): use %d, and the same instances for runner %s in mailman.cfg",
			q.Slices, nextPow2(q.Slices), name)})
	}
	cfg := q.configFile()
	if cfg == "" || filepath.Base(q.Command[0]) == "qrunner" {
		return ps // Mailman 2.1 takes the count from the command line; or no file to compare with
	}
	site, err := load(cfg)
	if err != nil {
		return append(ps, Problem{"supervise.command", fmt.Sprintf("the runners' Mailman configuration cannot be read: %v", err)})
	}
	r, ok := site.Runner(name)
	if !ok {
		return append(ps, Problem{"supervise.command", fmt.Sprintf("--runner=%s: %s defines no runner %q (qslice import writes the names Mailman uses: `qslice mailman import %s`)", name, cfg, name, cfg)})
	}
	if r.Placeholder() {
		return append(ps, Problem{"supervise.command", fmt.Sprintf("--runner=%s: runner %s of %s is a placeholder (%s) that processes nothing", name, name, cfg, r.Class)})
	}
	if r.QueueDir == "" {
		if q.Slices != 1 {
			ps = append(ps, Problem{"slices", fmt.Sprintf("runner %s has no queue directory, so it cannot be sliced: set slices: 1", name)})
		}
		return ps
	}
	if r.Instances != q.Slices {
		ps = append(ps, Problem{"slices", fmt.Sprintf("%d, but runner %s has instances: %d (%s); Mailman's runner takes its slice count from instances, so its processes would race for the same files: set [runner.%s] instances and slices to the same power of two",
			q.Slices, name, r.Instances, r.Source, name)})
	}
	if q.Dir != "" && filepath.Clean(q.Dir) != r.QueueDir {
		ps = append(ps, Problem{"dir", fmt.Sprintf("%s, but Mailman's runner %s scans %s (per %s): qslice would watch the wrong directory; set dir: %s", q.Dir, name, r.QueueDir, cfg, r.QueueDir)})
	}
	return ps
}
