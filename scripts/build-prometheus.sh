#!/usr/bin/env bash
# Builds a Prometheus server and promtool with Consul service discovery (Apache-2.0), from the Go
# module proxy through the separate tools module in tools/prometheus/. Debian's prometheus package
# is built without Consul SD, so the test of the shipped consul_sd_configs example needs this one.
# Only the Consul, file and HTTP discovery plugins are compiled in (build tags remove_all_sd,
# enable_consul_sd), which keeps the build to a few minutes. Cached outside the work tree.
#
# Prints the path of the prometheus binary on stdout (promtool is beside it). Tests find it
# through QSLICE_PROMETHEUS_SD.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
want=$(cd "$here/tools/prometheus" && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
bin_dir=${QSLICE_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/qslice/bin}
dir=$bin_dir/prometheus-sd-$want
if [ -x "$dir/prometheus" ] && [ -x "$dir/promtool" ]; then
  echo "$dir/prometheus"
  exit 0
fi
mkdir -p "$dir.tmp"
echo "building Prometheus (module $want) with Consul SD into $dir (a few minutes the first time)" >&2
cd "$here/tools/prometheus"
go build -tags remove_all_sd,enable_consul_sd -o "$dir.tmp/" \
  github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
rm -rf "$dir"
mv "$dir.tmp" "$dir"
"$dir/prometheus" --version >&2
echo "$dir/prometheus"
