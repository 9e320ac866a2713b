package dashboards

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// ruleRunbooks returns each alert's runbook_url (an alert with several severities has one).
func ruleRunbooks(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range loadRules(t, rulesFile).Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out[r.Alert] = r.Annotations["runbook_url"]
			}
		}
	}
	return out
}

// TestPanelsLinkTheirRunbooks: every alerting panel (panelAlerts) links to the runbook section
// of each of its alerts, each link is its rule's runbook_url and its anchor is a heading of
// docs/runbooks.md, and every alert of the rules is linked from at least one panel.
func TestPanelsLinkTheirRunbooks(t *testing.T) {
	runbooks := ruleRunbooks(t)
	anchors := markdownAnchors(t, runbooksFile)
	linked := map[string]bool{}
	byUID := map[string]jsonDashboard{}
	for file, d := range loadDashboards(t) {
		byUID[d.UID] = d
		for _, p := range flatPanels(d.Panels) {
			for _, l := range p.Links {
				where := fmt.Sprintf("%s: panel %q: link %q", file, p.Title, l.Title)
				alert, ok := strings.CutPrefix(l.Title, "Runbook: ")
				if !ok {
					continue
				}
				want, ok := runbooks[alert]
				if !ok {
					t.Errorf("%s: no alert %s in %s", where, alert, rulesFile)
					continue
				}
				if l.URL != want {
					t.Errorf("%s: url %s, want the rule's runbook_url %s", where, l.URL, want)
				}
				_, anchor, _ := strings.Cut(l.URL, "#")
				if !anchors[anchor] {
					t.Errorf("%s: anchor #%s is not a heading of %s", where, anchor, runbooksFile)
				}
				linked[alert] = true
			}
		}
	}
	for uid, panels := range panelAlerts {
		d, ok := byUID[uid]
		if !ok {
			t.Errorf("panelAlerts: no dashboard %s", uid)
			continue
		}
		for title, alerts := range panels {
			i := slices.IndexFunc(d.Panels, func(p jsonPanel) bool { return p.Title == title })
			if i < 0 {
				t.Errorf("%s: no panel %q", uid, title)
				continue
			}
			for _, a := range alerts {
				if !slices.ContainsFunc(d.Panels[i].Links, func(l jsonLink) bool { return l.Title == "Runbook: "+a }) {
					t.Errorf("%s: panel %q has no runbook link for %s", uid, title, a)
				}
			}
		}
	}
	for alert := range runbooks {
		if !linked[alert] {
			t.Errorf("alert %s: no panel links to its runbook (add it to panelAlerts)", alert)
		}
	}
}

// ruleThreshold returns the number an alert of the given severity compares metric with
// ("metric > N", the first such comparison of its expression).
func ruleThreshold(t *testing.T, alert, severity, metric string) float64 {
	t.Helper()
	re := regexp.MustCompile(regexp.QuoteMeta(metric) + `\s*>\s*([0-9.]+)`)
	for _, g := range loadRules(t, rulesFile).Groups {
		for _, r := range g.Rules {
			if r.Alert != alert || r.Labels["severity"] != severity {
				continue
			}
			m := re.FindStringSubmatch(r.Expr)
			if m == nil {
				t.Fatalf("%s (%s): expression has no %q > N: %s", alert, severity, metric, r.Expr)
			}
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				t.Fatalf("%s (%s): threshold %q: %v", alert, severity, m[1], err)
			}
			return v
		}
	}
	t.Fatalf("no alert %s with severity %s in %s", alert, severity, rulesFile)
	return 0
}

// TestPanelThresholdsMatchRules: the thresholds the queue panels draw are the alert rules'
// thresholds, and the Go constants the panels use equal the rules' numbers.
func TestPanelThresholdsMatchRules(t *testing.T) {
	const age = "job_queue_slice:qslice_queue_oldest_ready_age_seconds:max"
	const ready = "job_queue_slice:qslice_queue_ready_messages:max"
	ageWarn := ruleThreshold(t, "QsliceSliceBacklogOld", "warning", age)
	ageCrit := ruleThreshold(t, "QsliceSliceBacklogOld", "critical", age)
	behind := ruleThreshold(t, "QsliceSliceFallingBehind", "warning", ready)
	for _, c := range []struct {
		name        string
		got, inRule float64
	}{
		{"backlogOldWarningSeconds", backlogOldWarningSeconds, ageWarn},
		{"backlogOldCriticalSeconds", backlogOldCriticalSeconds, ageCrit},
		{"fallingBehindReady", fallingBehindReady, behind},
	} {
		if c.got != c.inRule {
			t.Errorf("%s = %v, but the rule says %v", c.name, c.got, c.inRule)
		}
	}
	want := map[string]map[string][]float64{
		"qslice-overview": {"Oldest ready message": {ageWarn, ageCrit}},
		"qslice-queues": {
			"Oldest ready message":          {ageWarn, ageCrit},
			"Oldest ready message by slice": {ageWarn, ageCrit},
			"Ready messages by slice":       {behind},
		},
	}
	for _, d := range loadDashboards(t) {
		for title, steps := range want[d.UID] {
			i := slices.IndexFunc(d.Panels, func(p jsonPanel) bool { return p.Title == title })
			if i < 0 {
				t.Errorf("%s: no panel %q", d.UID, title)
				continue
			}
			var got []float64
			if th := d.Panels[i].FieldConfig.Defaults.Thresholds; th != nil {
				for _, s := range th.Steps {
					if s.Value != nil {
						got = append(got, *s.Value)
					}
				}
			}
			if !slices.Equal(got, steps) {
				t.Errorf("%s: panel %q thresholds %v, want the rules' %v", d.UID, title, got, steps)
			}
		}
		delete(want, d.UID)
	}
	for uid := range want {
		t.Errorf("no dashboard %s", uid)
	}
}

// TestFailoverAnnotations: every dashboard marks unplanned ownership changes, from
// qslice_ownership_changes_total, on the datasource variable, with reasons that the metric
// documents. (allQueries checks that the metric exists on a real agent.)
func TestFailoverAnnotations(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for _, l := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(l, "| `qslice_ownership_changes_total`") {
			row = l
		}
	}
	if row == "" {
		t.Fatal("docs/metrics.md has no row for qslice_ownership_changes_total")
	}
	for _, r := range strings.Split(failoverReasons, "|") {
		if !strings.Contains(row, "`"+r+"`") {
			t.Errorf("failover reason %q is not a documented reason of qslice_ownership_changes_total", r)
		}
	}
	wantDS := "${" + DatasourceVar + "}"
	for file, d := range loadDashboards(t) {
		i := slices.IndexFunc(d.Annotations.List, func(a jsonAnnotation) bool { return a.Name == "Failovers" })
		if i < 0 {
			t.Errorf("%s: no Failovers annotation", file)
			continue
		}
		a := d.Annotations.List[i]
		if !a.Enable || a.Datasource == nil || a.Datasource.UID != wantDS {
			t.Errorf("%s: Failovers annotation disabled or not on %s: %+v", file, wantDS, a)
		}
		names, err := metricNames(a.Expr)
		if err != nil || !slices.Equal(names, []string{"qslice_ownership_changes_total"}) {
			t.Errorf("%s: Failovers annotation selects %v (%v), want qslice_ownership_changes_total: %s", file, names, err, a.Expr)
		}
		if !strings.Contains(a.Expr, `reason=~"`+failoverReasons+`"`) {
			t.Errorf("%s: Failovers annotation does not select the failover reasons: %s", file, a.Expr)
		}
	}
}
