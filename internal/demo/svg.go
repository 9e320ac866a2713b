package demo

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Chart is what the picture shows: the ownership of every slice over time, the alerts, the
// backlog per slice, and marks (the kill, the restart, the fail-back).
type Chart struct {
	Title, Subtitle string
	Window          Window
	Nodes           []string          // in legend order; a node's color is its place here
	Instances       map[string]string // scrape target -> node name, to label alerts
	Ownership       [][]Segment       // per slice (OwnershipSegments)
	Backlog         []Series          // one per slice (label slice): ready messages
	Alerts          []AlertSpan
	Marks           []Mark
}

// Mark is a vertical line at an instant, labelled.
type Mark struct {
	At    time.Time
	Label string
}

// Picture geometry, in SVG user units (pixels).
const (
	svgWidth    = 980
	plotLeft    = 150 // room for the row labels
	plotRight   = 20
	rowHeight   = 18
	rowGap      = 4
	alertHeight = 14
	backlogH    = 170
	fontFamily  = "DejaVu Sans, Verdana, sans-serif"
)

// Colors: nodes get the first ones, in order; backlog lines one per slice (cycling).
var (
	nodeColors  = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"}
	sliceColors = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"}
)

const (
	unownedColor = "#ffffff"
	pendingColor = "#f6c85f"
	firingColor  = "#d62728"
	markColor    = "#444444"
)

