#!/usr/bin/env bash
# The consortium scenario of `make demo`, installed the way operators are installed: a cluster with a
# real node (kubelet, containerd; root), the project's images (`make images`) imported into it, and
# the operator installed with Helm from charts/ - the orchestrator at the hub and a gateway for each
# data owner, each in its own namespace under its own ServiceAccount. NVFlare's server and clients
# run as Pods from the runtime image; finished jobs' results go to an S3-compatible store
# (hack/s3server on the host), from which the modeller fetches them.
#   hack/demo-k8s.sh [up]   run it (stops a previous run first); leaves everything running
#   hack/demo-k8s.sh down   stop it: the cluster (its node's image store removed) and the store
# DEMO_DIR (default .demo-k8s) holds the cluster, the store and the data; the client Pods (uid
# 10001) read the data from the node, so DEMO_DIR must be readable by others.
# The commands shown with `$` are the README's "Install with Helm" section.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/demo-lib.sh
source hack/demo-lib.sh
DEMO_DIR=${DEMO_DIR:-.demo-k8s}
mkdir -p "$DEMO_DIR"; DEMO_DIR="$(cd "$DEMO_DIR" && pwd)"
CLUSTER_DIR="$DEMO_DIR/cluster"
EXAMPLES=examples/esm2-scl
PY=.venv/bin/python
BIN="$(hack/controlplane/build.sh | tail -n1)"
export PATH="$BIN:$PATH"  # kubectl and helm (hack/controlplane/build.sh)
export KUBECONFIG="$CLUSTER_DIR/kubeconfig" KUBECACHEDIR="$CLUSTER_DIR/kube-cache"
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

down() {
  if alive "$DEMO_DIR/s3server.pid"; then kill "$(cat "$DEMO_DIR/s3server.pid")"; echo "stopped the results store"; fi
  rm -f "$DEMO_DIR/s3server.pid"
  if alive "$CLUSTER_DIR/flarecp.pid"; then
    hack/controlplane/cluster.sh down "$CLUSTER_DIR" >/dev/null && echo "stopped the cluster in $CLUSTER_DIR"
  fi
  rm -rf "$CLUSTER_DIR/node/containerd"  # the node's unpacked images (~7 GB)
}

