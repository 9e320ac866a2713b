#!/usr/bin/env bash
# Builds the Consul agent that qslice's integration tests run against (Consul 1.13.9, MPL-2.0),
# from the Go module proxy through the separate tools module in tools/. The binary is cached outside
# the work tree, so a second clone on the same machine reuses it.
#
# Prints the path of the binary on stdout. Tests find it through QSLICE_CONSUL.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
want=1.13.9
bin_dir=${QSLICE_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/qslice/bin}
bin=$bin_dir/consul-$want
if [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "Consul v$want"; then
  ln -sf "consul-$want" "$bin_dir/consul"
  echo "$bin"
  exit 0
fi
mkdir -p "$bin_dir"
echo "building Consul $want into $bin (about 5 minutes the first time)" >&2
cd "$here/tools"
go build -o "$bin.tmp" github.com/hashicorp/consul
mv "$bin.tmp" "$bin"
ln -sf "consul-$want" "$bin_dir/consul"   # sdk/testutil looks for a binary named consul on PATH
"$bin" version >&2
echo "$bin"
