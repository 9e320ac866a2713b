package main

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/mailman"
)

func newMailmanCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "mailman", Short: "Move a GNU Mailman installation's runners under qslice", Args: cobra.NoArgs}
	cmd.AddCommand(newMailmanImportCmd(g))
	return cmd
}

func newMailmanImportCmd(g *globals) *cobra.Command {
	var out, runnerProg, userName, consul, defaults string
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "import MAILMAN_CONFIG",
		Short: "Write a qslice configuration that supervises every runner of a Mailman installation",
		Long: `Read a Mailman 3 mailman.cfg (with Mailman's own defaults and path rules) or a Mailman 2.1
mm_cfg.py (with Defaults.py), and write a qslice configuration that supervises every runner per
slice: one queue per runner, named like the runner, with the queue directory Mailman uses and
its instance count as slices. Runners without a queue directory (rest, lmtp, task) run as one
process on one node. What cannot be mapped is printed on stderr and written into the header.

The written configuration is checked like ` + "`qslice config check`" + `; when Mailman's own settings break
its rules (instances not a power of two) it is still written, and the command exits 1.`,
		Example: `  qslice mailman import /etc/mailman3/mailman.cfg -o /etc/qslice/qslice.yaml
  qslice mailman import /etc/mailman/mm_cfg.py --defaults /usr/lib/mailman/Mailman/Defaults.py`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src := args[0]
			var site *mailman.Site
			var err error
			if strings.HasSuffix(src, ".py") {
				d, m := defaults, src
				if filepath.Base(src) == "Defaults.py" {
					d, m = src, ""
				} else if d == "" {
					for _, c := range []string{filepath.Join(filepath.Dir(src), "Defaults.py"), "/usr/lib/mailman/Mailman/Defaults.py"} {
						if _, err := os.Stat(c); err == nil {
							d = c
							break
						}
					}
				}
				site, err = mailman.LoadMailman2(d, m)
			} else {
				site, err = mailman.LoadMailman3(src)
			}
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if userName == "" && !cmd.Flags().Changed("user") {
				if userName = dirOwner(site.QueueDir); userName == "" {
					userName = dirOwner(site.VarDir)
				}
			}
			text, notes, err := mailman.Render(site, mailman.RenderOptions{Runner: runnerProg, User: userName, Grace: grace, Consul: consul, Now: time.Now()})
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			for _, n := range notes {
				fmt.Fprintln(g.stderr, "qslice: not mapped:", n)
			}
			// Check what was written exactly as `config check` and `run` will.
			name := out
			if name == "" {
				name = "<stdout>"
			}
			_, verr := config.Parse(name, text)
			if out == "" {
				_, err = cmd.OutOrStdout().Write(text)
			} else {
				err = os.WriteFile(out, text, 0o644)
			}
			if err != nil {
				return err
			}
			n := 0
			for _, r := range site.Runners {
				if !r.Placeholder() {
					n++
				}
			}
			fmt.Fprintf(g.stderr, "qslice: %d runners of %s mapped, %d notes\n", n, site.ConfigFile, len(notes))
			if verr != nil {
				return &exitError{code: exitFailure, err: fmt.Errorf("the written configuration does not pass config check; fix Mailman's settings first:\n%w", verr)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&out, "output", "o", "", "write the configuration to this file instead of stdout")
	f.StringVar(&runnerProg, "runner", "", "the runner program (default: <bin_dir>/runner for Mailman 3, <prefix>/bin/qrunner for 2.1)")
	f.StringVar(&userName, "user", "", "user the runners run as (default: the owner of the queue directory, else of var_dir, when not root)")
	f.StringVar(&consul, "consul", "", "Consul agent address to write a consul: section for (default: standalone)")
	f.StringVar(&defaults, "defaults", "", "Mailman 2.1: Defaults.py (default: beside mm_cfg.py, then /usr/lib/mailman/Mailman/Defaults.py)")
	f.DurationVar(&grace, "grace", 30*time.Second, "time a runner gets to finish its message after SIGTERM")
	return cmd
}

// dirOwner returns the name of the user owning dir, or "" when it is root, unknown or missing.
func dirOwner(dir string) string {
	st, err := os.Stat(dir)
	if err != nil {
		return ""
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || sys.Uid == 0 {
		return ""
	}
	u, err := user.LookupId(strconv.Itoa(int(sys.Uid)))
	if err != nil {
		return ""
	}
	return u.Username
}
