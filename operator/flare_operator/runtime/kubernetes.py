"""Kubernetes runtime: NVFlare participants as StatefulSets (server on the hub, a client per site).

The kit (a tar.gz from provisioning) is split into what the pods mount: a Secret with startup/
(certificates, keys, fed_*.json) and a ConfigMap with local/ (resources.json pointing NVFlare's
state into the workspace volume). Readiness comes from the StatefulSets; whether clients are
connected is what the FLARE API says (the admin session: runtime/admin_route.py says how an
operator outside the cluster reaches it).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from ..builders import naming
from ..builders.federation import ENFORCEMENT_RESOURCES_FILE, enforcement_resources
from ..builders.requests import LABEL_FEDERATION
from ..builders.workloads import (
    ENFORCEMENT_DIR,
    SITE_CONFIG_FILE,
    STATE_DIR,
    DatasetMount,
    client_manifests,
    external_service,
    server_manifests,
)
from ..config import OperatorConfig, SiteSettings
from ..nvflare.admin import FlareAdmin, FlareUnavailable
from ..nvflare.provisioning import unpack_kit
from ..policy.site_enforcement import APPROVED_FILE, readable_or_empty
from ..status.pods import pod_problem, problem_fields, statefulset_ready
from .admin_route import LocalRelay, admin_port, dial_direct, dial_port_forward, route_kit_through
from .kube import Kube, NotFound
from .workloads import (
    AdminSessions,
    ApprovedChange,
    ClientWorkload,
    ServerWorkload,
    digest,
    site_local_config,
)

log = logging.getLogger(__name__)

APPROVED_DIGEST_ANNOTATION = "flareop.io/approved-jobs-sha256"
"""On a client Pod: the digest (16 hex) of the approved-jobs document last sent to it; changing it
makes the kubelet refresh the Pod's ConfigMap volumes at once (``nudge_client_pods``)."""

WORKLOAD_KINDS = ("StatefulSet", "Service", "NetworkPolicy", "ConfigMap", "Secret", "PersistentVolumeClaim")


def split_kit(kit: bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    """(startup files for a Secret, local files for a ConfigMap) from a packed kit."""
    startup: dict[str, bytes] = {}
    local: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(kit), mode="r:gz") as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read() if member.isfile() else None
            if data is None:
                continue
            folder, _, name = member.name.partition("/")
            if folder == "startup":
                startup[name] = data
            elif folder == "local":
                local[name] = data.decode()
    default = local.get("resources.json.default")
    if default is not None:
        local["resources.json"] = _quick_rescheduling(default.replace("/tmp/nvflare", STATE_DIR))
    return startup, local


SCHEDULE_RETRY_SECONDS = 2.0
"""The server's first retry of a job a site refused to schedule (NVFlare's default: 10 s, doubling).
A site's approval reaches its client Pod's mounted document within a second or two (the gateway
nudges the Pod, ``nudge_client_pods``), or on the kubelet's next periodic sync where it cannot;
meanwhile the client refuses the job. Retrying from 2 s (2, 4, 8, ... s; ten tries) starts the job
soon after the document arrives."""


def _quick_rescheduling(resources_json: str) -> str:
    resources = json.loads(resources_json)
    for component in resources.get("components", []):
        if component.get("id") == "job_scheduler":
            component.setdefault("args", {})["min_schedule_interval"] = SCHEDULE_RETRY_SECONDS
    return json.dumps(resources, indent=2)


def server_target(startup: dict[str, bytes]) -> tuple[str, int]:
    """(host, port) a client kit dials (its startup/fed_client.json's service target; ``split_kit``)."""
    server = json.loads(startup.get("fed_client.json", b"{}")).get("servers", [{}])[0]
    host, _, port = (server.get("service", {}).get("target") or "localhost:8002").rpartition(":")
    return host, int(port)


def _cluster_local(host: str) -> bool:
    return host == "localhost" or host.endswith((".svc", ".svc.cluster.local", ".cluster.local"))


