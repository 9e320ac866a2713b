#!/usr/bin/env bash
# Runs qslice's whole test suite on a fresh Debian machine, setting up what it needs first:
#   - the Debian packages listed in .ci/apt-packages.txt (python3-flufl.lock for the lock
#     interoperability tests, prometheus for promtool, mailman3 for the supervision test, chromium
#     for the status page test; man-db, bash-completion, zsh and fish for the man pages and
#     completions), when running as root;
#   - Consul 1.13.9, built once from the Go module proxy by scripts/build-consul.sh and cached;
#   - a Prometheus and promtool with Consul service discovery (Debian's have none), built once by
#     scripts/build-prometheus.sh and cached.
# Tests that need a missing part skip with a message saying what to install. CI has every part, so
# a skip that .ci/allowed-skips.txt does not list fails the run (QSLICE_ALLOW_SKIPS=1 only reports
# them, for a developer machine without root). Every benchmark then runs once at a small size, so a
# benchmark that no longer checks out fails here, not in someone's measurement. Last, as root,
# scripts/check-package.sh builds the Debian package and checks it installed.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg; do
  [ -z "$pkg" ] && continue
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < .ci/apt-packages.txt
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "not root: cannot install ${missing[*]}; the tests that need them skip, which fails the run unless QSLICE_ALLOW_SKIPS=1" >&2
  fi
fi

QSLICE_CONSUL=${QSLICE_CONSUL:-$(scripts/build-consul.sh)}
export QSLICE_CONSUL
QSLICE_PROMETHEUS_SD=${QSLICE_PROMETHEUS_SD:-$(scripts/build-prometheus.sh)}
export QSLICE_PROMETHEUS_SD
# Debian's python3 has the Debian packages (flufl.lock, mailman); a python3 earlier on PATH may not.
export QSLICE_PYTHON3=${QSLICE_PYTHON3:-/usr/bin/python3}

go vet ./...

reporter="$(mktemp -d)/testreport"
go build -o "$reporter" ./internal/cmd/testreport
allow=(-allow .ci/allowed-skips.txt)
if [ "${QSLICE_ALLOW_SKIPS:-}" = 1 ]; then
  allow+=(-allow-any)
fi
go test -count=1 -timeout 40m -json ./... "$@" | "$reporter" "${allow[@]}"

echo "the Consul driver's tests again, on the scoped watch layout:"
QSLICE_TEST_WATCH_LAYOUT=scoped go test -count=1 -timeout 20m -json ./failover/consul/ | "$reporter" "${allow[@]}"

echo "fuzz targets, a few seconds each:"
scripts/fuzz.sh

echo "benchmarks, once each at a small size:"
QSLICE_BENCH_FILES=2000 go test -count=1 -run '^$' -bench . -benchtime 1x -timeout 20m ./... | grep -Ev '^(goos|goarch|cpu|pkg):'

# The Debian package (scripts/release.sh): installed, checked and purged on this machine, which
# needs root; CI runs as root.
if [ "$(id -u)" = 0 ]; then
  echo "the Debian package: build, install, check, purge:"
  scripts/check-package.sh
else
  echo "not root: scripts/check-package.sh (dpkg -i of the package) not run" >&2
fi
