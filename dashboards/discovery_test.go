package dashboards

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/qslice/qslice/internal/consultest"
)

// findPrometheusSD returns a Prometheus server built with Consul service discovery, or skips:
// Debian's prometheus package has none.
func findPrometheusSD(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("QSLICE_PROMETHEUS_SD"); p != "" {
		return p
	}
	t.Skip("no Prometheus with Consul service discovery (Debian's has none): build one with scripts/build-prometheus.sh and set QSLICE_PROMETHEUS_SD to the path it prints (scripts/test.sh does)")
	return ""
}

// shippedPrometheusConfig is prometheus/prometheus.yml as shipped, pointed at the Consul agent
// consulAddr, scraping and evaluating every second, with its rule file's absolute path: its
// discovery and relabelling are untouched.
func shippedPrometheusConfig(t *testing.T, consulAddr string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"}
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg["rule_files"] = []any{rules}
	jobs, _ := cfg["scrape_configs"].([]any)
	if len(jobs) != 1 {
		t.Fatalf("prometheus.yml: %d scrape configs, want the one qslice job", len(jobs))
	}
	job := jobs[0].(map[string]any)
	sds, _ := job["consul_sd_configs"].([]any)
	if len(sds) != 1 || job["static_configs"] != nil {
		t.Fatalf("prometheus.yml: the qslice job must find its targets through one consul_sd_configs entry alone: %v", job)
	}
	sds[0].(map[string]any)["server"] = consulAddr
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

type promTarget struct {
	DiscoveredLabels map[string]string `json:"discoveredLabels"`
	Labels           map[string]string `json:"labels"`
	ScrapeURL        string            `json:"scrapeUrl"`
	Health           string            `json:"health"`
	LastError        string            `json:"lastError"`
}

// A real Prometheus with the shipped configuration finds both nodes of a cluster through a real
// Consul, and scrapes both: every target it has came from discovery.
func TestPrometheusFindsEveryNodeThroughConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a real Prometheus and Consul: skipped in -short mode")
	}
	bin := findPrometheusSD(t)
	srv := consultest.Start(t)
	nodeConfig := func(node string) string {
		return fmt.Sprintf(`node: %s
cluster: sd
listen: 127.0.0.1:0
control: {socket: ""}
consul: {address: %q, ttl: 2s, lock_delay: 1s, hold_down: 2s}
probes: {interval: 500ms, budget: 400ms}
queues:
  - {name: in, dir: queue/in, slices: 4, poll_interval: 100ms, shutdown_grace: 1s, handler: {exec: [cat]}}
`, node, srv.HTTPAddr)
	}
	nodes := map[string]*testNode{"a": startNode(t, nodeConfig("a"), nil), "b": startNode(t, nodeConfig("b"), nil)}
	promURL := startPrometheusWith(t, bin, shippedPrometheusConfig(t, srv.HTTPAddr))

	want := []string{nodes["a"].url + "/metrics", nodes["b"].url + "/metrics"}
	slices.Sort(want)
	waitFor(t, 60*time.Second, "both nodes discovered through Consul and up", func() (bool, string) {
		code, body := httpGet(t, promURL+"/api/v1/targets?state=active")
		var resp struct {
			Data struct {
				ActiveTargets []promTarget `json:"activeTargets"`
			} `json:"data"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &resp) != nil {
			return false, fmt.Sprintf("%d %.300s", code, body)
		}
		var got, saw []string
		for _, tg := range resp.Data.ActiveTargets {
			saw = append(saw, fmt.Sprintf("%s %s %s node=%s %s", tg.Labels["job"], tg.ScrapeURL, tg.Health,
				tg.DiscoveredLabels["__meta_consul_service_metadata_node"], tg.LastError))
			if tg.Labels["job"] == "qslice" && tg.Health == "up" {
				got = append(got, tg.ScrapeURL)
			}
		}
		slices.Sort(got)
		return slices.Equal(got, want), strings.Join(saw, "; ")
	})
	// The scrapes are the nodes' own metrics.
	waitFor(t, 30*time.Second, "qslice_node_info of both nodes in Prometheus", func() (bool, string) {
		code, body := httpGet(t, promURL+"/api/v1/query?query=count+by+(node)+(qslice_node_info{cluster=%22sd%22})")
		return code == 200 && strings.Contains(body, `"node":"a"`) && strings.Contains(body, `"node":"b"`), body
	})
}
