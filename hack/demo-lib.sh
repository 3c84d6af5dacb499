# Shared by hack/demo.sh, hack/demo-multicluster.sh and hack/demo-k8s.sh (sourced, not run).

# follow_job KUBECTL...: print the demo job's phase, round and global accuracy whenever they change,
# until it finishes (or 10 min pass). KUBECTL... is the command that reaches the hub.
follow_job() {
  local last="" now
  for _ in $(seq 600); do
    now="$("$@" get federatedjob esm2-scl-run1 -n modeller -o jsonpath='{.status.phase} {.status.progress} global acc {.status.globalMetrics.val_accuracy}')"
    [ "$now" != "$last" ] && echo "  $now" && last="$now"
    case "$now" in Succeeded*|Failed*|TimedOut*|Aborted*|Rejected*) return 0 ;; esac
    sleep 1
  done
}

# approval HASH: org-b's JobApproval of the demo job's exact content, as YAML (alice@org-b applies it).
approval() {
  cat <<YAML
apiVersion: flareop.io/v1alpha1
kind: JobApproval
metadata: {name: esm2-scl-run1, namespace: org-b}
spec:
  job: {namespace: modeller, name: esm2-scl-run1}
  contentHash: $1
  decision: Approve
  reason: DP settings and model card reviewed
YAML
}

# modeller_yaml FILE [PRETRAINED]: the modeller's manifests (30-modeller.yaml) with the job's
# parameters.pretrainedPath set to PRETRAINED when given (the folder `make pretrained` printed; it
# must exist where the server and the clients run, as for real ESM2 weights).
modeller_yaml() {
  if [ -n "${2:-}" ]; then
    sed "s#parameters: {preset: tiny,#parameters: {preset: tiny, pretrainedPath: \"$2\",#" "$1"
  else
    cat "$1"
  fi
}
