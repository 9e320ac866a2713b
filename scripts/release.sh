#!/usr/bin/env bash
# Builds a qslice release from the committed HEAD, into dist/:
#   qslice-VERSION-linux-ARCH         static binaries (CGO_ENABLED=0, -trimpath, VCS stamped)
#   qslice_DEBVERSION_ARCH.deb        a Debian package per architecture (nfpm, pinned in tools/nfpm)
#   SHA256SUMS
# for ARCH amd64 and arm64 (or those given with -a). VERSION is the argument (a tag: v1.2.3,
# v1.3.0-rc.1), else the tag at HEAD, else a Go pseudo-version of HEAD (what `go install
# ...@COMMIT` reports). The Debian version follows from it: 1.2.3, 1.3.0~rc.1, 1.2.4~0.20261206120639.abcdef012345.
#
#   scripts/release.sh [-a ARCH]... [-o DIR] [VERSION]
#
# It builds in a clean clone of HEAD, so uncommitted changes are refused, never packaged, and the
# binary carries its commit (`qslice version`); man pages and the packages' files are dated by the
# commit (SOURCE_DATE_EPOCH), so the same commit gives the same files. No docker, no cgo: the
# arm64 build is a cross-compilation. QSLICE_MAINTAINER ("Name <email>") sets the packages'
# Maintainer field, by default the author of HEAD.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
caller=$PWD
cd "$here"

arches=()
out=$here/dist
while getopts "a:o:h" opt; do
  case $opt in
  a) arches+=("$OPTARG") ;;
  o) out=$OPTARG ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
for a in "${arches[@]}"; do
  case $a in amd64 | arm64) ;; *) echo "release.sh: architecture $a: want amd64 or arm64" >&2; exit 2 ;; esac
