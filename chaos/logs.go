package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// NodeLog is what the harness reads from one qslice process's JSON log.
type NodeLog struct {
	// Lapses are the instants the runner reported a lapsed lease, or fenced its queue: it
	// cancelled (killed) every running handler then, and leaves their files in flight for the
	// next owner. LateAfterFence counts operations that returned from the filesystem after the
	// fence (claims given back, handlers whose message was left in flight).
	Lapses         []time.Time
	LateAfterFence int
	// Changes counts "slice ownership changed" lines by reason.
	Changes map[string]int
	// ChangeLines are those lines, in order, as "time slice from->to reason".
	ChangeLines []OwnershipChange
	// Sessions are the instants the node created a Consul session (its first, or a new one
	// after its session ended).
	Sessions []time.Time
	// Errors counts ERROR lines and lines that are not JSON (a panic's stack, say); ErrorLines
	// holds the first maxErrorLines of them, to be judged against the run's faults.
	Errors     int
	ErrorLines []ErrorLine
}

// ErrorLine is one ERROR line of a node's log (Msg and At are empty for a line that is not JSON).
type ErrorLine struct {
	At   time.Time
	Msg  string
	Line string
}

// maxErrorLines bounds the error lines kept per log; the rest are counted and fail the run.
const maxErrorLines = 10000

// OwnershipChange is one "slice ownership changed" log line.
type OwnershipChange struct {
	At       time.Time
	Slice    string
	From, To string
	Reason   string
}

// ReadNodeLog parses a log written with --log-format json. Lines that are not JSON (a panic's
// stack, say) are counted as errors.
func ReadNodeLog(path string) (NodeLog, error) {
	out := NodeLog{Changes: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return out, fmt.Errorf("read node log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			if strings.TrimSpace(line) != "" {
				out.Errors++
				if len(out.ErrorLines) < maxErrorLines {
					out.ErrorLines = append(out.ErrorLines, ErrorLine{Line: line})
				}
			}
			continue
		}
		str := func(k string) string { s, _ := m[k].(string); return s }
		at, _ := time.Parse(time.RFC3339Nano, str("time"))
		msg := str("msg")
		switch {
		case str("component") == "runner" && (strings.Contains(msg, "lease lapsed") || strings.HasPrefix(msg, "queue fenced") ||
			strings.HasPrefix(msg, "stopped with work stuck")):
			// A fence (the queue's filesystem does not answer) and a shutdown with work stuck in
			// the filesystem also kill the running handlers and leave their files in flight.
			out.Lapses = append(out.Lapses, at)
		case strings.Contains(msg, "after the queue was fenced"):
			out.LateAfterFence++
		case str("component") == "failover" && msg == "session created":
			out.Sessions = append(out.Sessions, at)
		case msg == "slice ownership changed":
			r := str("reason")
			out.Changes[r]++
			out.ChangeLines = append(out.ChangeLines, OwnershipChange{At: at, Slice: str("slice"), From: str("from"), To: str("to"), Reason: r})
		}
		if str("level") == "ERROR" {
			out.Errors++
			if len(out.ErrorLines) < maxErrorLines {
				out.ErrorLines = append(out.ErrorLines, ErrorLine{At: at, Msg: msg, Line: line})
			}
		}
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read node log %s: %w", path, err)
	}
	return out, nil
}
