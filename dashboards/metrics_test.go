package dashboards

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/qslice/qslice/runner/queue"
)

// metricsTestConfig: one queue worked by qslice's runner (with a lock directory), one by
// persistent workers, and fast probes.
const metricsTestConfig = `
node: metrics-test
listen: 127.0.0.1:0
control: {socket: ""}  # no drain here: no control socket
probes:
  interval: 200ms
  budget: 150ms
queues:
  - name: in
    dir: queue/in
    slices: 4
    poll_interval: 100ms
    lock_dir: locks
    shutdown_grace: 1s
    handler:
      exec: ["sh", "-c", "cat > /dev/null"]
      timeout: 10s
  - name: work  # persistent workers: the worker pool metrics (this one never answers the hello)
    dir: queue/work
    slices: 1
    concurrency: 1
    handler:
      worker: ["sh", "-c", "echo not a frame; exec sleep 100"]
`

// prepareMetricsTest puts work in the queue so that every runner event happens once: a message
// with a lock key (handled, lock wait and hold) and a file that is no queue message (skipped).
func prepareMetricsTest(t *testing.T) func(dir string) {
	return func(dir string) {
		qdir := filepath.Join(dir, "queue", "in")
		if err := os.MkdirAll(qdir, 0o755); err != nil {
			t.Fatal(err)
		}
		d := queue.NewDir(qdir, filepath.Join(dir, "queue", "shunt"), filepath.Join(dir, "queue", "bad"))
		if _, err := d.Enqueue(queue.Meta{Lock: "list-a.lock"}, []byte("hello"), time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(qdir, "README"), []byte("not a message\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// exportedNames maps the names a PromQL selector may use for the agent's metrics to their
// family: every
// family gathered from its registry (histograms as _bucket, _sum, _count and the native
// histogram's own name; summaries as _sum, _count and the quantiles' name), plus every metric the
// registry's collectors describe (families without a series yet, such as Consul errors on a
// standalone node).
func exportedNames(t *testing.T, reg *prometheus.Registry) map[string]string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]string{}
	for _, mf := range mfs {
		name := mf.GetName()
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			for _, s := range []string{"", "_bucket", "_sum", "_count"} {
				out[name+s] = name
			}
		case dto.MetricType_SUMMARY:
			for _, s := range []string{"", "_sum", "_count"} {
				out[name+s] = name
			}
		default:
			out[name] = name
		}
	}
	ch := make(chan *prometheus.Desc)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("descriptor without a name: %s", d)
		}
		if _, ok := out[m[1]]; !ok {
			out[m[1]] = m[1]
		}
	}
	return out
}

// queriedExpr is one PromQL expression of a dashboard or rule, and where it comes from.
type queriedExpr struct{ where, expr string }

// allQueries returns every PromQL expression of the dashboards (targets and variables) and rules.
func allQueries(t *testing.T) []queriedExpr {
	t.Helper()
	var out []queriedExpr
	for file, d := range loadDashboards(t) {
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Fatalf("%s: variable %s: query is not a string: %v", file, v.Name, err)
			}
			expr, err := variableQueryExpr(q)
			if err != nil {
				t.Fatalf("%s: variable %s: %v", file, v.Name, err)
			}
			out = append(out, queriedExpr{fmt.Sprintf("%s variable %s", file, v.Name), expr})
		}
		for _, a := range d.Annotations.List {
			out = append(out, queriedExpr{fmt.Sprintf("%s annotation %q", file, a.Name), a.Expr})
		}
		for _, p := range flatPanels(d.Panels) {
			for _, tg := range p.Targets {
				out = append(out, queriedExpr{fmt.Sprintf("%s panel %q target %s", file, p.Title, tg.RefID), tg.Expr})
			}
		}
	}
	for _, g := range loadRules(t, rulesFile).Groups {
		for _, r := range g.Rules {
			out = append(out, queriedExpr{fmt.Sprintf("%s rule %s%s", rulesFile, r.Record, r.Alert), r.Expr})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].where < out[j].where })
	return out
}

// prometheusMade are series Prometheus itself creates for every target or alert.
var prometheusMade = map[string]bool{"up": true, "ALERTS": true, "ALERTS_FOR_STATE": true}

