#!/usr/bin/env bash
# Build (or reuse) the container images on a machine without Docker or a registry, from the same
# images/*/Dockerfile users build with Docker, and print what was built as JSON on the last line
# of stdout (progress goes to stderr):
#
#   {"base": {"archive": "/abs/base-<key>.tar", "ref": "localhost/flare-operator/base:<key>"},
#    "operator": {"archive": "/abs/operator-<tag>.tar", "ref": "localhost/flare-operator/operator:<tag>"},
#    "pause": "/abs/pause-<key>.tar", "pause_ref": "registry.k8s.io/pause:3.10.2",
#    "runtime": {"archive": "/abs/runtime-<tag>.tar", "ref": "localhost/flare-operator/runtime:<tag>"},
#    "store": {"root": "...", "runroot": "..."}}
#
#   hack/images/build.sh [pause|operator|runtime ...]     # default: all three (base comes with them)
#
# Every archive is an OCI image layout in a tar file that `ctr -n k8s.io images import FILE`
# registers under its ref (index.json carries org.opencontainers.image.ref.name and
# io.containerd.image.name); `buildah pull oci-archive:FILE` reads them too. <cache>/latest.json
# keeps the newest entry of each, merged across runs (`build.sh runtime` leaves pause's there).
# <tag>/<key>: 16 hex digits of the content key.
#
# Steps, each cached by content under ${FLARE_CACHE_DIR:-$HOME/.cache/flare-operator}/images/:
#   base      mmdebstrap --variant=minbase bookworm (python3, python3-venv, ca-certificates) made a
#             one-layer OCI image (oci_archive.py) and loaded as localhost/flare-operator/base:<key>:
#             the local stand-in for the Dockerfiles' python:3.11-slim-bookworm@sha256:...
#             (--build-arg BASE_IMAGE).
#   wheels    a wheelhouse with a wheel of every package the lock files pin (pip wheel --no-deps, only
#             what is missing; wheels no lock pins are deleted after a build), mounted read-only
#             at the Dockerfiles' pip cache mount (/root/.cache/pip) with PIP_NO_INDEX=1, so the
#             builds are offline and torch is downloaded once. pip's own HTTP cache is not enough:
#             behind a proxy that sends no caching headers it stays empty.
#   operator, runtime
#             buildah bud --layers --pull=never --isolation=chroot -f images/<name>/Dockerfile . ;
#             an import smoke test inside the built image (buildah run, as uid 10001); buildah push
#             to dir: (uncompressed) repacked as an OCI archive. <tag> covers the Dockerfile,
#             .dockerignore, every file the Dockerfile COPYs (the lock file included), the base's
#             key and this recipe (context_key.py).
#   pause     gcc -Os -static of kubernetes' build/pause/linux/pause.c (k8s.io/kubernetes of
#             hack/controlplane/go.mod, from Go's module cache) as registry.k8s.io/pause:3.10.2
#             (entrypoint /pause, user 65535).
#
# With nothing changed, no buildah, gcc or mmdebstrap runs: files are hashed and the JSON printed.
# buildah works in its own store, <cache>/storage (overlay; FLARE_IMAGES_STORAGE_DRIVER=vfs where
# overlay mounts are not allowed), which keeps the current image of each name and its build cache:
#   buildah --root <store.root> --runroot <store.runroot> images
# Settings: FLARE_IMAGES_KEEP (archives kept per image, default 2); FLARE_IMAGES_COMPRESSION
# (none|gzip|zstd, default none: the archives are imported on the same machine, and gzip of the
# ~6.5 GB runtime image costs minutes on 2 cores); PYTHON (the CPython 3.11 whose pip fills the
# wheelhouse, default .venv/bin/python, else python3); FLARE_IMAGES_DEBIAN_MIRROR (mmdebstrap).
# Runs as root (buildah and mmdebstrap as another user need /etc/subuid and /etc/subgid).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

RECIPE=1   # bump to rebuild every image after changing how they are built
PAUSE_VERSION=3.10.2
PAUSE_REF="registry.k8s.io/pause:${PAUSE_VERSION}"
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)
REPO=localhost/flare-operator
KEEP="${FLARE_IMAGES_KEEP:-2}"
COMPRESSION="${FLARE_IMAGES_COMPRESSION:-none}"
cache_root="${FLARE_CACHE_DIR:-$HOME/.cache/flare-operator}/images"
wheels="$cache_root/wheels"
store_root="$cache_root/storage"
if [[ $(id -u) -eq 0 ]]; then store_run=/run/flare-operator-images
else store_run="${XDG_RUNTIME_DIR:-/tmp}/flare-operator-images-$(id -u)"; fi

log() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }
need() {  # need <command> <debian package> [why]
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found${3:+ ($3)}: install the Debian package '$2' (apt-get install $2)"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
bh() {
  buildah --root "$store_root" --runroot "$store_run" \
    ${FLARE_IMAGES_STORAGE_DRIVER:+--storage-driver "$FLARE_IMAGES_STORAGE_DRIVER"} "$@"
}

# `buildah run` in the built image; tried three times: runc has failed here once at start with
# "Close_Fd sealing memfd copy: Device or resource busy" and passed at once when run again.
bh_run() {
  local c=$1 try; shift
  for try in 1 2 3; do
    bh run --isolation=chroot "$c" -- "$@" && return 0
    log "buildah run failed (try $try of 3): $*"; sleep 2
  done
  return 1
}

want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(pause operator runtime)
for w in "${want[@]}"; do
  case "$w" in pause|operator|runtime) ;; *) die "unknown image '$w' (pause, operator, runtime)";; esac
done
wants() { local w; for w in "${want[@]}"; do [[ "$w" == "$1" ]] && return 0; done; return 1; }
case "$COMPRESSION" in none|gzip|zstd) ;; *) die "FLARE_IMAGES_COMPRESSION=$COMPRESSION: none, gzip or zstd" ;; esac
need python3 python3

# ---- keys (cheap: hashing files only) ----------------------------------------------------------
sha() { sha256sum | cut -c1-16; }
base_key="$( { echo "base recipe=$RECIPE suite=$BASE_SUITE packages=$BASE_PACKAGES mirror=${FLARE_IMAGES_DEBIAN_MIRROR:-}";
               printf '%s\n' "${BASE_ENV[@]}"; cat "$here/oci_archive.py"; } | sha)"
base_ref="$REPO/base:$base_key"
base_archive="$cache_root/base-$base_key.tar"

if wants pause; then
  k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2; exit} $1=="require" && $2=="k8s.io/kubernetes"{print $3; exit}' hack/controlplane/go.mod)"
  [[ -n "$k8s_version" ]] || die "cannot read the k8s.io/kubernetes version from hack/controlplane/go.mod"
  if [[ -n "${PAUSE_C:-}" ]]; then
    pause_c="$PAUSE_C"
  else
    need go golang-go "to find kubernetes' pause.c in Go's module cache; or set PAUSE_C=/path/to/pause.c"
    pause_c="$(go env GOMODCACHE)/k8s.io/kubernetes@${k8s_version}/build/pause/linux/pause.c"
    if [[ ! -f "$pause_c" ]]; then
      log "downloading k8s.io/kubernetes@${k8s_version} into Go's module cache (for build/pause/linux/pause.c)"
      (cd hack/controlplane && go mod download "k8s.io/kubernetes@${k8s_version}") >&2
    fi
  fi
  [[ -f "$pause_c" ]] || die "$pause_c not found"
  need gcc gcc "to build the pause binary"
  pause_key="$( { echo "pause recipe=$RECIPE $PAUSE_REF"; gcc -dumpfullversion; ldd --version 2>&1 | head -1;
                  cat "$pause_c" "$here/oci_archive.py"; } | sha)"
  pause_archive="$cache_root/pause-$pause_key.tar"
fi

declare -A key ref archive
for name in operator runtime; do
  k="$(python3 "$here/context_key.py" . "images/$name/Dockerfile" "base=$base_key" "recipe=$RECIPE" \
        "compression=$COMPRESSION")" || die "cannot compute the content key of images/$name/Dockerfile"
  key[$name]="${k:0:16}"
  ref[$name]="$REPO/$name:${key[$name]}"
  archive[$name]="$cache_root/$name-${key[$name]}.tar"
done

