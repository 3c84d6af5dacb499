#!/usr/bin/env python3
"""Write a one-layer OCI image archive (an OCI image layout in a tar file) with the standard library.

    oci_archive.py --out base.tar --ref localhost/flare-operator/base:HASH --rootfs rootfs.tar \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd '["python3"]'
    oci_archive.py --out pause.tar --ref registry.k8s.io/pause:3.10.2 --file pause:/pause:0755 \
        --entrypoint '["/pause"]' --user 65535:65535

    oci_archive.py --out runtime.tar --ref localhost/flare-operator/runtime:TAG --from-dir DIR

--from-dir: an image that `buildah push --disable-compression IMAGE dir:DIR` wrote (buildah's
oci-archive: destination gzips every layer whatever --disable-compression says; gzip of the runtime
image's ~7 GB is minutes on 2 cores): its manifest, config and layers are repacked as they are.
--rootfs: a root filesystem tar (mmdebstrap's output); device nodes are dropped (the container
runtime provides /dev). --file SRC:DEST:MODE (repeatable): a layer made of these files (root-owned,
mtime 0). The layer is stored uncompressed (application/vnd.oci.image.layer.v1.tar): the archive is
read on the same machine (buildah pull, ctr images import), where gzip would only cost time.

index.json names the image with both org.opencontainers.image.ref.name and io.containerd.image.name,
so `ctr -n k8s.io images import` registers it under --ref, and carries the platform (linux/amd64 by
default) so containerd's platform filter keeps it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import tarfile
import tempfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


class _HashingWriter(io.RawIOBase):
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)


def _filtered_rootfs(src: str, out) -> None:
    """Copy a rootfs tar, dropping device nodes and FIFOs (the runtime mounts its own /dev)."""
    with tarfile.open(src, "r:*") as tin, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            if m.ischr() or m.isblk() or m.isfifo():
                continue
            tout.addfile(m, tin.extractfile(m) if m.isreg() else None)


def _files_layer(specs: list[str], out) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tout:
        dirs: set[str] = set()
        for spec in specs:
            src, dest, mode = spec.rsplit(":", 2)
            dest = dest.lstrip("/")
            parts = dest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                    tout.addfile(ti)
            with open(src, "rb") as f:
                data = f.read()
            ti = tarfile.TarInfo(dest)
            ti.size, ti.mode, ti.mtime = len(data), int(mode, 8), 0
            tout.addfile(ti, io.BytesIO(data))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tar.addfile(ti, io.BytesIO(data))


def _canon(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _index(manifest_digest: str, manifest_size: int, ref: str, arch: str) -> bytes:
    return _canon({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref},
        }],
    })


def _from_dir(args) -> int:
    d = args.from_dir
    with open(os.path.join(d, "manifest.json"), "rb") as f:
        manifest = f.read()
    m = json.loads(manifest)
    media_type = m.get("mediaType", OCI_MANIFEST)
    if media_type != OCI_MANIFEST:
        raise SystemExit(f"oci_archive.py: {d}: {media_type} is not an OCI manifest (push with --format oci)")
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    with open(os.path.join(d, m["config"]["digest"].split(":", 1)[1]), "rb") as f:
        arch = json.load(f).get("architecture", args.arch)
    tmp_out = args.out + ".tmp"
    with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", _canon({"imageLayoutVersion": "1.0.0"}))
        _add_bytes(tar, "index.json", _index(manifest_digest, len(manifest), args.ref, arch))
        for name in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(ti)
        _add_bytes(tar, "blobs/sha256/" + manifest_digest[7:], manifest)
        seen = set()
        for desc in [m["config"]] + m["layers"]:
            hexd = desc["digest"].split(":", 1)[1]
            if hexd in seen:
                continue
            seen.add(hexd)
            path = os.path.join(d, hexd)
            ti = tarfile.TarInfo("blobs/sha256/" + hexd)
            ti.size, ti.mode, ti.mtime = os.path.getsize(path), 0o644, 0
            with open(path, "rb") as f:
                tar.addfile(ti, f)
    os.replace(tmp_out, args.out)
    print(json.dumps({"archive": os.path.abspath(args.out), "ref": args.ref, "manifest": manifest_digest,
                      "layers": [x["mediaType"] for x in m["layers"]]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--ref", required=True, help="image reference recorded in index.json")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--rootfs", help="root filesystem tar")
    src.add_argument("--file", action="append", help="SRC:DEST:OCTAL_MODE (repeatable)")
    src.add_argument("--from-dir", help="a containers-image dir: copy (manifest.json + blobs) to repack")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--entrypoint", type=json.loads, default=None, help="JSON list")
    p.add_argument("--cmd", type=json.loads, default=None, help="JSON list")
    p.add_argument("--user", default="")
    p.add_argument("--workdir", default="/")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--arch", default=GOARCH.get(platform.machine(), platform.machine()))
    p.add_argument("--created", default="1970-01-01T00:00:00Z")
    args = p.parse_args(argv)

    if args.from_dir:
        return _from_dir(args)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".layer-", delete=False) as lf:
        layer_path = lf.name
    try:
        with open(layer_path, "wb") as f:
            hw = _HashingWriter(f)
            w = io.BufferedWriter(hw, buffer_size=1 << 20)
            if args.rootfs:
                _filtered_rootfs(args.rootfs, w)
            else:
                _files_layer(args.file, w)
            w.flush()
        layer_digest, layer_size = "sha256:" + hw.h.hexdigest(), hw.n

        cfg: dict = {"Env": args.env, "WorkingDir": args.workdir}
        if args.entrypoint is not None:
            cfg["Entrypoint"] = args.entrypoint
        if args.cmd is not None:
            cfg["Cmd"] = args.cmd
        if args.user:
            cfg["User"] = args.user
        if args.label:
            cfg["Labels"] = dict(kv.split("=", 1) for kv in args.label)
        config = _canon({
            "architecture": args.arch, "os": "linux", "created": args.created, "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created": args.created, "created_by": "hack/images/oci_archive.py"}],
        })
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = _canon({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size}],
        })
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        index = _index(manifest_digest, len(manifest), args.ref, args.arch)

        tmp_out = args.out + ".tmp"
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", _canon({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", index)
            for name in ("blobs", "blobs/sha256"):
                ti = tarfile.TarInfo(name)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(ti)
            _add_bytes(tar, "blobs/sha256/" + manifest_digest[7:], manifest)
            _add_bytes(tar, "blobs/sha256/" + config_digest[7:], config)
            ti = tarfile.TarInfo("blobs/sha256/" + layer_digest[7:])
            ti.size, ti.mode, ti.mtime = layer_size, 0o644, 0
            with open(layer_path, "rb") as f:
                tar.addfile(ti, f)
        os.replace(tmp_out, args.out)
    finally:
        if os.path.exists(layer_path):
            os.unlink(layer_path)
    print(json.dumps({"archive": os.path.abspath(args.out), "ref": args.ref, "manifest": manifest_digest,
                      "config": config_digest, "layer": layer_digest, "layer_size": layer_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
