package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/internal/safefile"
	"github.com/qslice/qslice/mailman"
	"github.com/qslice/qslice/runner/queue"
)

func newQueueCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Work with queue directories: enqueue, list, show, requeue, stats",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newEnqueueCmd(g), newLsCmd(g), newShowCmd(g), newRequeueCmd(g), newQueueStatsCmd())
	return cmd
}

func newEnqueueCmd(g *globals) *cobra.Command {
	var lock, traceparent string
	var meta []string
	cmd := &cobra.Command{
		Use:   "enqueue DIR",
		Short: "Add a message to a queue directory, reading its payload from stdin",
		Long: `Write the payload from standard input as a new message "<time>+<sha1>.pck" in DIR, through a
.pck.tmp file, fsync and rename, so a runner never sees half a message. Prints the file name.`,
		Example: `  echo hello | qslice queue enqueue ./var/queue/in --lock list-a --meta list=a@example.org`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return usageErr("queue directory %s does not exist (create it, or check the path)", dir)
			}
			m := queue.Meta{Lock: lock, Traceparent: traceparent}
			for _, kv := range meta {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return usageErr("--meta %q: want key=value", kv)
				}
				if m.Extra == nil {
					m.Extra = map[string]string{}
				}
				if _, dup := m.Extra[k]; dup {
					return usageErr("--meta %q: key %q given twice", kv, k)
				}
				m.Extra[k] = v
			}
			// Refuse here what the runner would refuse later (and shunt or call corrupt).
			if err := queue.ValidateMeta(m); err != nil {
				return usageErr("%v", err)
			}
			body, err := io.ReadAll(g.stdin)
			if err != nil {
				return fmt.Errorf("read payload from stdin: %w", err)
			}
			d := queue.NewDir(dir, "", "")
			n, err := d.Enqueue(m, body, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), n.FileName(queue.SuffixReady))
			return nil
		},
	}
	cmd.Flags().StringVar(&lock, "lock", "", "lock file name (in the queue's lock_dir) to hold while handling")
	cmd.Flags().StringArrayVar(&meta, "meta", nil, "extra metadata key=value (repeatable), passed to handlers as QSLICE_META_<KEY>")
	cmd.Flags().StringVar(&traceparent, "traceparent", os.Getenv("TRACEPARENT"), "W3C traceparent to link the processing span to")
	return cmd
}

type lsEntry struct {
	Name       string  `json:"name"`
	State      string  `json:"state"`
	Slice      *int    `json:"slice,omitempty"`
	AgeSeconds float64 `json:"age_seconds"`
	Bytes      int64   `json:"bytes"`
	Error      string  `json:"error,omitempty"`
	// Refused says why runners will not read this file (not a regular file, or over the size
	// limit); it is also the error shown with --why.
	Refused string `json:"refused,omitempty"`
}

var stateBySuffix = map[string]string{queue.SuffixReady: "ready", queue.SuffixInFlight: "in-flight", queue.SuffixBad: "bad"}