emit() {
  local args=(--store "$store_root" "$store_run")
  [[ -f "$base_archive" ]] && args+=(--base "$base_archive" "$base_ref")
  if wants pause; then args+=(--pause "$pause_archive" "$PAUSE_REF"); fi
  for name in operator runtime; do
    if wants "$name"; then args+=("--$name" "${archive[$name]}" "${ref[$name]}"); fi
  done
  # Prints this run's JSON; merges it into latest.json (entries whose archive is gone dropped).
  python3 - "$cache_root/latest.json" "${args[@]}" <<'EOF'
import json, os, sys
latest, a, out = sys.argv[1], sys.argv[2:], {}
while a:
    opt, x, y = a[:3]
    a = a[3:]
    if opt == "--pause":
        out["pause"], out["pause_ref"] = x, y
    elif opt == "--store":
        out["store"] = {"root": x, "runroot": y}
    else:
        out[opt[2:]] = {"archive": x, "ref": y}
try:
    merged = {**json.load(open(latest)), **out}
except (OSError, ValueError):
    merged = dict(out)
for k in [k for k, v in merged.items() if k not in ("store", "pause_ref")]:
    if not os.path.exists(merged[k] if k == "pause" else merged[k]["archive"]):
        del merged[k]
if "pause" not in merged:
    merged.pop("pause_ref", None)
text = json.dumps(merged, sort_keys=True) + "\n"
if not os.path.exists(latest) or open(latest).read() != text:
    with open(latest + ".tmp", "w") as f:
        f.write(text)
    os.replace(latest + ".tmp", latest)
print(json.dumps(out, sort_keys=True))
EOF
}

missing() {  # the wanted images whose archive is not there
  local m=()
  if wants pause && [[ ! -f "$pause_archive" ]]; then m+=(pause); fi
  for name in operator runtime; do
    if wants "$name" && [[ ! -f "${archive[$name]}" ]]; then m+=("$name"); fi
  done
  echo "${m[*]}"
}

if [[ -z "$(missing)" ]]; then
  log "up to date (${want[*]}); archives in $cache_root"
  emit
  exit 0
fi

# ---- build what is missing (one build at a time; the loser reuses the winner's results) ----------
mkdir -p "$cache_root" "$wheels"
exec 9>"$cache_root/.build.lock"
flock 9
todo=" $(missing) "
if [[ "$todo" == "  " ]]; then
  emit
  exit 0
fi
tmp="$(mktemp -d "$cache_root/.build-XXXXXX")"
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do bh rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

prune_archives() {  # keep the $KEEP newest <name>-*.tar
  ls -1t "$cache_root/$1"-*.tar 2>/dev/null | tail -n +"$((KEEP + 1))" | xargs -r rm -f
}
prune_store() {  # <name> <current ref>: untag the name's other images, drop unused layers and build cache
  local r
  for r in $(bh images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep "^$REPO/$1:" || true); do
    [[ "$r" == "$2" ]] || bh rmi "$r" >/dev/null 2>&1 || true
  done
  bh rmi --prune >/dev/null 2>&1 || true
}

