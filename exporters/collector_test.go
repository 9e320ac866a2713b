package exporters

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"github.com/qslice/qslice/runner/worker"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/queuetest"
	"github.com/qslice/qslice/internal/testenv"
	"github.com/qslice/qslice/probes"
	"github.com/qslice/qslice/runner/lockfile"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// t0 is the tests' "now": 2023-11-14T22:13:20Z.
var t0 = time.Unix(1700000000, 0)

func writeFile(t testing.TB, dir, name string, size int, mtime ...time.Time) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, m := range mtime {
		if err := os.Chtimes(p, m, m); err != nil {
			t.Fatal(err)
		}
	}
}

type ownership map[string][]int

func (o ownership) Owned() map[string][]int { return o }

type coordinator CoordinatorStatus

func (c coordinator) Status() CoordinatorStatus { return CoordinatorStatus(c) }

// fixture lays out a small Mailman-like site under root and scans it once with the clock at t0.
//
//	queue/in    4 slices: ready messages in slices 0, 1, 3 (fixed names and sizes), one in flight in 2
//	queue/out   1 slice, empty, probed without bytes, sharing shunt and bad with in
//	queue/big   2000 slices (above MaxSliceLabels): exported with slice="all"
//	queue/gone  missing: a failed scan
//	locks/      a lock held elsewhere with a waiter and an orphaned claim; an expired Mailman 2.1 lock
//
// The in-flight file's claim time (ctime) is real, hence after t0: its age is clamped to 0 here;
// TestCollectorInFlightAge checks a real age.
func fixture(t *testing.T) *probes.Probe {
	root := t.TempDir()
	in := filepath.Join(root, "queue", "in")
	writeFile(t, in, "1699999899.5+"+queuetest.DigestIn(0, 4, 0)+".pck", 10)
	writeFile(t, in, "1699999950.0+"+queuetest.DigestIn(0, 4, 1)+".pck", 20)
	writeFile(t, in, "1699999960.0+"+queuetest.DigestIn(1, 4, 0)+".pck", 300)
	writeFile(t, in, "1699999000.0+"+queuetest.DigestIn(2, 4, 7)+".bak", 5)
	writeFile(t, in, "1699996400.0+"+queuetest.DigestIn(3, 4, 0)+".pck", 1)
	writeFile(t, in, "1699999999.0+"+queuetest.DigestIn(3, 4, 2)+".pck.tmp", 1)
	writeFile(t, in, "README", 1)
	shunt := filepath.Join(root, "queue", "shunt")
	writeFile(t, shunt, "1699990000.0+"+queuetest.DigestIn(0, 4, 0)+".pck", 1)
	bad := filepath.Join(root, "queue", "bad")
	writeFile(t, bad, "1699990000.0+"+queuetest.DigestIn(0, 4, 0)+".psv", 1)
	writeFile(t, bad, "1699990001.0+"+queuetest.DigestIn(1, 4, 0)+".psv", 1)
	out := filepath.Join(root, "queue", "out")
	os.MkdirAll(out, 0o755)
	big := filepath.Join(root, "queue", "big")
	writeFile(t, big, "1699999000.0+"+queuetest.DigestIn(5, 2000, 0)+".pck", 7)
	writeFile(t, big, "1699999500.0+"+queuetest.DigestIn(1999, 2000, 0)+".pck", 7)

	locks := filepath.Join(root, "locks")
	host, _ := os.Hostname()
	l, err := lockfile.New(filepath.Join(locks, "list1.lock"), lockfile.Options{Host: "web2.example.com", Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(locks, 0o755)
	if _, err := l.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The expiry is the lock file's mtime: pin it relative to t0.
	os.Chtimes(filepath.Join(locks, "list1.lock"), t0.Add(time.Hour), t0.Add(time.Hour))
	waiter := filepath.Join(locks, "list1.lock|web3.example.com|4242|1")
	os.WriteFile(waiter, []byte(waiter), 0o644)
	os.Chtimes(waiter, t0.Add(15*time.Second), t0.Add(15*time.Second))
	dead := exec.Command("true")
	dead.Run()
	orphan := filepath.Join(locks, fmt.Sprintf("list1.lock|%s|%d|2", host, dead.Process.Pid))
	os.WriteFile(orphan, []byte(orphan), 0o644)
	os.Chtimes(orphan, t0.Add(15*time.Second), t0.Add(15*time.Second))
	l2, err := lockfile.New(filepath.Join(locks, "list2.lock"), lockfile.Options{Host: "mm21", Naming: lockfile.Mailman21})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(filepath.Join(locks, "list2.lock"), t0.Add(-time.Minute), t0.Add(-time.Minute))

	p, err := probes.New(probes.Config{
		Queues: []probes.QueueConfig{
			{Name: "in", Dir: in, Slices: 4, ShuntDir: shunt, BadDir: bad},
			{Name: "out", Dir: out, Slices: 1, ShuntDir: shunt, BadDir: bad, NoBytes: true},
			{Name: "big", Dir: big, Slices: 2000},
			{Name: "gone", Dir: filepath.Join(root, "queue", "gone"), Slices: 2},
		},
		LockDirs: []probes.LockDirConfig{{Name: "mailman", Dir: locks,
			Inspect: lockfile.InspectOptions{LocalHosts: []string{host}}}},
		Clock: clock.NewFake(t0),
	})
	if err != nil {
		t.Fatal(err)
	}
	p.ScanOnce(context.Background())
	return p
}

func fixtureCollector(p *probes.Probe) *Collector {
	return NewCollector(CollectorOptions{
		Probe:     p,
		Ownership: ownership{"in": {0, 2}, "out": {0}, "big": {1, 2, 3}, "unknown": {1}},
		Coordinator: coordinator{
			LeaseValid:       true,
			LeaseRemaining:   12500 * time.Millisecond,
			ConsulErrors:     map[string]uint64{failover.OpSessionInfo.String(): 3, failover.OpAcquire.String(): 1},
			OwnershipChanges: map[string]uint64{failover.ReasonAcquired: 3, failover.ReasonFailover: 2},
			Owners: []SliceOwner{
				{"in", 0, "node-a"}, {"in", 1, "node-b"}, {"in", 2, "node-a"}, {"in", 3, "node-b"},
				{"in", 3, "node-c"},   // a second report for one slice: ignored
				{"in", 4, "node-a"},   // out of range: ignored
				{"nope", 0, "node-a"}, // not configured: ignored
				{"out", 0, ""},        // no owner
			},
		},
	})
}

// compareGolden compares the collector's output for names with testdata/name, or rewrites it.
func compareGolden(t *testing.T, c prometheus.Collector, file string, names ...string) {
	t.Helper()
	path := filepath.Join("testdata", file)
	if *update {
		got, err := testutil.CollectAndFormat(c, expfmt.TypeTextPlain, names...)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if err := testutil.CollectAndCompare(c, bytes.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestCollectorGolden(t *testing.T) {
	c := fixtureCollector(fixture(t))
	// Every metric except the scan durations, which a fixed clock makes 0 but whose presence
	// is checked below.
	var names []string
	for _, d := range allDescs {
		n := descName(d)
		if !strings.HasSuffix(n, "_scan_duration_seconds") {
			names = append(names, n)
		}
	}
	compareGolden(t, c, "collector.prom", names...)
	if n := testutil.CollectAndCount(c, "qslice_queue_scan_duration_seconds", "qslice_lock_scan_duration_seconds"); n != 5 {
		t.Errorf("%d scan duration series, want 5 (4 queues, 1 lock dir)", n)
	}
}

func TestCollectorLint(t *testing.T) {
	c := fixtureCollector(fixture(t))
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	reg := prometheus.NewPedanticRegistry()
	if _, err := NewRunnerMetrics(reg, []string{"in"}); err != nil {
		t.Fatal(err)
	}
	problems, err = testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// descName extracts fqName from a Desc's String().
func descName(d *prometheus.Desc) string {
	s := d.String()
	i := strings.Index(s, `fqName: "`) + len(`fqName: "`)
	return s[i : i+strings.IndexByte(s[i:], '"')]
}

func TestCollectorInFlightAge(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "1699999000.0+"+queuetest.DigestIn(1, 2, 0)+".bak", 1)
	now := testenv.FileCtime(t, filepath.Join(dir, "1699999000.0+"+queuetest.DigestIn(1, 2, 0)+".bak")).Add(90 * time.Second)
	p, err := probes.New(probes.Config{Queues: []probes.QueueConfig{{Name: "q", Dir: dir, Slices: 2}}, Clock: clock.NewFake(now)})
	if err != nil {
		t.Fatal(err)
	}
	p.ScanOnce(context.Background())
	want := `# HELP qslice_queue_oldest_in_flight_age_seconds How long the oldest in-flight message had been claimed (since its rename), at the last successful scan; 0 when none.
# TYPE qslice_queue_oldest_in_flight_age_seconds gauge
qslice_queue_oldest_in_flight_age_seconds{queue="q",slice="0"} 0
qslice_queue_oldest_in_flight_age_seconds{queue="q",slice="1"} 90
`
	c := NewCollector(CollectorOptions{Probe: p})
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "qslice_queue_oldest_in_flight_age_seconds"); err != nil {
		t.Error(err)
	}
}

func TestCollectorWithoutSources(t *testing.T) {
	p, _ := probes.New(probes.Config{})
	for _, c := range []*Collector{NewCollector(CollectorOptions{}), NewCollector(CollectorOptions{Probe: p})} {
		if n := testutil.CollectAndCount(c); n != 0 {
			t.Errorf("%d metrics without sources or before the first scan, want 0", n)
		}
	}
}

func TestLabelCap(t *testing.T) {
	var c labelCap
	for i := range 100 {
		c.value(fmt.Sprint("op", i))
	}
	if got := c.value("op0"); got != "op0" {
		t.Errorf("first value = %q", got)
	}
	if got := c.value("op99"); got != OtherLabel {
		t.Errorf("value beyond the cap = %q, want %q", got, OtherLabel)
	}
	m := map[string]uint64{}
	for i := range 40 {
		m[fmt.Sprintf("reason%02d", i)] = 1
	}
	var c2 labelCap
	got := capCounts(&c2, m)
	if len(got) != MaxEnumLabels || got[OtherLabel] != 40-(MaxEnumLabels-1) {
		t.Errorf("capCounts: %d keys, other = %d", len(got), got[OtherLabel])
	}
}

// docs/metrics.md lists every metric this package defines.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range allDescs {
		names = append(names, descName(d))
	}
	// Every family a component registers, whether or not it has a series yet (a vector without
	// label values gathers nothing): its descriptors say what it can export.
	rec := &recordingRegisterer{Registerer: prometheus.NewRegistry()}
	if _, err := NewRunnerMetrics(rec, []string{"q"}); err != nil {
		t.Fatal(err)
	}
	if _, err := worker.NewMetrics(rec, []string{"q"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range rec.collectors {
		names = append(names, collectorNames(c)...)
	}
	mfs, err := NewRegistry("v", "abc123").Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "qslice_") {
			names = append(names, mf.GetName())
		}
	}
	if len(names) < len(allDescs)+10 {
		t.Fatalf("only %d metric names found: the test no longer sees the components' metrics", len(names))
	}
	for _, n := range names {
		if !strings.Contains(string(doc), "`"+n+"`") {
			t.Errorf("%s is not in docs/metrics.md", n)
		}
	}
}

// recordingRegisterer registers with the wrapped registerer and remembers each collector.
type recordingRegisterer struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registerer.Register(c)
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// collectorNames are the fully-qualified names of the descriptors c describes.
func collectorNames(c prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	var out []string
	for d := range ch {
		out = append(out, descName(d))
	}
	return out
}

// TestStandaloneLeaseNotExported: a lease that never ends has no remaining time to graph.
func TestStandaloneLeaseNotExported(t *testing.T) {
	for _, c := range []struct {
		forever bool
		want    int
	}{{true, 0}, {false, 1}} {
		col := NewCollector(CollectorOptions{Coordinator: coordinator{LeaseValid: true, LeaseRemaining: time.Hour, LeaseForever: c.forever}})
		if n := testutil.CollectAndCount(col, "qslice_lease_remaining_seconds"); n != c.want {
			t.Errorf("LeaseForever %v: %d lease_remaining series, want %d", c.forever, n, c.want)
		}
		if n := testutil.CollectAndCount(col, "qslice_lease_valid"); n != 1 {
			t.Errorf("LeaseForever %v: %d lease_valid series, want 1", c.forever, n)
		}
	}
}
