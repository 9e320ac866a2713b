package demo

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestCheckFromPrometheus: the demo's own verdict on Prometheus' data passes a good run and
// names each broken promise.
func TestCheckFromPrometheus(t *testing.T) {
	w := Window{Start: at(0), End: at(60), Step: time.Second}
	backlog := func(skip int) []Series {
		var out []Series
		for s := 0; s < demoSlices; s++ {
			if s != skip {
				out = append(out, Series{Labels: map[string]string{"slice": fmt.Sprint(s)}, Points: pointsAt(0, 60)})
			}
		}
		return out
	}
	// n2 owns slice 1, killed at 10 s, restarted at 30 s; takenAt: another node owns it from
	// then; backAt: n2 again from then (0: never).
	report := func(takenAt, backAt int) *Report {
		own := []Series{owned("n2", 1, 0, 11)}
		end := 61
		if backAt > 0 {
			end = backAt
			own = append(own, owned("n2", 1, backAt, 61))
		}
		own = append(own, owned("n3", 1, takenAt, end))
		return &Report{Window: w, Victim: "n2", VictimSlices: []int{1}, Killed: at(10), Restarted: at(30),
			Bound: 6 * time.Second, Ownership: OwnershipSegments(own, demoSlices, w)}
	}
	cases := []struct {
		name    string
		rep     *Report
		skip    int
		problem string // "" for none
	}{
		{"good run", report(14, 36), -1, ""},
		{"taken over too late", report(19, 36), -1, "not owned by another node within 8s"},
		{"never back", report(14, 0), -1, "never owned by n2 again"},
		{"a slice without backlog", report(14, 36), 5, "no backlog series for slice 5"},
	}
	for _, c := range cases {
		checkFromPrometheus(c.rep, backlog(c.skip))
		got := strings.Join(c.rep.Problems, "; ")
		if c.problem == "" && got != "" || c.problem != "" && !strings.Contains(got, c.problem) {
			t.Errorf("%s: problems %q, want %q", c.name, got, c.problem)
		}
	}
	// Not the victim's just before the kill.
	rep := report(14, 36)
	rep.Victim = "n1"
	checkFromPrometheus(rep, backlog(-1))
	if len(rep.Problems) == 0 || !strings.Contains(rep.Problems[0], "just before the kill") {
		t.Errorf("wrong victim: %q", rep.Problems)
	}
}
