#!/usr/bin/env bash
# Runs every Go fuzz target briefly (FUZZTIME each, default 3s): CI calls it from scripts/test.sh,
# so a crash that the seed corpus (f.Add and testdata/fuzz/<Target>/ in each package) does not
# already catch has a few seconds to be found. A failing input is written to testdata/fuzz/ by
# the go tool: commit it with the fix, it then runs in every plain `go test`.
#   scripts/fuzz.sh                  # all targets, 3s each
#   FUZZTIME=5m scripts/fuzz.sh ./config/   # one package, longer
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-3s}
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then
  mapfile -t pkgs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u)
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for pkg in "${pkgs[@]}"; do
  for target in $(grep -h -o '^func Fuzz[A-Za-z0-9_]*' "$pkg"/*_test.go | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $target ($fuzztime)"
    if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >"$out" 2>&1; then
      cat "$out"
      echo "fuzz $pkg $target failed" >&2
      exit 1
    fi
  done
done
