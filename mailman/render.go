package mailman

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// RenderOptions adjust the qslice configuration written for a site.
type RenderOptions struct {
	Runner string        // the runner program; default: <bin_dir>/runner (Mailman 3) or <prefix>/bin/qrunner (2.1)
	User   string        // user the runners run as ("" : as qslice)
	Grace  time.Duration // SIGTERM to SIGKILL; default 30s
	Consul string        // Consul agent address; "" writes a standalone configuration
	Now    time.Time     // for the header
}

// Render writes a qslice configuration that supervises every runner of site per slice: each
// queue runner as a queue named like the runner, with its directory and its instances as slices;
// each runner without a queue directory as a one-slice queue without dir (one node runs it).
// Placeholder runners (shunt, bad) only name the shunt and bad directories. It also returns what
// could not be mapped, which the header repeats.
func Render(site *Site, o RenderOptions) ([]byte, []string, error) {
	notes := append([]string(nil), site.Notes...)
	prog := o.Runner
	if prog == "" {
		if site.BinDir == "" {
			return nil, notes, fmt.Errorf("the runner program is unknown (bin_dir is not set to a directory): name it with --runner, e.g. /usr/lib/mailman3/bin/runner")
		}
		prog = filepath.Join(site.BinDir, map[int]string{3: "runner", 2: "qrunner"}[site.Version])
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	shunt, bad := "", ""
	if r, ok := site.Runner(map[int]string{3: "shunt", 2: "shunt"}[site.Version]); ok {
		shunt = r.QueueDir
	}
	if r, ok := site.Runner("bad"); ok {
		bad = r.QueueDir
	}
	var b strings.Builder
	var masterOff []string
	var queues strings.Builder
	for _, r := range site.Runners {
		if r.Placeholder() {
			continue
		}
		if r.Start {
			masterOff = append(masterOff, r.Name)
		}
		slices := r.Instances
		fmt.Fprintf(&queues, "  - name: %s\n", r.Name)
		if r.QueueDir != "" {
			fmt.Fprintf(&queues, "    dir: %s\n", yamlString(r.QueueDir))
			fmt.Fprintf(&queues, "    slices: %d                # = instances of runner %s (%s); Mailman needs a power of two\n", slices, r.Name, r.Source)
			if slices&(slices-1) != 0 {
				notes = append(notes, fmt.Sprintf("runner %s: instances %d (%s) is not a power of two; Mailman's runners refuse it: set instances and slices to %d", r.Name, slices, r.Source, nextPow2(slices)))
			}
			if shunt != "" {
				fmt.Fprintf(&queues, "    shunt_dir: %s\n", yamlString(shunt))
			}
			if bad != "" {
				fmt.Fprintf(&queues, "    bad_dir: %s\n", yamlString(bad))
			}
		} else {
			if slices != 1 {
				notes = append(notes, fmt.Sprintf("runner %s has no queue directory but instances %d (%s); it is supervised as one process on one node", r.Name, slices, r.Source))
			}
			fmt.Fprintf(&queues, "    slices: 1                # no queue directory: one process, on one node at a time\n")
		}
		fmt.Fprintf(&queues, "    supervise:\n      command: [%s]\n", strings.Join(quoteAll(runnerCommand(site, prog)), ", "))
		if o.User != "" {
			fmt.Fprintf(&queues, "      user: %s\n", yamlString(o.User))
		}
		if site.Version == 3 {
			fmt.Fprintf(&queues, "      env: {MAILMAN_UNDER_MASTER_CONTROL: \"1\"}   # as Mailman's master sets it\n")
		}
		fmt.Fprintf(&queues, "      grace: %s\n", o.Grace)
	}
	ver := map[int]string{3: "Mailman 3, layout " + site.Layout, 2: "Mailman 2.1"}[site.Version]
	fmt.Fprintf(&b, "# qslice configuration written by `qslice mailman import` from %s\n# (%s) on %s.\n", site.ConfigFile, ver, o.Now.UTC().Format("2006-01-02"))
	b.WriteString("# Every runner is supervised per slice with Mailman's own runner name, queue directory and\n# instance count. Check it with `qslice config check FILE`; see docs/mailman.md.\n#\n")
	if len(masterOff) > 0 {
		if site.Version == 3 {
			fmt.Fprintf(&b, "# Mailman's master must not start these runners as well: in %s set `start: no`\n# (keep instances) in the [runner.NAME] section of each of\n#   %s\n# then restart Mailman, then start qslice.\n", site.ConfigFile, strings.Join(masterOff, " "))
		} else {
			b.WriteString("# Mailman's mailmanctl must not start these qrunners as well: stop it (qslice takes its place).\n")
		}
	}
	if len(notes) > 0 {
		b.WriteString("#\n# Not mapped, or needs attention:\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "#  - %s\n", strings.ReplaceAll(n, "\n", " "))
		}
	}
	b.WriteString("\ncluster: default\nlisten: 127.0.0.1:9466\n")
	if o.Consul != "" {
		fmt.Fprintf(&b, "consul:\n  address: %s\n", yamlString(o.Consul))
	} else {
		b.WriteString("# consul:                  # add this on every node for failover between nodes\n#   address: 127.0.0.1:8500\n")
	}
	if site.LockDir != "" {
		fmt.Fprintf(&b, "probes:\n  lock_dirs: [%s]\n", yamlString(site.LockDir))
	}
	b.WriteString("queues:\n")
	b.WriteString(queues.String())
	return []byte(b.String()), notes, nil
}

func runnerCommand(site *Site, prog string) []string {
	if site.Version == 2 {
		return []string{prog, "-s", "--runner={queue}:{slice}:{slices}"}
	}
	return []string{prog, "-C", site.ConfigFile, "--runner={queue}:{slice}:{slices}"}
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = yamlString(s)
	}
	return out
}

// yamlString quotes s for YAML when it needs it.
func yamlString(s string) string {
	if s != "" && !strings.ContainsAny(s, ":{}[],&*#?|<>=!%@`'\"\\ \t") && !strings.HasPrefix(s, "-") {
		return s
	}
	return strconv.Quote(s)
}

func nextPow2(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}
