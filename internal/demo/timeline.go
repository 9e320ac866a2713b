package demo

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Point is one sample of a series as Prometheus' query_range returns it: the value at one step.
type Point struct {
	T time.Time
	V float64
}

// Series is one time series of a range query: its labels and its points, oldest first. A step
// where the series had no value (absent, stale, filtered out) has no point.
type Series struct {
	Labels map[string]string
	Points []Point
}

// Segment is a run of consecutive steps during which a slice had the same owners.
type Segment struct {
	Slice  int
	Owners []string // sorted; empty while nobody owned the slice; two during a hand-over seen by scrapes at different instants
	// From is the first step of the run; To is the step after its last one (the end of the
	// window for the last run).
	From, To time.Time
}

// Owner returns the one owner of the segment, or "" when it has none or several.
func (s Segment) Owner() string {
	if len(s.Owners) == 1 {
		return s.Owners[0]
	}
	return ""
}

// Window is the time range of a range query: steps start, start+step, ... up to end.
type Window struct {
	Start, End time.Time
	Step       time.Duration
}

// steps is the number of steps of the window.
func (w Window) steps() int {
	if w.Step <= 0 || w.End.Before(w.Start) {
		return 0
	}
	return int(w.End.Sub(w.Start)/w.Step) + 1
}

// index is the step of t, rounded to the nearest; ok is false outside the window.
func (w Window) index(t time.Time) (int, bool) {
	d := t.Sub(w.Start)
	i := int((d + w.Step/2) / w.Step)
	if d < -w.Step/2 || i >= w.steps() {
		return 0, false
	}
	return i, true
}

func (w Window) at(i int) time.Time { return w.Start.Add(time.Duration(i) * w.Step) }

// OwnershipSegments turns the series of a range query for the slices each node owned (labels
// node and slice, a point at every step the node owned the slice, whatever its value) into the
// runs of steps with the same owners, per slice 0..nSlices-1. Every slice gets segments that
// cover the whole window; series naming a slice outside 0..nSlices-1 or without a node are
// ignored.
func OwnershipSegments(series []Series, nSlices int, w Window) [][]Segment {
	n := w.steps()
	owners := make([][]map[string]bool, nSlices)
	for s := range owners {
		owners[s] = make([]map[string]bool, n)
	}
	for _, se := range series {
		node := se.Labels["node"]
		s, err := strconv.Atoi(se.Labels["slice"])
		if node == "" || err != nil || s < 0 || s >= nSlices {
			continue
		}
		for _, p := range se.Points {
			i, ok := w.index(p.T)
			if !ok {
				continue
			}
			if owners[s][i] == nil {
				owners[s][i] = map[string]bool{}
			}
			owners[s][i][node] = true
		}
	}
	out := make([][]Segment, nSlices)
	for s := range owners {
		for i := 0; i < n; i++ {
			cur := sortedKeys(owners[s][i])
			last := len(out[s]) - 1
			if last >= 0 && slices.Equal(out[s][last].Owners, cur) {
				out[s][last].To = w.at(i + 1)
				continue
			}
			out[s] = append(out[s], Segment{Slice: s, Owners: cur, From: w.at(i), To: w.at(i + 1)})
		}
		if k := len(out[s]) - 1; k >= 0 && out[s][k].To.After(w.End) {
			out[s][k].To = w.End
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return []string{}
	}
	return slices.Sorted(maps.Keys(m))
}

// OwnersAt returns the owners of the segment that contains t ("" when t is outside them all).
func OwnersAt(segs []Segment, t time.Time) []string {
	for _, s := range segs {
		if !t.Before(s.From) && t.Before(s.To) {
			return s.Owners
		}
	}
	return nil
}

// FirstSoleOwner returns the start of the first segment at or after t (or containing t) whose
// only owner satisfies ok, and whether there is one.
func FirstSoleOwner(segs []Segment, t time.Time, ok func(node string) bool) (time.Time, bool) {
	for _, s := range segs {
		if !s.To.After(t) {
			continue
		}
		if o := s.Owner(); o != "" && ok(o) {
			return maxTime(s.From, t), true
		}
	}
	return time.Time{}, false
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// AlertSpan is a stretch of time during which an alert was in one state, as Prometheus'
// ALERTS series records it.
type AlertSpan struct {
	Name   string            // alertname
	State  string            // "pending" or "firing"
	Labels map[string]string // the alert's labels without alertname and alertstate
	From   time.Time         // first step seen in this state
	To     time.Time         // the step after the last one seen
}

// Key is the alert's name and labels, one line, in a stable order.
func (a AlertSpan) Key() string {
	var b strings.Builder
	b.WriteString(a.Name)
	keys := slices.Sorted(maps.Keys(a.Labels))
	if len(keys) > 0 {
		b.WriteString("{")
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(k + "=" + strconv.Quote(a.Labels[k]))
		}
		b.WriteString("}")
	}
	return b.String()
}

// AlertSpans turns the series of a range query for ALERTS into spans: one per run of steps of
// each series (a gap of more than one step ends a run). Sorted by start, then key.
func AlertSpans(series []Series, w Window) []AlertSpan {
	var out []AlertSpan
	for _, se := range series {
		labels := map[string]string{}
		for k, v := range se.Labels {
			if k != "alertname" && k != "alertstate" && k != "__name__" {
				labels[k] = v
			}
		}
		var cur *AlertSpan
		for _, p := range se.Points {
			if cur != nil && p.T.Sub(cur.To) < w.Step/2 {
				cur.To = p.T.Add(w.Step)
				continue
			}
			if cur != nil {
				out = append(out, *cur)
			}
			cur = &AlertSpan{Name: se.Labels["alertname"], State: se.Labels["alertstate"], Labels: labels, From: p.T, To: p.T.Add(w.Step)}
		}
		if cur != nil {
			out = append(out, *cur)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].From.Equal(out[j].From) {
			return out[i].From.Before(out[j].From)
		}
		if out[i].Key() != out[j].Key() {
			return out[i].Key() < out[j].Key()
		}
		return out[i].State < out[j].State
	})
	return out
}

