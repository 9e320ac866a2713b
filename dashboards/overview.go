package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// Label selectors shared by the dashboards. Queue and lock gauges are observed identically by
// every node that sees the shared disk: panels take the max across nodes, never the sum.
const (
	selNode  = `job=~"$job", instance=~"$instance"`
	selQueue = `job=~"$job", instance=~"$instance", queue=~"$queue"`
	selLock  = `job=~"$job", instance=~"$instance", lock=~"$lock"`
)

// ownedMapping colours a 0/1 ownership value.
func ownedMapping() []dashboard.ValueMapping {
	return valueMap("0", "not owned", "transparent", "1", "owned", "green")
}

// overview: who owns what, and whether the cluster as a whole is healthy.
func overview() *dashboard.DashboardBuilder {
	return newDashboard("qslice-overview", "qslice / Cluster overview",
		"Slice ownership across the qslice cluster, nodes and their drain state, slice health, failovers and fail-backs, and the headline backlog.",
		jobVar(), instanceVar(true), queueVar()).
		WithRow(row("Health")).
		WithPanel(single("Agents up", "qslice agents that Prometheus scraped successfully at their last scrape (up), and how many targets it knows in the selected jobs.",
			unitNone, small, thresholds(),
			q(`sum(up{job=~"$job"})`, "up"),
			q(`count(up{job=~"$job"})`, "known"))).
		WithPanel(single("Unowned slices", "Slices that no node owns right now (sum over nodes of qslice_slice_owned is 0). A few seconds during a failover is normal; longer means no message of the slice is processed.",
			unitNone, small, thresholds(1, "red"),
			q(`count(sum by (job, queue, slice) (qslice_slice_owned{job=~"$job", queue=~"$queue"}) == 0) or vector(0)`, "unowned"))).
		WithPanel(single("Slices owned twice", "Slices that two or more nodes claim at once (sum over nodes of qslice_slice_owned above 1). Must stay 0; fencing keeps handlers apart, but it means the ownership view is inconsistent.",
			unitNone, small, thresholds(1, "red"),
			q(`count(sum by (job, queue, slice) (qslice_slice_owned{job=~"$job", queue=~"$queue"}) > 1) or vector(0)`, "owned twice"))).
		WithPanel(single("Nodes without a valid lease", "Nodes whose Consul session lease is not provably valid: they stop processing their slices until it is.",
			unitNone, small, thresholds(1, "red"),
			q(`count(qslice_lease_valid{job=~"$job"} == 0) or vector(0)`, "invalid lease"))).
		WithPanel(single("Ready messages", "Messages waiting in the selected queues, all slices (max across nodes, which all observe the same shared disk).",
			unitCount, small, thresholds(),
			q(`sum(max by (job, queue, slice) (qslice_queue_ready_messages{`+selQueue+`}))`, "ready"))).
		WithPanel(single("Oldest ready message", "Age of the oldest waiting message of the selected queues, from the time in its file name.",
			unitSeconds, small, backlogAgeThresholds(),
			q(`max(qslice_queue_oldest_ready_age_seconds{`+selQueue+`})`, "oldest"))).
		WithPanel(single("Drained nodes", "Nodes that are drained (qslice drain): they hold no slice and take none until `qslice drain --undo`. Left drained for over an hour raises QsliceNodeDrainedTooLong; every node drained leaves slices unowned.",
			unitCount, quart, thresholds(1, "orange"),
			q(`count(qslice_node_draining{job=~"$job"} == 1) or vector(0)`, "drained"))).
		WithPanel(single("Unhealthy slices", "Slices whose owner reports them warning (backlog older than health.max_age, or no progress for health.stall_after) or critical (supervised worker in a crash loop), in the selected queues.",
			unitCount, quart, thresholds(1, "orange"),
			q(`count(max by (job, queue, slice) (qslice_slice_health{job=~"$job", queue=~"$queue", state!="passing"}) == 1) or vector(0)`, "unhealthy"))).
		WithPanel(single("Critical slices", "Slices whose owner reports them critical: their supervised worker is in a crash loop (crash_loop_threshold exits within crash_loop_window), or the queue's persistent workers (handler.worker) on that node are. With stuck_handoff they move to another node.",
			unitCount, quart, thresholds(1, "red"),
			q(`count(max by (job, queue, slice) (qslice_slice_health{job=~"$job", queue=~"$queue", state="critical"}) == 1) or vector(0)`, "critical"))).
		WithPanel(single("Worker restarts (1h)", "Restarts of supervised workers (Mailman's runners) after an unexpected exit, all nodes, over the last hour.",
			unitCount, quart, thresholds(1, "orange", 10, "red"),
			q(`sum(increase(qslice_worker_restarts_total{`+selQueue+`}[1h])) or vector(0)`, "restarts"))).
		WithRow(row("Nodes and slice health")).
		WithPanel(mapped(mapped(grid("Nodes", "One row per qslice agent: its node name, cluster and mode (qslice_node_info), whether Prometheus scrapes it, whether it is drained, how many slices it owns, how many of those are not passing, and its supervised workers' restarts in the last hour. A node that is down shows only its scrape state.",
			unitCount, halfHi, []string{"Value #A"},
			[]column{
				{"node", "Node", ""},
				{"cluster", "Cluster", ""},
				{"mode", "Mode", ""},
				{"Value #B", "Scrape", ""},
				{"Value #C", "Drain", ""},
				{"Value #D", "Owned slices", unitCount},
				{"Value #E", "Unhealthy slices", unitCount},
				{"Value #F", "Worker restarts (1h)", unitCount},
			},
			tableQuery(`max by (job, instance, node, cluster, mode) (qslice_node_info{`+selNode+`})`),
			tableQuery(`max by (job, instance) (up{`+selNode+`})`),
			tableQuery(`max by (job, instance) (qslice_node_draining{`+selNode+`})`),
			tableQuery(`sum by (job, instance) (qslice_queue_owned_slices{`+selQueue+`})`),
			tableQuery(`sum by (job, instance) (qslice_slice_health{`+selQueue+`, state!="passing"})`),
			tableQuery(`sum by (job, instance) (increase(qslice_worker_restarts_total{`+selQueue+`}[1h]))`)),
			"Scrape", valueMap("0", "DOWN", "red", "1", "UP", "green")), "Drain", drainMapping())).
		WithPanel(graph("Slices by health state", "Owned slices of the selected queues and nodes by the health their owner reports: passing, warning (backlog old or stalled) or critical (worker in a crash loop). Their sum is the number of owned slices.",
			unitCount, halfHi,
			q(`count by (state) (max by (job, queue, slice, state) (qslice_slice_health{`+selQueue+`}) == 1)`, "{{state}}")).
			Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal)).
			OverrideByName("passing", fixedColor("green")).
			OverrideByName("warning", fixedColor("orange")).
			OverrideByName("critical", fixedColor("red"))).
		WithPanel(timeline("Slice health (cluster view)", "Health of every slice as its owner reports it, whichever node owns it: passing, warning (backlog older than health.max_age or no progress for health.stall_after) or critical (supervised worker in a crash loop). Gaps are times nobody reported the slice (unowned, or its owner not scraped).",
			tall, healthMapping(),
			q(`max by (queue, slice) (`+healthLevel(selQueue, "job, instance, queue, slice")+`)`, "{{queue}}/{{slice}}"))).
		WithRow(row("Ownership")).
		WithPanel(timeline("Slice owner (cluster view)", "One row per slice and owning node: a bar while that node owns the slice, as the nodes see the cluster in Consul. A change of row colour along a slice is a failover or a fail-back.",
			tall, valueMap("1", "owned", "green"),
			q(`max by (queue, slice, node) (qslice_slice_owner_info{job=~"$job", queue=~"$queue"})`, "{{queue}}/{{slice}} → {{node}}"))).
		WithPanel(timeline("Slices each node processes", "qslice_slice_owned by scrape target: green while the node holds the slice and processes it. Two green rows for one slice at the same time is a double ownership.",
			tall, ownedMapping(),
			q(`qslice_slice_owned{`+selQueue+`}`, "{{queue}}/{{slice}} @ {{instance}}"))).
		WithPanel(graph("Slices not owned exactly once", "Number of owners of each slice, shown only while it is not 1: 0 is an unowned slice, 2 or more a double ownership. Empty is healthy.",
			unitNone, half,
			q(`sum by (queue, slice) (qslice_slice_owned{job=~"$job", queue=~"$queue"}) != 1`, "{{queue}}/{{slice}}"))).
		WithPanel(graph("Owned slices per node", "How many slices each node owns: after a failover the survivors own more; after the fail-back the home nodes take theirs back.",
			unitCount, half,
			q(`sum by (instance) (qslice_queue_owned_slices{`+selQueue+`})`, "{{instance}}"))).
		WithPanel(bars("Ownership changes by reason", "Slices acquired or released per interval, by reason: failover (taken from a lost owner), failback (given back to a better-ranked node), lease_lost, drain, stuck, acquired, released.",
			unitCount, half,
			q(`sum by (reason) (increase(qslice_ownership_changes_total{`+selNode+`}[$__rate_interval]))`, "{{reason}}"))).
		WithPanel(bars("Failovers and fail-backs by node", "Unplanned ownership changes (failover, failback, lease_lost, stuck) per interval and node.",
			unitCount, half,
			q(`sum by (instance, reason) (increase(qslice_ownership_changes_total{`+selNode+`, reason=~"failover|failback|lease_lost|stuck"}[$__rate_interval]))`, "{{instance}} {{reason}}"))).
		WithRow(row("Consul")).
		WithPanel(graph("Lease remaining", "Time until each node's Consul lease runs out without another renewal. A sawtooth is healthy; a fall to 0 means the node lost Consul and stops processing.",
			unitSeconds, half,
			q(`qslice_lease_remaining_seconds{`+selNode+`}`, "{{instance}}"))).
		WithPanel(graph("Consul request errors", "Failed Consul requests per second, by node and operation. Every call retries with backoff; a steady rate means the node cannot reach Consul.",
			unitErrRate, half,
			q(`sum by (instance, operation) (rate(qslice_consul_request_errors_total{`+selNode+`}[$__rate_interval]))`, "{{instance}} {{operation}}")))
}
