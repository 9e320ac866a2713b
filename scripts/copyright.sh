#!/usr/bin/env bash
# Prints the Debian copyright file (/usr/share/doc/qslice/copyright) for a qslice binary:
# packaging/copyright (qslice's own code), then, since the binary is linked statically, every Go
# module linked into it (as `go version -m` lists them) and the Go standard library, with the
# licence and notice files each ships, verbatim; an identical text is printed once, with every
# module it covers. A module without a licence file fails the script: it is not to be shipped
# unexamined.
#
#   scripts/copyright.sh BINARY
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: scripts/copyright.sh BINARY" >&2; exit 2; }
bin=$1
modcache=$(go env GOMODCACHE)
goroot=$(go env GOROOT)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
texts=$tmp/texts
mkdir "$texts"

# add NAME FILE: FILE's text covers NAME.
add() {
  local sum
  sum=$(sha256sum <"$2" | cut -c1-64)
  [ -e "$texts/$sum" ] || cp "$2" "$texts/$sum"
  echo "$1" >>"$texts/$sum.for"
  echo "$sum" >>"$tmp/order"
}

gover=$(go version "$bin" | awk '{print $2}')
add "the Go standard library and runtime ($gover)" "$goroot/LICENSE"
while read -r path version; do
  # The module cache escapes upper-case letters as !lower.
  dir="$modcache/$(sed 's/[A-Z]/!\L&/g' <<<"$path")@$version"
  found=0
  for f in "$dir"/*; do
    case "$(basename "$f" | tr '[:upper:]' '[:lower:]')" in
    licen[cs]e | licen[cs]e.* | licen[cs]e-* | copying | copying.* | notice | notice.* | unlicense)
      [ -f "$f" ] || continue
      add "$path $version ($(basename "$f"))" "$f"
      found=1
      ;;
    esac
  done
  if [ $found = 0 ]; then
    echo "copyright.sh: no licence file in $dir (module $path $version)" >&2
    exit 1
  fi
done < <(go version -m "$bin" | awk '
  $1 == "dep" { if (p != "") print p, v; p = $2; v = $3 }
  $1 == "=>"  { p = $2; v = $3 }   # a replacement stands for the module before it
  END         { if (p != "") print p, v }' | sort -u)

cat "$here/packaging/copyright"
cat <<HEAD

The qslice binary is linked statically with the following Go modules and the Go standard
library. Their licence and notice files follow, each text once, after the list of what it covers.
HEAD
awk '!seen[$0]++' "$tmp/order" | while read -r sum; do
  echo
  echo "Files: linked into /usr/bin/qslice"
  sed 's/^/ /; 1s/^ /Covers: /' "$texts/$sum.for" | sed '2,$s/^/       /'
  echo "Text:"
  # Continuation lines as the copyright format writes them: a space, and " ." for an empty line.
  sed 's/[[:space:]]*$//; s/^$/./; s/^/ /' "$texts/$sum"
done