if [ "${1:-up}" = down ]; then down; exit 0; fi
[ "${1:-up}" = up ] || { echo "usage: $0 [up|down]" >&2; exit 2; }
if alive "$CLUSTER_DIR/flarecp.pid" || alive "$DEMO_DIR/s3server.pid"; then echo "stopping the previous run first"; down; fi
start=$(date +%s)
rm -rf "$DEMO_DIR/data" "$DEMO_DIR/results" "$DEMO_DIR/s3" "$DEMO_DIR/accuracy.png" "$DEMO_DIR"/*.log "$CLUSTER_DIR"

step() { printf '\n== %s\n' "$*"; }
show() { printf '  $ %s\n' "$1"; eval "$1"; }  # show 'COMMAND': print it as written, then run it
diagnose() {
  kubectl get pods -A -o wide 2>&1 | sed 's/^/  /'
  for ns in flare-system flare-org-a flare-org-b; do
    echo "--- operator log ($ns)"; kubectl -n "$ns" logs -l app.kubernetes.io/name=flare-operator --tail=30 2>&1 || true
  done
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "timed out waiting for $what" >&2; diagnose >&2; return 1
}
phase() { kubectl get "$1" "$2" -n "$3" -o jsonpath='{.status.phase}' 2>/dev/null; }
phase_is() { test "$(phase "$1" "$2" "$3")" = "$4"; }
job_admitted() { case "$(phase federatedjob esm2-scl-run1 modeller)" in Queued|Submitted|Running|Succeeded) return 0;; esac; return 1; }

step "the project's images (make images: operator, runtime, pause; OCI archives, cached by content)"
IMAGES=$(bash hack/images/build.sh | tail -n1)
image() { $PY -c 'import json, sys; d = json.loads(sys.argv[1]); print(d[sys.argv[2]]["ref"])' "$IMAGES" "$1"; }
OPERATOR_IMAGE=$(image operator); RUNTIME_IMAGE=$(image runtime)
echo "  $OPERATOR_IMAGE"; echo "  $RUNTIME_IMAGE"
# What differs per machine, as values: the images' content-addressed tags (no registry here).
cat > "$DEMO_DIR/images.yaml" <<YAML
image: {repository: ${OPERATOR_IMAGE%:*}, tag: ${OPERATOR_IMAGE##*:}}
runtime: {image: $RUNTIME_IMAGE}
YAML

step "a cluster with a real node: kubelet, containerd, kube-proxy and CoreDNS; the images imported (a few minutes)"
# No kwok nodes (--nodes 0): every Pod here runs for real, on the one real node.
REAL_NODE=1 CLUSTER_ARGS="--nodes 0" hack/controlplane/cluster.sh up "$CLUSTER_DIR" >/dev/null
kubectl get nodes -o custom-columns='NODE:.metadata.name,CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory,READY:.status.conditions[?(@.type=="Ready")].status'

step "each org's synthetic protein data, on the node ($DEMO_DIR/data; the client Pods mount it read-only, as uid 10001)"
make --no-print-directory data DATA_DIR="$DEMO_DIR/data" DATA_SITES=2 DATA_SAMPLES=2000 >/dev/null
chmod -R a+rX "$DEMO_DIR/data"
DATA="$DEMO_DIR/data"
setpriv --reuid 10001 --regid 10001 --clear-groups test -r "$DATA/site-1.csv" || {
  echo "the client Pods (uid 10001) cannot read $DATA: run with DEMO_DIR in a folder others may read (e.g. DEMO_DIR=/var/tmp/flare-demo-k8s)" >&2; exit 1; }
ls "$DATA"/site-*.csv

step "the results store: an S3-compatible server on the host, at the address Pods reach it by"
HOST_IP=$(kubectl get endpointslice kubernetes -n default -o jsonpath='{.endpoints[0].addresses[0]}')  # the apiserver's advertised address
S3_KEY=demo-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n'); S3_SECRET=$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$DEMO_DIR/s3"
nohup "$(bash hack/s3server/build.sh | tail -n1)" -addr "$HOST_IP:0" -db "$DEMO_DIR/s3/objects.db" -bucket flare-results -quiet \
  -access-key "$S3_KEY" -secret-key "$S3_SECRET" > "$DEMO_DIR/s3server.log" 2>&1 &
echo $! > "$DEMO_DIR/s3server.pid"
wait_for 30 "the results store" grep -q "listening on" "$DEMO_DIR/s3server.log"
S3_ENDPOINT=$(sed -n 's/.*listening on //p' "$DEMO_DIR/s3server.log" | head -n1)
echo "  $S3_ENDPOINT (bucket flare-results)"

step "the hub's admin: the CRDs and user roles (chart flare-operator-crds), the org namespaces, the store's credentials"
show 'helm install flare-operator-crds charts/flare-operator-crds --wait'
show 'kubectl apply -f examples/esm2-scl/00-namespaces.yaml'
show 'kubectl create namespace flare-system'
show 'kubectl -n flare-system create secret generic results-s3 --from-literal=AWS_ACCESS_KEY_ID=$S3_KEY --from-literal=AWS_SECRET_ACCESS_KEY=$S3_SECRET'

step "the orchestrator at the hub and a gateway at each data owner, each installed with helm from charts/flare-operator"
show 'helm install hub charts/flare-operator -n flare-system -f examples/esm2-scl/kubernetes/hub.yaml -f $DEMO_DIR/images.yaml --set orchestrator.resultsStore.s3.endpoint=$S3_ENDPOINT --wait'
show 'helm install org-a charts/flare-operator -n flare-org-a --create-namespace -f examples/esm2-scl/kubernetes/org-a.yaml -f $DEMO_DIR/images.yaml --wait'
show 'helm install org-b charts/flare-operator -n flare-org-b --create-namespace -f examples/esm2-scl/kubernetes/org-b.yaml -f $DEMO_DIR/images.yaml --wait'
kubectl get deploy -A -l app.kubernetes.io/name=flare-operator

step "at each site, its admin's own objects ($EXAMPLES/10-org-a.yaml, 20-org-b.yaml), the data on a volume"
# The site namespaces enforce the restricted Pod Security Standard, which refuses hostPath volumes
# in Pods: each site's data is a PersistentVolume (the node folder, created by the cluster admin)
# bound to a claim in the site's namespace, and its grant names the claim and the file in it
# instead of the process demo's path.
i=0
for org in org-a org-b; do
  i=$((i + 1))
  cat <<YAML | kubectl apply -f -
apiVersion: v1
kind: PersistentVolume
metadata: {name: scl-data-$org}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $DATA, type: Directory}
  claimRef: {namespace: $org, name: scl-data}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: scl-data, namespace: $org}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: scl-data-$org
  resources: {requests: {storage: 1Gi}}
YAML
  sed "s#path: .demo/data/site-$i.csv.*#persistentVolumeClaim: {claimName: scl-data, subPath: site-$i.csv}#" \
    "$EXAMPLES/$((i * 10))-$org.yaml" | kubectl apply -f -
done
wait_for 90 "the gateways to register" kubectl get gateway org-b -n org-b
kubectl get gateways -A

step "the modeller's federation ($EXAMPLES/30-modeller.yaml): each org decides at its own site; then the server and client Pods"
kubectl apply -f $EXAMPLES/30-modeller.yaml
wait_for 600 "the ComputeSpec to be Ready" phase_is computespec esm2-scl modeller Ready
kubectl get computespec esm2-scl -n modeller
kubectl get pods -n modeller -l app.kubernetes.io/part-of=flare-operator -o wide
kubectl get pods -n org-a -l app.kubernetes.io/part-of=flare-operator -o wide

step "the job: org-a approved automatically, org-b waits for its admin"
wait_for 120 "the job to wait for org-b" phase_is federatedjob esm2-scl-run1 modeller AwaitingApproval
kubectl get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{range .status.approvals[*]}  {.org}: {.decision} - {.message}{"\n"}{end}'
HASH=$(kubectl get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{.status.contentHash}')

step "org-b's admin (alice@org-b, through RBAC, not cluster-admin) approves this exact content; org-b's webhook records who"
"$BIN/flarecp" user-kubeconfig --dir "$CLUSTER_DIR" --user alice@org-b --out "$DEMO_DIR/alice.kubeconfig" >/dev/null
approval "$HASH" | kubectl --kubeconfig "$DEMO_DIR/alice.kubeconfig" apply -f -
wait_for 120 "the job to be admitted" job_admitted
echo "recorded by org-b's webhook: $(kubectl get jobapproval esm2-scl-run1 -n org-b -o jsonpath='{.status.decidedBy.username}')"

step "training in the client Pods: the orchestrator submits the job once; each client trains on its own data"
follow_job kubectl
phase_is federatedjob esm2-scl-run1 modeller Succeeded || { diagnose; exit 1; }

step "the modeller fetches the results from the store (every file checked against its sha256 in the job's status)"
echo "  results: $(kubectl get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{.status.results.location}')"
AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET $PY -m flare_operator.cli fetch --job esm2-scl-run1 -n modeller \
  --endpoint-url "$S3_ENDPOINT" --out "$DEMO_DIR/results"

step "per round: the global model's and each site's holdout accuracy, and each site's epsilon spent"
$PY -m flare_operator.cli report --metrics "$DEMO_DIR/results/metrics.json" --plot "$DEMO_DIR/accuracy.png"
echo "org-b's privacy ledger: $(kubectl get datasetgrant scl-org-b -n org-b -o jsonpath='{.status.epsilonReserved}') reserved of 30"

step "everything, as kubectl sees it"
kubectl get flare -A
helm list -A
echo
echo "demo took $(( $(date +%s) - start ))s."
echo "Explore:  export PATH=$BIN:\$PATH KUBECONFIG=$KUBECONFIG KUBECACHEDIR=$KUBECACHEDIR; kubectl get pods -A"
echo "Stop:     make demo-k8s-down"
