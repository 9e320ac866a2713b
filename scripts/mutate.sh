#!/usr/bin/env bash
# A short mutation check of qslice's safety tests: each mutation below is a small, deliberate bug
# in a copy of the working tree (uncommitted changes included); the named tests must fail on it.
# Run it before and after touching the safety code:
#
#   scripts/mutate.sh              # every mutation
#   scripts/mutate.sh NAME...      # only these
#
# It prints, per mutation, "killed" (the tests failed, as they must), "SURVIVED" (the tests passed:
# a hole), "STALE" (the code it mutates is gone) or "BROKEN" (the mutant does not compile): update
# the mutation for the last two. Exit 1 unless every mutation was killed.
set -euo pipefail
cd "$(dirname "$0")/.."

names=() files=() froms=() tos=() cmds=()
# mutation NAME FILE TEXT REPLACEMENT TEST-COMMAND: TEXT must occur exactly once in FILE.
mutation() { names+=("$1") files+=("$2") froms+=("$3") tos+=("$4") cmds+=("$5"); }

mutation claim-without-ownership runner/process.go \
  '!r.owned[slice] || lease == nil' 'lease == nil' \
  'go test -count=1 -run TestWorkerRechecksOwnershipBeforeClaiming ./runner'
mutation finish-is-a-no-op runner/queue/dir.go \
  'if err := syscall.Unlink(path); err != nil {' 'if err := error(nil); err != nil {' \
  "QSLICE_BENCH_FILES=300 go test -count=1 -run '^\$' -bench Throughput -benchtime 1x ./runner"
mutation recover-counts-no-attempt runner/queue/dir.go \
  'm.Attempts++' 'm.Attempts += 0' \
  'go test -count=1 -run TestRecoverAttempts ./runner/queue'
mutation chaos-explains-any-bad-file chaos/analyze.go \
  'return l.Where == "bad" && handlings > 0 && strings.HasPrefix(l.Reason, queue.ReasonInFlightTooOften+" ")' \
  'return l.Where == "bad" || handlings < 0 && queue.ReasonInFlightTooOften == ""' \
  "go test -count=1 -run 'TestLeftoverExplained|TestAnalyze' ./chaos"
mutation chaos-ignores-node-errors chaos/soak.go \
  'if l.Msg == "" || l.At.IsZero() {' $'if true {\n\t\treturn true\n\t}\n\tif l.Msg == "" || l.At.IsZero() {' \
  'go test -count=1 -run TestNodeErrorsAreJudged ./chaos'
mutation lease-ttl-stamped-on-answer failover/consul/keeper.go \
  'k.ttlSent = sent' 'k.ttlSent, _ = c.clk.Now(), sent' \
  'go test -count=1 -run TestLeaseStampedWhenSent/ttl_term ./failover/consul'
mutation lease-confirm-stamped-on-answer failover/consul/keeper.go \
  'k.confirmSent, k.freshSince = sent, false' 'k.confirmSent, k.freshSince, _ = c.clk.Now(), false, sent' \
  'go test -count=1 -run TestLeaseStampedWhenSent/confirmation_term ./failover/consul'

want=("$@")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The copy: the working tree as it is, without .git (tests never need it).
tar --exclude=./.git --exclude=./var -cf - . | tar -xf - -C "$work"

mutate='import sys
path, old, new = sys.argv[1:4]
src = open(path).read()
if src.count(old) != 1:
    sys.exit(1)
open(path, "w").write(src.replace(old, new))'

failed=0
for i in "${!names[@]}"; do
  name=${names[$i]} file=${files[$i]} cmd=${cmds[$i]}
  if [ ${#want[@]} -gt 0 ] && [[ " ${want[*]} " != *" $name "* ]]; then
    continue
  fi
  cp "$work/$file" "$work/$file.orig"
  if ! python3 -c "$mutate" "$work/$file" "${froms[$i]}" "${tos[$i]}"; then
    printf '%-30s STALE: the text to mutate is not in %s exactly once\n' "$name" "$file"
    failed=1
    continue
  fi
  if (cd "$work" && eval "$cmd") >"$work/$name.log" 2>&1; then
    :
  elif grep -qE '\[build failed\]|\[setup failed\]|^# ' "$work/$name.log"; then
    printf '%-30s BROKEN: the mutated code does not build:\n' "$name"
    tail -20 "$work/$name.log"
    failed=1
    mv "$work/$file.orig" "$work/$file"
    continue
  fi
  if [ ! -s "$work/$name.log" ] || ! grep -qE '^(FAIL|--- FAIL)' "$work/$name.log"; then
    printf '%-30s SURVIVED: `%s` passed with the bug:\n' "$name" "$cmd"
    tail -20 "$work/$name.log"
    failed=1
  else
    printf '%-30s killed by `%s`\n' "$name" "$cmd"
  fi
  mv "$work/$file.orig" "$work/$file"
done
exit $failed
