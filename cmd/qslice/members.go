package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/agent"
)

func newMembersCmd(g *globals) *cobra.Command {
	var cf clientFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "members [--json] [--addr ADDR | --config FILE]",
		Short: "List the cluster's nodes with their state and slices; exit 3 when a member is down",
		Long: `Ask a node's agent for the members of its cluster, as Consul knows them (like 'consul members'
or 'patronictl list'): every node with its metrics address, version, live since, lease (its alive
check, to which its slice locks are bound), draining, slices owned / home slices and the health of
its queue checks. A node registered but failing is shown DOWN with the reason, and so is a node
that holds slices without being registered. A standalone node lists itself.

The agent is found as for 'qslice status'. Exit 0 when every member is up, 3 when one is down, 1
when the agent cannot be reached.`,
		Example: `  qslice members
  qslice members --json --addr https://mail1.example.org:9466 --ca-file /etc/qslice/ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ms agent.Members
			if err := cf.show(cmd, "/api/members", &ms, asJSON, func(w io.Writer) {
				writeMembersTable(w, ms.Members)
				if ms.Error != "" {
					fmt.Fprintln(w, "warning: the list may be stale:", ms.Error)
				}
			}); err != nil {
				return err
			}
			down := 0
			for _, m := range ms.Members {
				if m.State == agent.MemberDown {
					down++
				}
			}
			if down > 0 {
				return &exitError{code: exitUnhealthy, err: fmt.Errorf("%d members down", down)}
			}
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// writeMembersTable prints one line per member, then one line per member that is down, saying why.
func writeMembersTable(w io.Writer, members []agent.Member) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tVERSION\tSTATE\tLIVE SINCE\tLEASE\tSLICES OWNED/HOME\tQUEUES")
	now := time.Now()
	for _, m := range members {
		node := m.Node
		if m.ThisNode {
			node += " *"
		}
		since := "-"
		if !m.LiveSince.IsZero() {
			since = m.LiveSince.Local().Format("2006-01-02 15:04:05") + " (" + now.Sub(m.LiveSince).Round(time.Second).String() + ")"
		}
		state := strings.ToUpper(m.State)
		if m.State == agent.MemberUp {
			state = m.State
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", node, orDash(m.Address), orDash(m.Version), state, since,
			orDash(m.Lease), m.SlicesOwned, m.SlicesHome, queueHealth(m.Queues))
	}
	tw.Flush()
	for _, m := range members {
		if m.State == agent.MemberDown {
			fmt.Fprintf(w, "member %s is DOWN: %s\n", m.Node, m.Problem)
		}
	}
}

func queueHealth(qs []agent.MemberCheck) string {
	if len(qs) == 0 {
		return "-"
	}
	parts := make([]string, len(qs))
	for i, q := range qs {
		parts[i] = q.Queue + ":" + q.Status
	}
	return strings.Join(parts, " ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