// RenderSVG draws the chart as a standalone SVG document. The output depends only on the chart
// (no clock, no randomness), so it can be compared with a golden file. Every drawn series
// carries its identity in attributes (data-slice, data-node, data-alert, data-state) and a
// <title> (a tooltip in browsers).
func RenderSVG(c Chart) []byte {
	w := &svgWriter{}
	plotW := float64(svgWidth - plotLeft - plotRight)
	span := c.Window.End.Sub(c.Window.Start).Seconds()
	if span <= 0 {
		span = 1
	}
	x := func(t time.Time) float64 {
		return plotLeft + math.Max(0, math.Min(plotW, t.Sub(c.Window.Start).Seconds()/span*plotW))
	}
	alertKeys := alertRows(c.Alerts)

	// Vertical layout.
	y := 28.0
	titleY := y
	y += 20
	subY := y
	y += 22
	legendY := y
	y += 34 // room for the marks' labels
	marksTop := y
	alertsTop := y
	y += float64(len(alertKeys)) * (alertHeight + rowGap)
	y += 20 // the heading of the ownership rows
	ownTop := y
	y += float64(len(c.Ownership)) * (rowHeight + rowGap)
	ownBottom := y
	y += 40
	backTop := y
	y += backlogH
	backBottom := y
	y += 64
	height := y

	w.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="%s" font-size="12">`+"\n",
		svgWidth, height, svgWidth, height, fontFamily)
	w.printf(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	w.text(plotLeft-130, titleY, "start", "font-size=\"16\" font-weight=\"bold\"", c.Title)
	w.text(plotLeft-130, subY, "start", "fill=\"#555555\"", c.Subtitle)

	// Legend: nodes, unowned, alert states.
	lx := float64(plotLeft - 130)
	legend := func(color, stroke, label string) {
		w.printf(`<rect x="%.1f" y="%.1f" width="14" height="12" fill="%s" stroke="%s"/>`+"\n", lx, legendY-10, color, stroke)
		w.text(lx+18, legendY, "start", "", label)
		lx += 26 + float64(7*len(label))
	}
	for i, n := range c.Nodes {
		legend(nodeColors[i%len(nodeColors)], "none", "owned by "+n)
	}
	legend(unownedColor, "#999999", "nobody")
	if len(alertKeys) > 0 {
		legend(pendingColor, "none", "alert pending")
		legend(firingColor, "none", "alert firing")
	}

	// Alerts: one row per alert (name and labels), pending and firing spans.
	w.printf(`<g id="alerts">` + "\n")
	if len(alertKeys) > 0 {
		w.text(plotLeft-130, alertsTop-6, "start", "font-weight=\"bold\"", "Alerts")
	}
	for i, name := range alertKeys {
		ry := alertsTop + float64(i)*(alertHeight+rowGap)
		var subjects []string
		for _, s := range c.Alerts {
			if subj := s.Subject(c.Instances); s.Name == name && !slices.Contains(subjects, subj) {
				subjects = append(subjects, subj)
			}
		}
		label := strings.TrimPrefix(name, "Qslice")
		switch {
		case len(subjects) == 1 && subjects[0] != "":
			label += " " + subjects[0]
		case len(subjects) > 1:
			label += fmt.Sprintf(" (%d)", len(subjects))
		}
		w.text(plotLeft-6, ry+alertHeight-3, "end", "", label)
		w.printf(`<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="#fafafa" stroke="#dddddd"/>`+"\n", plotLeft, ry, plotW, alertHeight)
		for _, s := range c.Alerts {
			if s.Name != name {
				continue
			}
			key := s.Key()
			color := pendingColor
			if s.State == "firing" {
				color = firingColor
			}
			x0, x1 := x(s.From), x(s.To)
			w.printf(`<rect class="alert" data-alert="%s" data-state="%s" x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s">`,
				attr(s.Name), attr(s.State), x0, ry, math.Max(0.5, x1-x0), alertHeight, color)
			w.printf("<title>%s %s from %s to %s</title></rect>\n", esc(key), esc(s.State), rel(c.Window, s.From), rel(c.Window, s.To))
		}
	}
	w.printf("</g>\n")

	// Ownership: one row per slice, a bar per segment in its owner's color; a segment with two
	// owners (a hand-over between two scrapes) is split in two half-height bars.
	w.printf(`<g id="ownership">` + "\n")
	w.text(plotLeft-130, ownTop-6, "start", "font-weight=\"bold\"", "Owner of each slice")
	for s, segs := range c.Ownership {
		ry := ownTop + float64(s)*(rowHeight+rowGap)
		w.text(plotLeft-6, ry+rowHeight-5, "end", "", fmt.Sprintf("slice %d", s))
		w.printf(`<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="%s" stroke="#999999" stroke-width="0.5"/>`+"\n",
			plotLeft, ry, plotW, rowHeight, unownedColor)
		for _, seg := range segs {
			if len(seg.Owners) == 0 {
				continue
			}
			x0, x1 := x(seg.From), x(seg.To)
			h := float64(rowHeight) / float64(len(seg.Owners))
			for k, o := range seg.Owners {
				w.printf(`<rect class="owned" data-slice="%d" data-node="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s">`,
					s, attr(o), x0, ry+float64(k)*h, math.Max(0.5, x1-x0), h, nodeColor(c.Nodes, o))
				w.printf("<title>slice %d: %s from %s to %s</title></rect>\n", s, esc(strings.Join(seg.Owners, " and ")), rel(c.Window, seg.From), rel(c.Window, seg.To))
			}
		}
	}
	w.printf("</g>\n")

	// Backlog: ready messages per slice, one line each.
	maxV := 0.0
	for _, se := range c.Backlog {
		for _, p := range se.Points {
			maxV = math.Max(maxV, p.V)
		}
	}
	top := niceCeil(maxV)
	yv := func(v float64) float64 { return backBottom - v/top*backlogH }
	w.printf(`<g id="backlog">` + "\n")
	w.text(plotLeft, backTop-8, "start", "font-weight=\"bold\"", "Backlog: ready messages per slice")
	w.printf(`<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#999999" stroke-width="0.5"/>`+"\n", plotLeft, backTop, plotW, backlogH)
	for _, v := range []float64{0, top / 2, top} {
		w.printf(`<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eeeeee"/>`+"\n", plotLeft, yv(v), plotLeft+plotW, yv(v))
		w.text(plotLeft-6, yv(v)+4, "end", "", strconv.FormatFloat(v, 'f', -1, 64))
	}
	ordered := slices.Clone(c.Backlog)
	slices.SortStableFunc(ordered, func(a, b Series) int { return sliceNum(a) - sliceNum(b) })
	for _, se := range ordered {
		s := sliceNum(se)
		color := sliceColors[((s%len(sliceColors))+len(sliceColors))%len(sliceColors)]
		var d strings.Builder
		var prev time.Time
		for i, p := range se.Points {
			cmd := "L"
			if i == 0 || p.T.Sub(prev) > c.Window.Step*3/2 {
				cmd = "M"
			}
			fmt.Fprintf(&d, "%s%.1f %.1f ", cmd, x(p.T), yv(p.V))
			prev = p.T
		}
		w.printf(`<path class="backlog" data-slice="%d" d="%s" fill="none" stroke="%s" stroke-width="1.5">`, s, strings.TrimSpace(d.String()), color)
		w.printf("<title>slice %d: ready messages</title></path>\n", s)
	}
	// Slice legend for the lines, under the panel.
	lx = plotLeft
	for _, se := range ordered {
		s := sliceNum(se)
		color := sliceColors[((s%len(sliceColors))+len(sliceColors))%len(sliceColors)]
		w.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", lx, backBottom+36, lx+16, backBottom+36, color)
		w.text(lx+20, backBottom+40, "start", "", fmt.Sprintf("slice %d", s))
		lx += 74
	}
	w.printf("</g>\n")

	// Time axis under both panels, in seconds since the window's start.
	w.printf(`<g id="axis">` + "\n")
	tick := niceTick(span)
	for t := 0.0; t <= span+1e-9; t += tick {
		tx := plotLeft + t/span*plotW
		w.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999999"/>`+"\n", tx, ownBottom, tx, ownBottom+4)
		w.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999999"/>`+"\n", tx, backBottom, tx, backBottom+4)
		w.text(tx, ownBottom+16, "middle", "", strconv.FormatFloat(t, 'f', -1, 64)+" s")
		w.text(tx, backBottom+16, "middle", "", strconv.FormatFloat(t, 'f', -1, 64)+" s")
	}
	w.text(plotLeft+plotW, backBottom+58, "end", "fill=\"#555555\"", "time in seconds since "+c.Window.Start.UTC().Format("2006-01-02 15:04:05 UTC"))
	w.printf("</g>\n")

	// Marks across both panels, labels staggered on two lines above the panels.
	w.printf(`<g id="marks">` + "\n")
	for i, m := range c.Marks {
		mx := x(m.At)
		ly := marksTop - 20 + float64(i%2)*12
		w.printf(`<line class="mark" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.2" stroke-dasharray="5 3"><title>%s at %s</title></line>`+"\n",
			mx, ly+3, mx, backBottom, markColor, esc(m.Label), rel(c.Window, m.At))
		anchor := "middle"
		if mx > plotLeft+plotW-80 {
			anchor = "end"
		}
		w.text(mx, ly, anchor, "font-weight=\"bold\" fill=\""+markColor+"\"", m.Label)
	}
	w.printf("</g>\n</svg>\n")
	return w.b.Bytes()
}

