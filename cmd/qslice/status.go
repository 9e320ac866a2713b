package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/agent"
)

func newStatusCmd(g *globals) *cobra.Command {
	var cf clientFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--addr ADDR | --config FILE]",
		Short: "Show the cluster's slice map as this node's agent sees it; exit 3 when a slice is unowned or unhealthy",
		Long: `Ask a node's agent for the slice map: for every queue and slice its owner, home node, state,
ready messages, oldest age and, for slices owned here, health and lease left; then the members
of the cluster. With Consul this is the cluster's map; standalone, the local view.

The agent is the one at --addr (or $QSLICE_ADDR), else the one of the configuration
(--config, $QSLICE_CONFIG or /etc/qslice/qslice.yaml): its control socket, else its listen
address. A secured listener takes --ca-file, --client-cert, --client-key and basic auth from
$QSLICE_HTTP_AUTH=user:password or --http-auth-file, as the consul CLI does.

Exit 0 when every slice is owned and healthy and every member up, 3 when not (a check for
scripts), 1 when the agent cannot be reached.`,
		Example: `  qslice status                                   # on a node: its control socket
  qslice status --addr https://mail1.example.org:9466 --ca-file /etc/qslice/ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var st agent.Status
			if err := cf.show(cmd, "/api/status", &st, asJSON, func(w io.Writer) { writeStatusTable(w, st) }); err != nil {
				return err
			}
			if len(st.Problems) > 0 {
				return &exitError{code: exitUnhealthy, err: fmt.Errorf("%d problems", len(st.Problems))}
			}
			return nil
		},
	}
	cf.register(cmd)
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
	if len(st.WorkerPools) > 0 {
		fmt.Fprintln(w)
		writePoolsTable(w, st.WorkerPools)
	}
	if len(st.Members) > 0 {
		fmt.Fprintln(w)
		writeMembersTable(w, st.Members)
	}
	for _, p := range st.Problems {
		fmt.Fprintln(w, "problem:", p)
	}
}

// writePoolsTable prints the persistent worker pools (handler.worker) of the node.
func writePoolsTable(w io.Writer, pools []agent.PoolView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER POOL\tLIVE\tRESTARTS\tCRASH LOOP\tLAST PROTOCOL ERROR")
	for _, p := range pools {
		loop, perr := "no", "none"
		if p.CrashLoop {
			loop = "YES: " + p.CrashLoopReason
		}
		if p.LastProtocolError != "" {
			perr = p.LastProtocolErrorAt.Local().Format(time.TimeOnly) + " " + p.LastProtocolError
		}
		fmt.Fprintf(tw, "%s\t%d / %d\t%d\t%s\t%s\n", p.Queue, p.Live, p.Size, p.Restarts, loop, perr)
	}
	tw.Flush()
}

func newDrainCmd(g *globals) *cobra.Command {
	var cf clientFlags
	var undo bool
	cmd := &cobra.Command{
		Use:   "drain [--undo] [--addr ADDR | --config FILE]",
		Short: "Hand this node's slices to the other nodes (maintenance); --undo takes slices again",
		Long: `Ask the agent on this node to give every slice it owns to the other nodes: each slice stops
taking new messages, its in-flight messages finish, then its lock is released explicitly so the
next node takes it at once. Returns when done. A drained node takes no slices until
'qslice drain --undo'. Standalone nodes have nobody to hand to: they simply stop processing.

A state change: the agent accepts it on its control socket (the default on the node, for the
user qslice runs as and root), or on TCP only with control.tcp and web_config authentication
(--addr https://..., basic auth from $QSLICE_HTTP_AUTH or --http-auth-file). Every drain is
logged by the agent with who asked.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.newClient()
			if err != nil {
				return err
			}
			if undo {
				return postAndPrint(cmd, g, c, "/api/undrain", false)
			}
			return postAndPrint(cmd, g, c, "/api/drain", true)
		},
	}
	cf.register(cmd)
	cmd.Flags().BoolVar(&undo, "undo", false, "undrain: take slices again")
	return cmd
}

func newLeaveCmd(g *globals) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "leave [--addr ADDR | --config FILE]",
		Short: "Hand every slice to the other nodes and stop this node (decommission, maintenance)",
		Long: `Ask the agent on this node to leave the cluster: it hands every slice it owns to the other
nodes as 'qslice drain' does (in-flight messages finish, then each lock is released so the next
node takes it at once), ends its Consul session, deregisters its service, forgets its state file
(the next start begins afresh) and the process exits with status 0 (systemd does not restart it).
Returns when done.

'qslice leave' is the stop that hands off. SIGTERM (systemctl stop or restart) is the stop for a
restart: the node keeps its session and slice locks for its next process (restart in place), and
only if that does not come within ttl do the other nodes take its slices, after ttl + lock_delay.
A standalone node has nobody to hand to: it just stops.

A state change: accepted on the control socket, or on TCP with control.tcp and web_config
authentication, like drain.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.newClient()
			if err != nil {
				return err
			}
			return postAndPrint(cmd, g, c, "/api/leave", true)
		},
	}
	cf.register(cmd)
	return cmd
}

// postAndPrint sends a state change to path and prints the agent's result. With progress, on a
// terminal, it shows how many slices this node still owns until the agent answers.
func postAndPrint(cmd *cobra.Command, g *globals, c *apiClient, path string, progress bool) error {
	stop := func() {}
	if progress && interactive(g.stderr) {
		stop = showDrainProgress(cmd.Context(), g.stderr, c)
	}
	var res struct{ Result string }
	err := c.post(cmd.Context(), path, &res)
	stop() // ends the progress line before the result is printed
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), res.Result)
	return nil
}

// showDrainProgress prints, on a terminal, how many slices this node still owns while a drain runs.
// The returned func stops it and ends the line.
func showDrainProgress(ctx context.Context, w io.Writer, c *apiClient) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			var st agent.Status
			if c.get(ctx, "/api/status", &st) == nil {
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
