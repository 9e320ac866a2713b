package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/agent"
	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/exporters"
)

// loadConfig reads and validates the config file (path, else $QSLICE_CONFIG, else
// /etc/qslice/qslice.yaml), turning every problem into a usage error (exit 2), and prints its
// warnings to stderr.
func loadConfig(path string, stderr io.Writer) (*config.Config, error) {
	path, explicit := configPath(path)
	if _, err := os.Stat(path); !explicit && errors.Is(err, os.ErrNotExist) {
		return nil, usageErr("no configuration: pass --config FILE, set $%s, or write %s (start from examples/qslice.yaml)", envConfig, DefaultConfigPath)
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, &exitError{code: exitUsage, err: fmt.Errorf("invalid configuration:\n%w", err)}
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	return cfg, nil
}

func newRunCmd(g *globals, sidecar bool) *cobra.Command {
	var cfgPath, listen string
	use, short, long := "run", "Run this node: runners plus agent (standalone when no Consul is configured)",
		`Run this node's runners for every configured queue, plus the agent: probes of the shared disk,
Prometheus metrics and the status page on the listen address, and slice ownership on Consul when
consul: is configured (without it, this node owns every slice: the standalone mode).

SIGINT or SIGTERM stops it for a restart (systemctl stop/restart, an upgrade, a configuration
change): no new message is claimed, running handlers get shutdown_grace to finish, the rest are
released back to their queue. With a state_dir the node's Consul session and slice locks stay:
the next process of this node resumes the same slices without moving them (restart in place);
if none comes, the other nodes take them after ttl + lock_delay. Without a state_dir the slices
are handed to the other nodes at once. To take a node out of the cluster (decommission,
maintenance), run 'qslice leave': it hands every slice off at once and the process exits.`
	mode := agent.ModeRun
	if sidecar {
		use, short, long = "agent", "Run only the sidecar: probes, exporters, Consul ownership and worker supervision",
			`Run the agent without qslice's own runners, for nodes whose workers are not qslice's: queues
with supervise: get their per-slice workers started and stopped as slices move; queues with a
handler: are only observed.`
		mode = agent.ModeSidecar
	}
	cmd := &cobra.Command{
		Use:     use + " --config FILE",
		Short:   short,
		Long:    long,
		Example: "  qslice " + use + " --config /etc/qslice/qslice.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if listen != "" {
				cfg.Listen = listen
			}
			log := g.logger()
			ctx := cmd.Context()
			tp, shutdownTracing, err := exporters.NewTracerProvider(ctx, "qslice", build.Version)
			if err != nil {
				return usageErr("tracing: %v (check the OTEL_* environment variables)", err)
			}
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := shutdownTracing(sctx); err != nil {
					log.Warn("flushing traces failed", "err", err)
				}
			}()
			a, err := agent.New(cfg, agent.Options{Mode: mode, Version: build.Version, Revision: build.Revision, Logger: log, Tracer: tp})
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			err = a.Run(ctx)
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "", "configuration file (YAML; default: $"+envConfig+", else "+DefaultConfigPath+")")
	cmd.Flags().StringVar(&listen, "listen", "", "override the config's listen address (host:port)")
	return cmd
}
