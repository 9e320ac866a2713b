package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/queuetest"
)

var statsT0 = time.Unix(1700000000, 0)

func statsWriteFile(t *testing.T, dir, name string, size int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
}

// statsQueue lays out queue/in (4 slices) with shunt and bad siblings and returns its path.
func statsQueue(t *testing.T) string {
	root := t.TempDir()
	in := filepath.Join(root, "queue", "in")
	statsWriteFile(t, in, "1699999899.5+"+queuetest.DigestIn(0, 4, 0)+".pck", 10)
	statsWriteFile(t, in, "1699999950.0+"+queuetest.DigestIn(0, 4, 1)+".pck", 20)
	statsWriteFile(t, in, "1699996400.0+"+queuetest.DigestIn(3, 4, 0)+".pck", 2048)
	statsWriteFile(t, in, "README", 1)
	statsWriteFile(t, filepath.Join(root, "queue", "shunt"), "1699990000.0+"+queuetest.DigestIn(0, 4, 0)+".pck", 1)
	os.MkdirAll(filepath.Join(root, "queue", "bad"), 0o755)
	return in
}

func TestQueueStatsJSON(t *testing.T) {
	dir := statsQueue(t)
	var out bytes.Buffer
	err := runQueueStats(context.Background(), &out, dir, queueStatsOptions{slices: 4, json: true, clock: clock.NewFake(statsT0)})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for k, want := range map[string]any{"dir": dir, "slices": 4.0, "ready": 3.0, "ignored": 1.0, "shunt": 1.0, "bad": 0.0, "bytes": 2078.0} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	per := got["per_slice"].([]any)
	if len(per) != 4 {
		t.Fatalf("per_slice has %d entries", len(per))
	}
	want := []map[string]any{
		{"slice": 0.0, "ready": 2.0, "bytes": 30.0, "oldest_age_seconds": 100.5, "in_flight": 0.0, "oldest_in_flight_age_seconds": 0.0},
		{"slice": 1.0, "ready": 0.0, "bytes": 0.0, "oldest_age_seconds": 0.0, "in_flight": 0.0, "oldest_in_flight_age_seconds": 0.0},
		{"slice": 2.0, "ready": 0.0, "bytes": 0.0, "oldest_age_seconds": 0.0, "in_flight": 0.0, "oldest_in_flight_age_seconds": 0.0},
		{"slice": 3.0, "ready": 1.0, "bytes": 2048.0, "oldest_age_seconds": 3600.0, "in_flight": 0.0, "oldest_in_flight_age_seconds": 0.0},
	}
	for i, w := range want {
		s := per[i].(map[string]any)
		for k, v := range w {
			if s[k] != v {
				t.Errorf("per_slice[%d].%s = %v, want %v", i, k, s[k], v)
			}
		}
	}
}

