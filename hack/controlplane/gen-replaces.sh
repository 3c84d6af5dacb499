#!/usr/bin/env bash
# Regenerate the replace block of hack/controlplane/go.mod.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at the
# pseudo version v0.0.0 and replaces them with ./staging/src/... in its own repository. Those
# replaces do not apply to a consumer, and the proxy serves no v0.0.0 (kubernetes/kubernetes#79384),
# so a consumer must replace every one of them with the matching published v0.X.Y tag.
#
# Usage: gen-replaces.sh [K8S_VERSION]   (default: the k8s.io/kubernetes version in go.mod)
# Reads k8s.io/kubernetes's published go.mod via `go mod download` (module cache / proxy) and
# rewrites the block between the "BEGIN generated replaces" / "END generated replaces" markers.
set -euo pipefail
cd "$(dirname "$0")"
ver="${1:-$(awk '$1=="k8s.io/kubernetes"{print $2; exit} $1=="require" && $2=="k8s.io/kubernetes"{print $3; exit}' go.mod)}"
[[ "$ver" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "unexpected k8s version: $ver" >&2; exit 1; }
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
modfile="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${ver}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
[[ -f "$modfile" ]] || { echo "could not download k8s.io/kubernetes@${ver} go.mod" >&2; exit 1; }
# Every module required at v0.0.0 (direct or // indirect), in or out of a require ( ) block.
mods="$(awk '
  /^require[[:space:]]*\(/ {inblk=1; next}
  inblk && /^\)/ {inblk=0; next}
  inblk && $2=="v0.0.0" {print $1}
  /^require[[:space:]]+[^(]/ && $3=="v0.0.0" {print $2}
' "$modfile" | sort -u)"
[[ -n "$mods" ]] || { echo "no v0.0.0 requires found in $modfile" >&2; exit 1; }
block="$( {
  echo "// BEGIN generated replaces (hack/controlplane/gen-replaces.sh ${ver}); do not edit"
  echo "replace ("
  for m in $mods; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
  echo ")"
  echo ""   # the blank line `go mod tidy` puts before a trailing comment
  echo "// END generated replaces"
} )"
tmp="$(mktemp go.mod.XXXXXX)"
awk -v block="$block" '
  /^\/\/ BEGIN generated replaces/ {skip=1; print block; done=1; next}
  /^\/\/ END generated replaces/ {skip=0; next}
  !skip {print}
  END { if (!done) { print ""; print block } }
' go.mod > "$tmp"
mv "$tmp" go.mod
echo "wrote $(echo "$mods" | wc -l) replaces (${staging}) for k8s.io/kubernetes ${ver}" >&2
