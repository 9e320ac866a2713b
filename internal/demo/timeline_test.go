package demo

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

// owned is a series of node owning slice at every second of [from, to).
func owned(node string, slice, from, to int) Series {
	se := Series{Labels: map[string]string{"node": node, "slice": fmt.Sprint(slice)}}
	for s := from; s < to; s++ {
		se.Points = append(se.Points, Point{T: at(s), V: 1})
	}
	return se
}

// describe renders segments as "owners@from-to" with seconds since t0, for table comparisons.
func describe(segs []Segment) string {
	var parts []string
	for _, s := range segs {
		o := strings.Join(s.Owners, "+")
		if o == "" {
			o = "-"
		}
		parts = append(parts, fmt.Sprintf("%s@%d-%d", o, int(s.From.Sub(t0).Seconds()), int(s.To.Sub(t0).Seconds())))
	}
	return strings.Join(parts, " ")
}

func TestOwnershipSegments(t *testing.T) {
	w := Window{Start: at(0), End: at(9), Step: time.Second} // steps 0..9
	cases := []struct {
		name   string
		series []Series
		want   []string // per slice
	}{
		{"nobody", nil, []string{"-@0-9", "-@0-9"}},
		{"one owner throughout", []Series{owned("n1", 0, 0, 10)}, []string{"n1@0-9", "-@0-9"}},
		{
			"failover with a gap, then fail-back",
			[]Series{owned("n2", 1, 0, 3), owned("n3", 1, 5, 8), owned("n2", 1, 8, 10)},
			[]string{"-@0-9", "n2@0-3 -@3-5 n3@5-8 n2@8-9"},
		},
		{
			"hand-over seen by two scrapes in one step",
			[]Series{owned("n3", 0, 0, 5), owned("n2", 0, 4, 10)},
			[]string{"n3@0-4 n2+n3@4-5 n2@5-9", "-@0-9"},
		},
		{
			"points off the grid round to the nearest step; outside the window and bad labels ignored",
			[]Series{
				{Labels: map[string]string{"node": "n1", "slice": "0"}, Points: []Point{{at(2).Add(400 * time.Millisecond), 1}, {at(20), 1}, {at(-5), 1}}},
				{Labels: map[string]string{"node": "n1", "slice": "7"}, Points: []Point{{at(1), 1}}},
				{Labels: map[string]string{"slice": "1"}, Points: []Point{{at(1), 1}}},
				{Labels: map[string]string{"node": "n1", "slice": "x"}, Points: []Point{{at(1), 1}}},
			},
			[]string{"-@0-2 n1@2-3 -@3-9", "-@0-9"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := OwnershipSegments(c.series, 2, w)
			for s := range c.want {
				if d := describe(got[s]); d != c.want[s] {
					t.Errorf("slice %d: got %s, want %s", s, d, c.want[s])
				}
			}
		})
	}
}

func TestFirstSoleOwnerAndOwnersAt(t *testing.T) {
	w := Window{Start: at(0), End: at(20), Step: time.Second}
	segs := OwnershipSegments([]Series{owned("n2", 0, 0, 5), owned("n3", 0, 8, 14), owned("n2", 0, 13, 21)}, 1, w)[0]
	notN2 := func(n string) bool { return n != "n2" }
	isN2 := func(n string) bool { return n == "n2" }
	cases := []struct {
		name  string
		after time.Time
		ok    func(string) bool
		want  time.Time
		found bool
	}{
		{"taken over after the kill", at(5), notN2, at(8), true},
		{"inside a segment counts from the instant", at(10), notN2, at(10), true},
		{"back home: the shared step is not sole ownership", at(9), isN2, at(14), true},
		{"nothing after", at(15), notN2, time.Time{}, false},
	}
	for _, c := range cases {
		got, found := FirstSoleOwner(segs, c.after, c.ok)
		if found != c.found || !got.Equal(c.want) {
			t.Errorf("%s: got %v %t, want %v %t", c.name, got, found, c.want, c.found)
		}
	}
	if got := OwnersAt(segs, at(6)); len(got) != 0 || got == nil {
		t.Errorf("OwnersAt(6) = %#v, want an empty (unowned) list", got)
	}
	if got := OwnersAt(segs, at(13)); !slices.Equal(got, []string{"n2", "n3"}) {
		t.Errorf("OwnersAt(13) = %v", got)
	}
	if got := OwnersAt(segs, at(25)); got != nil {
		t.Errorf("OwnersAt(25) outside the window = %v, want nil", got)
	}
}

func TestAlertSpans(t *testing.T) {
	w := Window{Start: at(0), End: at(30), Step: time.Second}
	alert := func(name, state string, secs ...int) Series {
		se := Series{Labels: map[string]string{"__name__": "ALERTS", "alertname": name, "alertstate": state, "instance": "127.0.0.1:9", "severity": "warning"}}
		for _, s := range secs {
			se.Points = append(se.Points, Point{T: at(s), V: 1})
		}
		return se
	}
	spans := AlertSpans([]Series{
		alert("QsliceNodeDown", "firing", 14, 15, 16),
		alert("QsliceNodeDown", "pending", 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
		alert("QsliceSliceUnowned", "pending", 4, 5, 20), // two runs: a gap ends one
	}, w)
	var got []string
	for _, s := range spans {
		got = append(got, fmt.Sprintf("%s %s %d-%d", s.Name, s.State, int(s.From.Sub(t0).Seconds()), int(s.To.Sub(t0).Seconds())))
	}
	want := []string{
		"QsliceNodeDown pending 2-14",
		"QsliceSliceUnowned pending 4-6",
		"QsliceNodeDown firing 14-17",
		"QsliceSliceUnowned pending 20-21",
	}
	if !slices.Equal(got, want) {
		t.Errorf("spans:\n got %q\nwant %q", got, want)
	}
	if k := spans[0].Key(); k != `QsliceNodeDown{instance="127.0.0.1:9", severity="warning"}` {
		t.Errorf("key %s", k)
	}
	if f := Fired(spans); !slices.Equal(f, []string{`QsliceNodeDown{instance="127.0.0.1:9", severity="warning"}`}) {
		t.Errorf("fired: %q, want NodeDown only (SliceUnowned was only pending)", f)
	}
}

func TestSummarizeAlerts(t *testing.T) {
	w := Window{Start: at(0), End: at(60), Step: time.Second}
	series := func(name, state string, labels map[string]string, secs ...int) Series {
		l := map[string]string{"alertname": name, "alertstate": state}
		for k, v := range labels {
			l[k] = v
		}
		return Series{Labels: l, Points: pointsAt(secs[0], secs[1])}
	}
	down := map[string]string{"instance": "127.0.0.1:9", "job": "qslice"}
	spans := AlertSpans([]Series{
		series("QsliceNodeDown", "pending", down, 11, 23),
		series("QsliceNodeDown", "firing", down, 23, 31),
		series("QsliceSliceUnowned", "pending", map[string]string{"queue": "in", "slice": "1"}, 11, 14),
		series("QsliceSliceUnowned", "pending", map[string]string{"queue": "in", "slice": "3"}, 11, 15),
	}, w)
	got := SummarizeAlerts(spans, at(10), map[string]string{"127.0.0.1:9": "n2"})
	want := []string{
		"QsliceNodeDown FIRED for n2: pending from +1s, firing from +13s to +21s (times after the kill)",
		"QsliceSliceUnowned pending only, never fired (in/1, in/3): at most 4s at a time",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
	if got := SummarizeAlerts(nil, at(10), nil); len(got) != 1 || !strings.HasPrefix(got[0], "none") {
		t.Errorf("no spans: %q", got)
	}
}
