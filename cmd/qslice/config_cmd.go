package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/config"
)

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Check configuration files", Args: cobra.NoArgs}
	cmd.AddCommand(&cobra.Command{
		Use:   "check FILE",
		Short: "Validate a configuration file and print the effective configuration with defaults",
		Long: `Validate FILE strictly (unknown keys and bad values are errors, named with their line) and print
the configuration qslice would run with, defaults filled in, and how each queue is worked. Secrets
are redacted. Exit 2 when invalid.

` + config.HandlerKinds,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(args[0], cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			out, err := cfg.Redacted()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# %s: valid\n", args[0])
			for _, q := range cfg.Queues {
				fmt.Fprintf(cmd.OutOrStdout(), "# %s\n", q.Explain())
			}
			if cfg.Standalone() {
				fmt.Fprintln(cmd.OutOrStdout(), "# mode: standalone (no consul: section): this node owns every slice")
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	})
	return cmd
}