done
[ $# -le 1 ] || { echo "release.sh: one VERSION at most, got: $*" >&2; exit 2; }

if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "release.sh: the work tree has uncommitted changes; a release is built from HEAD only: commit or stash them" >&2
  git status --short --untracked-files=no >&2
  exit 1
fi
rev=$(git rev-parse HEAD)
# Debian's Maintainer field: who answers for the package; by default the author of the commit.
maintainer=${QSLICE_MAINTAINER:-$(git log -1 --format='%an <%ae>' "$rev")}
epoch=$(git log -1 --format=%ct "$rev")
export SOURCE_DATE_EPOCH=$epoch

# The version: given, or the tag at HEAD, or a pseudo-version after the latest tag.
if [ $# -eq 1 ]; then
  version=$1
elif tag=$(git describe --tags --exact-match --match 'v[0-9]*' "$rev" 2>/dev/null); then
  version=$tag
else
  stamp=$(TZ=UTC git log -1 --date=format-local:%Y%m%d%H%M%S --format=%cd "$rev")
  if last=$(git describe --tags --abbrev=0 --match 'v[0-9]*.[0-9]*.[0-9]*' "$rev" 2>/dev/null) &&
    [[ $last =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
    version="v${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.$((BASH_REMATCH[3] + 1))-0.$stamp-${rev:0:12}"
  else
    version="v0.0.0-$stamp-${rev:0:12}"
  fi
fi
if ! [[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "release.sh: version $version: want a semantic version with a v (v1.2.3, v1.3.0-rc.1)" >&2
  exit 2
fi
# Debian: no v; a pre-release sorts before the release (~); dashes are for the Debian revision.
deb_version=${version#v}
if [[ $deb_version == *-* ]]; then
  pre=${deb_version#*-}
  deb_version="${deb_version%%-*}~${pre//-/.}"
fi

out=$(cd "$caller" && mkdir -p "$out" && cd "$out" && pwd)
if [ -n "$(ls -A "$out")" ]; then
  if [ "$out" = "$here/dist" ]; then
    rm -rf "${out:?}"/*
  else
    echo "release.sh: $out is not empty" >&2
    exit 1
  fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "qslice $version (Debian $deb_version), commit $rev, for ${arches[*]} into $out" >&2

# A clean clone (a .git directory of its own: the go command stamps no VCS data in a linked
# worktree), sharing this repository's objects.
src=$tmp/src
git clone -q --shared --no-checkout "$here" "$src"
git -C "$src" checkout -q --detach "$rev"
cd "$src"

ldflags="-s -w -X github.com/qslice/qslice/internal/buildinfo.version=$version"
build() { # build GOARCH OUTPUT
  CGO_ENABLED=0 GOOS=linux GOARCH=$1 go build -trimpath -buildvcs=true -ldflags "$ldflags" -o "$2" ./cmd/qslice
  local meta
  meta=$(go version -m "$2")
  for want in "CGO_ENABLED=0" "GOARCH=$1" "-trimpath=true" "vcs.revision=$rev" "vcs.modified=false"; do
    grep -qF -- "$want" <<<"$meta" || { echo "release.sh: $2 was not built with $want:" >&2; echo "$meta" >&2; exit 1; }
  done
}

# Man pages and completions come from the command tree, the same for every architecture: generate
# them once with a binary for this machine.
hostarch=$(go env GOARCH)
build "$hostarch" "$tmp/host/qslice"
gen=$tmp/gen
"$tmp/host/qslice" generate --man "$gen/man" --bash-completion "$gen/completions/qslice.bash" \
  --zsh-completion "$gen/completions/_qslice" --fish-completion "$gen/completions/qslice.fish"
gzip -9n "$gen"/man/*.1

# The Debian changelog: this release, and the commits since the previous tag.
{
  echo "qslice ($deb_version) unstable; urgency=medium"
  echo
  echo "  * qslice $version,"
  echo "    commit $rev."
  if prev=$(git describe --tags --abbrev=0 --match 'v[0-9]*' "$rev^" 2>/dev/null); then
    echo "  * Changes since $prev:"
    git log --no-merges --reverse --format=%s "$prev..$rev" | while read -r subject; do
      fold -s -w 72 <<<"$subject" | sed 's/ *$//; 1s/^/    - /; 2,$s/^/      /'
    done
  else
    echo "  * The first release; its history is the git log of the repository."
  fi
  echo
  echo " -- $maintainer  $(LC_ALL=C date -u -d "@$epoch" '+%a, %d %b %Y %H:%M:%S +0000')"
} | gzip -9n >"$gen/changelog.gz"

# nfpm, the version tools/nfpm pins, built once and cached beside Consul and Prometheus.
nfpm_version=$(cd tools/nfpm && go list -m -f '{{.Version}}' github.com/goreleaser/nfpm/v2)
nfpm=${QSLICE_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/qslice/bin}/nfpm-$nfpm_version
if [ ! -x "$nfpm" ]; then
  echo "building nfpm $nfpm_version (tools/nfpm) into $nfpm" >&2
  mkdir -p "$(dirname "$nfpm")"
  (cd tools/nfpm && go build -trimpath -o "$nfpm.tmp" github.com/goreleaser/nfpm/v2/cmd/nfpm)
  mv "$nfpm.tmp" "$nfpm"
fi

for arch in "${arches[@]}"; do
  stage=$tmp/stage-$arch
  mkdir -p "$stage"
  cp -r "$gen/man" "$gen/completions" "$gen/changelog.gz" "$stage/"
  if [ "$arch" = "$hostarch" ]; then
    cp "$tmp/host/qslice" "$stage/qslice"
  else
    build "$arch" "$stage/qslice"
  fi
  cp "$stage/qslice" "$out/qslice-$version-linux-$arch"
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch scripts/copyright.sh "$stage/qslice" > "$stage/copyright"
  QSLICE_ARCH=$arch QSLICE_STAGE=$stage QSLICE_DEB_VERSION=$deb_version \
    QSLICE_MAINTAINER=$maintainer \
    "$nfpm" package --config packaging/nfpm.yaml --packager deb --target "$out/" >&2
done

cd "$out"
sha256sum -- qslice* > SHA256SUMS
ls -l >&2
