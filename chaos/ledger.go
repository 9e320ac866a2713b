package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Event is one ledger line written by the handler (cmd/qslice-chaos-handler):
//
//	<message id> <node> start|end <unix ns> slice=<slice> pid=<pid>
type Event struct {
	ID   string
	Node string
	End  bool // false: "start" (or "fenced")
	// Fenced: a "fenced" line, the handler gave up at its commit point (see
	// cmd/qslice-chaos-handler); neither a start nor an end.
	Fenced bool
	At     time.Time
	Slice  int
	PID    int
}

// ParseLedgerLine parses one ledger line.
func ParseLedgerLine(line string) (Event, error) {
	f := strings.Fields(line)
	if len(f) < 4 {
		return Event{}, fmt.Errorf("parse ledger line %q: want at least 4 fields", line)
	}
	e := Event{ID: f[0], Node: f[1], Slice: -1}
	switch f[2] {
	case "start":
	case "end":
		e.End = true
	case "fenced":
		e.Fenced = true
	default:
		return Event{}, fmt.Errorf("parse ledger line %q: want start, end or fenced, got %q", line, f[2])
	}
	ns, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil {
		return Event{}, fmt.Errorf("parse ledger line %q: time: %w", line, err)
	}
	e.At = time.Unix(0, ns)
	for _, kv := range f[4:] {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.Atoi(v)
		if err != nil {
			return Event{}, fmt.Errorf("parse ledger line %q: %s: %w", line, k, err)
		}
		switch k {
		case "slice":
			e.Slice = n
		case "pid":
			e.PID = n
		}
	}
	return e, nil
}

// LedgerReader reads ledger files incrementally: each Poll returns the complete lines appended
// since the last one. Not safe for concurrent use.
type LedgerReader struct {
	paths   []string
	offsets map[string]int64
	// Malformed counts lines that did not parse (a ledger is written by the handler only, so
	// any is a bug of the harness).
	Malformed int
}

// NewLedgerReader reads the given files (missing files are empty until they appear).
func NewLedgerReader(paths ...string) *LedgerReader {
	return &LedgerReader{paths: paths, offsets: map[string]int64{}}
}

// Poll returns the events of the lines completed since the last Poll.
func (r *LedgerReader) Poll() ([]Event, error) {
	var out []Event
	for _, p := range r.paths {
		evs, err := r.pollFile(p)
		if err != nil {
			return out, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

func (r *LedgerReader) pollFile(path string) ([]Event, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ledger: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(r.offsets[path], io.SeekStart); err != nil {
		return nil, fmt.Errorf("read ledger %s: %w", path, err)
	}
	br := bufio.NewReaderSize(f, 64*1024)
	var out []Event
	for {
		line, err := br.ReadString('\n')
		if err == io.EOF {
			return out, nil // a partial last line is read again next time
		}
		if err != nil {
			return out, fmt.Errorf("read ledger %s: %w", path, err)
		}
		r.offsets[path] += int64(len(line))
		e, perr := ParseLedgerLine(strings.TrimSpace(line))
		if perr != nil {
			r.Malformed++
			continue
		}
		out = append(out, e)
	}
}

// Handling is one run of the handler on a message: a start line and, when the handler got to its
// commit point, the matching end line (same message, node and pid).
type Handling struct {
	ID    string
	Node  string
	Slice int
	PID   int
	Start time.Time
	End   time.Time // zero: no end line (cut off, or fenced)
	// Fenced is when the handler gave up at its commit point, its lease deadline passed (a
	// "fenced" line): the handling ended then, uncommitted. Zero without such a line.
	Fenced time.Time
}

// Completed reports whether the handling reached its commit point.
func (h Handling) Completed() bool { return !h.End.IsZero() }

// PairHandlings matches start and end lines into handlings, ordered by start.
func PairHandlings(events []Event) []Handling {
	type key struct {
		id, node string
		pid      int
	}
	open := map[key]int{} // index into out of the handling still waiting for its end
	var out []Handling
	sorted := slices.Clone(events)
	slices.SortStableFunc(sorted, func(a, b Event) int { return a.At.Compare(b.At) })
	for _, e := range sorted {
		k := key{e.ID, e.Node, e.PID}
		if e.Fenced {
			if i, ok := open[k]; ok {
				out[i].Fenced = e.At
				delete(open, k)
			}
			continue
		}
		if !e.End {
			open[k] = len(out)
			out = append(out, Handling{ID: e.ID, Node: e.Node, Slice: e.Slice, PID: e.PID, Start: e.At})
			continue
		}
		if i, ok := open[k]; ok {
			out[i].End = e.At
			delete(open, k)
			continue
		}
		// An end without a start cannot happen with the handler's write order; keep it visible
		// as a handling that starts and ends at once.
		out = append(out, Handling{ID: e.ID, Node: e.Node, Slice: e.Slice, PID: e.PID, Start: e.At, End: e.At})
	}
	slices.SortStableFunc(out, func(a, b Handling) int { return a.Start.Compare(b.Start) })
	return out
}

// ReadLedgers reads every "ledger-*.log" file of dir completely.
func ReadLedgers(dir string) ([]Event, int, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "ledger-*.log"))
	if err != nil {
		return nil, 0, fmt.Errorf("list ledgers: %w", err)
	}
	r := NewLedgerReader(paths...)
	evs, err := r.Poll()
	return evs, r.Malformed, err
}
