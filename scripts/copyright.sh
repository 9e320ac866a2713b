#!/usr/bin/env bash
# Prints the Debian copyright file (/usr/share/doc/qslice/copyright) for a qslice binary:
# packaging/copyright (qslice's own code), then, since the binary is linked statically, every Go
# module linked into it (as `go version -m` lists them) and the Go standard library, with the
# licence and notice files each ships, verbatim but for the Apache-2.0 and MPL-2.0 texts, which
# refer to /usr/share/common-licenses as Debian asks; an identical text is printed once, with
# every module it covers. A module without a licence file fails the script: it is not to be shipped
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

# shorten FILE: the text, with a full Apache-2.0 or MPL-2.0 licence (and Apache's appendix with its
# placeholders) replaced by a reference to Debian's copy in /usr/share/common-licenses, as Debian
# asks; what else the file says (copyright lines, other licences after it) stays.
shorten() {
  awk '
    state == "" && /^[[:space:]]*Apache License[[:space:]]*$/ { state = "apache?"; held = $0; next }
    state == "apache?" {
      if ($0 ~ /Version 2\.0, January 2004/) { state = "apache"; next }
      print held; state = ""
    }
    state == "apache" {
      if ($0 ~ /END OF TERMS AND CONDITIONS/) {
        print "The Apache License, Version 2.0: /usr/share/common-licenses/Apache-2.0"
        state = "after-apache"
      }
      next
    }
    state == "after-apache" && /APPENDIX: How to apply the Apache License/ { state = "appendix"; next }
    state == "appendix" {
      if ($0 ~ /Copyright/ && $0 !~ /\[yyyy\]/) print
      if ($0 ~ /limitations under the License\./) state = "done"
      next
    }
    { lines[++n] = $0 }
    state == "" || state == "after-apache" || state == "done" { if (n) { for (i = 1; i <= n; i++) print lines[i]; n = 0 } }
  ' "$1" | awk '
    # MPL-2.0: from its title to the end of Exhibit B, when the file ends there.
    { l[NR] = $0 }
    END {
      start = 0
      for (i = 1; i <= NR; i++) if (!start && l[i] ~ /^[[:space:]]*Mozilla Public License,? [Vv]ersion 2\.0[[:space:]]*$/) start = i
      last = NR; while (last > 0 && l[last] ~ /^[[:space:]]*$/) last--
      if (start && l[last] ~ /Mozilla Public License, v\. 2\.0\./) {
        for (i = 1; i < start; i++) print l[i]
        print "The Mozilla Public License, version 2.0: /usr/share/common-licenses/MPL-2.0"
      } else for (i = 1; i <= NR; i++) print l[i]
    }' | awk '/[^[:space:]]/ { for (; blank > 0; blank--) print ""; print; next } { blank++ }' # no trailing blank lines
}

# add NAME FILE: FILE's text (shortened) covers NAME.
add() {
  local sum
  shorten "$2" >"$tmp/text"
  sum=$(sha256sum <"$tmp/text" | cut -c1-64)
  [ -e "$texts/$sum" ] || cp "$tmp/text" "$texts/$sum"
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
