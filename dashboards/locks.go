package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// quantiles returns p50, p90 and p99 queries of a histogram, by queue.
func quantiles(metric, sel string) []query {
	var out []query
	for _, p := range []struct{ phi, name string }{{"0.5", "p50"}, {"0.9", "p90"}, {"0.99", "p99"}} {
		out = append(out, q(`histogram_quantile(`+p.phi+`, sum by (queue, le) (rate(`+metric+`_bucket{`+sel+`}[$__rate_interval])))`, "{{queue}} "+p.name))
	}
	return out
}

// locks: flufl.lock / Mailman 2.1 lock files on disk, and the runners' waits for them.
func locks() *dashboard.DashboardBuilder {
	return newDashboard("qslice-locks", "qslice / Locks",
		"Lock files of the observed lock directories (holders, waiters, expired and orphaned locks) and the runners' message lock waits, holds and breaks.",
		jobVar(), instanceVar(true), queueVar(), lockVar()).
		WithRow(row("Lock files on disk")).
		WithPanel(graph("Held locks", "Lock files held in each observed directory (max across nodes: nodes sharing the directory see the same files).",
			unitCount, third,
			q(`max by (lock) (qslice_locks_held{`+selLock+`})`, "{{lock}}"))).
		WithPanel(graph("Waiters", "Claim files waiting for a lock in each directory.",
			unitCount, third,
			q(`max by (lock) (qslice_lock_waiters{`+selLock+`})`, "{{lock}}"))).
		WithPanel(graph("Expired locks", "Held locks past their expiry plus the clock slop: their holder died or stopped refreshing, and any waiter would break them.",
			unitCount, third,
			q(`max by (lock) (qslice_locks_expired{`+selLock+`})`, "{{lock}}")).
			Thresholds(thresholds(1, "red")).
			ThresholdsStyle(thresholdsLine())).
		WithPanel(graph("Longest hold", "How long the longest-held lock of each directory has been held.",
			unitSeconds, third,
			q(`max by (lock) (qslice_lock_oldest_hold_seconds{`+selLock+`})`, "{{lock}}"))).
		WithPanel(graph("Dead holders and orphaned claims", "Per node (these are judged on the host that ran the process): held locks whose holder process is gone, and claim files left by dead processes or older than an hour.",
			unitCount, third,
			q(`max by (instance, lock) (qslice_locks_holder_dead{`+selLock+`})`, "{{instance}} {{lock}} holder dead"),
			q(`max by (instance, lock) (qslice_lock_orphaned_claims{`+selLock+`})`, "{{instance}} {{lock}} orphaned claims"))).
		WithPanel(graph("Anomalous lock files", "Lock files that are not sound flufl.lock or Mailman 2.1 locks: bad content, wrong link count, missing claim.",
			unitCount, third,
			q(`max by (lock) (qslice_locks_anomalous{`+selLock+`})`, "{{lock}}"))).
		WithRow(row("Message locks (runners)")).
		WithPanel(graph("Lock wait", "Time runners waited for a message's lock file, whatever the result: 50th, 90th and 99th percentiles per queue.",
			unitSeconds, half, quantiles("qslice_message_lock_wait_seconds", selQueue)...)).
		WithPanel(graph("Lock hold", "Time runners held a message's lock file: 50th, 90th and 99th percentiles per queue.",
			unitSeconds, half, quantiles("qslice_message_lock_hold_seconds", selQueue)...)).
		WithPanel(graph("Lock acquisitions", "Message lock waits per second per queue (acquired, broke an expired lock, or timed out).",
			unitPerSec, third,
			q(`sum by (queue) (rate(qslice_message_lock_wait_seconds_count{`+selQueue+`}[$__rate_interval]))`, "{{queue}}"))).
		WithPanel(bars("Lock breaks", "Message lock acquisitions that first broke an expired lock, per interval: a holder died or overran its lifetime.",
			unitCount, third,
			q(`sum by (queue) (increase(qslice_message_lock_breaks_total{`+selQueue+`}[$__rate_interval]))`, "{{queue}}"))).
		WithPanel(bars("Lock timeouts", "Message lock waits that gave up after lock_timeout, per interval (the message is retried later).",
			unitCount, third,
			q(`sum by (queue) (increase(qslice_message_lock_timeouts_total{`+selQueue+`}[$__rate_interval]))`, "{{queue}}"))).
		WithRow(row("Lock directory scans")).
		WithPanel(graph("Lock scan success", "1 when the node's last scan of the lock directory listed it, 0 when it failed.",
			unitNone, third,
			q(`min by (instance, lock) (qslice_lock_scan_success{`+selLock+`})`, "{{instance}} {{lock}}")).Min(0).Max(1)).
		WithPanel(graph("Time since the last successful lock scan", "Now minus the start of each node's last successful scan of the lock directory.",
			unitSeconds, third,
			q(`time() - max by (instance, lock) (qslice_lock_scan_last_success_timestamp_seconds{`+selLock+`})`, "{{instance}} {{lock}}"))).
		WithPanel(graph("Lock scan duration", "Duration of each node's last scan of the lock directory.",
			unitSeconds, third,
			q(`max by (instance, lock) (qslice_lock_scan_duration_seconds{`+selLock+`})`, "{{instance}} {{lock}}")))
}
