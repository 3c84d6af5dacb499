"""Workload adapters: where NVFlare participants run. The handlers see only this interface.

- ProcessRuntime: local supervised processes (development, demos, CI);
- KubernetesRuntime (runtime/kubernetes.py): StatefulSets, Services and NetworkPolicies.
Both take the same kits and report readiness the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..api.compute import ComputeSpecSpec
from ..builders.federation import ADMIN_IDENTITY, ENFORCEMENT_RESOURCES_FILE, enforcement_resources
from ..builders.workloads import ENV_SITE_CONFIG, SITE_CONFIG_FILE
from ..config import SiteSettings
from ..nvflare.admin import FlareAdmin
from ..nvflare.provisioning import unpack_kit, with_local_files
from ..policy.site_enforcement import APPROVED_FILE, META_KEY, readable_or_empty
from .process import ProcessSupervisor

log = logging.getLogger(__name__)


ENFORCEMENT_FOLDER = "enforcement"  # process runtime: <client folder>/enforcement/approved.json

JOB_META_FILE = "meta.json"  # nvflare.apis.fl_constant.WorkspaceConstants.JOB_META_FILE (not imported: no nvflare here)
PRIVACY_RECORD_FILE = "flareop_privacy.json"  # flare_app_common.dp.PRIVACY_RECORD (a unit test keeps them equal)

ApprovedChange = Callable[[str | None], str | None]
"""Approved-jobs document text now (None: there is none) -> the text to store (None: leave it as it is)."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ServerWorkload:
    federation: str
    namespace: str
    server_name: str  # NVFlare participant name (the host clients dial)
    spec: ComputeSpecSpec
    kit: bytes
    admin_kit: bytes
    kit_secret: str
    owner: dict | None


@dataclass(frozen=True)
class DatasetLocation:
    dataset_id: str
    path: str | None = None
    claim_name: str | None = None
    sub_path: str = ""


@dataclass(frozen=True)
class ClientWorkload:
    federation: str
    site: SiteSettings
    client_name: str
    spec: ComputeSpecSpec
    kit: bytes
    kit_secret: str
    datasets: tuple[DatasetLocation, ...]
    enforcement_configmap: str


class AdminSessions:
    """The operator's FLARE API sessions, one per federation, kept while their key (the admin kit's
    digest, and how the server is reached) stays the same; what belongs to a session (a relay) closes
    with it."""

    def __init__(self) -> None:
        self._by_federation: dict[str, tuple[str, FlareAdmin, Callable[[], None] | None]] = {}

    def get(self, federation: str, key: str) -> FlareAdmin | None:
        known = self._by_federation.get(federation)
        return known[1] if known and known[0] == key else None

    def put(self, federation: str, key: str, admin: FlareAdmin, on_close: Callable[[], None] | None = None) -> None:
        self.drop(federation)
        self._by_federation[federation] = (key, admin, on_close)

    def drop(self, federation: str) -> None:
        known = self._by_federation.pop(federation, None)
        if known:
            known[1].close()
            if known[2] is not None:
                known[2]()

    def close(self) -> None:
        for federation in list(self._by_federation):
            self.drop(federation)


