package dashboards

import (
	"fmt"
	"sort"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// Alert thresholds of rules/qslice-rules.yaml that the queue panels draw. The rules are YAML
// and cannot import Go: TestPanelThresholdsMatchRules checks that each constant equals the
// number in its rule, so changing one side fails the tests until the other follows.
const (
	backlogOldWarningSeconds  = 900  // QsliceSliceBacklogOld, severity warning: oldest ready message above 15m
	backlogOldCriticalSeconds = 3600 // QsliceSliceBacklogOld, severity critical: above 1h
	fallingBehindReady        = 100  // QsliceSliceFallingBehind: a slice's backlog above 100 messages (and growing)
)

// backlogAgeThresholds colours the oldest ready age as the backlog alert does.
func backlogAgeThresholds() *dashboard.ThresholdsConfigBuilder {
	return thresholds(backlogOldWarningSeconds, "orange", backlogOldCriticalSeconds, "red")
}

// RunbookBase is the start of every alert's runbook_url; the anchor is the alert's name in
// lower case (its heading in docs/runbooks.md).
const RunbookBase = "https://github.com/qslice/qslice/blob/main/docs/runbooks.md#"

// panelAlerts names the alerts each alerting panel shows, by dashboard uid and panel title.
// Every such panel links to the runbook section of each of its alerts.
var panelAlerts = map[string]map[string][]string{
	"qslice-overview": {
		"Agents up":                     {"QsliceNodeDown", "QsliceAgentAbsent"},
		"Unowned slices":                {"QsliceSliceUnowned"},
		"Slices owned twice":            {"QsliceSliceOwnedTwice"},
		"Nodes without a valid lease":   {"QsliceLeaseInvalid"},
		"Oldest ready message":          {"QsliceSliceBacklogOld"},
		"Drained nodes":                 {"QsliceNodeDrainedTooLong"},
		"Unhealthy slices":              {"QsliceSliceUnhealthy"},
		"Critical slices":               {"QsliceWorkerCrashLooping", "QsliceWorkerPoolCrashLooping"},
		"Worker restarts (1h)":          {"QsliceWorkerCrashLooping"},
		"Slices not owned exactly once": {"QsliceSliceUnowned", "QsliceSliceOwnedTwice"},
		"Lease remaining":               {"QsliceLeaseInvalid"},
		"Consul request errors":         {"QsliceConsulUnreachable"},
	},
	"qslice-queues": {
		"Oldest ready message":                     {"QsliceSliceBacklogOld"},
		"Arrival and processing":                   {"QsliceSliceFallingBehind"},
		"Ready messages by slice":                  {"QsliceSliceFallingBehind"},
		"Oldest ready message by slice":            {"QsliceSliceBacklogOld", "QsliceSliceStalled"},
		"Queue scan success":                       {"QsliceQueueScanFailing"},
		"Recovered and skipped files, disk faults": {"QsliceRunnerDiskFault"},
	},
	"qslice-locks": {
		"Expired locks":     {"QsliceLockExpired"},
		"Lock wait":         {"QsliceLockContention"},
		"Lock breaks":       {"QsliceLockBreaksFrequent"},
		"Lock scan success": {"QsliceLockScanFailing"},
	},
	"qslice-node": {
		"Scrape":                       {"QsliceNodeDown"},
		"Lease":                        {"QsliceLeaseInvalid"},
		"Drain":                        {"QsliceNodeDrainedTooLong"},
		"Unhealthy slices":             {"QsliceSliceUnhealthy"},
		"Worker restarts (1h)":         {"QsliceWorkerCrashLooping"},
		"Worker pools in a crash loop": {"QsliceWorkerPoolCrashLooping"},
		"Worker protocol errors":       {"QsliceWorkerPoolCrashLooping"},
		"Lease remaining":              {"QsliceLeaseInvalid"},
		"Consul request errors":        {"QsliceConsulUnreachable"},
		"Scan success":                 {"QsliceQueueScanFailing"},
		"Queue filesystem":             {"QsliceQueueFilesystemUnavailable"},
	},
}

// RunbookURL is the runbook section of an alert.
func RunbookURL(alert string) string { return RunbookBase + strings.ToLower(alert) }

// linkRunbooks gives each alerting panel of d (see panelAlerts) a link per alert to its
// runbook section. A title in panelAlerts that names no panel is an error.
func linkRunbooks(d *dashboard.Dashboard) error {
	want := panelAlerts[*d.Uid]
	seen := map[string]bool{}
	for i := range d.Panels {
		p := d.Panels[i].Panel
		if p == nil || p.Title == nil {
			continue
		}
		for _, a := range want[*p.Title] {
			p.Links = append(p.Links, dashboard.DashboardLink{
				Title:       "Runbook: " + a,
				Type:        dashboard.DashboardLinkTypeLink,
				Url:         cog.ToPtr(RunbookURL(a)),
				Tooltip:     "What " + a + " means and what to do",
				Tags:        []string{},
				TargetBlank: true,
			})
			seen[*p.Title] = true
		}
	}
	var missing []string
	for title := range want {
		if !seen[title] {
			missing = append(missing, title)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("dashboard %s: runbook links for panels that do not exist: %q", *d.Uid, missing)
	}
	return nil
}

// failoverReasons are the ownership changes nobody asked for, marked on every dashboard.
const failoverReasons = "failover|failback|lease_lost|stuck|unavailable"

// failoverAnnotation marks the ownership changes of failoverReasons (qslice_ownership_changes_total),
// one mark per node and reason where the counter grew.
func failoverAnnotation() *dashboard.AnnotationQueryBuilder {
	return dashboard.NewAnnotationQueryBuilder().
		Name("Failovers").
		Datasource(datasource()).
		Enable(true).
		IconColor("red").
		Expr(`sum by (job, instance, reason) (increase(qslice_ownership_changes_total{job=~"$job", reason=~"` + failoverReasons + `"}[1m])) > 0`).
		Step("30s").
		TitleFormat("{{reason}} on {{instance}}").
		TextFormat("Slices changed owner ({{reason}}) on {{instance}}, job {{job}}").
		TagKeys("reason,instance")
}
