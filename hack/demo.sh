#!/usr/bin/env bash
# The consortium scenario on a local control plane, as far as the operator goes today:
# CRDs installed, the orgs' namespaces, and every resource of the ESM2 scenario applied and listed.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER_DIR=${CLUSTER_DIR:-.cluster}
start=$(date +%s)

make --no-print-directory cluster-up CLUSTER_DIR="$CLUSTER_DIR"
export KUBECONFIG=$PWD/$CLUSTER_DIR/kubeconfig
KUBECTL="$(hack/controlplane/build.sh | tail -n1)/kubectl"

echo "== CRDs (generated from operator/flare_operator/api/)"
$KUBECTL apply --server-side -f crds/ >/dev/null
$KUBECTL wait --for=condition=Established crd -l app.kubernetes.io/part-of=flare-operator --timeout=60s

echo "== namespaces: two data owners and a modeller, each labelled with its org"
for org in org-a org-b modeller; do
  $KUBECTL create namespace "$org" --dry-run=client -o yaml | $KUBECTL apply -f - >/dev/null
  $KUBECTL label namespace "$org" flareop.io/org="$org" --overwrite >/dev/null
done

echo "== the ESM2 subcellular-localisation scenario (crds/samples/)"
$KUBECTL apply -f crds/samples/
echo
echo "== a mistake is refused by the API server with a message that says what to do:"
$KUBECTL apply -f tests/data/invalid/federatedjob-dp-without-epsilon.yaml 2>&1 | sed 's/^/   /' || true
echo
$KUBECTL get flare -A
echo
echo "demo took $(( $(date +%s) - start ))s. Explore with:"
echo "  export KUBECONFIG=$KUBECONFIG"
echo "  $KUBECTL get flare -A;  $KUBECTL explain federatedjob.spec"
echo "Stop everything with: make demo-down"