class WorkloadRuntime(Protocol):
    async def ensure_server(self, w: ServerWorkload) -> None: ...
    async def server_ready(self, w: ServerWorkload) -> bool: ...
    async def connected_clients(self, w: ServerWorkload) -> list[str] | None:
        """Clients connected per the FLARE API; None where the runtime cannot ask (kwok pods)."""
    async def admin(self, w: ServerWorkload) -> FlareAdmin:
        """The operator's FLARE API session with the federation's server (its admin kit), reachable
        from wherever the operator runs."""
    async def remove_server(self, federation: str, namespace: str) -> None: ...
    async def ensure_client(self, w: ClientWorkload) -> None: ...
    async def client_running(self, w: ClientWorkload) -> bool: ...
    async def server_problem(self, w: ServerWorkload) -> str | None:
        """Why the server does not run, when something the operator cannot wait out stops it (its image
        cannot be pulled, its Pod cannot be scheduled, it crashes); None otherwise."""
    async def client_problem(self, w: ClientWorkload) -> str | None:
        """The same for a site's client, seen from the site."""
    async def remove_client(self, federation: str, site: SiteSettings, client_name: str) -> None: ...
    async def external_port(self, federation: str, namespace: str, owner: dict | None) -> int:
        """The port sites on other clusters dial the federation's server at (kubernetes runtime)."""
    async def clients_running(self, site: SiteSettings) -> int: ...
    def observe(self, event: dict) -> None:
        """A watch event of a workload's StatefulSet or Pod (kubernetes runtime: the sites watch their
        clients', the hub its servers'): kept, so that the readiness and problem checks need not read them."""
    async def update_approved_jobs(self, federation: str, site: SiteSettings, client_name: str,
                                   change: ApprovedChange) -> None:
        """Read-modify-write the site's approved-jobs document for its client in ``federation``
        (policy/site_enforcement.py), atomically with respect to this runtime's other updates. A
        change never restarts the client: its enforcement component reads the document on each check."""
    async def job_deployed(self, federation: str, site: SiteSettings, client_name: str, uid: str) -> bool | None:
        """Whether the site's client ever deployed a job of the FederatedJob ``uid`` (its data may have
        been used), from the client's own workspace; None when this runtime cannot tell."""
    async def privacy_record(self, federation: str, site: SiteSettings, client_name: str, uid: str) -> dict | None:
        """What the site's client recorded that the FederatedJob ``uid`` used of its privacy, over every
        attempt (``{"delta": d, "events": [...]}``, flare_app_common.dp.PRIVACY_RECORD); None when this
        runtime cannot read its client's workspace, or no attempt recorded anything."""
    async def close(self) -> None: ...


class ProcessRuntime:
    """NVFlare participants as local processes under one ProcessSupervisor."""

    def __init__(self, workdir: Path):
        self.supervisor = ProcessSupervisor(workdir)
        self._admins = AdminSessions()

    # --- server -----------------------------------------------------------------------------

    async def ensure_server(self, w: ServerWorkload) -> None:
        if not w.spec.active:
            await self.supervisor.stop(w.federation, w.server_name, remove=False)
            self._admins.drop(w.federation)
            return
        await self.supervisor.ensure(w.federation, w.server_name, role="server", org="hub", kit=w.kit,
                                     kit_digest=digest(w.kit))

    async def admin(self, w: ServerWorkload) -> FlareAdmin:
        return self._admin(w)

    def _admin(self, w: ServerWorkload) -> FlareAdmin:
        kit_digest = digest(w.admin_kit)
        admin = self._admins.get(w.federation, kit_digest)
        if admin is None:
            self._admins.drop(w.federation)
            folder = self.supervisor.folder(w.federation, ADMIN_IDENTITY)
            unpack_kit(w.admin_kit, folder)
            admin = FlareAdmin(folder, timeout=5.0)
            self._admins.put(w.federation, kit_digest, admin)
        return admin

    async def server_ready(self, w: ServerWorkload) -> bool:
        return w.spec.active and self.supervisor.running(w.federation, w.server_name)

    async def connected_clients(self, w: ServerWorkload) -> list[str] | None:
        if not await self.server_ready(w):
            return []
        try:
            return await asyncio.to_thread(self._admin(w).connected_clients)
        except Exception as err:  # noqa: BLE001 - the server may still be starting
            log.info("FLARE API of %s not answering yet: %s", w.federation, err)
            return []

    async def server_problem(self, w: ServerWorkload) -> str | None:
        return None  # a local process that exits is restarted; its log says why

    async def client_problem(self, w: ClientWorkload) -> str | None:
        return None

    async def external_port(self, federation: str, namespace: str, owner: dict | None) -> int:
        raise ValueError("the process runtime has no external endpoint: its server listens on this machine only")

    async def remove_server(self, federation: str, namespace: str) -> None:
        self._admins.drop(federation)
        await self.supervisor.stop_federation(federation, remove=True)

    # --- clients ----------------------------------------------------------------------------

    async def ensure_client(self, w: ClientWorkload) -> None:
        key_fed = _client_federation(w.federation, w.site.org)
        if not w.spec.active:
            await self.supervisor.stop(key_fed, w.client_name, remove=False)
            return
        folder = self.supervisor.folder(key_fed, w.client_name)
        _write_site_local(folder, w)
        self._change_approved(folder, lambda text: readable_or_empty(text, w.site.org))
        enforcement = enforcement_resources(str(folder / ENFORCEMENT_FOLDER / APPROVED_FILE), w.site.org)
        kit = with_local_files(w.kit, {ENFORCEMENT_RESOURCES_FILE: json.dumps(enforcement, indent=1).encode()})
        await self.supervisor.ensure(key_fed, w.client_name, role="client", org=w.site.org, kit=kit,
                                     kit_digest=digest(kit) + _site_local_digest(w),
                                     env={ENV_SITE_CONFIG: str(folder / SITE_CONFIG_FILE)})

    async def client_running(self, w: ClientWorkload) -> bool:
        return self.supervisor.running(_client_federation(w.federation, w.site.org), w.client_name)

    async def remove_client(self, federation: str, site: SiteSettings, client_name: str) -> None:
        await self.supervisor.stop_federation(_client_federation(federation, site.org), remove=True)

    async def update_approved_jobs(self, federation: str, site: SiteSettings, client_name: str,
                                   change: ApprovedChange) -> None:
        self._change_approved(self.supervisor.folder(_client_federation(federation, site.org), client_name), change)

    async def job_deployed(self, federation: str, site: SiteSettings, client_name: str, uid: str) -> bool | None:
        folder = self.supervisor.folder(_client_federation(federation, site.org), client_name)
        return bool(await asyncio.to_thread(_job_folders, folder, uid))

    async def privacy_record(self, federation: str, site: SiteSettings, client_name: str, uid: str) -> dict | None:
        folder = self.supervisor.folder(_client_federation(federation, site.org), client_name)
        return await asyncio.to_thread(_privacy_record, await asyncio.to_thread(_job_folders, folder, uid))

    @staticmethod
    def _change_approved(folder: Path, change: ApprovedChange) -> None:
        """Synchronous on the event loop, so no other update interleaves; the file is replaced
        atomically, so the client never reads half a document."""
        path = folder / ENFORCEMENT_FOLDER / APPROVED_FILE
        try:
            current: str | None = path.read_text()
        except FileNotFoundError:
            current = None
        new = change(current)
        if new is None or new == current:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(new)
        os.replace(tmp, path)

    async def clients_running(self, site: SiteSettings) -> int:
        prefix = f"{_client_federation('', site.org)}"
        return sum(1 for key in self.supervisor.participants if key.startswith(prefix) and
                   self.supervisor.participants[key].pid)

    def observe(self, event: dict) -> None:
        """Nothing to keep: the workloads are this process's own children."""

    async def close(self) -> None:
        self._admins.close()
        await self.supervisor.stop_all()


