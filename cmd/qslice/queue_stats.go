package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/probes"
	"github.com/qslice/qslice/runner/queue"
)

// queueStatsOptions are the flags of "qslice queue stats".
type queueStatsOptions struct {
	slices   int
	json     bool
	noBytes  bool
	nonEmpty bool
	shunt    string
	bad      string
	timeout  time.Duration
	config   string      // --config: the argument is a queue name of this configuration
	clock    clock.Clock // tests inject a fixed clock
	shuntSet bool        // --shunt was given (possibly "")
	badSet   bool
	progress *progressLine // nil: quiet
}

// newQueueStatsCmd returns the "stats" subcommand of "qslice queue":
//
//	qslice queue stats DIR --slices N [--json]
//
// It scans one queue directory, read-only, and prints its backlog per slice. Register it with
// queueCmd.AddCommand(newQueueStatsCmd()).
func newQueueStatsCmd() *cobra.Command {
	o := queueStatsOptions{clock: clock.System{}}
	cmd := &cobra.Command{
		Use:   "stats DIR | stats --config FILE QUEUE",
		Short: "Show a queue directory's backlog per slice (read-only)",
		Long: `Scan a queue directory (qslice's own, or a Mailman 3 <var_dir>/queue/<name>) without
changing anything, and print per slice: ready messages, their bytes, the age of the oldest one
(from the time in its name), messages in flight and how long the oldest has been claimed. The
shunt and bad directories beside DIR are counted too when they exist.`,
		Example: `  qslice queue stats --config /etc/qslice/qslice.yaml out
  qslice queue stats /var/lib/mailman3/queue/in --slices 4
  qslice queue stats ./queues/outgoing --slices 64 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.shuntSet, o.badSet = cmd.Flags().Changed("shunt"), cmd.Flags().Changed("bad")
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			o.progress = newProgress(cmd.ErrOrStderr())
			dir := args[0]
			if o.config != "" {
				q, err := configQueue(o.config, args[0], cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				if cmd.Flags().Changed("slices") && o.slices != q.Slices {
					return usageErr("--slices %d, but queue %s has slices: %d in %s (leave --slices out)", o.slices, q.Name, q.Slices, o.config)
				}
				dir, o.slices = q.Dir, q.Slices
				if !o.shuntSet {
					o.shunt, o.shuntSet = q.ShuntDir, true
				}
				if !o.badSet {
					o.bad, o.badSet = q.BadDir, true
				}
			}
			return runQueueStats(ctx, cmd.OutOrStdout(), dir, o)
		},
	}
	f := cmd.Flags()
	f.IntVarP(&o.slices, "slices", "n", 1, fmt.Sprintf("number of slices the queue is cut into (1..%d)", queue.MaxSlices))
	f.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	f.BoolVar(&o.noBytes, "no-bytes", false, "skip the stat of every ready file (faster on huge queues; no byte counts)")
	f.BoolVar(&o.nonEmpty, "non-empty", false, "table: show only slices with ready or in-flight messages")
	f.StringVar(&o.shunt, "shunt", "", `shunt directory to count (default: "shunt" beside DIR, if it exists; "" to skip)`)
	f.StringVar(&o.bad, "bad", "", `bad directory to count (default: "bad" beside DIR, if it exists; "" to skip)`)
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up scanning after this long")
	f.StringVar(&o.config, "config", "", "qslice configuration: the argument is a queue name, whose dir, slices, shunt and bad directories come from it")
	return cmd
}

// queueStatsJSON is the --json output. Field names are a stable interface.
type queueStatsJSON struct {
	Dir         string           `json:"dir"`
	Slices      int              `json:"slices"`
	Ready       int              `json:"ready"`
	Bytes       *int64           `json:"bytes"` // null with --no-bytes
	InFlight    int              `json:"in_flight"`
	Ignored     int              `json:"ignored"`
	Temp        int              `json:"temp"`
	Shunt       *int             `json:"shunt"` // null when not counted
	Bad         *int             `json:"bad"`
	ScannedAt   time.Time        `json:"scanned_at"`
	ScanSeconds float64          `json:"scan_seconds"`
	Errors      []string         `json:"errors,omitempty"`
	PerSlice    []sliceStatsJSON `json:"per_slice"`
}

type sliceStatsJSON struct {
	Slice                    int     `json:"slice"`
	Ready                    int     `json:"ready"`
	Bytes                    *int64  `json:"bytes"`
	OldestAgeSeconds         float64 `json:"oldest_age_seconds"`
	InFlight                 int     `json:"in_flight"`
	OldestInFlightAgeSeconds float64 `json:"oldest_in_flight_age_seconds"`
}

// configQueue returns the queue named name of the configuration file path.
func configQueue(path, name string, stderr io.Writer) (config.Queue, error) {
	cfg, err := loadConfig(path, stderr)
	if err != nil {
		return config.Queue{}, err
	}
	var names []string
	for _, q := range cfg.Queues {
		if q.Name == name {
			if q.Dir == "" {
				return q, usageErr("queue %s of %s has no directory (a supervised worker that serves none)", name, path)
			}
			return q, nil
		}
		names = append(names, q.Name)
	}
	return config.Queue{}, usageErr("%s has no queue %q; its queues: %s", path, name, strings.Join(names, ", "))
}

func runQueueStats(ctx context.Context, w io.Writer, dir string, o queueStatsOptions) error {
	if err := queue.ValidateSlices(o.slices); err != nil {
		return usageErr("--slices: %w", err) // exit code 2, like any other bad usage
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	cfg := probes.QueueConfig{Name: filepath.Base(dir), Dir: dir, Slices: o.slices, NoBytes: o.noBytes,
		ShuntDir: queueSiblingDir(dir, "shunt", o.shunt, o.shuntSet), BadDir: queueSiblingDir(dir, "bad", o.bad, o.badSet)}
	if o.progress != nil {
		cfg.Progress = func(n int) { o.progress.Update("scanning %s: %d names…", dir, n) }
	}
	q := probes.ScanQueue(ctx, cfg, o.clock)
	o.progress.Done("")
	if q.Err != nil {
		return fmt.Errorf("queue stats: %w", q.Err)
	}
	if o.json {
		return writeQueueStatsJSON(w, q)
	}
	return writeQueueStatsTable(w, q, o.nonEmpty)
}

// queueSiblingDir returns the shunt or bad directory to count: the flag's value when given, else the
// Mailman layout's sibling of dir when it exists (an absent sibling is not an error: qslice's own
// queues may keep them elsewhere).
func queueSiblingDir(dir, name, flag string, set bool) string {
	if set {
		return flag
	}
	p := filepath.Join(filepath.Dir(filepath.Clean(dir)), name)
	if p == filepath.Clean(dir) {
		return ""
	}
	if fi, err := os.Stat(p); err == nil && fi.IsDir() {
		return p
	}
	return ""
}

func writeQueueStatsJSON(w io.Writer, q *probes.QueueSnapshot) error {
	out := queueStatsJSON{
		Dir: q.Config.Dir, Slices: q.Config.Slices, Ready: q.Ready, InFlight: q.InFlight,
		Ignored: q.Ignored, Temp: q.Temp, ScannedAt: q.At.UTC(), ScanSeconds: q.Duration.Seconds(),
		PerSlice: make([]sliceStatsJSON, len(q.PerSlice)),
	}
	if q.BytesCounted {
		out.Bytes = &q.Bytes
	}
	if q.HasShunt {
		out.Shunt = &q.Shunt
	}
	if q.HasBad {
		out.Bad = &q.Bad
	}
	for _, e := range q.Errors {
		out.Errors = append(out.Errors, e.Error())
	}
	if q.Dropped > 0 {
		out.Errors = append(out.Errors, fmt.Sprintf("%d more errors", q.Dropped))
	}
	for i, s := range q.PerSlice {
		js := sliceStatsJSON{Slice: i, Ready: s.Ready, InFlight: s.InFlight,
			OldestAgeSeconds:         s.OldestReadyAge(q.At).Seconds(),
			OldestInFlightAgeSeconds: s.OldestInFlightAge(q.At).Seconds()}
		if q.BytesCounted {
			b := s.Bytes
			js.Bytes = &b
		}
		out.PerSlice[i] = js
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeQueueStatsTable(w io.Writer, q *probes.QueueSnapshot, nonEmpty bool) error {
	fmt.Fprintf(w, "%s: %d slices, scanned in %v\n\n", q.Config.Dir, q.Config.Slices, q.Duration.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SLICE\tREADY\tBYTES\tOLDEST\tIN FLIGHT\tOLDEST IN FLIGHT\t")
	bytes := func(n int64) string {
		if !q.BytesCounted {
			return "-"
		}
		return formatBytes(n)
	}
	hidden := 0
	for i, s := range q.PerSlice {
		if nonEmpty && s.Ready == 0 && s.InFlight == 0 {
			hidden++
			continue
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%s\t\n", i, s.Ready, bytes(s.Bytes),
			formatAge(s.OldestReadyAge(q.At), s.Ready > 0), s.InFlight, formatAge(s.OldestInFlightAge(q.At), s.InFlight > 0))
	}
	ready, claim := q.Oldest()
	total := probes.SliceStats{OldestReady: ready, OldestClaim: claim}
	fmt.Fprintf(tw, "total\t%d\t%s\t%s\t%d\t%s\t\n", q.Ready, bytes(q.Bytes),
		formatAge(total.OldestReadyAge(q.At), q.Ready > 0), q.InFlight, formatAge(total.OldestInFlightAge(q.At), q.InFlight > 0))
	if err := tw.Flush(); err != nil {
		return err
	}
	var notes []string
	if hidden > 0 {
		notes = append(notes, fmt.Sprintf("%d empty slices not shown", hidden))
	}
	if q.HasShunt {
		notes = append(notes, fmt.Sprintf("shunt %d (%s)", q.Shunt, q.Config.ShuntDir))
	}
	if q.HasBad {
		notes = append(notes, fmt.Sprintf("bad %d (%s)", q.Bad, q.Config.BadDir))
	}
	if q.Temp > 0 {
		notes = append(notes, fmt.Sprintf("%d being written", q.Temp))
	}
	if q.Ignored > 0 {
		more := ""
		if q.Ignored > len(q.IgnoredSome) {
			more = ", ..."
		}
		notes = append(notes, fmt.Sprintf("%d ignored entries (%s%s)", q.Ignored, strings.Join(q.IgnoredSome, ", "), more))
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\n%s\n", strings.Join(notes, "\n"))
	}
	for _, e := range q.Errors {
		fmt.Fprintf(w, "warning: %v\n", e)
	}
	if q.Dropped > 0 {
		fmt.Fprintf(w, "warning: %d more errors\n", q.Dropped)
	}
	return nil
}

// formatAge prints a duration for a table: "-" when there is nothing to age, else whole seconds,
// minutes or hours ("45s", "12m05s", "3h20m", "2d04h").
func formatAge(d time.Duration, any bool) string {
	if !any {
		return "-"
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return strconv.FormatInt(s, 10) + "s"
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
	}
}

// formatBytes prints a size with a binary unit.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
