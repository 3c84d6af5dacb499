#!/usr/bin/env bash
# The ESM2 consortium scenario of `make demo`, with the hub and each data owner on its own control
# plane: three API servers (hub, org-a, org-b). The hub runs the orchestrator and the NVFlare server;
# each site runs its own gateway against its own API server and reaches the hub only with a
# credential the hub's admin scoped to that org's namespace there. org-b's admin approves at org-b.
#   hack/demo-multicluster.sh        run it (stops a previous run first); leaves everything running
#   hack/demo-multicluster.sh down   stop what it started (operators, NVFlare processes, clusters)
# The manifests and operator configs: examples/esm2-scl/multicluster/ (they name paths under .demo-mc).
# CLUSTERS_DIR (default .demo-mc/clusters) holds the control planes' state, one folder per cluster;
# `down` finds them through .demo-mc/clusters.dir.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/demo-lib.sh
source hack/demo-lib.sh
DEMO_DIR=.demo-mc
EXAMPLES=examples/esm2-scl
MC=$EXAMPLES/multicluster
ORGS=(org-a org-b)
ROLES=(hub org-a org-b)
PY=.venv/bin/python

bin_dir() { hack/controlplane/build.sh | tail -n1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

down() {
  local role pid dir flarecp
  local -A pids=()
  for role in "${ROLES[@]}"; do
    if alive "$DEMO_DIR/$role/operator.pid"; then
      pids[$role]=$(cat "$DEMO_DIR/$role/operator.pid")
      kill "${pids[$role]}" 2>/dev/null || true  # each operator stops its NVFlare processes (and removes its webhooks) on SIGTERM
    fi
  done
  for role in "${!pids[@]}"; do
    pid=${pids[$role]}
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    echo "stopped the $role operator (pid $pid)"
  done
  rm -f "$DEMO_DIR"/*/operator.pid
  if [ -f "$DEMO_DIR/clusters.dir" ]; then
    dir=$(cat "$DEMO_DIR/clusters.dir")
    flarecp="$(bin_dir)/flarecp"
    for role in "${ROLES[@]}"; do
      if alive "$dir/$role/flarecp.pid"; then "$flarecp" cluster down --dir "$dir/$role" 2>/dev/null & fi
    done
    wait
    echo "stopped the control planes in $dir"
    rm -f "$DEMO_DIR/clusters.dir"
  fi
}

if [ "${1:-up}" = down ]; then down; exit 0; fi
[ "${1:-up}" = up ] || { echo "usage: $0 [up|down]" >&2; exit 2; }

mkdir -p "$DEMO_DIR"
if ls "$DEMO_DIR"/*/operator.pid >/dev/null 2>&1 || [ -f "$DEMO_DIR/clusters.dir" ]; then
  echo "stopping the previous run first"; down
fi
start=$(date +%s)
rm -rf "${ROLES[@]/#/$DEMO_DIR/}" "$DEMO_DIR/data" "$DEMO_DIR/accuracy.png"
mkdir -p "${ROLES[@]/#/$DEMO_DIR/}"
CLUSTERS_DIR=${CLUSTERS_DIR:-$DEMO_DIR/clusters}
mkdir -p "$CLUSTERS_DIR"; CLUSTERS_DIR="$(cd "$CLUSTERS_DIR" && pwd)"
echo "$CLUSTERS_DIR" > "$DEMO_DIR/clusters.dir"
BIN="$(bin_dir)"
KUBECTL="$BIN/kubectl"
kc() { echo "$CLUSTERS_DIR/$1/kubeconfig"; }
# Each cluster gets its own discovery cache: kubectl keys ~/.kube/cache by host:port, and a port an
# earlier control plane used would expand `kubectl get flare` to that cluster's resources.
on() { local role=$1; shift; $KUBECTL --kubeconfig "$(kc "$role")" --cache-dir "$CLUSTERS_DIR/$role/kube-cache" "$@"; }  # on hub|org-a|org-b kubectl-args...

step() { printf '\n== %s\n' "$*"; }
logs() { for role in "${ROLES[@]}"; do echo "--- $DEMO_DIR/$role/operator.log"; tail -20 "$DEMO_DIR/$role/operator.log" 2>/dev/null; done; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "timed out waiting for $what" >&2; logs >&2; return 1
}
phase() { on hub get "$1" "$2" -n "$3" -o jsonpath='{.status.phase}' 2>/dev/null; }
phase_is() { test "$(phase "$1" "$2" "$3")" = "$4"; }
job_admitted() { case "$(phase federatedjob esm2-scl-run1 modeller)" in Queued|Submitted|Running|Succeeded) return 0;; esac; return 1; }
short() { sed "s#$PWD/##g"; }

step "three control planes, each with its own etcd, API server and CA: the hub, org-a's, org-b's"
pids=()
for role in "${ROLES[@]}"; do
  CLUSTER_ARGS="--nodes 0" hack/controlplane/cluster.sh up "$CLUSTERS_DIR/$role" >/dev/null 2>"$DEMO_DIR/$role/cluster-up.log" &
  pids+=($!)
done
for i in "${!ROLES[@]}"; do
  wait "${pids[$i]}" || { echo "the ${ROLES[$i]} control plane did not start:" >&2; cat "$DEMO_DIR/${ROLES[$i]}/cluster-up.log" >&2; exit 1; }
  printf '  %-6s %s  (kubeconfig %s)\n' "${ROLES[$i]}" "$(on "${ROLES[$i]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')" \
    "$(kc "${ROLES[$i]}" | short)"
done

step "CRDs where each role needs them (hub: its 4 kinds; each site: its 3) and the roles people get"
on hub apply --server-side -f crds/computespecs.flareop.io.yaml -f crds/federatedjobs.flareop.io.yaml \
  -f crds/gateways.flareop.io.yaml -f crds/accessrequests.flareop.io.yaml >/dev/null
for org in "${ORGS[@]}"; do
  on "$org" apply --server-side -f crds/datasetgrants.flareop.io.yaml -f crds/orgpolicies.flareop.io.yaml \
    -f crds/jobapprovals.flareop.io.yaml >/dev/null
done
for role in "${ROLES[@]}"; do
  on "$role" wait --for=condition=Established crd -l app.kubernetes.io/part-of=flare-operator --timeout=60s >/dev/null
  $PY -m flare_operator.cli rbac | on "$role" apply -f - >/dev/null
  printf '  %-6s %s\n' "$role" "$(on "$role" get crd -l app.kubernetes.io/part-of=flare-operator -o name | sed 's#.*/##; s#\.flareop\.io##' | xargs)"
done

step "the hub's admin: org namespaces, and for each site a credential for its org's hub namespace only"
on hub apply -f $EXAMPLES/00-namespaces.yaml >/dev/null
for org in "${ORGS[@]}"; do
  $PY -m flare_operator.cli rbac --gateway-hub "$org" --user "gateway-$org" | on hub apply -f - >/dev/null
  "$BIN/flarecp" user-kubeconfig --dir "$CLUSTERS_DIR/hub" --user "gateway-$org" --out "$DEMO_DIR/$org/hub.kubeconfig" >/dev/null
  echo "  flare-operator rbac --gateway-hub $org --user gateway-$org | kubectl apply -f -   -> $DEMO_DIR/$org/hub.kubeconfig"
done
scoped="$KUBECTL --kubeconfig $DEMO_DIR/org-b/hub.kubeconfig"
can() { $scoped auth can-i "$@" 2>/dev/null || true; }
echo "  org-b's hub credential ($DEMO_DIR/org-b/hub.kubeconfig, user gateway-org-b) may:"
echo "    answer AccessRequests in org-b: $(can patch accessrequests/status -n org-b); read org-a's: $(can list accessrequests -n org-a);" \
  "read the modeller's Secrets: $(can get secrets -n modeller); create namespaces: $(can create namespaces); anything (*): $(can '*' '*' -A)"

step "each org's synthetic protein data, on its own side ($DEMO_DIR/org-*/data)"
make --no-print-directory data DATA_DIR="$DEMO_DIR/data" DATA_SITES=2 DATA_SAMPLES=2000 >/dev/null
mkdir -p "$DEMO_DIR/org-a/data" "$DEMO_DIR/org-b/data"
mv "$DEMO_DIR/data/site-1.csv" "$DEMO_DIR/org-a/data/"
mv "$DEMO_DIR/data/site-2.csv" "$DEMO_DIR/org-b/data/"
ls "$DEMO_DIR"/org-*/data/*.csv
PRETRAINED=$(make --no-print-directory pretrained | tail -n1)
echo "the public pretrained start (make pretrained), on both sites' and the hub's machine: $PRETRAINED"

step "at each site, its admin's own objects, on its own cluster ($MC/org-a.yaml, org-b.yaml)"
for org in "${ORGS[@]}"; do on "$org" apply -f "$MC/$org.yaml" | sed "s/^/  $org: /"; done

step "the operators: the orchestrator on the hub; at each site a gateway on its own cluster, outbound to the hub"
start_operator() {  # start_operator ROLE CONFIG
  local role=$1 config=$2
  nohup $PY -m flare_operator.cli run --config "$config" --kubeconfig "$(kc "$role")" \
    > "$DEMO_DIR/$role/operator.log" 2>&1 &
  echo $! > "$DEMO_DIR/$role/operator.pid"
  printf '  %-6s pid %-7s flare-operator run --config %s --kubeconfig %s\n' "$role" "$!" "$config" "$(kc "$role" | short)"
  if [ "$role" != hub ]; then
    printf '  %-6s %-11s reaches the hub only as gateway-%s (hubKubeconfig: %s)\n' "" "" "$role" "$DEMO_DIR/$role/hub.kubeconfig"
  fi
}
start_operator hub "$MC/hub-operator.yaml"
for org in "${ORGS[@]}"; do start_operator "$org" "$MC/$org-gateway.yaml"; done
for org in "${ORGS[@]}"; do wait_for 60 "$org's gateway to register on the hub" on hub get gateway "$org" -n "$org"; done
on hub get gateways -A

step "the modeller's federation on the hub ($EXAMPLES/30-modeller.yaml): each org decides at its own site"
modeller_yaml $EXAMPLES/30-modeller.yaml "$PRETRAINED" | on hub apply -f -
wait_for 180 "the ComputeSpec to be Ready" phase_is computespec esm2-scl modeller Ready
on hub get computespec esm2-scl -n modeller
on hub get accessrequests -n org-a
echo "  NVFlare processes, each under its own operator's folder:"
ps -eo pid,args | grep -E "nvflare.private.fed.app.(server|client)" | grep -F "$PWD/$DEMO_DIR/" | grep -v grep \
  | sed -E 's#^ *([0-9]+) .*app\.(server|client)\.[a-z_]+ -m ([^ ]+).*#    \1 \2 \3#' | short || true

step "the job: org-a approved automatically, org-b waits for its admin"
wait_for 60 "the job to wait for org-b" phase_is federatedjob esm2-scl-run1 modeller AwaitingApproval
on hub get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{range .status.approvals[*]}  {.org}: {.decision} - {.message}{"\n"}{end}'
HASH=$(on hub get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{.status.contentHash}')

step "a mistake is refused with a message that says what to do (CEL in the hub's CRD):"
on hub apply -f tests/data/invalid/federatedjob-dp-without-epsilon.yaml 2>&1 | sed 's/^/   /' || true

step "org-b's admin (alice@org-b at org-b's own cluster, through RBAC, not cluster-admin) approves this exact content"
"$BIN/flarecp" user-kubeconfig --dir "$CLUSTERS_DIR/org-b" --user alice@org-b --out "$DEMO_DIR/org-b/alice.kubeconfig" >/dev/null
ALICE="$KUBECTL --kubeconfig $DEMO_DIR/org-b/alice.kubeconfig"
approval "$HASH" | $ALICE apply -f -
acan() { $ALICE auth can-i "$@" 2>/dev/null || true; }
echo "alice@org-b may: approve in org-b: $(acan create jobapprovals -n org-b); delete namespaces: $(acan delete namespaces); read kube-system's Secrets: $(acan get secrets -n kube-system)"
wait_for 60 "the job to be admitted" job_admitted
echo "recorded by org-b's webhook: $(on org-b get jobapproval esm2-scl-run1 -n org-b -o jsonpath='{.status.decidedBy.username}')"
echo "org-b's privacy ledger (at org-b): $(on org-b get datasetgrant scl-org-b -n org-b -o jsonpath='{.status.epsilonReserved}') of 30 epsilon reserved"

step "training: the orchestrator submits the job once (token = its uid); each site's client trains on its own data"
follow_job on hub
phase_is federatedjob esm2-scl-run1 modeller Succeeded || { logs; exit 1; }

step "per round: the global model's and each site's holdout accuracy, and each site's epsilon spent"
$PY -m flare_operator.cli report --job esm2-scl-run1 -n modeller --kubeconfig "$(kc hub)" --plot "$DEMO_DIR/accuracy.png"
echo "results (sizes and sha256 in the job's status.results): $(on hub get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{.status.results.location}' | short)"
echo "org-b's privacy ledger (at org-b): $(on org-b get datasetgrant scl-org-b -n org-b -o jsonpath='{.status.epsilonReserved}') reserved of 30"

step "everything, as each cluster sees it"
for role in "${ROLES[@]}"; do echo "-- $role"; on "$role" get flare -A; done
echo
echo "demo took $(( $(date +%s) - start ))s."
echo "Explore: one kubeconfig per cluster (kubectl: export PATH=$BIN:\$PATH KUBECACHEDIR=$CLUSTERS_DIR/kube-cache); operator logs in $DEMO_DIR/{hub,org-a,org-b}/operator.log"
echo "  hub:    export KUBECONFIG=$(kc hub); kubectl get flare -A"
for org in "${ORGS[@]}"; do
  echo "  $org:  kubectl --kubeconfig $(kc "$org") get flare -A"
done
echo "  org-b, as alice@org-b:          kubectl --kubeconfig $PWD/$DEMO_DIR/org-b/alice.kubeconfig get jobapprovals -n org-b"
echo "  the hub, as org-b's gateway:    kubectl --kubeconfig $PWD/$DEMO_DIR/org-b/hub.kubeconfig get accessrequests -n org-b"
echo "Stop:     make demo-multicluster-down"