// TestAgentExportsEveryQueriedMetric: every metric a panel, a variable or a rule selects is
// exported by a real agent, is a recording rule, or is made by Prometheus.
func TestAgentExportsEveryQueriedMetric(t *testing.T) {
	n := startNode(t, metricsTestConfig, prepareMetricsTest(t))
	reg := n.agent.Registry()
	// Wait until the message was handled (its lock waited for and held), the foreign file
	// skipped, and the probes scanned the queue and the lock directory.
	waitFor(t, 20*time.Second, "runner events and probe metrics", func() (bool, string) {
		mfs, err := reg.Gather()
		if err != nil {
			return false, err.Error()
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				v := m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
				got[mf.GetName()] += v
				if mf.GetName() == "qslice_lock_scan_success" || mf.GetName() == "qslice_queue_scan_success" {
					got[mf.GetName()+" series"]++
				}
			}
		}
		ok := got["qslice_messages_handled_total"] >= 1 && got["qslice_message_lock_hold_seconds"] >= 1 &&
			got["qslice_skipped_files_total"] >= 1 && got["qslice_lock_scan_success series"] >= 1 &&
			got["qslice_queue_scan_success series"] >= 1
		return ok, fmt.Sprintf("%v", got)
	})
	exported := exportedNames(t, reg)
	recorded := recordedNames(loadRules(t, rulesFile))
	// The set is built from the registry, not typed by hand: a histogram's series names come
	// from its type, and a counter without series yet (no Consul on a standalone node) from its
	// descriptor.
	for _, name := range []string{"qslice_message_lock_wait_seconds_bucket", "qslice_message_handle_duration_seconds_count",
		"qslice_consul_request_errors_total", "qslice_locks_expired", "qslice_slice_owner_info", "process_cpu_seconds_total"} {
		if exported[name] == "" {
			t.Errorf("the agent's registry has no %s", name)
		}
	}
	if exported["qslice_locks_expired_bucket"] != "" || exported["qslice_no_such_metric"] != "" {
		t.Errorf("names that the agent does not export count as exported")
	}

	used := map[string]bool{}
	for _, q := range allQueries(t) {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: selects no metric: %s", q.where, q.expr)
		}
		for _, name := range names {
			used[name] = true
			switch {
			case exported[name] != "", recorded[name], prometheusMade[name]:
			default:
				t.Errorf("%s: metric %s is not exported by the agent, not a recording rule and not made by Prometheus\n  expr: %s", q.where, name, q.expr)
			}
		}
	}
	// Every recording rule is used, and every qslice_ family the agent exports is on a
	// dashboard or in a rule (a metric nobody can see is a metric nobody maintains).
	for name := range recorded {
		if !used[name] {
			t.Errorf("recording rule %s is used by no alert or dashboard", name)
		}
	}
	usedFamily := map[string]bool{}
	for name, family := range exported {
		if used[name] {
			usedFamily[family] = true
		}
	}
	var unused []string
	for _, family := range exported {
		if strings.HasPrefix(family, "qslice_") && !usedFamily[family] && !slices.Contains(unused, family) {
			unused = append(unused, family)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Errorf("qslice metrics exported but on no dashboard and in no rule: %s", strings.Join(unused, ", "))
	}
}

// TestPromtoolCheckMetrics lints a real agent's /metrics with promtool check metrics.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := findTool(t, "promtool", "QSLICE_PROMTOOL", "prometheus")
	n := startNode(t, metricsTestConfig, prepareMetricsTest(t))
	var body string
	waitFor(t, 20*time.Second, "qslice metrics of the probes and the runner", func() (bool, string) {
		code, b := httpGet(t, n.url+"/metrics")
		body = b
		return code == 200 && strings.Contains(b, "qslice_locks_held{") && strings.Contains(b, `qslice_messages_handled_total{outcome="done",queue="in"} 1`), fmt.Sprintf("status %d, %d bytes", code, len(b))
	})
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	if len(strings.TrimSpace(string(out))) > 0 {
		t.Logf("promtool check metrics:\n%s", out)
	}
}
