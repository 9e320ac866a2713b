package dashboards

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/qslice/qslice/failover"
)

const (
	rulesFile    = "rules/qslice-rules.yaml"
	ruleTestGlob = "rules/tests/*.yaml"
	runbooksFile = "../docs/runbooks.md"
	runbookURL   = "https://github.com/qslice/qslice/blob/main/docs/runbooks.md#"
)

type ruleFile struct {
	Groups []ruleGroup `yaml:"groups"`
}

type ruleGroup struct {
	Name     string `yaml:"name"`
	Interval string `yaml:"interval,omitempty"`
	Rules    []rule `yaml:"rules"`
}

type rule struct {
	Record      string            `yaml:"record,omitempty"`
	Alert       string            `yaml:"alert,omitempty"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

// loadRules parses a rule file strictly (unknown keys are errors, as in Prometheus).
func loadRules(t testing.TB, path string) ruleFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return rf
}

// recordedNames returns the names of the recording rules.
func recordedNames(rf ruleFile) map[string]bool {
	out := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				out[r.Record] = true
			}
		}
	}
	return out
}

// markdownAnchors returns the anchors GitHub gives the headings of a Markdown file: lower
// case, punctuation other than '-' and '_' dropped, spaces to '-'.
func markdownAnchors(t testing.TB, path string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	drop := regexp.MustCompile(`[^\p{L}\p{N}\s_-]`)
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		a := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")
		out[a] = true
	}
	return out
}

// requiredAlerts are the alerts the issues ask for; each must exist.
var requiredAlerts = []string{
	"QsliceLockExpired", "QsliceLockContention", "QsliceLockBreaksFrequent",
	"QsliceSliceBacklogOld", "QsliceSliceStalled", "QsliceSliceFallingBehind",
	"QsliceSliceUnowned", "QsliceSliceOwnedTwice", "QsliceNodeDown", "QsliceAgentAbsent",
	"QsliceQueueScanFailing", "QsliceConsulUnreachable", "QsliceLeaseInvalid",
	"QsliceWorkerCrashLooping", "QsliceSliceUnhealthy", "QsliceNodeDrainedTooLong",
	"QsliceRunnerDiskFault", "QsliceWorkerPoolCrashLooping",
}

func TestRulesWellFormed(t *testing.T) {
	rf := loadRules(t, rulesFile)
	anchors := markdownAnchors(t, runbooksFile)
	alerts := map[string]bool{}
	recordRE := regexp.MustCompile(`^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$`)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if _, err := metricNames(r.Expr); err != nil {
				t.Errorf("group %s, rule %s%s: %v", g.Name, r.Record, r.Alert, err)
			}
			if r.Record != "" {
				// level:metric:operations: never mistaken for an exported qslice_ metric.
				if !recordRE.MatchString(r.Record) || strings.HasPrefix(r.Record, "qslice_") {
					t.Errorf("recording rule %s: name is not level:metric:operations", r.Record)
				}
				continue
			}
			alerts[r.Alert] = true
			where := "alert " + r.Alert + " (" + r.Labels["severity"] + ")"
			if !strings.HasPrefix(r.Alert, "Qslice") {
				t.Errorf("%s: name must start with Qslice", where)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", where, s)
			}
			if r.For == "" && !strings.Contains(r.Expr, "increase(") {
				t.Errorf("%s: no for: duration (a single scrape would page)", where)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", where, a)
				}
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookURL)
			if !ok {
				t.Errorf("%s: runbook_url %q does not start with %s", where, r.Annotations["runbook_url"], runbookURL)
			} else if !anchors[anchor] {
				t.Errorf("%s: runbook_url anchor #%s is not a heading of %s", where, anchor, runbooksFile)
			} else if anchor != strings.ToLower(r.Alert) {
				t.Errorf("%s: runbook anchor #%s, want #%s", where, anchor, strings.ToLower(r.Alert))
			}
		}
	}
	for _, a := range requiredAlerts {
		if !alerts[a] {
			t.Errorf("alert %s missing from %s", a, rulesFile)
		}
	}
}

type promtoolTestFile struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name           string `yaml:"name"`
		AlertRuleTests []struct {
			AlertName string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestEveryAlertHasFiringAndQuietCases reads the promtool tests: each alert must be expected to
// fire in one case and to stay quiet in another.
func TestEveryAlertHasFiringAndQuietCases(t *testing.T) {
	rf := loadRules(t, rulesFile)
	paths, err := filepath.Glob(ruleTestGlob)
	if err != nil || len(paths) == 0 {
		t.Fatalf("no promtool tests in %s (%v)", ruleTestGlob, err)
	}
	firing, quiet := map[string]int{}, map[string]int{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var tf promtoolTestFile
		if err := yaml.Unmarshal(data, &tf); err != nil {
			t.Fatalf("parse %s: %v", p, err)
		}
		if !slices.Contains(tf.RuleFiles, "../"+filepath.Base(rulesFile)) {
			t.Errorf("%s: rule_files %v does not load %s", p, tf.RuleFiles, rulesFile)
		}
		for _, tc := range tf.Tests {
			for _, a := range tc.AlertRuleTests {
				if len(a.ExpAlerts) > 0 {
					firing[a.AlertName]++
				} else {
					quiet[a.AlertName]++
				}
			}
		}
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if firing[r.Alert] == 0 {
				t.Errorf("alert %s: no promtool case where it fires", r.Alert)
			}
			if quiet[r.Alert] == 0 {
				t.Errorf("alert %s: no promtool case where it stays quiet", r.Alert)
			}
		}
	}
}

// findTool returns the path of a binary, from the environment variable env or the PATH, or
// skips the test saying what to install.
func findTool(t testing.TB, name, env, pkg string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found (%v): install the Debian package %s (listed in .ci/apt-packages.txt; CI has it), or set %s", name, err, pkg, env)
	}
	return p
}

func TestPromtoolCheckRules(t *testing.T) {
	promtool := findTool(t, "promtool", "QSLICE_PROMTOOL", "prometheus")
	out, err := exec.Command(promtool, "check", "rules", rulesFile).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", rulesFile, err, out)
	}
	t.Logf("%s", out)
}

func TestPromtoolTestRules(t *testing.T) {
	promtool := findTool(t, "promtool", "QSLICE_PROMTOOL", "prometheus")
	paths, err := filepath.Glob(ruleTestGlob)
	if err != nil || len(paths) == 0 {
		t.Fatalf("no promtool tests in %s (%v)", ruleTestGlob, err)
	}
	out, err := exec.Command(promtool, append([]string{"test", "rules"}, paths...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "SUCCESS"); n != len(paths) {
		t.Fatalf("promtool test rules: %d SUCCESS for %d files\n%s", n, len(paths), out)
	}
}

// The example uses consul_sd_configs, which Debian's promtool does not know: the promtool built
// with Consul SD (beside QSLICE_PROMETHEUS_SD) checks it.
func TestPromtoolCheckConfigExample(t *testing.T) {
	promtool := filepath.Join(filepath.Dir(findPrometheusSD(t)), "promtool")
	const cfg = "prometheus/prometheus.yml"
	out, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config %s: %v\n%s", cfg, err, out)
	}
}

// TestConsulOperationLabelsAreEmitted: every operation label the rules' tests, the rules and the
// dashboards name is one the coordinator emits (failover.ConsulOps), so that no test exercises an
// alert on a series that cannot exist.
func TestConsulOperationLabelsAreEmitted(t *testing.T) {
	known := map[string]bool{}
	for _, op := range failover.ConsulOps() {
		known[op.String()] = true
	}
	files, err := filepath.Glob(ruleTestGlob)
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, rulesFile)
	more, _ := filepath.Glob("grafana/*.json")
	files = append(files, more...)
	re := regexp.MustCompile(`operation\s*=~?\s*\\?"([^"\\]*)\\?"`)
	seen := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			seen++
			if !known[string(m[1])] {
				t.Errorf("%s: operation=%q is not a failover.ConsulOp (known: %v)", f, m[1], failover.ConsulOps())
			}
		}
	}
	if seen == 0 {
		t.Fatal("no operation label found in the rules' tests: the pattern is stale")
	}
}