def _job_folders(folder: Path, uid: str) -> list[Path]:
    """The folders the client deployed jobs of the FederatedJob ``uid`` into (one per attempt).
    NVFlare's client deploys each job into ``<workspace>/<job id>/`` with the job's ``meta.json``
    (nvflare/private/fed/utils/app_deployer.py); ours carry the FederatedJob's uid under ``flareop``."""
    found = []
    for meta_file in sorted(folder.glob(f"*/{JOB_META_FILE}")):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get(META_KEY), dict) and meta[META_KEY].get("uid") == uid:
            found.append(meta_file.parent)
    return found


def _privacy_record(job_folders: list[Path]) -> dict | None:
    """The events every attempt's client recorded (one job: one delta). An attempt that was deployed but
    recorded nothing trained nothing under DP yet (the record is written before each round's first step
    and before each release); an unreadable record makes the whole answer unknown (None)."""
    events, deltas = [], set()
    for job in job_folders:
        path = job / PRIVACY_RECORD_FILE
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
            events += [dict(e) for e in record["events"]]
            deltas.add(float(record["delta"]))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable privacy record %s: the job's epsilon is counted as reserved", path)
            return None
    if not events or len(deltas) != 1:
        return None
    return {"delta": deltas.pop(), "events": events}


def _client_federation(federation: str, org: str) -> str:
    """Clients get their own folder tree per org, apart from the hub's (as if on another machine)."""
    return f"site-{org}/{federation}"


def site_local_config(w: ClientWorkload) -> dict:
    """What only the site knows, handed to its client: where each dataset is, which hashes it approved."""
    return {
        "org": w.site.org,
        "datasets": {d.dataset_id: str(Path(d.path).resolve()) if d.path else f"/data/{d.dataset_id}"
                     for d in w.datasets},
        "enforcementConfigMap": w.enforcement_configmap,
    }


def _site_local_digest(w: ClientWorkload) -> str:
    return digest(json.dumps(site_local_config(w), sort_keys=True).encode())[:12]


def _write_site_local(folder: Path, w: ClientWorkload) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SITE_CONFIG_FILE).write_text(json.dumps(site_local_config(w), indent=2, sort_keys=True))
