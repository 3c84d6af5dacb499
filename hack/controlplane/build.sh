#!/usr/bin/env bash
# Build (or reuse) the local control-plane binaries and print their directory on the last line.
#
#   ${FLARE_CACHE_DIR:-$HOME/.cache/flare-operator}/controlplane/<k8s-version>-<hash>/bin/
#     flarecp            multi-call: etcd, kube-apiserver, kube-controller-manager,
#                        kube-scheduler, kubectl, kwok, cluster up|down, user-kubeconfig
#     kubectl, kube-apiserver, ... -> flarecp   (multi-call links)
#     helm               helm.sh/helm/v3 (go install)
#     containerd, containerd-shim-runc-v2, ctr
#                        github.com/containerd/containerd/v2 (go install): the real node's runtime
#     coredns            github.com/coredns/coredns (go install): the real node's cluster DNS
#
# <hash> covers go.mod, go.sum, the sources, this script and the Go version, so any change
# rebuilds into a new directory and an unchanged tree reuses the old one (no go invocation).
# GOMODCACHE and GOCACHE are Go's defaults (outside the repository) unless set by the caller.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# kubelet 1.36 is supported with containerd >= 2.2 (containerd's RELEASES.md); coredns 1.15
# would pull k8s.io/* 0.37 into its build list, 1.14.7 is the newest on 0.36.
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.3.7}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2; exit} $1=="require" && $2=="k8s.io/kubernetes"{print $3; exit}' go.mod)"
[[ "$k8s_version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "build.sh: cannot read the k8s.io/kubernetes version from go.mod" >&2; exit 1; }
k8s_minor="${BASH_REMATCH[1]}"
goversion="$(go env GOVERSION)"
hash="$( { echo "$goversion $HELM_VERSION $CONTAINERD_VERSION $COREDNS_VERSION"; cat go.mod go.sum build.sh; find cmd -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-16)"
cache_root="${FLARE_CACHE_DIR:-$HOME/.cache/flare-operator}/controlplane"
out="$cache_root/${k8s_version}-${hash}"

if [[ -f "$out/.complete" ]]; then
  echo "$out/bin"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.build.lock"
flock 9   # one build at a time (parallel test sessions); the loser reuses the winner's result
if [[ -f "$out/.complete" ]]; then
  echo "$out/bin"
  exit 0
fi

tmp="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
start=$(date +%s)
echo "build.sh: building flarecp (k8s.io/kubernetes $k8s_version, $goversion) into $out" >&2
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=${k8s_version}"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=${k8s_minor}"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
# client-go's copy of the version (kubectl version --client reads component-base; this is for
# the User-Agent and anything reading client-go's).
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=${k8s_version}"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=${k8s_minor}"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/flarecp" ./cmd/flarecp
for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kubelet kube-proxy; do
  ln -s flarecp "$tmp/bin/$c"
done
echo "build.sh: flarecp built in $(( $(date +%s) - start ))s; installing helm $HELM_VERSION" >&2
hstart=$(date +%s)
(cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp/bin" GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${k8s_minor} \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${k8s_minor}" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}")
echo "build.sh: helm built in $(( $(date +%s) - hstart ))s; installing containerd $CONTAINERD_VERSION and coredns $COREDNS_VERSION" >&2
nstart=$(date +%s)
(cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp/bin" GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}")
(cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp/bin" GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install -ldflags "-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}")
echo "build.sh: containerd and coredns built in $(( $(date +%s) - nstart ))s; total $(( $(date +%s) - start ))s" >&2
touch "$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
# Keep the ${FLARECP_KEEP_BUILDS:-3} newest builds (about 200 MB each).
ls -1dt "$cache_root"/v*-*/ 2>/dev/null | tail -n +"$(( ${FLARECP_KEEP_BUILDS:-3} + 1 ))" | xargs -r rm -rf
echo "$out/bin"
