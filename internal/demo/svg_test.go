package demo

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// sampleChart: 3 nodes, 4 slices over 60 s; n2 (slices 1 and 3) killed at 10 s, its slices taken
// at 14 s, n2 back at 30 s and its slices back at 40 s (slice 3 through a step seen owned by
// both); the backlog of n2's slices grows while nobody owns them; QsliceNodeDown pending, then
// firing.
func sampleChart() Chart {
	w := Window{Start: at(0), End: at(60), Step: time.Second}
	var own []Series
	own = append(own, owned("n1", 0, 0, 61), owned("n3", 2, 0, 61))
	own = append(own, owned("n2", 1, 0, 11), owned("n1", 1, 14, 40), owned("n2", 1, 40, 61))
	own = append(own, owned("n2", 3, 0, 11), owned("n3", 3, 14, 41), owned("n2", 3, 40, 61))
	var backlog []Series
	for s := 0; s < 4; s++ {
		se := Series{Labels: map[string]string{"slice": fmt.Sprint(s)}}
		for i := 0; i <= 60; i++ {
			v := 0.0
			if (s == 1 || s == 3) && i >= 10 && i < 18 {
				v = float64(min(i-10, 4)*6 - max(0, i-14)*6)
			}
			se.Points = append(se.Points, Point{T: at(i), V: v})
		}
		backlog = append(backlog, se)
	}
	alerts := AlertSpans([]Series{
		{Labels: map[string]string{"alertname": "QsliceNodeDown", "alertstate": "pending", "instance": "127.0.0.1:40001"}, Points: pointsAt(11, 23)},
		{Labels: map[string]string{"alertname": "QsliceNodeDown", "alertstate": "firing", "instance": "127.0.0.1:40001"}, Points: pointsAt(23, 31)},
	}, w)
	return Chart{
		Title:     "qslice: node n2 killed, its slices taken over, then given back",
		Subtitle:  "3 nodes, 4 slices; TTL 2s, lock-delay 1s, hold-down 5s (demo)",
		Window:    w,
		Nodes:     []string{"n1", "n2", "n3"},
		Ownership: OwnershipSegments(own, 4, w),
		Backlog:   backlog,
		Alerts:    alerts,
		Marks:     []Mark{{at(10), "kill -9 n2"}, {at(30), "n2 restarted"}, {at(40), "slices back on n2"}},
	}
}

func pointsAt(from, to int) []Point {
	var ps []Point
	for i := from; i < to; i++ {
		ps = append(ps, Point{T: at(i), V: 1})
	}
	return ps
}

func TestRenderSVGGolden(t *testing.T) {
	got := RenderSVG(sampleChart())
	golden := filepath.Join("testdata", "chart.svg")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/demo -run Golden -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("RenderSVG output differs from %s (go test ./internal/demo -run Golden -update rewrites it; look at it first)", golden)
	}
}

func TestRenderSVGDrawsEverySeries(t *testing.T) {
	c := sampleChart()
	els, err := ParseSVG(RenderSVG(c))
	if err != nil {
		t.Fatal(err)
	}
	// Every owner of every segment, every backlog series, every alert span and every mark.
	for s, segs := range c.Ownership {
		for _, seg := range segs {
			for _, o := range seg.Owners {
				if els.Owned[s][o] == 0 {
					t.Errorf("no bar of slice %d owned by %s", s, o)
				}
			}
		}
	}
	if els.Owned[1]["n2"] != 2 || els.Owned[1]["n1"] != 1 || els.Owned[3]["n3"] != 2 || els.Owned[3]["n2"] != 3 {
		t.Errorf("bars per slice and node: %v; want slice 1: n2 2 (before and after), n1 1; slice 3: n3 2 and n2 3 (a shared step)", els.Owned)
	}
	for s := 0; s < 4; s++ {
		if els.Backlog[s] != 61 {
			t.Errorf("backlog line of slice %d has %d points, want 61", s, els.Backlog[s])
		}
	}
	if els.Alerts["QsliceNodeDown/pending"] != 1 || els.Alerts["QsliceNodeDown/firing"] != 1 {
		t.Errorf("alert spans %v", els.Alerts)
	}
	if els.Marks != 3 {
		t.Errorf("%d marks, want 3", els.Marks)
	}
}

func TestParseSVGRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"not xml":      "<svg",
		"not svg":      `<html xmlns="http://www.w3.org/1999/xhtml"></html>`,
		"no namespace": `<svg></svg>`,
		"empty":        ``,
	} {
		if _, err := ParseSVG([]byte(doc)); err == nil {
			t.Errorf("%s: ParseSVG accepted %q", name, doc)
		}
	}
}
