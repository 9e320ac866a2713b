#!/usr/bin/env bash
# Installs qslice's Debian package on this machine and checks what it promises, then purges it:
#   - dpkg -i: the qslice system user and /var/lib/qslice (qslice:qslice, 0750), the unit installed
#     but not enabled, conffiles registered;
#   - `qslice version` and --version: the release's version and the commit it was built from;
#   - systemd-analyze verify on the installed unit, and its security exposure (at most 2.5);
#   - man qslice and the subcommands' pages render without warnings; the bash, zsh and fish
#     completions are where the shells look: bash and fish complete subcommands from them, zsh's
#     compinit registers qslice's;
#   - qslice config check /etc/qslice/qslice.yaml passes, and the shipped configuration runs as
#     the qslice user: a message enqueued is processed, `qslice status` answers on the socket;
#   - reinstalling keeps an edited conffile and an enabled service; dpkg -r keeps configuration
#     and state; dpkg -P removes both and leaves nothing of the package.
# Needs root (dpkg). Without DEB it builds one for this machine's architecture with
# scripts/release.sh. Refuses to run when a qslice package is installed already.
#
#   scripts/check-package.sh [DEB]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "check-package.sh: needs root (dpkg -i)" >&2; exit 1; }
if dpkg-query -W -f='${Status}' qslice 2>/dev/null | grep -q 'installed\|config-files'; then
  echo "check-package.sh: a qslice package is on this machine already ($(dpkg-query -W -f='${Version} ${Status}' qslice)); it would be purged: remove it first" >&2
  exit 1
fi

tmp=$(mktemp -d)
node_pid=
cleanup() {
  [ -z "$node_pid" ] || kill "$node_pid" 2>/dev/null || true
  if dpkg-query -W qslice >/dev/null 2>&1; then
    systemctl disable qslice.service >/dev/null 2>&1 || true
    dpkg -P qslice >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp" /run/qslice
}
trap cleanup EXIT
fail() {
  echo "check-package.sh: FAIL: $*" >&2
  exit 1
}
ok() { echo "ok: $*"; }

start=$(date +%s)
arch=$(dpkg --print-architecture)
if [ $# -ge 1 ]; then
  deb=$1
  rev=
else
  "$here/scripts/release.sh" -a "$arch" -o "$tmp/dist"
  deb=$(ls "$tmp"/dist/qslice_*_"$arch".deb)
  rev=$(git -C "$here" rev-parse HEAD)
fi
deb_version=$(dpkg-deb -f "$deb" Version)
echo "checking $deb ($(du -k "$deb" | cut -f1) KiB, version $deb_version)"

dpkg -i "$deb" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; fail "dpkg -i"; }
grep -q "systemctl enable --now qslice" "$tmp/install.log" || fail "postinst did not say how to start the service: $(cat "$tmp/install.log")"
ok "dpkg -i"

