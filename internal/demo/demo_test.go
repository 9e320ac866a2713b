//go:build linux

package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/consultest"
)

// TestDemoShort runs `scripts/demo.sh --short` (the one command the README gives) with the real
// Consul, Prometheus and qslice binaries and checks what the demo promises, from its report
// (Prometheus' range data and the nodes' status) and its picture:
//   - each slice of the killed node was owned by it just before the kill, then by another node
//     alone within the documented failover bound (TTL + lock-delay + 3 s; plus two scrape steps
//     in Prometheus' data), and by it alone again after its restart, not before the hold-down,
//     until the end;
//   - QsliceNodeDown fired for the killed node, while QsliceSliceUnowned (the takeover is
//     faster than its for:) and QsliceSliceOwnedTwice (ownership is exclusive) did not;
//   - every message enqueued was handled;
//   - the picture is a valid SVG with every slice's ownership bars, every slice's backlog line,
//     the firing alert and the three marks (kill, restart, fail-back).
func TestDemoShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds qslice and runs the demo (about a minute); skipped with -short")
	}
	consul, err := consultest.Binary()
	if err != nil {
		if os.Getenv(consultest.EnvBinary) != "" {
			t.Fatal(err) // set but wrong: a broken set-up, not a missing part
		}
		t.Skip(err.Error())
	}
	prom := os.Getenv("QSLICE_PROMETHEUS")
	if prom == "" {
		if prom, err = exec.LookPath("prometheus"); err != nil {
			t.Skipf("prometheus not found (%v): install the Debian package prometheus (listed in .ci/apt-packages.txt; CI has it), or set QSLICE_PROMETHEUS", err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	out := t.TempDir()
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "demo.sh"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, script, "--short", "--out", out)
	cmd.Env = append(os.Environ(), "QSLICE_CONSUL="+consul, "QSLICE_PROMETHEUS="+prom, "TMPDIR="+t.TempDir(),
		"PATH="+filepath.Join(runtime.GOROOT(), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	// A session of its own: the script's trap stops what it started; whatever is left when the
	// test ends is killed with the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stdout
	began := time.Now()
	err = cmd.Run()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	t.Logf("scripts/demo.sh --short took %s", time.Since(began).Round(time.Second))
	if err != nil {
		t.Fatalf("scripts/demo.sh --short: %v\n%s", err, stdout.String())
	}
	text := stdout.String()

	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatalf("report: %v\n%s", err, text)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		t.Errorf("the demo reports problems: %q", rep.Problems)
	}
	t.Logf("%s killed: slices %v taken over after %v, back after %v (bound %s, hold-down %s); fired: %q",
		rep.Victim, rep.VictimSlices, rep.Takeover, rep.Failback, rep.Bound, rep.HoldDown, rep.Fired)
	if rep.Victim == "" || len(rep.VictimSlices) == 0 || len(rep.Ownership) != demoSlices {
		t.Fatalf("report: victim %q with slices %v, ownership of %d slices\n%s", rep.Victim, rep.VictimSlices, len(rep.Ownership), text)
	}
	if !rep.Short || rep.Bound != rep.TTL+rep.LockDelay+3*time.Second {
		t.Errorf("report: short %t, bound %s for TTL %s and lock-delay %s", rep.Short, rep.Bound, rep.TTL, rep.LockDelay)
	}
	step := rep.Window.Step
	victim := func(n string) bool { return n == rep.Victim }
	other := func(n string) bool { return n != rep.Victim }
	for _, s := range rep.VictimSlices {
		segs := rep.Ownership[s]
		if o := OwnersAt(segs, rep.Killed.Add(-step)); !slices.Equal(o, []string{rep.Victim}) {
			t.Errorf("slice %d: owners %v just before the kill, want %s", s, o, rep.Victim)
		}
		if d, ok := rep.Takeover[s]; !ok || d > rep.Bound {
			t.Errorf("slice %d: processed elsewhere after %s by the nodes' status (found: %t), bound %s", s, d, ok, rep.Bound)
		}
		at, ok := FirstSoleOwner(segs, rep.Killed, other)
		if !ok || at.Sub(rep.Killed) > rep.Bound+2*step {
			t.Errorf("slice %d: in Prometheus' data owned by another node at %v (found: %t), %s after the kill; bound %s + 2 steps",
				s, at, ok, at.Sub(rep.Killed), rep.Bound)
		}
		if o := OwnersAt(segs, rep.Restarted.Add(-step)); slices.Contains(o, rep.Victim) {
			t.Errorf("slice %d: owned by %v while %s was down", s, o, rep.Victim)
		}
		if d, ok := rep.Failback[s]; !ok || d < rep.HoldDown {
			t.Errorf("slice %d: back on %s after %s of its restart (found: %t), hold-down %s", s, rep.Victim, d, ok, rep.HoldDown)
		}
		back, ok := FirstSoleOwner(segs, rep.Restarted, victim)
		if !ok || back.Before(rep.Restarted.Add(rep.HoldDown-step)) {
			t.Errorf("slice %d: in Prometheus' data back on %s at %v (found: %t), restarted at %v, hold-down %s", s, rep.Victim, back, ok, rep.Restarted, rep.HoldDown)
		}
		if last := segs[len(segs)-1]; last.Owner() != rep.Victim {
			t.Errorf("slice %d: owned by %v at the end, want %s", s, last.Owners, rep.Victim)
		}
	}
	for s, segs := range rep.Ownership {
		if slices.Contains(rep.VictimSlices, s) {
			continue
		}
		// Only the killed node's slices move (rendezvous hashing). A step without an owner
		// can be a missed scrape of a loaded machine: not counted.
		owners := map[string]bool{}
		for _, seg := range segs {
			for _, o := range seg.Owners {
				owners[o] = true
			}
		}
		if len(owners) != 1 || owners[rep.Victim] {
			t.Errorf("slice %d of a surviving node: owned by %v over the run, want one node that is not %s", s, owners, rep.Victim)
		}
	}
	firedFor := func(alert string) []string {
		var subjects []string
		for _, a := range rep.Alerts {
			if a.Name == alert && a.State == "firing" {
				subjects = append(subjects, a.Labels["instance"])
			}
		}
		return subjects
	}
	if got := firedFor("QsliceNodeDown"); len(got) != 1 {
		t.Errorf("QsliceNodeDown fired for %v, want once, for %s", got, rep.Victim)
	}
	for _, a := range []string{"QsliceSliceUnowned", "QsliceSliceOwnedTwice"} {
		if got := firedFor(a); len(got) > 0 {
			t.Errorf("%s fired: %v", a, got)
		}
	}
	if rep.Enqueued == 0 || rep.Handled != rep.Enqueued {
		t.Errorf("messages: %d enqueued, %d handled", rep.Enqueued, rep.Handled)
	}
	if !strings.Contains(text, "DOWN") || !strings.Contains(text, "kill -9 "+rep.Victim) {
		t.Errorf("the narration does not show the kill and the node down:\n%s", text)
	}

	svg, err := os.ReadFile(filepath.Join(out, PictureName))
	if err != nil {
		t.Fatal(err)
	}
	els, err := ParseSVG(svg)
	if err != nil {
		t.Fatal(err)
	}
	for s := 0; s < demoSlices; s++ {
		if len(els.Owned[s]) == 0 {
			t.Errorf("picture: no ownership bar for slice %d", s)
		}
		if els.Backlog[s] < 10 {
			t.Errorf("picture: the backlog line of slice %d has %d points", s, els.Backlog[s])
		}
	}
	for _, s := range rep.VictimSlices {
		if els.Owned[s][rep.Victim] < 2 || len(els.Owned[s]) < 2 {
			t.Errorf("picture: slice %d bars by node %v; want %s before and after, and another node between", s, els.Owned[s], rep.Victim)
		}
	}
	if els.Alerts["QsliceNodeDown/firing"] == 0 || els.Marks != 3 {
		t.Errorf("picture: alerts %v, %d marks; want QsliceNodeDown firing and 3 marks", els.Alerts, els.Marks)
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
}
