"""NVFlare provisioning: a FederationPlan -> startup kits, under a CA kept between runs.

The CA state (NVFlare's state/cert.json: root CA plus every participant's cert and key) is the
input and the output: provisioning again with the same state re-issues nothing for existing
participants (their kits come out byte-identical) and signs new clients under the same root.
Synchronous and CPU-bound (key generation): callers run it off the event loop.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..builders.federation import FederationPlan, project_dict

log = logging.getLogger(__name__)

CA_STATE_FILE = "cert.json"
KIT_DIRS = ("startup", "local")


@dataclass(frozen=True)
class Provisioned:
    kits: dict[str, bytes]  # participant name -> deterministic tar.gz of startup/ and local/
    ca_state: bytes


def lean_import() -> None:
    """Let this process import NVFlare's modules without running ``nvflare/__init__.py``.

    That file imports FedJob, the simulator and with them gRPC and the job runtime (≈ 330 modules,
    ≈ 22 MiB, ≈ 1 s), none of which provisioning uses: ``nvflare.lighter`` needs only its own
    modules, ``nvflare.fuel.utils`` and ``cryptography``. For a process that provisions and does
    nothing else (main.py's provisioner process: its initializer); a no-op where NVFlare is already
    imported. The kits are byte-identical either way (tests/unit/test_worker_process.py)."""
    if "nvflare" in sys.modules:
        return
    spec = importlib.util.find_spec("nvflare")
    if spec is None:
        return  # the import error then comes from provision(), where it is clear
    sys.modules["nvflare"] = importlib.util.module_from_spec(spec)  # the package, its __init__ not run


def provision(plan: FederationPlan, ca_state: bytes | None = None) -> Provisioned:
    from nvflare.lighter.impl.cert import CertBuilder
    from nvflare.lighter.impl.signature import SignatureBuilder
    from nvflare.lighter.impl.static_file import StaticFileBuilder
    from nvflare.lighter.impl.workspace import WorkspaceBuilder
    from nvflare.lighter.provision import prepare_project
    from nvflare.lighter.provisioner import Provisioner

    with tempfile.TemporaryDirectory(prefix="flareop-prov-") as tmp:
        root = Path(tmp)
        state_dir = root / plan.project / "state"
        state_dir.mkdir(parents=True)
        if ca_state:
            (state_dir / CA_STATE_FILE).write_bytes(ca_state)
        builders = [
            WorkspaceBuilder(template_file=["master_template.yml"]),
            StaticFileBuilder(config_folder="config", scheme="grpc", require_signed_jobs=True),
            CertBuilder(),
            SignatureBuilder(),
        ]
        ctx = Provisioner(str(root), builders).provision(prepare_project(project_dict(plan)))
        prod = Path(ctx.get("current_prod_dir"))
        kits = {name: pack_kit(prod / name) for name in plan.participants}
        return Provisioned(kits=kits, ca_state=(state_dir / CA_STATE_FILE).read_bytes())


def pack_kit(participant_dir: Path) -> bytes:
    """tar.gz of the kit with fixed metadata, so equal content gives equal bytes (no needless updates)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for sub in KIT_DIRS:
            for path in sorted((participant_dir / sub).rglob("*")):
                if not path.is_file():
                    continue
                info = tarfile.TarInfo(str(path.relative_to(participant_dir)))
                data = path.read_bytes()
                info.size = len(data)
                info.mode = 0o700 if path.suffix == ".sh" else 0o600
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def with_local_files(kit: bytes, files: dict[str, bytes]) -> bytes:
    """The kit with ``files`` added to (or replacing those in) its local/ folder, packed as
    deterministically as ``pack_kit`` (the site's own configuration, e.g. its enforcement component)."""
    entries: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(kit), mode="r:gz") as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                entries[member.name] = extracted.read()
                modes[member.name] = member.mode
    for name, data in files.items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        entries[f"local/{name}"] = data
        modes[f"local/{name}"] = 0o600
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size = len(entries[name])
            info.mode = modes[name]
            tar.addfile(info, io.BytesIO(entries[name]))
    return buf.getvalue()


def unpack_kit(kit: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(kit), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # CPython >= 3.11.4
            tar.extractall(dest, filter="data")
            return
        # Older 3.11 (Debian bookworm's 3.11.2, the images' local stand-in base): the same refusals
        # by hand. A kit holds regular files and folders under relative names, nothing else.
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if not (member.isfile() or member.isdir()) or Path(member.name).is_absolute() or ".." in parts:
                raise ValueError(f"refusing kit member {member.name!r}: only relative files and folders")
            member.mode &= 0o755 if member.isdir() else 0o644 | (member.mode & 0o100)
        tar.extractall(dest)