if [[ "$todo" == *" pause "* ]]; then
  t0="$(now)"
  libc_a="$(gcc -print-file-name=libc.a)"
  [[ "$libc_a" == /* && -f "$libc_a" ]] || die "gcc finds no static libc (libc.a): install the Debian package 'libc6-dev'"
  log "pause: gcc -static $pause_c"
  gcc -Os -Wall -Werror -static -DVERSION="v${PAUSE_VERSION}" -o "$tmp/pause" "$pause_c"
  strip "$tmp/pause" 2>/dev/null || true
  python3 "$here/oci_archive.py" --out "$tmp/pause.tar" --ref "$PAUSE_REF" --file "$tmp/pause:/pause:0755" \
    --entrypoint '["/pause"]' --user 65535:65535 >/dev/null
  mv "$tmp/pause.tar" "$pause_archive"
  prune_archives pause
  log "pause: $pause_archive ($(since "$t0")s)"
fi

if [[ "$todo" == *" operator "* || "$todo" == *" runtime "* ]]; then
  need buildah buildah
  [[ $(id -u) -eq 0 ]] || log "note: not root; buildah and mmdebstrap then need /etc/subuid and /etc/subgid (package uidmap)"

  # -- the base stand-in --
  if [[ ! -f "$base_archive" ]]; then
    need mmdebstrap mmdebstrap
    t0="$(now)"
    log "base: mmdebstrap --variant=minbase $BASE_SUITE ($BASE_PACKAGES), about a minute"
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$tmp/rootfs.tar" \
      ${FLARE_IMAGES_DEBIAN_MIRROR:+"$FLARE_IMAGES_DEBIAN_MIRROR"} >&2
    envs=()
    for e in "${BASE_ENV[@]}"; do envs+=(--env "$e"); done
    python3 "$here/oci_archive.py" --out "$tmp/base.tar" --ref "$base_ref" --rootfs "$tmp/rootfs.tar" \
      "${envs[@]}" --cmd '["python3"]' >/dev/null
    rm -f "$tmp/rootfs.tar"
    mv "$tmp/base.tar" "$base_archive"
    prune_archives base
    log "base: $base_archive ($(since "$t0")s)"
  fi
  if ! bh inspect --type image "$base_ref" >/dev/null 2>&1; then
    t0="$(now)"
    bh tag "$(bh pull -q "oci-archive:$base_archive")" "$base_ref"
    log "base: loaded into buildah's store as $base_ref ($(since "$t0")s)"
  fi

  # -- the wheelhouse: a wheel of every pinned package, downloaded (or built, for sdists) once --
  py="${PYTHON:-}"
  if [[ -z "$py" ]]; then
    if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
  fi
  "$py" -c 'import sys, pip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
    || die "$py is not a CPython 3.11 with pip (the images run 3.11 and take their wheels from it): run 'make install' or set PYTHON"
  locks=()
  for name in operator runtime; do [[ "$todo" == *" $name "* ]] && locks+=("images/$name/requirements.txt"); done
  # One lock file at a time: the locks may pin different versions of one package, and a single
  # `pip wheel -r` refuses two pins of a name even with --no-deps (a fresh machine's first build).
  for lock in "${locks[@]}"; do
    "$py" "$here/wheelhouse.py" missing "$wheels" "$tmp/missing.txt" "$lock"
    if [[ -s "$tmp/missing.txt" ]]; then
      t0="$(now)"
      log "wheels: fetching $(wc -l <"$tmp/missing.txt") packages of $lock into $wheels"
      "$py" -m pip wheel --quiet --no-deps -r "$tmp/missing.txt" -w "$wheels" >&2
      log "wheels: done ($(since "$t0")s)"
    fi
  done

  for name in operator runtime; do
    [[ "$todo" == *" $name "* ]] || continue
    t0="$(now)"
    log "$name: buildah bud -f images/$name/Dockerfile -t ${ref[$name]}"
    bh bud --quiet --layers --pull=never --isolation=chroot --format oci \
      --build-arg BASE_IMAGE="$base_ref" \
      --build-arg PIP_INDEX_URL=https://pypi.org/simple --build-arg PIP_NO_INDEX=1 \
      --build-arg PIP_FIND_LINKS=/root/.cache/pip --build-arg PIP_NO_CACHE_DIR=1 \
      --volume "$wheels:/root/.cache/pip:ro" \
      -f "images/$name/Dockerfile" -t "${ref[$name]}" . >/dev/null
    log "$name: built ($(since "$t0")s); smoke test"
    t1="$(now)"
    c="$(bh from --pull=never "${ref[$name]}")"
    containers+=("$c")
    if [[ "$name" == operator ]]; then
      check='import importlib.util as u, kopf, kubernetes, nvflare, dp_accounting, flare_operator.main
assert u.find_spec("torch") is None, "torch is in the operator image"'
      bh_run "$c" flare-operator version >/dev/null
    else
      check='import nvflare, torch, transformers, peft, dp_accounting, flare_operator.nvflare.enforcement'
    fi
    # Both images hold the app catalog (the orchestrator builds jobs from it, the clients run it).
    bh_run "$c" python3 -c "$check
from flare_operator.catalog.loader import list_apps
assert list_apps(), 'no app in FLARE_APPS_DIR'
import os; assert os.getuid() == 10001, os.getuid()" >&2 || die "$name: the smoke test failed in ${ref[$name]}"
    bh rm "$c" >/dev/null
    log "$name: smoke test passed ($(since "$t1")s); exporting (compression: $COMPRESSION)"
    t1="$(now)"
    if [[ "$COMPRESSION" == none ]]; then
      # buildah's oci-archive: destination gzips layers whatever --disable-compression says; dir:
      # keeps them as they are, and oci_archive.py repacks that as an OCI archive.
      bh push --quiet --format oci --disable-compression "${ref[$name]}" "dir:$tmp/$name.dir" >&2
      python3 "$here/oci_archive.py" --out "$tmp/$name.tar" --ref "${ref[$name]}" --from-dir "$tmp/$name.dir" >/dev/null
      rm -rf "$tmp/$name.dir"
    else
      bh push --quiet --format oci --compression-format "$COMPRESSION" "${ref[$name]}" \
        "oci-archive:$tmp/$name.tar:${ref[$name]}" >&2
    fi
    mv "$tmp/$name.tar" "${archive[$name]}"
    prune_archives "$name"
    prune_store "$name" "${ref[$name]}"
    log "$name: ${archive[$name]} ($(du -h "${archive[$name]}" | cut -f1); export $(since "$t1")s, total $(since "$t0")s)"
  done
  prune_store base "$base_ref"
  "$py" "$here/wheelhouse.py" prune "$wheels" images/*/requirements.txt
fi

emit
