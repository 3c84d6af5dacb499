#!/usr/bin/env bash
# Build (or reuse) the test S3 server (main.go: gofakes3 with SigV4 checks) and print its path on
# the last line:
#
#   ${FLARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flare-operator}/s3server/<hash>/s3server
#
# <hash> covers go.mod, go.sum, main.go, this script and the Go version, so any change rebuilds
# into a new directory and an unchanged tree reuses the old one (no go invocation).
# GOMODCACHE, GOCACHE and GOFLAGS are Go's defaults unless set by the caller.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

goversion="$(go env GOVERSION)"
hash="$( { echo "$goversion"; cat go.mod go.sum build.sh; find . -name '*.go' -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-16)"
cache_root="${FLARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flare-operator}/s3server"
out="$cache_root/$hash"

if [[ -x "$out/s3server" ]]; then
  echo "$out/s3server"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.build.lock"
flock 9   # one build at a time (parallel test sessions); the loser reuses the winner's result
if [[ -x "$out/s3server" ]]; then
  echo "$out/s3server"
  exit 0
fi

tmp="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
echo "build.sh: building s3server ($goversion) into $out" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/s3server" .
echo "build.sh: s3server built in $(( $(date +%s) - start ))s" >&2
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
# Keep the ${S3SERVER_KEEP_BUILDS:-3} newest builds (about 10 MB each).
ls -1dt "$cache_root"/*/ 2>/dev/null | tail -n +"$(( ${S3SERVER_KEEP_BUILDS:-3} + 1 ))" | xargs -r rm -rf
echo "$out/s3server"
