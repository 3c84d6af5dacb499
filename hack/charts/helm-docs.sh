#!/usr/bin/env bash
# Build (or reuse) helm-docs, which writes each chart's README values table from the `# --`
# comments in its values.yaml, and print its path on the last line:
#
#   ${FLARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flare-operator}/tools/helm-docs-<version>-<go>/helm-docs
#
# Pinned version from the Go module proxy; the Go version is part of the key.
set -euo pipefail
version=v1.14.2
goversion="$(go env GOVERSION)"
cache_root="${FLARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flare-operator}/tools"
out="$cache_root/helm-docs-$version-$goversion"
if [[ -x "$out/helm-docs" ]]; then
  echo "$out/helm-docs"
  exit 0
fi
mkdir -p "$cache_root"
exec 9>"$cache_root/.helm-docs.lock"
flock 9
if [[ -x "$out/helm-docs" ]]; then
  echo "$out/helm-docs"
  exit 0
fi
tmp="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "helm-docs.sh: building helm-docs $version ($goversion)" >&2
GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "github.com/norwoodj/helm-docs/cmd/helm-docs@$version" >&2
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "$out/helm-docs"
