#!/usr/bin/env bash
# Build and start-up timings of the local control plane.
#   cold build   build.sh into a throwaway FLARE_CACHE_DIR with a throwaway GOCACHE; the module
#                cache (GOMODCACHE) is the shared one, so downloads are NOT included
#   warm build   build.sh into a throwaway FLARE_CACHE_DIR with the normal (warm) GOCACHE:
#                nothing recompiles, flarecp and helm are linked again
#   cached       build.sh when the result exists (what `make controlplane` costs)
#   start-up     `flarecp cluster up` to kube-apiserver /readyz and to 2 kwok nodes Ready
# BENCH_COLD=0 skips the cold build (many minutes on 2 cores).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(go env GOVERSION)"

if [[ "${BENCH_COLD:-1}" != 0 ]]; then
  t0=$(now)
  if ! FLARE_CACHE_DIR="$scratch/cold" GOCACHE="$scratch/gocache" "$here/build.sh" >/dev/null 2>"$scratch/cold.log"; then
    echo "cold build failed:"; tail -n 30 "$scratch/cold.log"; exit 1
  fi
  echo "cold build (empty GOCACHE, shared GOMODCACHE): $(secs "$t0" "$(now)") s   [$(grep -o 'flarecp built in [0-9]*s' "$scratch/cold.log"), $(grep -o 'helm built in [0-9]*s' "$scratch/cold.log")]"
  rm -rf "$scratch/gocache" "$scratch/cold"
fi
"$here/build.sh" >/dev/null 2>&1   # make sure GOCACHE is warm for this tree
t0=$(now)
FLARE_CACHE_DIR="$scratch/warm" "$here/build.sh" >/dev/null 2>"$scratch/warm.log" || { echo "warm build failed:"; tail -n 30 "$scratch/warm.log"; exit 1; }
echo "warm build (warm GOCACHE, relink flarecp + helm): $(secs "$t0" "$(now)") s"
t0=$(now)
bin="$("$here/build.sh" 2>/dev/null | tail -n1)"
echo "cached (make controlplane): $(secs "$t0" "$(now)") s"

ls -l "$bin/flarecp" "$bin/helm" | awk '{printf "binary %s: %.0f MB\n", $NF, $5/1048576}'
for i in 1 2 3; do
  d="$scratch/cluster-$i"
  t0=$(now)
  "$bin/flarecp" cluster up --dir "$d" >"$scratch/up-$i.log" 2>&1 &
  pid=$!
  until [[ -f "$d/kubeconfig" ]]; do
    kill -0 "$pid" 2>/dev/null || { echo "cluster up failed:"; tail -n 30 "$scratch/up-$i.log"; exit 1; }
    sleep 0.05
  done
  total=$(secs "$t0" "$(now)")
  api=$(grep -o '/readyz ok in [0-9.]*s' "$scratch/up-$i.log" | grep -o '[0-9.]*s')
  rss=$(ps -o rss= --ppid "$pid" | awk '{s+=$1} END{printf "%.0f", s/1024}')
  kill -TERM "$pid"; t1=$(now); wait "$pid" || true
  echo "start-up #$i: kube-apiserver /readyz after $api, 2 nodes Ready + kubeconfig after ${total} s; RSS of components ${rss} MiB; stop $(secs "$t1" "$(now)") s"
done
