package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// queues: backlog, ages and processing, per queue and per slice.
func queues() *dashboard.DashboardBuilder {
	return newDashboard("qslice-queues", "qslice / Queues and slices",
		"Backlog, ages, processing rate and failures of each queue and slice, from the probes' scans of the shared disk and the runners' events.",
		jobVar(), instanceVar(true), queueVar()).
		WithRow(row("Backlog")).
		WithPanel(graph("Ready messages", "Messages waiting (.pck files) per queue, all slices, at the last successful scan (max across nodes, which all observe the same shared disk).",
			unitCount, half,
			q(`sum by (queue) (max by (job, queue, slice) (qslice_queue_ready_messages{`+selQueue+`}))`, "{{queue}}"))).
		WithPanel(graph("Oldest ready message", "Age of the oldest waiting message per queue, from the time in its file name. A line rising at one second per second is a queue whose head does not move.",
			unitSeconds, half,
			q(`max by (queue) (qslice_queue_oldest_ready_age_seconds{`+selQueue+`})`, "{{queue}}")).
			Thresholds(backlogAgeThresholds()).
			ThresholdsStyle(thresholdsLine())).
		WithPanel(graph("Processing rate", "Messages whose handling ended per second, by queue and outcome (done = processed; retry, shunted and bad = failed attempts). Only queues run by qslice's own runners; supervised queues show no events here.",
			unitMsgRate, half,
			q(`sum by (queue, outcome) (rate(qslice_messages_handled_total{`+selQueue+`, outcome!="released"}[$__rate_interval]))`, "{{queue}} {{outcome}}"))).
		WithPanel(graph("Arrival and processing", "Processed: messages done, shunted or bad per second. Arrival (estimate) = processed + the growth of the backlog (deriv of the ready count over 10 minutes). Arrival above processing for long is a queue falling behind.",
			unitMsgRate, half,
			q(`sum by (queue) (rate(qslice_messages_handled_total{`+selQueue+`, outcome=~"done|shunted|bad"}[$__rate_interval]))`, "{{queue}} processed"),
			q(`sum by (queue) (max by (job, queue, slice) (deriv(qslice_queue_ready_messages{`+selQueue+`}[10m]))) + sum by (queue) (rate(qslice_messages_handled_total{`+selQueue+`, outcome=~"done|shunted|bad"}[10m]))`, "{{queue}} arrival (estimate)"))).
		WithPanel(graph("In-flight messages", "Messages claimed by a runner or a supervised worker (.bak files) per queue.",
			unitCount, half,
			q(`sum by (queue) (max by (job, queue, slice) (qslice_queue_in_flight_messages{`+selQueue+`}))`, "{{queue}}"))).
		WithPanel(graph("Oldest in-flight message", "How long the oldest claimed message has been in flight per queue. Longer than the handler timeout means a hung worker.",
			unitSeconds, half,
			q(`max by (queue) (qslice_queue_oldest_in_flight_age_seconds{`+selQueue+`})`, "{{queue}}"))).
		WithPanel(graph("Handle duration", "Claim to end of handling, 50th, 90th and 99th percentiles per queue (qslice's own runners).",
			unitSeconds, half,
			q(`histogram_quantile(0.5, sum by (queue, le) (rate(qslice_message_handle_duration_seconds_bucket{`+selQueue+`}[$__rate_interval])))`, "{{queue}} p50"),
			q(`histogram_quantile(0.9, sum by (queue, le) (rate(qslice_message_handle_duration_seconds_bucket{`+selQueue+`}[$__rate_interval])))`, "{{queue}} p90"),
			q(`histogram_quantile(0.99, sum by (queue, le) (rate(qslice_message_handle_duration_seconds_bucket{`+selQueue+`}[$__rate_interval])))`, "{{queue}} p99"))).
		WithPanel(graph("Shunted and bad messages", "Messages in each queue's shunt and bad directories. Mailman shares one shunt/ and bad/ among queues: the same count then appears under every queue.",
			unitCount, half,
			q(`max by (queue) (qslice_queue_shunt_messages{`+selQueue+`})`, "{{queue}} shunt"),
			q(`max by (queue) (qslice_queue_bad_messages{`+selQueue+`})`, "{{queue}} bad"))).
		WithRow(row("Slices")).
		WithPanel(grid("Per-slice backlog", "One row per slice at the last scan: ready messages, their bytes, the oldest ready age, in-flight messages, the oldest in-flight age, messages processed and failed in the last hour (qslice's runners), and the owner as the cluster sees it.",
			unitCount, tall, []string{"job", "Value #F"},
			[]column{
				{"Value #A", "Ready", unitCount},
				{"Value #B", "Ready bytes", unitBytes},
				{"Value #C", "Oldest ready", unitSeconds},
				{"Value #D", "In flight", unitCount},
				{"Value #E", "Oldest in flight", unitSeconds},
				{"Value #G", "Processed (1h)", unitCount},
				{"Value #H", "Failed (1h)", unitCount},
				{"node", "Owner", ""},
			},
			tableQuery(`max by (job, queue, slice) (qslice_queue_ready_messages{`+selQueue+`})`),
			tableQuery(`max by (job, queue, slice) (qslice_queue_ready_bytes{`+selQueue+`})`),
			tableQuery(`max by (job, queue, slice) (qslice_queue_oldest_ready_age_seconds{`+selQueue+`})`),
			tableQuery(`max by (job, queue, slice) (qslice_queue_in_flight_messages{`+selQueue+`})`),
			tableQuery(`max by (job, queue, slice) (qslice_queue_oldest_in_flight_age_seconds{`+selQueue+`})`),
			tableQuery(`max by (job, queue, slice, node) (qslice_slice_owner_info{`+selQueue+`})`),
			tableQuery(`sum by (job, queue, slice) (increase(qslice_slice_messages_handled_total{`+selQueue+`, outcome="done"}[1h]))`),
			tableQuery(`sum by (job, queue, slice) (increase(qslice_slice_messages_handled_total{`+selQueue+`, outcome=~"shunted|bad"}[1h]))`))).
		WithPanel(graph("Ready messages by slice", "Waiting messages per slice. One slice growing alone points at its owner or its worker.",
			unitCount, half,
			q(`max by (queue, slice) (qslice_queue_ready_messages{`+selQueue+`})`, "{{queue}}/{{slice}}")).
			Thresholds(thresholds(fallingBehindReady, "orange")).
			ThresholdsStyle(thresholdsLine())).
		WithPanel(graph("Oldest ready message by slice", "Age of the oldest waiting message per slice.",
			unitSeconds, half,
			q(`max by (queue, slice) (qslice_queue_oldest_ready_age_seconds{`+selQueue+`})`, "{{queue}}/{{slice}}")).
			Thresholds(backlogAgeThresholds()).
			ThresholdsStyle(thresholdsLine())).
		WithPanel(graph("Processed by slice", "Messages processed (done) per second and slice, summed over the nodes that handled them (qslice's own runners). A slice with a backlog and no rate here is not being worked.",
			unitMsgRate, half,
			q(`sum by (queue, slice) (rate(qslice_slice_messages_handled_total{`+selQueue+`, outcome="done"}[$__rate_interval]))`, "{{queue}}/{{slice}}"))).
		WithPanel(graph("Failed by slice", "Messages shunted or moved to bad/ per second and slice. One slice failing alone points at its messages or its owner.",
			unitMsgRate, half,
			q(`sum by (queue, slice) (rate(qslice_slice_messages_handled_total{`+selQueue+`, outcome=~"shunted|bad"}[$__rate_interval]))`, "{{queue}}/{{slice}}"))).
		WithRow(row("Scans and files")).
		WithPanel(graph("Queue scan success", "1 when the node's last scan of the queue directory completed, 0 when it failed (missing or unreadable directory, NFS ESTALE, scan budget exceeded).",
			unitNone, third,
			q(`min by (instance, queue) (qslice_queue_scan_success{`+selQueue+`})`, "{{instance}} {{queue}}")).Min(0).Max(1)).
		WithPanel(graph("Time since the last successful scan", "Now minus the start of each node's last successful scan of the queue. It should stay below the probe interval; a rising line is a stuck or failing probe.",
			unitSeconds, third,
			q(`time() - max by (instance, queue) (qslice_queue_scan_last_success_timestamp_seconds{`+selQueue+`})`, "{{instance}} {{queue}}"))).
		WithPanel(graph("Queue scan duration", "Duration of each node's last scan of the queue directory.",
			unitSeconds, third,
			q(`max by (instance, queue) (qslice_queue_scan_duration_seconds{`+selQueue+`})`, "{{instance}} {{queue}}"))).
		WithPanel(graph("Temporary, ignored and unreadable files", "Messages being written (.pck.tmp), entries that are not queue files, and files the last scan could not stat.",
			unitCount, half,
			q(`max by (queue) (qslice_queue_temp_files{`+selQueue+`})`, "{{queue}} being written"),
			q(`max by (queue) (qslice_queue_ignored_files{`+selQueue+`})`, "{{queue}} ignored"),
			q(`max by (queue) (qslice_queue_scan_file_errors{`+selQueue+`})`, "{{queue}} unreadable"))).
		WithPanel(bars("Recovered and skipped files, disk faults", "In-flight messages found when a node took a slice over (requeued, bad or failed), files a runner skipped (foreign or malformed names; leftover *.tmp removed), and disk faults the runners backed off from (claim, read, lock, shunt or bad directory), per interval.",
			unitCount, half,
			q(`sum by (queue, result) (increase(qslice_recovered_messages_total{`+selQueue+`}[$__rate_interval]))`, "{{queue}} recovered {{result}}"),
			q(`sum by (queue, reason) (increase(qslice_skipped_files_total{`+selQueue+`}[$__rate_interval]))`, "{{queue}} skipped: {{reason}}"),
			q(`sum by (queue, reason) (increase(qslice_runner_faults_total{`+selQueue+`}[$__rate_interval]))`, "{{queue}} disk fault: {{reason}}")))
}