func TestQueueStatsTable(t *testing.T) {
	dir := statsQueue(t)
	var out bytes.Buffer
	if err := runQueueStats(context.Background(), &out, dir, queueStatsOptions{slices: 4, clock: clock.NewFake(statsT0)}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	// Header, four slices and the total, right-aligned in columns of equal width.
	var table []string
	for _, l := range lines {
		if strings.Contains(l, "READY") || strings.HasPrefix(strings.TrimSpace(l), "total") ||
			len(strings.Fields(l)) >= 6 && strings.Trim(strings.Fields(l)[0], "0123456789") == "" {
			table = append(table, l)
		}
	}
	if len(table) != 6 {
		t.Fatalf("table rows:\n%s\nfull output:\n%s", strings.Join(table, "\n"), out.String())
	}
	for _, l := range table[1:] {
		if len(l) != len(table[0]) {
			t.Errorf("row %q is not aligned with the header %q", l, table[0])
		}
	}
	for _, want := range []string{"1m40s", "1h00m", "2.0 KiB", "shunt 1", "bad 0", "1 ignored entries (README)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	runQueueStats(context.Background(), &out, dir, queueStatsOptions{slices: 4, nonEmpty: true, noBytes: true, clock: clock.NewFake(statsT0)})
	if !strings.Contains(out.String(), "2 empty slices not shown") {
		t.Errorf("--non-empty:\n%s", out.String())
	}
}

// The cobra command parses its flags and arguments, and errors name the directory and the remedy.
func TestQueueStatsCommand(t *testing.T) {
	dir := statsQueue(t)
	run := func(args ...string) (string, error) {
		cmd := newQueueStatsCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(args)
		err := cmd.ExecuteContext(context.Background())
		return out.String(), err
	}
	out, err := run(dir, "--slices", "4", "--json", "--no-bytes")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Ready    int `json:"ready"`
		PerSlice []struct {
			Bytes *int64 `json:"bytes"`
		} `json:"per_slice"`
		Bytes *int64 `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Ready != 3 || got.Bytes != nil || got.PerSlice[0].Bytes != nil {
		t.Errorf("--no-bytes JSON: %v %+v\n%s", err, got, out)
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{filepath.Join(dir, "nope"), "--slices", "4"}, []string{"nope", "no such file", "check the path"}},
		{[]string{dir, "--slices", "0"}, []string{"--slices", "between 1 and 65536"}},
		{[]string{dir, "--slices", "65537"}, []string{"between 1 and 65536"}},
		{[]string{filepath.Join(dir, "README"), "--slices", "1"}, []string{"README", "not a directory"}},
		{[]string{}, []string{"accepts 1 arg"}},
	} {
		_, err := run(c.args...)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %v, want it to contain %q", c.args, err, w)
			}
		}
	}
	if _, err := run(dir, "--slices", "65536", "--json"); err != nil {
		t.Errorf("65536 slices: %v", err)
	}
}

func TestFormatAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 59 * time.Second: "59s", 100 * time.Second: "1m40s", time.Hour: "1h00m",
		26 * time.Hour: "1d02h", 1500 * time.Millisecond: "1s",
	} {
		if got := formatAge(d, true); got != want {
			t.Errorf("formatAge(%v) = %q, want %q", d, got, want)
		}
	}
	if formatAge(0, false) != "-" {
		t.Error("formatAge of nothing")
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// With --config, `queue stats` and `queue ls` take a queue name and find its directory, slice
// count, shunt and bad directories in the configuration: the same answer as the long form.
func TestQueueStatsAndLsByConfigQueue(t *testing.T) {
	in := statsQueue(t)
	cfg := writeConfig(t, t.TempDir(), "queues:\n  - {name: in, dir: "+in+", slices: 4, handler: {exec: [cat]}}\n")
	_, byDir, _ := runCLI(t, "", "queue", "stats", in, "--slices", "4", "--json")
	code, byName, stderr := runCLI(t, "", "queue", "stats", "--config", cfg, "in", "--json")
	if code != 0 {
		t.Fatalf("stats --config: exit %d: %s", code, stderr)
	}
	var a, b queueStatsJSON
	if err := json.Unmarshal([]byte(byDir), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(byName), &b); err != nil {
		t.Fatal(err)
	}
	if b.Slices != 4 || b.Ready != 3 || b.Shunt == nil || *b.Shunt != 1 || len(b.PerSlice) != 4 || b.PerSlice[3].Ready != 1 ||
		a.Ready != b.Ready || *a.Shunt != *b.Shunt {
		t.Errorf("stats by name %+v, by dir %+v", b, a)
	}
	code, out, stderr := runCLI(t, "", "queue", "ls", "--config", cfg, "in", "--json")
	var ls []lsEntry
	if code != 0 || json.Unmarshal([]byte(out), &ls) != nil || len(ls) != 3 {
		t.Fatalf("ls --config: exit %d %s %s", code, out, stderr)
	}
	for _, e := range ls {
		if e.Slice == nil {
			t.Errorf("ls --config: %s without its slice", e.Name)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"queue", "stats", "--config", cfg, "out"}, `has no queue "out"; its queues: in`},
		{[]string{"queue", "ls", "--config", cfg, "in", "--slices", "2"}, "--slices 2, but queue in has slices: 4"},
		{[]string{"queue", "stats", "--config", filepath.Join(t.TempDir(), "none.yaml"), "in"}, "no such file"},
	} {
		code, _, stderr := runCLI(t, "", c.args...)
		if code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, stderr, c.want)
		}
	}
}

// `queue show` decodes Mailman's own pickled queue files instead of calling them corrupt.
func TestQueueShowMailmanPickle(t *testing.T) {
	files, _ := filepath.Glob("../../runner/queue/testdata/mailman/*.pck")
	if len(files) == 0 {
		t.Fatal("no Mailman queue files in runner/queue/testdata/mailman")
	}
	for _, f := range files {
		code, out, stderr := runCLI(t, "", "queue", "show", f)
		var got struct {
			Format   string
			ListID   string `json:"list_id"`
			Headers  [][2]string
			Metadata map[string]any
		}
		if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
			t.Fatalf("%s: exit %d %s %s", f, code, out, stderr)
		}
		if got.Format != "mailman pickle" || got.ListID != "test.example.com" || len(got.Headers) != 3 ||
			got.Headers[2] != [2]string{"Subject", "hi"} || got.Metadata["version"] != 3.0 {
			t.Errorf("%s: %+v", f, got)
		}
		if code, body, _ := runCLI(t, "", "queue", "show", "--body", f); code != 0 || body != "body\n" {
			t.Errorf("%s --body: exit %d %q", f, code, body)
		}
	}
	junk := filepath.Join(t.TempDir(), "1700000000.0+"+queuetest.DigestIn(0, 1, 0)+".pck")
	os.WriteFile(junk, []byte("\x00junk"), 0o644)
	if code, _, stderr := runCLI(t, "", "queue", "show", junk); code != exitFailure || !strings.Contains(stderr, "neither qslice's format") {
		t.Errorf("junk: exit %d %s", code, stderr)
	}
}