# The binary and its version. Debian's version is the release's as release.sh maps it: 1.3.0~rc.1
# for v1.3.0-rc.1.
out=$(qslice version)
[[ $out =~ ^qslice\ v([^ ]+)\ \(revision\ ([0-9a-f]{40}),\ commit\ date\ [0-9T:-]+Z, ]] || fail "qslice version: $out"
v=${BASH_REMATCH[1]}
if [[ $v == *-* ]]; then pre=${v#*-}; v="${v%%-*}~${pre//-/.}"; fi
[ "$v" = "$deb_version" ] || fail "qslice version says ${BASH_REMATCH[1]}, the package is $deb_version"
[ -z "$rev" ] || [ "${BASH_REMATCH[2]}" = "$rev" ] || fail "qslice version says revision ${BASH_REMATCH[2]}, built from $rev"
[ "$(qslice --version)" = "$out" ] || fail "qslice --version: $(qslice --version), version: $out"
ok "$out"

# User, state directory, unit state, conffiles.
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd qslice) || fail "no qslice user"
[ "$uid" -lt 1000 ] && [ "$home" = /var/lib/qslice ] && [ "$shell" = /usr/sbin/nologin ] ||
  fail "qslice user: uid $uid home $home shell $shell"
[ "$(stat -c %U:%G:%a /var/lib/qslice)" = qslice:qslice:750 ] || fail "/var/lib/qslice: $(stat -c %U:%G:%a /var/lib/qslice)"
ok "system user qslice (uid $uid), /var/lib/qslice qslice:qslice 0750"
state=$(systemctl is-enabled qslice.service 2>&1 || true)
[ "$state" = disabled ] || fail "qslice.service is $state after install, want disabled"
conffiles=$(dpkg-query -W -f='${Conffiles}' qslice)
for f in /etc/qslice/qslice.yaml /etc/default/qslice; do
  grep -q " $f " <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
ok "unit installed disabled; conffiles: /etc/qslice/qslice.yaml /etc/default/qslice"

unit=/lib/systemd/system/qslice.service
[ -f "$unit" ] || fail "no $unit"
verify=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
score=$(systemd-analyze security --offline=yes "$unit" 2>&1 | sed -n 's/.*Overall exposure level for qslice.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' || fail "systemd-analyze security: exposure '$score', want at most 2.5"
grep -q '^ExecStart=/usr/bin/qslice run --config /etc/qslice/qslice.yaml' "$unit" || fail "the unit does not run the installed binary and configuration"
ok "systemd-analyze verify $unit; security exposure $score"

# Man pages: found by name, rendered without warnings.
[ "$(man -w qslice)" = /usr/share/man/man1/qslice.1.gz ] || fail "man -w qslice: $(man -w qslice 2>&1)"
for page in qslice qslice-run qslice-config-check qslice-mailman-import qslice-queue-stats; do
  text=$(MANWIDTH=100 man --warnings=all "$page" 2>"$tmp/man.err") || fail "man $page"
  [ ! -s "$tmp/man.err" ] || fail "man $page warns: $(cat "$tmp/man.err")"
  grep -q "^NAME" <<<"$text" && grep -q "^SYNOPSIS" <<<"$text" || fail "man $page has no NAME/SYNOPSIS"
done
MANWIDTH=100 man -l /usr/share/man/man1/qslice.1.gz | grep -q 'qslice - Run Mailman-style queue workers' || fail "man -l qslice.1.gz"
ok "man qslice ($(dpkg -L qslice | grep -c '^/usr/share/man/man1/.*\.1\.gz$') pages)"

# Completions where bash-completion, zsh and fish look; bash loads qslice's by name and completes.
for f in /usr/share/bash-completion/completions/qslice /usr/share/zsh/vendor-completions/_qslice \
  /usr/share/fish/vendor_completions.d/qslice.fish; do
  [ -s "$f" ] || fail "no completion $f"
done
words=$(bash --norc --noprofile -c '
  source /usr/share/bash-completion/bash_completion
  _completion_loader qslice
  COMP_WORDS=(qslice queue s); COMP_CWORD=2; COMP_LINE="qslice queue s"; COMP_POINT=${#COMP_LINE}
  __start_qslice qslice s queue 2>/dev/null
  echo "${COMPREPLY[*]}"')
[ "$words" = "show stats" ] || fail "bash completes 'qslice queue s' to '$words', want 'show stats'"
# fish loads vendor_completions.d by itself; zsh's compinit finds _qslice on Debian's fpath.
fishwords=$(HOME=$tmp XDG_CONFIG_HOME=$tmp/config XDG_DATA_HOME=$tmp/data fish -c 'complete -C"qslice queue s"' | cut -f1 | tr '\n' ' ')
[ "$fishwords" = "show stats " ] || fail "fish completes 'qslice queue s' to '$fishwords', want 'show stats'"
zcomp=$(HOME=$tmp zsh -f -c 'autoload -U compinit; compinit -u -d "$HOME/zcompdump"; print -r -- ${_comps[qslice]}')
[ "$zcomp" = _qslice ] || fail "zsh's compinit does not know qslice's completion (got '$zcomp')"
ok "completions: bash and fish complete 'qslice queue s' to: $words; zsh's compinit loads _qslice"

# The shipped configuration: valid, and it runs as the qslice user as the unit runs it (its
# RuntimeDirectory and StateDirectory made by hand: systemd is not running here).
qslice config check /etc/qslice/qslice.yaml >"$tmp/check.out" || fail "qslice config check /etc/qslice/qslice.yaml: $(cat "$tmp/check.out")"
ok "qslice config check /etc/qslice/qslice.yaml"
install -d -o qslice -g qslice -m 0755 /run/qslice
runuser -u qslice -- env STATE_DIRECTORY=/var/lib/qslice RUNTIME_DIRECTORY=/run/qslice \
  qslice run --config /etc/qslice/qslice.yaml >"$tmp/node.log" 2>&1 &
node_pid=$!
# wait_for WHAT CONDITION...: poll for up to 60 s while the node runs.
wait_for() {
  local what=$1 deadline=$((SECONDS + 60))
  shift
  until "$@"; do
    kill -0 "$node_pid" 2>/dev/null || fail "qslice run exited: $(cat "$tmp/node.log")"
    [ $SECONDS -lt $deadline ] || fail "$what within 60 s: $(ls -lR /var/lib/qslice /run/qslice); $(cat "$tmp/node.log")"
    sleep 0.2
  done
}
wait_for "no control socket and queue directory" test -S /run/qslice/qslice.sock -a -d /var/lib/qslice/queue/in
echo hello | runuser -u qslice -- qslice queue enqueue /var/lib/qslice/queue/in >/dev/null
queue_empty() { [ -z "$(find /var/lib/qslice/queue/in -name '*.pck')" ]; }
wait_for "the message was not processed" queue_empty
qslice status >"$tmp/status.out" 2>&1 || fail "qslice status: $(cat "$tmp/status.out")"
kill -TERM "$node_pid"
wait "$node_pid" || true
node_pid=
[ -z "$(find /var/lib/qslice/queue -type f)" ] || fail "files left in the queue: $(find /var/lib/qslice/queue -type f)"
[ "$(stat -c %U /var/lib/qslice/queue/in)" = qslice ] || fail "queue directory not owned by qslice"
ok "the shipped configuration runs as qslice: a message processed, qslice status answers on /run/qslice/qslice.sock"
rm -rf /run/qslice

# Reinstall (an upgrade's path through the maintainer scripts) keeps an edited conffile and the
# administrator's choice to enable the service.
echo "# edited by the administrator" >>/etc/qslice/qslice.yaml
systemctl enable qslice.service >/dev/null 2>&1 || fail "systemctl enable qslice"
dpkg -i "$deb" >"$tmp/reinstall.log" 2>&1 || { cat "$tmp/reinstall.log" >&2; fail "dpkg -i again"; }
grep -q "edited by the administrator" /etc/qslice/qslice.yaml || fail "reinstall replaced the edited /etc/qslice/qslice.yaml"
state=$(systemctl is-enabled qslice.service 2>&1 || true)
[ "$state" = enabled ] || fail "qslice.service is $state after reinstall, want enabled (as the administrator left it)"
ok "reinstall keeps the edited conffile and the service enabled"

dpkg -r qslice >"$tmp/remove.log" 2>&1 || { cat "$tmp/remove.log" >&2; fail "dpkg -r"; }
[ ! -e /usr/bin/qslice ] || fail "dpkg -r left /usr/bin/qslice"
[ ! -e "$unit" ] || fail "dpkg -r left $unit"
[ -f /etc/qslice/qslice.yaml ] && [ -d /var/lib/qslice/queue ] || fail "dpkg -r removed configuration or state"
ok "dpkg -r: binary and unit gone; /etc/qslice and /var/lib/qslice kept"

dpkg -P qslice >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log" >&2; fail "dpkg -P"; }
for p in /etc/qslice /etc/default/qslice /var/lib/qslice /usr/share/doc/qslice /usr/share/man/man1/qslice.1.gz; do
  [ ! -e "$p" ] || fail "dpkg -P left $p"
done
! dpkg-query -W qslice >/dev/null 2>&1 || fail "dpkg still knows qslice: $(dpkg-query -W -f='${Status}' qslice)"
getent passwd qslice >/dev/null || fail "purge removed the qslice user (Debian keeps system users)"
for p in /etc/systemd/system/multi-user.target.wants/qslice.service /etc/systemd/system/qslice.service; do
  [ ! -L "$p" ] || fail "dpkg -P left $p -> $(readlink "$p")"
done
ok "dpkg -P: configuration, state and the unit's enablement gone, the qslice user kept"
echo "check-package.sh: all checks passed in $(($(date +%s) - start)) s"
