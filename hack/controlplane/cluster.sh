#!/usr/bin/env bash
# A local cluster for a person, in the background.
#   cluster.sh up   [DIR]   start `flarecp cluster up --dir DIR` detached, wait until ready
#   cluster.sh down [DIR]   stop it (`flarecp cluster down --dir DIR`)
# DIR defaults to .cluster (relative to the current directory).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmd="${1:-}"; dir="${2:-.cluster}"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
bin="$("$here/build.sh" | tail -n1)"
case "$cmd" in
  up)
    if [[ -f "$dir/flarecp.pid" ]] && kill -0 "$(cat "$dir/flarecp.pid")" 2>/dev/null; then
      echo "cluster already running in $dir (pid $(cat "$dir/flarecp.pid"))" >&2
    else
      rm -f "$dir/kubeconfig"
      setsid nohup "$bin/flarecp" cluster up --dir "$dir" ${CLUSTER_ARGS:-} >"$dir/launcher.log" 2>&1 </dev/null &
      pid=$!
      deadline=$(( $(date +%s) + ${CLUSTER_TIMEOUT:-240} ))
      until [[ -f "$dir/kubeconfig" ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
          echo "flarecp cluster up failed; last lines of $dir/launcher.log:" >&2; tail -n 30 "$dir/launcher.log" >&2; exit 1
        fi
        if (( $(date +%s) > deadline )); then
          echo "cluster not ready in ${CLUSTER_TIMEOUT:-240}s; see $dir/launcher.log and $dir/logs/" >&2
          "$bin/flarecp" cluster down --dir "$dir" >&2 || true; exit 1
        fi
        sleep 0.2
      done
      grep -h "ready in" "$dir/launcher.log" | tail -n1 >&2 || true
    fi
    echo "# kubectl, helm: $bin" >&2
    echo "export KUBECONFIG=$dir/kubeconfig"
    ;;
  down)
    "$bin/flarecp" cluster down --dir "$dir"
    ;;
  *) echo "usage: $0 up|down [DIR]" >&2; exit 2 ;;
esac
