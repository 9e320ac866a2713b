package demo

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestScaleRules: on the shipped rules, every alert's for: is divided (at least 1s) and nothing
// else changes.
func TestScaleRules(t *testing.T) {
	text, err := os.ReadFile(filepath.Join("..", "..", "dashboards", "rules", "qslice-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	type rule struct {
		Alert, Record, Expr, For string
		Labels, Annotations      map[string]string
	}
	type file struct {
		Groups []struct {
			Name  string
			Rules []rule
		}
	}
	parse := func(b []byte) file {
		var f file
		if err := yaml.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	same, err := ScaleRules(text, 1)
	if err != nil || string(same) != string(text) {
		t.Fatalf("divisor 1 changed the rules (err %v)", err)
	}
	scaled, err := ScaleRules(text, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"2m": "12s", "5m": "30s", "1m": "6s", "15m": "1m30s", "30m": "3m", "10m": "1m", "1h": "6m"}
	orig, got := parse(text), parse(scaled)
	n := 0
	for gi, g := range orig.Groups {
		for ri, r := range g.Rules {
			s := got.Groups[gi].Rules[ri]
			if r.For != "" {
				n++
				if w, ok := want[r.For]; !ok || s.For != w {
					t.Errorf("%s: for %s became %s, want %s", r.Alert, r.For, s.For, w)
				}
			}
			s.For, r.For = "", ""
			if r.Alert+r.Record+r.Expr != s.Alert+s.Record+s.Expr || !maps.Equal(r.Labels, s.Labels) || !maps.Equal(r.Annotations, s.Annotations) {
				t.Errorf("rule %s%s changed beyond its for:", r.Alert, r.Record)
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d alerts with a for: in the shipped rules", n)
	}
	if _, err := ScaleRules([]byte("groups: [{name: g, rules: [{alert: A, expr: up, for: soon}]}]"), 10); err == nil || !strings.Contains(err.Error(), "for:") {
		t.Errorf("a bad for: gave %v", err)
	}
}