def _unresolvable(host: str, port: int) -> str | None:
    import socket

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        return (f"the NVFlare server endpoint {host}:{port} in this site's client kit does not resolve from the "
                f"site ({err.strerror or err}): the hub's externalServer.host must be a name (or address) the "
                f"site's network resolves")
    return None


def _secret(name: str, namespace: str, files: dict[str, bytes], labels: dict, owner: dict | None) -> dict:
    import base64

    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in files.items()}}


def _configmap(name: str, namespace: str, files: dict[str, str], labels: dict, owner: dict | None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": files}


class KubernetesRuntime:
    def __init__(self, config: OperatorConfig, kube: Kube):
        self.config = config
        self.kube = kube
        self._approved_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._admins = AdminSessions()
        # Workloads this process applied: key -> (digest of their manifests, when). See _wanted.
        self._applied: dict[tuple[str, ...], tuple[str, float]] = {}
        # Workload StatefulSets and Pods as the watches of the sites (clients) and the hub (servers) last
        # saw them: `observe`. Not there (not seen yet, or deleted): read from the API.
        self._ready: dict[tuple[str, str], bool] = {}  # StatefulSet (namespace, name) -> every replica ready
        self._pods: dict[tuple[str, str], dict] = {}  # Pod (namespace, name) -> its problem_fields

    async def _k(self, method: str, *args, **kwargs) -> Any:
        return await asyncio.to_thread(getattr(self.kube, method), *args, **kwargs)

    def _wanted(self, key: tuple[str, ...], manifests: list[dict]) -> str | None:
        """The digest of one workload's manifests, to apply them and then record it in `_applied` —
        or None when this process applied the very same ones less than settledResyncSeconds ago
        (at scale every answer and every ComputeSpec pass re-applied its whole workload, five to
        eight requests: docs/benchmarks.md §7). A workload found missing is forgotten (`_forget`)
        and applied by the next pass; anything else changed behind our back is put right within
        settledResyncSeconds."""
        wanted = digest(json.dumps(manifests, sort_keys=True, default=str).encode())
        held = self._applied.get(key)
        if held is not None and held[0] == wanted and time.monotonic() - held[1] < self.config.settled_resync_seconds:
            return None
        return wanted

    async def _apply_workload(self, manifests: list[dict], *before: Awaitable[None]) -> None:
        """One workload in two round trips instead of one per object: what its Pod needs (kit Secret,
        ConfigMaps, NetworkPolicy, Service, and ``before``) at once, then the StatefulSet — so the Pod
        never starts without its NetworkPolicy or its files."""
        first = [m for m in manifests if m["kind"] != "StatefulSet"]
        await asyncio.gather(*(self._k("apply", m) for m in first), *before)
        await asyncio.gather(*(self._k("apply", m) for m in manifests if m["kind"] == "StatefulSet"))

    def _forget(self, *key: str) -> None:
        for known in [k for k in self._applied if k[:len(key)] == key]:
            del self._applied[known]

    # --- server -----------------------------------------------------------------------------

    async def ensure_server(self, w: ServerWorkload) -> None:
        labels = naming.standard_labels(w.federation, "server")
        startup, local = split_kit(w.kit)
        startup_secret = naming.kit_secret_name(w.federation, "server")
        local_config = f"{startup_secret}-local"
        manifests = [_secret(startup_secret, w.namespace, startup, labels, w.owner),
                     _configmap(local_config, w.namespace, local, labels, w.owner), *server_manifests(
            fed=w.federation, namespace=w.namespace, spec=w.spec, image=self.config.image,
            image_pull_policy=self.config.image_pull_policy, command=self.config.server_command,
            kit_secret=startup_secret, storage_class=self.config.storage_class, workspace_size=self.config.workspace_size,
            operator_labels={"app.kubernetes.io/name": "flare-operator"}, owner=w.owner,
            allow_external_clients=True, operator_namespace=self.config.operator_namespace, local_config=local_config,
            workspace_retention=self.config.workspace_retention,
            **self._external(),
        )]
        key = ("server", w.namespace, w.federation)
        wanted = self._wanted(key, manifests)
        if wanted is None:
            return
        await self._apply_workload(manifests)
        self._applied[key] = (wanted, time.monotonic())

    def _external(self) -> dict:
        ext = self.config.external_server
        return {} if ext is None else {"external_service_type": ext.service_type, "external_node_port": ext.node_port}

    async def external_port(self, federation: str, namespace: str, owner: dict | None) -> int:
        """The port sites on other clusters dial: ``externalServer.port``, else the NodePort of the
        federation's external Service (created here if it does not exist yet, before provisioning)."""
        ext = self.config.external_server
        if ext is None:
            raise ValueError("no externalServer configured")
        if ext.port is not None:
            return ext.port
        service = await self._k("get", "Service", namespace, naming.external_service_name(federation))
        if service is None:
            service = await self._k("apply", external_service(
                fed=federation, namespace=namespace, service_type=ext.service_type, node_port=ext.node_port,
                owner=owner))
        port = service["spec"]["ports"][0].get("nodePort")
        if not port:
            raise ValueError(f"Service {namespace}/{service['metadata']['name']} has no nodePort yet")
        return int(port)

    async def server_ready(self, w: ServerWorkload) -> bool:
        name = naming.server_name(w.federation)
        if (w.namespace, name) in self._ready:
            return self._ready[(w.namespace, name)]
        sts = await self._k("get", "StatefulSet", w.namespace, name)
        if sts is None:
            self._forget("server", w.namespace, w.federation)
        return statefulset_ready(sts)

    async def server_problem(self, w: ServerWorkload) -> str | None:
        if not w.spec.active:
            return None
        return await self._pod_problem(w.namespace, f"{naming.server_name(w.federation)}-0")

    async def _pod_problem(self, namespace: str, pod: str) -> str | None:
        if (namespace, pod) in self._pods:
            return pod_problem(self._pods[(namespace, pod)])
        return pod_problem(await self._k("get", "Pod", namespace, pod))

    async def connected_clients(self, w: ServerWorkload) -> list[str] | None:
        if self._route() == "none":
            return None  # no FLARE API: the sites' own reports decide
        if not w.spec.active or not await self.server_ready(w):
            return []
        try:
            admin = await self.admin(w)
            return await asyncio.to_thread(admin.connected_clients)
        except Exception as err:  # noqa: BLE001 - the server may still be starting
            log.info("FLARE API of %s not answering yet: %s", w.federation, err)
            return []

    def _route(self) -> str:
        route = self.config.admin_route
        if route == "auto":
            return "service" if os.environ.get("KUBERNETES_SERVICE_HOST") else "port-forward"
        return route

    async def admin(self, w: ServerWorkload) -> FlareAdmin:
        """The FLARE API session with ``w``'s server, through the configured route."""
        route = self._route()
        if route == "none":
            raise FlareUnavailable("this orchestrator has no route to the NVFlare server's admin port "
                                   "(adminRoute: none): it runs no jobs")
        key = f"{digest(w.admin_kit)}/{route}"
        known = self._admins.get(w.federation, key)
        if known is not None:
            return known
        self._admins.drop(w.federation)
        folder = Path(self.config.workdir).resolve() / "admin" / w.namespace / w.federation
        await asyncio.to_thread(unpack_kit, w.admin_kit, folder)
        relay = None
        if route != "service":
            port = admin_port(folder)
            pod = f"{naming.server_name(w.federation)}-0"
            if route == "port-forward":
                dial = dial_port_forward(self.kube.api, w.namespace, pod, port)
            else:
                dial = dial_direct(lambda: self._pod_ip(w.namespace, pod), port)
            relay = LocalRelay(dial, f"{w.namespace}/{pod}:{port}")
            route_kit_through(folder, relay)
        admin = FlareAdmin(folder, timeout=5.0)
        self._admins.put(w.federation, key, admin, relay.close if relay else None)
        return admin

    def _pod_ip(self, namespace: str, pod: str) -> str:
        obj = self.kube.get("Pod", namespace, pod)
        ip = ((obj or {}).get("status") or {}).get("podIP")
        if not ip:
            raise ConnectionError(f"Pod {namespace}/{pod} has no IP (not running)")
        return ip

    async def remove_server(self, federation: str, namespace: str) -> None:
        self._admins.drop(federation)
        self._forget("server", namespace, federation)
        await self._remove(namespace, {LABEL_FEDERATION: federation, "app.kubernetes.io/component": "server"})

    async def _remove(self, namespace: str, labels: dict) -> None:
        for kind in WORKLOAD_KINDS:
            await self._k("delete_labelled", kind, namespace, labels)

    # --- clients ----------------------------------------------------------------------------

    async def ensure_client(self, w: ClientWorkload) -> None:
        site = w.site
        labels = naming.standard_labels(w.federation, "client", site.org)
        startup, local = split_kit(w.kit)
        mounts = [DatasetMount(d.dataset_id, claim_name=d.claim_name, sub_path=d.sub_path) if d.claim_name
                  else DatasetMount(d.dataset_id, host_path=d.path) for d in w.datasets]
        local[SITE_CONFIG_FILE] = json.dumps({**site_local_config(w),
                                         "datasets": {m.dataset_id: m.path for m in mounts}}, sort_keys=True)
        local[ENFORCEMENT_RESOURCES_FILE] = json.dumps(
            enforcement_resources(f"{ENFORCEMENT_DIR}/{APPROVED_FILE}", site.org), indent=1)
        startup_secret = naming.kit_secret_name(w.federation, w.client_name)
        local_config = f"{startup_secret}-local"
        host, port = server_target(startup)
        files = [_secret(startup_secret, site.namespace, startup, labels, None),
                 _configmap(local_config, site.namespace, local, labels, None)]
        workload = list(client_manifests(
            fed=w.federation, site=site, spec=w.spec, image=self.config.image,
            image_pull_policy=self.config.image_pull_policy, command=self.config.client_command,
            kit_secret=startup_secret, dataset_mounts=mounts, enforcement_configmap=w.enforcement_configmap, server_host=host,
            fl_port=int(port), owner=None, participant=w.client_name, local_config=local_config,
            workspace_retention=site.workspace_retention,
        ))
        key = ("client", site.namespace, w.federation, w.client_name)
        wanted = self._wanted(key, files + workload)
        if wanted is None:
            return
        # The approved-jobs file is created empty if absent, never overwritten here: its content is the
        # gateway's decisions.
        await self._apply_workload(files + workload, self.update_approved_jobs(
            w.federation, site, w.client_name, lambda text: readable_or_empty(text, site.org)))
        self._applied[key] = (wanted, time.monotonic())

    def observe(self, event: dict) -> None:
        obj = event.get("object") or {}
        meta, kind = obj.get("metadata") or {}, obj.get("kind")
        if not meta.get("name"):
            return
        key = (meta.get("namespace", ""), meta["name"])
        deleted = event.get("type") == "DELETED"
        if kind == "StatefulSet" and deleted:
            self._ready.pop(key, None)
        elif kind == "StatefulSet":
            self._ready[key] = statefulset_ready(obj)
        elif kind == "Pod" and deleted:
            self._pods.pop(key, None)
        elif kind == "Pod":
            self._pods[key] = problem_fields(obj)

    async def client_running(self, w: ClientWorkload) -> bool:
        name = naming.client_name(w.federation, w.site.site)
        if (w.site.namespace, name) in self._ready:
            return self._ready[(w.site.namespace, name)]
        sts = await self._k("get", "StatefulSet", w.site.namespace, name)
        if sts is None:
            self._forget("client", w.site.namespace, w.federation, w.client_name)
        return statefulset_ready(sts)

    async def client_problem(self, w: ClientWorkload) -> str | None:
        """The client Pod's state, else whether the server endpoint in its kit resolves: an external
        endpoint (a site on another cluster) must resolve from the site's network — which this
        gateway shares when it runs in the site's cluster. In-cluster Service names are the
        cluster DNS's business (the Pod's own resolver), not checked here."""
        if not w.spec.active:
            return None
        problem = await self._pod_problem(w.site.namespace, f"{naming.client_name(w.federation, w.site.site)}-0")
        if problem:
            return problem
        host, port = server_target(split_kit(w.kit)[0])
        if _cluster_local(host):
            return None
        return await asyncio.to_thread(_unresolvable, host, port)

    async def remove_client(self, federation: str, site: SiteSettings, client_name: str) -> None:
        self._forget("client", site.namespace, federation, client_name)
        await self._remove(site.namespace, {LABEL_FEDERATION: federation, "app.kubernetes.io/component": "client"})

    async def update_approved_jobs(self, federation: str, site: SiteSettings, client_name: str,
                                   change: ApprovedChange) -> None:
        """The ConfigMap ``<federation>-approved-jobs``, server-side applied; then the client Pods are
        nudged (``nudge_client_pods``) so that the kubelet refreshes the mounted file now rather than
        on its next periodic sync (about a minute by default). No Pod restarts."""
        name = naming.enforcement_configmap_name(federation)
        lock = self._approved_locks.setdefault((site.namespace, name), asyncio.Lock())
        async with lock:
            current = await self._k("get", "ConfigMap", site.namespace, name)
            text = None if current is None else (current.get("data") or {}).get(APPROVED_FILE)
            new = change(text)
            if new is None or new == text:
                return
            labels = naming.standard_labels(federation, "client", site.org)
            await self._k("apply", _configmap(name, site.namespace, {APPROVED_FILE: new}, labels, None))
            await self.nudge_client_pods(federation, site, new)

    async def nudge_client_pods(self, federation: str, site: SiteSettings, document: str) -> None:
        """Annotate the federation's client Pods at ``site`` with the approved-jobs document's digest.

        A ConfigMap volume is rewritten when the kubelet syncs the Pod: periodically
        (``syncFrequency``, 1 min by default) or when the Pod object changes. Changing an
        annotation is such a change, so an approval reaches the client's enforcement within a
        second or two instead of up to a minute later (the job would be refused and retried
        meanwhile); a revocation equally. The gateway needs ``patch`` on Pods in its site
        namespaces for it; without (or if the Pod is gone) the file still arrives with the next
        periodic sync, so a failure is logged, not raised."""
        patch = {"metadata": {"annotations": {APPROVED_DIGEST_ANNOTATION: digest(document.encode())[:16]}}}
        try:
            pods = await self._k("list", "Pod", site.namespace,
                                 labels=naming.selector_labels(federation, "client", site.org))
            for pod in pods:
                try:
                    await self._k("merge_patch", "Pod", site.namespace, pod["metadata"]["name"], patch)
                except NotFound:
                    continue  # replaced meanwhile: a new Pod mounts the current document anyway
        except Exception as err:  # noqa: BLE001 - the kubelet's periodic sync delivers the file anyway
            log.warning("could not nudge the client Pods of %s in %s to reload the approved jobs now (%s); "
                        "they get them at the kubelet's next sync", federation, site.namespace, err)

    async def job_deployed(self, federation: str, site: SiteSettings, client_name: str, uid: str) -> bool | None:
        return None  # the client's workspace is on its Pod's volume; the caller assumes the worst

    async def privacy_record(self, federation: str, site: SiteSettings, client_name: str, uid: str) -> dict | None:
        return None  # likewise: the site's ledger counts the job's epsilon as reserved (basic composition)

    async def clients_running(self, site: SiteSettings) -> int:
        items = await self._k("list", "StatefulSet", site.namespace,
                              labels={"app.kubernetes.io/component": "client", "flareop.io/org": site.org})
        return sum(1 for sts in items if statefulset_ready(sts))

    async def close(self) -> None:
        self._admins.close()
