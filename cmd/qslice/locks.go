package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/probes"
	"github.com/qslice/qslice/runner/lockfile"
)

// locksOptions are the flags of "qslice locks".
type locksOptions struct {
	json    bool
	hosts   []string
	slop    time.Duration
	timeout time.Duration
	clock   clock.Clock
}

// newLocksCmd returns "qslice locks DIR... [--json]": inspect every flufl.lock / Mailman 2.1
// lock in the given directories, read-only.
func newLocksCmd() *cobra.Command {
	o := locksOptions{clock: clock.System{}}
	cmd := &cobra.Command{
		Use:   "locks DIR...",
		Short: "Show the lock files of lock directories: holders, ages, expiry, waiters (read-only)",
		Long: `Inspect every lock in the given directories (such as Mailman's <var_dir>/locks) without
changing anything: flufl.lock (Mailman 3) and Mailman 2.1 lock files, who holds each (host and
pid), for how long, when it expires, how many claims wait for it, and leftovers of crashed
processes. A lock is "expired" once it is past its expiry plus the clock slop: any waiter would
break it.`,
		Example: `  qslice locks /var/lib/mailman3/locks
  qslice locks ./locks ./queues/locks --json`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return runLocks(ctx, cmd.OutOrStdout(), args, o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	f.StringSliceVar(&o.hosts, "host", nil, "names this host goes by in claim names (default: the host name); holders on this host are checked for being alive")
	f.DurationVar(&o.slop, "slop", lockfile.DefaultSlop, "clock slop: a lock counts as expired this long after its expiry (flufl.lock's CLOCK_SLOP)")
	f.DurationVar(&o.timeout, "timeout", time.Minute, "give up after this long")
	return cmd
}

func runLocks(ctx context.Context, w io.Writer, dirs []string, o locksOptions) error {
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	slop := o.slop
	if slop == 0 {
		slop = -1 // lockfile: negative means none, zero its default
	}
	var snaps []*probes.LockDirSnapshot
	var errs []error
	for _, dir := range dirs {
		l := probes.ScanLockDir(ctx, probes.LockDirConfig{Name: dir, Dir: dir,
			Inspect: lockfile.InspectOptions{LocalHosts: o.hosts, Slop: slop}}, o.clock)
		if l.Err != nil {
			errs = append(errs, fmt.Errorf("locks: %w", l.Err))
			continue
		}
		snaps = append(snaps, l)
	}
	var err error
	if o.json {
		err = writeLocksJSON(w, snaps)
	} else {
		err = writeLocksTable(w, snaps)
	}
	return errors.Join(append(errs, err)...)
}

func writeLocksJSON(w io.Writer, snaps []*probes.LockDirSnapshot) error {
	out := []probes.LockView{} // its JSON field names are a stable interface
	for _, s := range snaps {
		for _, in := range s.Locks {
			out = append(out, probes.NewLockView(in, s.At))
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeLocksTable(w io.Writer, snaps []*probes.LockDirSnapshot) error {
	for i, s := range snaps {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s: %d held, %d expired, %d waiting, %d orphaned claims\n",
			s.Config.Dir, s.Held, s.Expired, s.Waiters, s.OrphanedClaims)
		if len(s.Locks) == 0 {
			continue
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "LOCK\tHOLDER\tHELD\tEXPIRES IN\tSTATE\tWAITERS\tORPHANS")
		for _, in := range s.Locks {
			j := probes.NewLockView(in, s.At)
			name := in.Path
			if rel, err := filepath.Rel(s.Config.Dir, in.Path); err == nil {
				name = rel
			}
			holder, held, expires, state := "-", "-", "-", "free"
			if in.Held {
				holder = in.HolderHost + ":" + strconv.Itoa(in.HolderPID)
				if in.HolderPID == 0 {
					holder = "?"
				}
				held = formatAge(time.Duration(j.HeldSeconds*float64(time.Second)), !in.HeldSince.IsZero())
				e := time.Duration(*j.ExpiresInSeconds * float64(time.Second))
				if e >= 0 {
					expires = formatAge(e, true)
				} else {
					expires = "-" + formatAge(-e, true)
				}
				state = "held"
				switch {
				case j.Expired:
					state = "EXPIRED"
				case in.Expired:
					state = "expiring" // past expiry, within the slop
				}
				if j.HolderDead {
					state += ",holder-dead"
				}
			}
			if in.Anomaly != "" {
				state += ",anomaly"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", name, holder, held, expires, state, in.Waiters, in.OrphanedClaims)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, in := range s.Locks {
			if in.Anomaly != "" {
				fmt.Fprintf(w, "anomaly: %s: %s\n", in.Path, in.Anomaly)
			}
		}
		for _, e := range s.Errors {
			fmt.Fprintf(w, "warning: %v\n", e)
		}
	}
	return nil
}