// Fired lists the distinct alerts (by Key) that reached the firing state, in order of firing.
func Fired(spans []AlertSpan) []string {
	var out []string
	for _, s := range spans {
		if s.State == "firing" && !slices.Contains(out, s.Key()) {
			out = append(out, s.Key())
		}
	}
	return out
}

// Subject names what an alert is about, for people: "queue/slice", else its node (instances maps
// a scrape target to its node name), else its instance, else "".
func (a AlertSpan) Subject(instances map[string]string) string {
	switch {
	case a.Labels["slice"] != "":
		return a.Labels["queue"] + "/" + a.Labels["slice"]
	case a.Labels["node"] != "":
		return a.Labels["node"]
	case instances[a.Labels["instance"]] != "":
		return instances[a.Labels["instance"]]
	default:
		return a.Labels["instance"]
	}
}

// SummarizeAlerts says, one line per alert that fired (and subject) and one per alert that was
// only pending, what Prometheus' ALERTS series show, with times relative to ref (the kill).
func SummarizeAlerts(spans []AlertSpan, ref time.Time, instances map[string]string) []string {
	if len(spans) == 0 {
		return []string{"none, not even pending"}
	}
	var names []string
	by := map[string][]AlertSpan{}
	for _, s := range spans {
		if _, ok := by[s.Name]; !ok {
			names = append(names, s.Name)
		}
		by[s.Name] = append(by[s.Name], s)
	}
	var out []string
	for _, name := range names {
		ss := by[name]
		fired := false
		for _, f := range ss {
			if f.State != "firing" {
				continue
			}
			fired = true
			line := name + " FIRED"
			if subj := f.Subject(instances); subj != "" {
				line += " for " + subj
			}
			var pending *AlertSpan
			for i, p := range ss {
				if p.State == "pending" && p.Key() == f.Key() && !p.From.After(f.From) {
					pending = &ss[i]
				}
			}
			if pending != nil {
				line += ": pending from " + relTo(ref, pending.From) + ","
			}
			out = append(out, fmt.Sprintf("%s firing from %s to %s (times after the kill)", line, relTo(ref, f.From), relTo(ref, f.To)))
		}
		if fired {
			continue
		}
		var subjects []string
		longest := time.Duration(0)
		for _, p := range ss {
			if subj := p.Subject(instances); subj != "" && !slices.Contains(subjects, subj) {
				subjects = append(subjects, subj)
			}
			longest = max(longest, p.To.Sub(p.From))
		}
		line := name + " pending only, never fired"
		if len(subjects) > 0 {
			line += " (" + strings.Join(subjects, ", ") + ")"
		}
		out = append(out, fmt.Sprintf("%s: at most %s at a time", line, longest.Round(time.Second)))
	}
	return out
}

// relTo formats t relative to ref in whole seconds, signed: "+13s", "-1s".
func relTo(ref, t time.Time) string {
	d := t.Sub(ref).Round(time.Second)
	if d < 0 {
		return "-" + (-d).String()
	}
	return "+" + d.String()
}
