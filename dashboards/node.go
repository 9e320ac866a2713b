package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// selOne selects the one node of the node dashboard; selOneQueue its selected queues.
const (
	selOne      = `job=~"$job", instance="$instance"`
	selOneQueue = selOne + `, queue=~"$queue"`
)

func thresholdsLine() *common.GraphThresholdsStyleConfigBuilder {
	return common.NewGraphThresholdsStyleConfigBuilder().Mode(common.GraphThresholdsStyleModeLine)
}

// node: everything about one agent.
func node() *dashboard.DashboardBuilder {
	return newDashboard("qslice-node", "qslice / Node",
		"One qslice agent: identity, drain, liveness, lease, owned slices and their health, supervised and persistent workers, its runners' work, its Consul calls, its probes and its process.",
		jobVar(), instanceVar(false), queueVar()).
		WithRow(row("Node")).
		WithPanel(single("Scrape", "Whether Prometheus scraped this agent at its last attempt.",
			unitNone, small, redBelowOne(),
			q(`up{`+selOne+`}`, "up")).
			Mappings(valueMap("0", "DOWN", "red", "1", "UP", "green"))).
		WithPanel(single("Version", "The qslice version this agent runs (qslice_build_info).",
			unitNone, small, thresholds(),
			q(`max by (version) (qslice_build_info{`+selOne+`})`, "{{version}}")).
			TextMode(common.BigValueTextModeName).
			ColorMode(common.BigValueColorModeNone).
			GraphMode(common.BigValueGraphModeNone)).
		WithPanel(single("Lease", "Whether this node's Consul session lease is provably valid. A standalone node's lease never ends.",
			unitNone, small, redBelowOne(),
			q(`qslice_lease_valid{`+selOne+`}`, "lease")).
			Mappings(valueMap("0", "INVALID", "red", "1", "VALID", "green"))).
		WithPanel(single("Owned slices", "Slices this node owns and processes, in the selected queues.",
			unitCount, small, thresholds(),
			q(`sum(qslice_queue_owned_slices{`+selOneQueue+`})`, "owned"))).
		WithPanel(single("Ready messages", "Messages waiting in the selected queues, as this node observes them.",
			unitCount, small, thresholds(),
			q(`sum(qslice_queue_ready_messages{`+selOneQueue+`})`, "ready"))).
		WithPanel(single("Uptime", "Time since the agent process started.",
			unitSeconds, small, thresholds(),
			q(`time() - process_start_time_seconds{`+selOne+`}`, "uptime")).
			GraphMode(common.BigValueGraphModeNone)).
		WithPanel(single("Identity", "The node's name, its cluster (the Consul KV prefix its slice locks live under) and its mode: consul (slices shared with the other nodes) or standalone (owns every slice).",
			unitNone, wide, thresholds(),
			q(`max by (node, cluster, mode) (qslice_node_info{`+selOne+`})`, "{{node}} in {{cluster}} ({{mode}})")).
			TextMode(common.BigValueTextModeName).
			ColorMode(common.BigValueColorModeNone).
			GraphMode(common.BigValueGraphModeNone)).
		WithPanel(single("Drain", "Whether the node is drained (qslice drain): it holds no slice and takes none until `qslice drain --undo`. A standalone node drained processes nothing.",
			unitNone, small, thresholds(1, "orange"),
			q(`qslice_node_draining{`+selOne+`}`, "drain")).
			Mappings(drainMapping())).
		WithPanel(single("Unhealthy slices", "Slices this node owns whose health is not passing (warning: backlog older than health.max_age or no progress for health.stall_after; critical: its supervised worker is in a crash loop).",
			unitCount, small, thresholds(1, "orange"),
			q(`sum(qslice_slice_health{`+selOneQueue+`, state!="passing"})`, "unhealthy"))).
		WithPanel(single("Workers down", "Owned slices of supervised queues whose worker process is not running (not started yet, or waiting out its restart backoff).",
			unitCount, small, thresholds(1, "red"),
			q(`count(qslice_worker_up{`+selOneQueue+`} == 0 and on (job, instance, queue, slice) qslice_slice_owned{`+selOneQueue+`} == 1) or vector(0)`, "down"))).
		WithPanel(single("Worker restarts (1h)", "Restarts of this node's supervised workers after an unexpected exit, over the last hour. More than 3 in 15 minutes on one slice raises QsliceWorkerCrashLooping.",
			unitCount, small, thresholds(1, "orange", 4, "red"),
			q(`sum(increase(qslice_worker_restarts_total{`+selOneQueue+`}[1h])) or vector(0)`, "restarts"))).
		WithRow(row("Slice health and supervised workers")).
		WithPanel(timeline("Slice health", "Health of each slice this node owns, as it reports it to Consul: passing, warning (backlog old or stalled) or critical (worker in a crash loop). Gaps are times the node did not own the slice.",
			halfHi, healthMapping(),
			q(healthLevel(selOneQueue, "queue, slice"), "{{queue}}/{{slice}}"))).
		WithPanel(mapped(mapped(grid("Owned slices and workers", "One row per slice this node owns or supervised: its health now, whether its supervised worker runs (owned slices only), and the worker's restarts and unexpected exits (failed starts included) in the last hour. Queues run by qslice's own handlers have no worker columns.",
			unitCount, halfHi, nil,
			[]column{
				{"Value #A", "Health", ""},
				{"Value #B", "Worker", ""},
				{"Value #C", "Restarts (1h)", unitCount},
				{"Value #D", "Unexpected exits (1h)", unitCount},
			},
			tableQuery(healthLevel(selOneQueue, "queue, slice")),
			tableQuery(`max by (queue, slice) (qslice_worker_up{`+selOneQueue+`} and on (job, instance, queue, slice) qslice_slice_owned{`+selOneQueue+`} == 1)`),
			tableQuery(`sum by (queue, slice) (increase(qslice_worker_restarts_total{`+selOneQueue+`}[1h]))`),
			tableQuery(`sum by (queue, slice) (increase(qslice_worker_unexpected_exits_total{`+selOneQueue+`}[1h]))`)),
			"Health", healthMapping()), "Worker", workerMapping())).
		WithPanel(timeline("Supervised workers", "Whether the worker process of each owned slice of a supervised queue runs: a red stretch is a worker down (exited, restarting after backoff). Gaps are times the node did not own the slice.",
			half, workerMapping(),
			q(`qslice_worker_up{`+selOneQueue+`} and on (job, instance, queue, slice) qslice_slice_owned{`+selOneQueue+`} == 1`, "{{queue}}/{{slice}}"))).
		WithPanel(bars("Worker restarts", "Restarts of supervised workers after an unexpected exit, per interval and slice. A steady stream is a crash loop: the worker's output is in qslice's log (fields queue, slice, pid, stream).",
			unitCount, half,
			q(`sum by (queue, slice) (increase(qslice_worker_restarts_total{`+selOneQueue+`}[$__rate_interval]))`, "{{queue}}/{{slice}}"))).
		WithRow(row("Persistent workers")).
		WithPanel(single("Worker pools in a crash loop", "Queues with persistent workers (handler.worker) whose workers on this node ended 3 times in a row without answering a message: their slices report critical until a worker answers or runs 30s. For 2 minutes it raises QsliceWorkerPoolCrashLooping.",
			unitCount, small, thresholds(1, "red"),
			q(`sum(qslice_worker_pool_crash_loop{`+selOneQueue+`}) or vector(0)`, "crash loop"))).
		WithPanel(graph("Worker processes ready", "Persistent worker processes ready for messages (handshake done, not ended), by queue. A queue keeps concurrency of them; fewer means workers are restarting.",
			unitCount, size{6, 8},
			q(`qslice_worker_pool_ready{`+selOneQueue+`}`, "{{queue}}"))).
		WithPanel(bars("Worker starts and exits", "Persistent worker processes started (restarts included) and ended per interval, by queue and reason: stopped, timeout, lease_lapsed, cancelled (qslice killed or stopped it); died, protocol_error, handshake_failed (crashes). The log line of each end names why.",
			unitCount, third,
			q(`sum by (queue) (increase(qslice_worker_pool_starts_total{`+selOneQueue+`}[$__rate_interval]))`, "{{queue}} started"),
			q(`sum by (queue, reason) (increase(qslice_worker_pool_exits_total{`+selOneQueue+`}[$__rate_interval])) > 0`, "{{queue}} {{reason}}"))).
		WithPanel(bars("Worker protocol errors", "Breaches of the worker protocol (docs/worker-protocol.md) per interval, by queue and kind: bad_frame (often a print to stdout), bad_json, unknown_type, unknown_id, closed_stdout, handshake. Each ends the worker; its messages are retried.",
			unitCount, size{6, 8},
			q(`sum by (queue, error) (increase(qslice_worker_pool_protocol_errors_total{`+selOneQueue+`}[$__rate_interval]))`, "{{queue}} {{error}}"))).
		WithRow(row("Work")).
		WithPanel(graph("Owned slices by queue", "Slices of each queue this node owns.",
			unitCount, half,
			q(`qslice_queue_owned_slices{`+selOneQueue+`}`, "{{queue}}"))).
		WithPanel(graph("Messages handled", "Messages whose handling ended on this node per second, by queue and outcome.",
			unitMsgRate, half,
			q(`sum by (queue, outcome) (rate(qslice_messages_handled_total{`+selOneQueue+`}[$__rate_interval]))`, "{{queue}} {{outcome}}"))).
		WithPanel(graph("Handle duration p99", "99th percentile of the time from claim to end of handling on this node, by queue.",
			unitSeconds, third,
			q(`histogram_quantile(0.99, sum by (queue, le) (rate(qslice_message_handle_duration_seconds_bucket{`+selOneQueue+`}[$__rate_interval])))`, "{{queue}}"))).
		WithPanel(graph("Lock wait p99", "99th percentile of this node's waits for message lock files, by queue.",
			unitSeconds, third,
			q(`histogram_quantile(0.99, sum by (queue, le) (rate(qslice_message_lock_wait_seconds_bucket{`+selOneQueue+`}[$__rate_interval])))`, "{{queue}}"))).
		WithPanel(graph("Lock hold p99", "99th percentile of how long this node held message lock files, by queue.",
			unitSeconds, third,
			q(`histogram_quantile(0.99, sum by (queue, le) (rate(qslice_message_lock_hold_seconds_bucket{`+selOneQueue+`}[$__rate_interval])))`, "{{queue}}"))).
		WithRow(row("Coordination")).
		WithPanel(graph("Lease remaining", "Time until this node's lease runs out without another renewal.",
			unitSeconds, third,
			q(`qslice_lease_remaining_seconds{`+selOne+`}`, "remaining"))).
		WithPanel(bars("Ownership changes", "Slices this node acquired or released per interval, by reason.",
			unitCount, third,
			q(`sum by (reason) (increase(qslice_ownership_changes_total{`+selOne+`}[$__rate_interval]))`, "{{reason}}"))).
		WithPanel(graph("Consul request errors", "Failed Consul requests of this node per second, by operation.",
			unitErrRate, third,
			q(`sum by (operation) (rate(qslice_consul_request_errors_total{`+selOne+`}[$__rate_interval]))`, "{{operation}}"))).
		WithPanel(bars("Control requests", "State-changing API requests (qslice drain, drain --undo) per interval, by action and result: ok, error (authorised, but the change failed) or refused (not authenticated, or a cross-site or simple request: someone tried). The log line of each names who asked.",
			unitCount, third,
			q(`sum by (action, result) (increase(qslice_control_requests_total{`+selOne+`}[$__rate_interval]))`, "{{action}} {{result}}"))).
		WithRow(row("Probes")).
		WithPanel(graph("Scan duration", "Duration of this node's last scan of each queue and lock directory.",
			unitSeconds, half,
			q(`qslice_queue_scan_duration_seconds{`+selOneQueue+`}`, "queue {{queue}}"),
			q(`qslice_lock_scan_duration_seconds{`+selOne+`}`, "locks {{lock}}"))).
		WithPanel(graph("Scan success", "1 when this node's last scan of the queue or lock directory succeeded, 0 when it failed.",
			unitNone, half,
			q(`qslice_queue_scan_success{`+selOneQueue+`}`, "queue {{queue}}"),
			q(`qslice_lock_scan_success{`+selOne+`}`, "locks {{lock}}")).Min(0).Max(1)).
		WithPanel(graph("Queue filesystem", "1 while each queue directory's filesystem answers this node's probe (stat, readdir, canary create+fsync+remove) within health.filesystem.timeout; 0 while it does not (its slices are handed to other nodes) and until it has answered for recover_after.",
			unitNone, third,
			q(`qslice_queue_filesystem_available{`+selOneQueue+`}`, "{{queue}}")).Min(0).Max(1)).
		WithPanel(graph("Filesystem probe duration", "How long this node's last completed filesystem probe of each queue directory took. A hung probe shows as no new value until it returns.",
			unitSeconds, third,
			q(`qslice_queue_filesystem_probe_seconds{`+selOneQueue+`}`, "{{queue}}"))).
		WithPanel(bars("Filesystem probe failures", "Filesystem probes that failed or took longer than health.filesystem.timeout, per interval and queue.",
			unitCount, third,
			q(`sum by (queue) (increase(qslice_queue_filesystem_probe_failures_total{`+selOneQueue+`}[$__rate_interval]))`, "{{queue}}"))).
		WithRow(row("Process")).
		WithPanel(graph("CPU", "CPU time the agent used per second (1 = one core).",
			unitCPU, third,
			q(`rate(process_cpu_seconds_total{`+selOne+`}[$__rate_interval])`, "cpu"))).
		WithPanel(graph("Memory", "Resident memory of the agent, and the Go heap in use.",
			unitBytes, third,
			q(`process_resident_memory_bytes{`+selOne+`}`, "resident"),
			q(`go_memstats_heap_inuse_bytes{`+selOne+`}`, "heap in use"))).
		WithPanel(graph("Goroutines and file descriptors", "Goroutines of the agent and its open file descriptors.",
			unitCount, third,
			q(`go_goroutines{`+selOne+`}`, "goroutines"),
			q(`process_open_fds{`+selOne+`}`, "open fds")))
}

// redBelowOne colours a 0/1 flag: red for 0, green for 1.
func redBelowOne() *dashboard.ThresholdsConfigBuilder {
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).
		Steps([]dashboard.Threshold{{Color: "red"}, {Value: cog.ToPtr(1.0), Color: "green"}})
}