func newLsCmd(g *globals) *cobra.Command {
	var slices, limit int
	var maxBytes int64
	var asJSON, why bool
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "ls DIR | ls --config FILE QUEUE",
		Short: "List the messages in a queue, shunt or bad directory, oldest first",
		Args:  cobra.ExactArgs(1),
		Example: `  qslice queue ls --config /etc/qslice/qslice.yaml out
  qslice queue ls /var/lib/mailman3/queue/out --slices 4
  qslice queue ls /var/lib/qslice/queue/shunt --why`,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if cfgPath != "" {
				q, err := configQueue(cfgPath, args[0], cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				if cmd.Flags().Changed("slices") && slices != q.Slices {
					return usageErr("--slices %d, but queue %s has slices: %d in %s (leave --slices out)", slices, q.Name, q.Slices, cfgPath)
				}
				dir, slices = q.Dir, q.Slices
			}
			now := time.Now()
			var out []lsEntry
			err := queue.ScanNames(dir, func(f string) error {
				n, err := queue.ParseName(f)
				if err != nil {
					return nil
				}
				e := lsEntry{Name: f, State: stateBySuffix[n.Suffix], AgeSeconds: n.Age(now).Seconds()}
				if slices > 0 {
					s := queue.SliceOf(n.Digest, slices)
					e.Slice = &s
				}
				// Lstat: a link is shown as what it is, never followed.
				if st, kind, err := safefile.Lstat(filepath.Join(dir, f)); err == nil {
					switch {
					case !st.Mode().IsRegular():
						e.Refused = "a " + kind + ", not a regular file: runners move it to bad/ (or skip it) unread"
					case st.Size() > maxBytes:
						e.Refused = fmt.Sprintf("%d bytes, over max_message_bytes %d: runners move it to bad/ unread", st.Size(), maxBytes)
					default:
						e.Bytes = st.Size()
					}
				}
				if why {
					if e.Refused != "" {
						e.Error = "refused: " + e.Refused
					} else {
						e.Error = failureReason(dir, n, maxBytes)
					}
				}
				out = append(out, e)
				return nil
			})
			if err != nil {
				return fmt.Errorf("%w (check the directory exists and is readable)", err)
			}
			sort.Slice(out, func(i, j int) bool { return out[i].AgeSeconds > out[j].AgeSeconds })
			if limit > 0 && len(out) > limit {
				out = out[:limit]
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if out == nil {
					out = []lsEntry{}
				}
				return enc.Encode(out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprint(tw, "NAME\tSTATE\tSLICE\tAGE\tBYTES")
			if why {
				fmt.Fprint(tw, "\tERROR")
			}
			fmt.Fprintln(tw)
			for _, e := range out {
				slice := "-"
				if e.Slice != nil {
					slice = fmt.Sprint(*e.Slice)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d", e.Name, e.State, slice, time.Duration(e.AgeSeconds*float64(time.Second)).Round(time.Second), e.Bytes)
				if why {
					fmt.Fprintf(tw, "\t%s", oneLine(e.Error, 80))
				}
				fmt.Fprintln(tw)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().IntVar(&slices, "slices", 0, "slice count, to show each message's slice")
	cmd.Flags().StringVar(&cfgPath, "config", "", "qslice configuration: the argument is a queue name, whose dir and slices come from it")
	cmd.Flags().IntVar(&limit, "limit", 0, "show at most this many (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&why, "why", false, "read each message's recorded failure (shunt and bad directories), and say why odd files are refused")
	cmd.Flags().Int64Var(&maxBytes, "max-bytes", queue.DefaultMaxMessageBytes, "the queue's max_message_bytes: larger files are flagged, never read")
	return cmd
}

// failureReason returns what was recorded when a message was moved aside, or "". It reads only
// regular files (never through a link, never blocking on a FIFO) of at most maxBytes.
func failureReason(dir string, n queue.Name, maxBytes int64) string {
	if n.Suffix == queue.SuffixBad {
		var r queue.BadReason
		b, err := safefile.Read(filepath.Join(dir, n.Base+queue.SuffixWhy), queue.MaxHeader, nil)
		if err != nil && queue.Unsafe(err) {
			return "reason file refused: " + err.Error()
		}
		if err == nil && json.Unmarshal(b, &r) == nil {
			return r.Reason
		}
		return ""
	}
	data, err := safefile.Read(filepath.Join(dir, n.FileName(n.Suffix)), maxBytes, nil)
	if err != nil {
		if queue.Unsafe(err) {
			return "refused: " + err.Error()
		}
		return ""
	}
	m, _, err := queue.Decode(data)
	if err != nil {
		return ""
	}
	return m.Error
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max-1] + "…"
	}
	return s
}

func newShowCmd(g *globals) *cobra.Command {
	var body bool
	var maxBytes int64
	cmd := &cobra.Command{
		Use:   "show FILE",
		Short: "Show one message's metadata (and with --body its payload): qslice's format or Mailman's pickles",
		Long: `Show a queue file as JSON, read-only: qslice's own format (metadata and body size), or a
Mailman 2.1/3 pickled queue file (.pck, .bak, .psv): the message's class and headers, the metadata
dict Mailman stored with it and its list id. Pickles are decoded as data, never executed; files
larger than --max-bytes (and Mailman pickles over 32 MiB) are refused. --body writes the payload (Mailman: the message body) instead.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			data, err := safefile.Read(path, maxBytes, nil)
			if err != nil {
				return err
			}
			n, nerr := queue.ParseName(filepath.Base(path))
			m, b, err := queue.Decode(data)
			var out map[string]any
			switch {
			case err == nil:
				out = map[string]any{"file": path, "format": "qslice", "meta": m, "body_bytes": len(b)}
			case errors.Is(err, queue.ErrCorrupt):
				mf, merr := mailman.DecodeQueueFile(data)
				if merr != nil {
					return fmt.Errorf("%s: neither qslice's format (%v) nor a Mailman queue file (%v)", path, err, merr)
				}
				b = []byte(mf.Body)
				out = map[string]any{"file": path, "format": "mailman pickle", "message_class": mf.Class, "headers": mf.Headers,
					"metadata": mf.Metadata, "list_id": mf.ListID, "body_bytes": len(mf.Body)}
				if mf.Parts > 0 {
					out["parts"] = mf.Parts
				}
			default:
				return fmt.Errorf("%s: %w", path, err)
			}
			if body {
				_, err := cmd.OutOrStdout().Write(b)
				return err
			}
			if nerr == nil {
				out["state"] = stateBySuffix[n.Suffix]
				out["enqueued_by_name"] = n.Time().UTC()
			}
			if n.Suffix == queue.SuffixBad {
				out["bad_reason"] = failureReason(filepath.Dir(path), n, maxBytes)
			}
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetIndent("", "  ")
			if err := enc.Encode(out); err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(buf.Bytes())
			return err
		},
	}
	cmd.Flags().BoolVar(&body, "body", false, "write the payload body to stdout instead")
	cmd.Flags().Int64Var(&maxBytes, "max-bytes", queue.DefaultMaxMessageBytes, "refuse files larger than this (the queue's max_message_bytes)")
	return cmd
}

func newRequeueCmd(g *globals) *cobra.Command {
	var to string
	var maxBytes int64
	cmd := &cobra.Command{
		Use:   "requeue DIR [FILE...]",
		Short: "Move shunted or bad messages back to their queue (like Mailman's unshunt)",
		Long: `Move messages from a shunt directory (.pck) or a bad directory (.psv) back to the queue they
came from (recorded with them), or to --to DIR. The recorded error and attempt count are cleared.
Without FILE arguments every message in DIR is requeued. Fix the cause first, or they fail again.`,
		Example: `  qslice queue requeue /var/lib/qslice/queue/shunt
  qslice queue requeue /var/lib/qslice/queue/bad 1700000000.5+3f...e1.psv --to /var/lib/qslice/queue/in`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, files := args[0], args[1:]
			if len(files) == 0 {
				err := queue.ScanNames(dir, func(f string) error {
					if queue.Requeueable(f) {
						files = append(files, f)
					}
					return nil
				})
				if err != nil {
					return err
				}
				sort.Strings(files)
			}
			progress := newProgress(g.stderr)
			var failed int
			for i, f := range files {
				if _, err := queue.Requeue(dir, filepath.Base(f), to, maxBytes); err != nil {
					fmt.Fprintln(g.stderr, "qslice:", err)
					failed++
				}
				progress.Update("requeued %d of %d…", i+1-failed, len(files))
			}
			progress.Done("")
			fmt.Fprintf(cmd.OutOrStdout(), "requeued %d of %d messages\n", len(files)-failed, len(files))
			if failed > 0 {
				return &exitError{code: exitFailure, err: fmt.Errorf("%d messages could not be requeued (see above)", failed)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "queue directory to move them to (default: the recorded queue of origin)")
	cmd.Flags().Int64Var(&maxBytes, "max-bytes", queue.DefaultMaxMessageBytes, "refuse files larger than this (the queue's max_message_bytes)")
	return cmd
}