// alertRows lists the names of the alerts, one row each, in order of first appearance; a row
// draws the spans of every subject of its alert (every slice, every node).
func alertRows(spans []AlertSpan) []string {
	var names []string
	for _, s := range spans {
		if !slices.Contains(names, s.Name) {
			names = append(names, s.Name)
		}
	}
	return names
}

func nodeColor(nodes []string, n string) string {
	if i := slices.Index(nodes, n); i >= 0 {
		return nodeColors[i%len(nodeColors)]
	}
	return "#7f7f7f"
}

func sliceNum(s Series) int {
	n, err := strconv.Atoi(s.Labels["slice"])
	if err != nil {
		return -1
	}
	return n
}

// rel formats t as seconds since the window's start.
func rel(w Window, t time.Time) string {
	return strconv.FormatFloat(t.Sub(w.Start).Seconds(), 'f', 1, 64) + " s"
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (at least 1).
func niceCeil(v float64) float64 {
	if v <= 1 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// niceTick picks a tick interval giving 5 to 12 ticks over span seconds.
func niceTick(span float64) float64 {
	for _, t := range []float64{1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600} {
		if span/t <= 12 {
			return t
		}
	}
	return 1800
}

type svgWriter struct{ b bytes.Buffer }

func (w *svgWriter) printf(format string, args ...any) { fmt.Fprintf(&w.b, format, args...) }

func (w *svgWriter) text(x, y float64, anchor, extra, s string) {
	if s == "" {
		return
	}
	if extra != "" {
		extra = " " + extra
	}
	w.printf(`<text x="%.1f" y="%.1f" text-anchor="%s"%s>%s</text>`+"\n", x, y, anchor, extra, esc(s))
}

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// attr escapes s for a double-quoted attribute (EscapeText escapes quotes too).
func attr(s string) string { return esc(s) }

// SVGElements counts what a picture of RenderSVG draws, read back from the document.
type SVGElements struct {
	Owned   map[int]map[string]int // slice -> node -> bars
	Backlog map[int]int            // slice -> points of its backlog line
	Alerts  map[string]int         // "alertname/state" -> spans
	Marks   int
}

// ParseSVG checks that doc is a well-formed SVG document (root element svg in the SVG
// namespace) and counts the series drawn in it.
func ParseSVG(doc []byte) (SVGElements, error) {
	els := SVGElements{Owned: map[int]map[string]int{}, Backlog: map[int]int{}, Alerts: map[string]int{}}
	d := xml.NewDecoder(bytes.NewReader(doc))
	root := true
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return els, fmt.Errorf("parse svg: %w", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if root {
			if se.Name.Local != "svg" || se.Name.Space != "http://www.w3.org/2000/svg" {
				return els, fmt.Errorf("parse svg: root element is {%s}%s, want {http://www.w3.org/2000/svg}svg", se.Name.Space, se.Name.Local)
			}
			root = false
		}
		a := map[string]string{}
		for _, at := range se.Attr {
			a[at.Name.Local] = at.Value
		}
		switch {
		case se.Name.Local == "rect" && a["class"] == "owned":
			s, err := strconv.Atoi(a["data-slice"])
			if err != nil {
				return els, fmt.Errorf("parse svg: owned bar with data-slice %q", a["data-slice"])
			}
			if els.Owned[s] == nil {
				els.Owned[s] = map[string]int{}
			}
			els.Owned[s][a["data-node"]]++
		case se.Name.Local == "path" && a["class"] == "backlog":
			s, err := strconv.Atoi(a["data-slice"])
			if err != nil {
				return els, fmt.Errorf("parse svg: backlog line with data-slice %q", a["data-slice"])
			}
			els.Backlog[s] += strings.Count(a["d"], "M") + strings.Count(a["d"], "L")
		case se.Name.Local == "rect" && a["class"] == "alert":
			els.Alerts[a["data-alert"]+"/"+a["data-state"]]++
		case se.Name.Local == "line" && a["class"] == "mark":
			els.Marks++
		}
	}
	if root {
		return els, errors.New("parse svg: empty document")
	}
	return els, nil
}
