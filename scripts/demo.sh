#!/usr/bin/env bash
# See a failover: a real Consul (dev mode), three qslice nodes on 127.0.0.1, a real Prometheus
# loaded with the shipped rules (dashboards/rules), a feeder. It kills a node with kill -9, shows
# the takeover and the fail-back in `qslice members` / `qslice status`, prints the alerts that
# fired, and draws the ownership of every slice over time and the backlog per slice, from
# Prometheus' data, into DIR/demo-ownership.svg (default DIR: ./demo-out).
#
#   scripts/demo.sh [--short] [--out DIR]
#
# About 4 minutes (--short: about 1 minute, with the rules' for: durations divided by 10). The
# hold-down is 30 s (5 s with --short) instead of the shipped 60 s. Needs Go, Consul (built once
# by scripts/build-consul.sh; QSLICE_CONSUL overrides) and Prometheus (Debian's `prometheus` on
# PATH, else the build of scripts/build-prometheus.sh; QSLICE_PROMETHEUS overrides). Everything
# runs in a temporary directory, on free ports of 127.0.0.1, and is stopped at the end, on
# failure and on Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
consul=${QSLICE_CONSUL:-$("$here/scripts/build-consul.sh")}
prometheus=${QSLICE_PROMETHEUS:-$(command -v prometheus || "$here/scripts/build-prometheus.sh")}
work=$(mktemp -d "${TMPDIR:-/tmp}/qslice-demo.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
(cd "$here" && go build -o "$work/bin/" ./cmd/qslice ./chaos/cmd/qslice-chaos-handler ./internal/cmd/qslice-demo)
"$work/bin/qslice-demo" -consul "$consul" -prometheus "$prometheus" -bin "$work/bin" \
  -rules "$here/dashboards/rules/qslice-rules.yaml" -work "$work" "$@" &
pid=$!
wait "$pid"
