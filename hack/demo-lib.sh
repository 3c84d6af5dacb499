# Shared by hack/demo.sh and hack/demo-multicluster.sh (sourced, not run).

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
