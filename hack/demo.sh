#!/usr/bin/env bash
# The ESM2 consortium scenario on a local control plane, as far as the operator goes today:
# two data owners (org-a automatic, org-b manual with DP terms), a modeller's federation that becomes
# a real NVFlare server and two real clients, and a job that org-b's admin approves by its hash.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/demo-lib.sh
source hack/demo-lib.sh
CLUSTER_DIR=${CLUSTER_DIR:-.cluster}
DEMO_DIR=.demo
start=$(date +%s)
mkdir -p "$DEMO_DIR"

make --no-print-directory cluster-up CLUSTER_DIR="$CLUSTER_DIR"
export KUBECONFIG="$(cd "$CLUSTER_DIR" && pwd)/kubeconfig"
# kubectl keys its discovery cache by host:port; a port an earlier control plane used would expand
# `kubectl get flare` to that cluster's resources, so this cluster gets its own cache.
export KUBECACHEDIR="$(cd "$CLUSTER_DIR" && pwd)/kube-cache"
BIN="$(hack/controlplane/build.sh | tail -n1)"
KUBECTL="$BIN/kubectl"
PY=.venv/bin/python

step() { printf '\n== %s\n' "$*"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "timed out waiting for $what; operator log: $DEMO_DIR/operator.log" >&2; tail -30 "$DEMO_DIR/operator.log" >&2; return 1
}
phase() { $KUBECTL get "$1" "$2" -n "$3" -o jsonpath='{.status.phase}' 2>/dev/null; }
phase_is() { test "$(phase "$1" "$2" "$3")" = "$4"; }
job_admitted() { case "$(phase federatedjob esm2-scl-run1 modeller)" in Queued|Submitted|Running|Succeeded) return 0;; esac; return 1; }

step "CRDs (generated from operator/flare_operator/api/) and the roles modellers and org admins get"
$KUBECTL apply --server-side -f crds/ >/dev/null
$KUBECTL wait --for=condition=Established crd -l app.kubernetes.io/part-of=flare-operator --timeout=60s >/dev/null
$PY -m flare_operator.cli rbac | $KUBECTL apply -f - >/dev/null

step "each org's synthetic protein data stays on its own side ($DEMO_DIR/data)"
make --no-print-directory data DATA_DIR="$DEMO_DIR/data" DATA_SITES=2 DATA_SAMPLES=2000 >/dev/null
ls "$DEMO_DIR"/data/site-*.csv

step "the public pretrained start: the tiny ESM2 pretrained on a public synthetic corpus (make pretrained, cached)"
PRETRAINED=$(make --no-print-directory pretrained | tail -n1)
echo "$PRETRAINED (stand-in for facebook/esm2_*; loaded through the job's pretrainedPath)"

step "the operator: orchestrator + gateways of org-a and org-b (process runtime, log in $DEMO_DIR/operator.log)"
if [ -f "$DEMO_DIR/operator.pid" ] && kill -0 "$(cat "$DEMO_DIR/operator.pid")" 2>/dev/null; then
  echo "already running (pid $(cat "$DEMO_DIR/operator.pid"))"
else
  nohup $PY -m flare_operator.cli run --config examples/esm2-scl/operator.yaml --kubeconfig "$KUBECONFIG" \
    > "$DEMO_DIR/operator.log" 2>&1 &
  echo $! > "$DEMO_DIR/operator.pid"
fi

step "the scenario: examples/esm2-scl/"
$KUBECTL apply -f examples/esm2-scl/00-namespaces.yaml -f examples/esm2-scl/10-org-a.yaml -f examples/esm2-scl/20-org-b.yaml
wait_for 60 "the gateways to register" $KUBECTL get gateway org-b -n org-b
modeller_yaml examples/esm2-scl/30-modeller.yaml "$PRETRAINED" | $KUBECTL apply -f -

step "the federation: each org decides at its own site; then one root CA, a server and a client per org"
wait_for 180 "the ComputeSpec to be Ready" phase_is computespec esm2-scl modeller Ready
$KUBECTL get computespec esm2-scl -n modeller
$KUBECTL get accessrequests -n org-a
ps -eo pid,args | grep -E "nvflare.private.fed.app.(server|client)" | grep -v grep | sed -E 's/ -m .*--set/ … --set/' | cut -c1-150

step "the job: org-a approved automatically, org-b waits for its admin"
wait_for 60 "the job to wait for org-b" phase_is federatedjob esm2-scl-run1 modeller AwaitingApproval
$KUBECTL get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{range .status.approvals[*]}  {.org}: {.decision} - {.message}{"\n"}{end}'
HASH=$($KUBECTL get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{.status.contentHash}')

step "a mistake is refused with a message that says what to do (CEL in the CRD):"
$KUBECTL apply -f tests/data/invalid/federatedjob-dp-without-epsilon.yaml 2>&1 | sed 's/^/   /' || true

step "org-b's admin (alice@org-b, an org-b identity through RBAC, not cluster-admin) approves this exact content"
ALICE=$($BIN/flarecp user-kubeconfig --dir "$CLUSTER_DIR" --user alice@org-b --out "$DEMO_DIR/alice.kubeconfig" >/dev/null && echo "$DEMO_DIR/alice.kubeconfig")
approval "$HASH" | $KUBECTL --kubeconfig "$ALICE" apply -f -
wait_for 60 "the job to be admitted" job_admitted
echo "recorded by the site's webhook: $($KUBECTL get jobapproval esm2-scl-run1 -n org-b -o jsonpath='{.status.decidedBy.username}')"
echo "org-b's privacy ledger: $($KUBECTL get datasetgrant scl-org-b -n org-b -o jsonpath='{.status.epsilonReserved}') of 30 epsilon reserved"

step "training: the operator submits the job once (token = its uid); the clients train on their own data"
follow_job "$KUBECTL"
phase_is federatedjob esm2-scl-run1 modeller Succeeded || { tail -40 "$DEMO_DIR/operator.log"; exit 1; }

step "per round: the global model's and each site's holdout accuracy, and each site's epsilon spent"
$PY -m flare_operator.cli report --job esm2-scl-run1 -n modeller --kubeconfig "$KUBECONFIG" --plot "$DEMO_DIR/accuracy.png"
echo "results (sizes and sha256 in the job's status.results): $($KUBECTL get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{.status.results.location}')"
echo "org-b's privacy ledger: $($KUBECTL get datasetgrant scl-org-b -n org-b -o jsonpath='{.status.epsilonReserved}') reserved of 30"

step "everything, as kubectl sees it"
$KUBECTL get flare -A
echo
echo "demo took $(( $(date +%s) - start ))s."
echo "Explore:  export KUBECONFIG=$KUBECONFIG KUBECACHEDIR=$KUBECACHEDIR; $KUBECTL get flare -A"
echo "Stop:     make demo-down"
