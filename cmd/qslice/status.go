package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/agent"
	"github.com/qslice/qslice/config"
)

// agentURL is the base URL of the local agent's HTTP API, from the config's listen address.
func agentURL(cfg *config.Config, override string) string {
	addr := cfg.Listen
	if override != "" {
		addr = override
	}
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	if strings.HasPrefix(addr, "0.0.0.0:") {
		addr = "127.0.0.1" + strings.TrimPrefix(addr, "0.0.0.0")
	}
	return "http://" + addr
}

// callAgent performs one API request against the running agent.
func callAgent(ctx context.Context, method, url string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the qslice agent at %s: %w (is `qslice run` running on this node with this config?)", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("agent at %s wants authentication (web_config basic auth); query it with curl -u", url)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("agent: %s", e.Error)
		}
		return fmt.Errorf("agent at %s answered %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

func newStatusCmd(g *globals) *cobra.Command {
	var cfgPath, addr string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status --config FILE",
		Short: "Show the cluster's slice map as this node's agent sees it; exit 3 when a slice is unowned or unhealthy",
		Long: `Ask the agent running on this node (at the config's listen address) for the slice map: for every
queue and slice its owner, home node, state, ready messages, oldest age and, for slices owned here,
health and lease left. With Consul this is the cluster's map; standalone, the local view.

Exit 0 when every slice is owned and healthy, 3 when not (a check for scripts), 1 when the agent
cannot be reached.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			var st agent.Status
			if err := callAgent(ctx, http.MethodGet, agentURL(cfg, addr)+"/api/status", &st); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
			} else {
				writeStatusTable(cmd.OutOrStdout(), st)
			}
			if len(st.Problems) > 0 {
				return &exitError{code: exitUnhealthy, err: fmt.Errorf("%d problems", len(st.Problems))}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "", "configuration file (YAML)")
	cmd.Flags().StringVar(&addr, "addr", "", "agent address host:port (default: the config's listen)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func writeStatusTable(w io.Writer, st agent.Status) {
	lease := "valid"
	if !st.LeaseValid {
		lease = "NOT VALID"
	}
	fmt.Fprintf(w, "node %s (%s), lease %s", st.Node, st.Mode, lease)
	if st.Mode == "consul" {
		fmt.Fprintf(w, ", %s left", time.Duration(st.LeaseRemainingSeconds*float64(time.Second)).Round(time.Second))
	}
	if st.Draining {
		fmt.Fprint(w, ", DRAINING")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tSLICE\tOWNER\tHOME\tSTATE\tREADY\tOLDEST\tHEALTH\tLEASE LEFT")
	for _, s := range st.Slices {
		owner := s.Owner
		if owner == "" {
			owner = "UNOWNED"
		}
		leaseLeft := ""
		if s.Owner == st.Node && st.Mode == "consul" {
			leaseLeft = time.Duration(s.LeaseLeftSeconds * float64(time.Second)).Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.Queue, s.Slice, owner, s.Home, s.State, s.Ready,
			time.Duration(s.OldestAgeSeconds*float64(time.Second)).Round(time.Second), s.Health, leaseLeft)
	}
	tw.Flush()
	for _, p := range st.Problems {
		fmt.Fprintln(w, "problem:", p)
	}
}

func newDrainCmd(g *globals) *cobra.Command {
	var cfgPath, addr string
	var undo bool
	cmd := &cobra.Command{
		Use:   "drain --config FILE",
		Short: "Hand this node's slices to the other nodes (maintenance); --undo takes slices again",
		Long: `Ask the agent on this node to give every slice it owns to the other nodes: each slice stops
taking new messages, its in-flight messages finish, then its lock is released explicitly so the
next node takes it at once. Returns when done. A drained node takes no slices until
'qslice drain --undo'. Standalone nodes have nobody to hand to: they simply stop processing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			path := "/api/drain"
			if undo {
				path = "/api/undrain"
			}
			base := agentURL(cfg, addr)
			var stopProgress func()
			if interactive(g.stderr) && !undo {
				stopProgress = showDrainProgress(cmd.Context(), g.stderr, base)
			}
			var res struct{ Result string }
			err = callAgent(cmd.Context(), http.MethodPost, base+path, &res)
			if stopProgress != nil {
				stopProgress()
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Result)
			return nil
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "", "configuration file (YAML)")
	cmd.Flags().StringVar(&addr, "addr", "", "agent address host:port (default: the config's listen)")
	cmd.Flags().BoolVar(&undo, "undo", false, "undrain: take slices again")
	return cmd
}

// showDrainProgress prints, on a terminal, how many slices this node still owns while a drain runs.
// The returned func stops it and ends the line.
func showDrainProgress(ctx context.Context, w io.Writer, base string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			var st agent.Status
			if callAgent(ctx, http.MethodGet, base+"/api/status", &st) == nil {
				owned := 0
				for _, s := range st.Slices {
					if s.Owner == st.Node {
						owned++
					}
				}
				fmt.Fprintf(w, "\rdraining: %d slices still owned here, waiting for in-flight messages…   ", owned)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
		fmt.Fprintln(w)
	}
}
