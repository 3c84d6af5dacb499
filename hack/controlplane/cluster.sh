#!/usr/bin/env bash
# A local cluster for a person, in the background.
#   cluster.sh up   [DIR]   start `flarecp cluster up --dir DIR` detached, wait until ready
#   cluster.sh down [DIR]   stop it (`flarecp cluster down --dir DIR`)
# DIR defaults to .cluster (relative to the current directory). CLUSTER_ARGS go to `cluster up`.
# REAL_NODE=1 (root) adds a real node with the project's images (`make images`) imported: pods run.
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
      if [[ "${REAL_NODE:-0}" == 1 ]]; then
        images="$(bash "$here/../images/build.sh" | tail -n1)"
        imports="$(python3 -c 'import json, sys; d = json.loads(sys.argv[1])
print(" ".join("--import " + p for p in (d["pause"], d["operator"]["archive"], d["runtime"]["archive"])))' "$images")"
        # Importing the runtime image takes about two minutes.
        CLUSTER_ARGS="--real-nodes 1 $imports --timeout 15m ${CLUSTER_ARGS:-}"
        CLUSTER_TIMEOUT="${CLUSTER_TIMEOUT:-900}"
      fi
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
