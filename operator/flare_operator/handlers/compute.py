"""Orchestrator: ComputeSpec -> AccessRequests to the orgs, an NVFlare project, the server.

Level-based: `reconcile` reads everything it needs and converges; Kopf's change handlers and a
timer only call it. The sites answer in their AccessRequests; the orchestrator provisions once
every org said yes and hands each site its client kit through the site's hub namespace.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ..api.access_request import ANNOTATION_KIT
from ..api.common import Decision
from ..api.compute import ComputeSpecSpec, ComputeSpecStatus
from ..api.conditions import ConditionType, Reason
from ..api.kinds import API_VERSION
from ..builders import naming
from ..builders.federation import ADMIN_IDENTITY, FederationPlan, client_name
from ..builders.requests import (
    LABEL_FEDERATION,
    compute_access_request,
    datasets_by_org,
    kit_digest,
    kit_secret_name,
)
from ..config import LABEL_ORG, OperatorConfig
from ..nvflare.provisioning import provision
from ..policy.content_hash import canonical_json, compute_content_hash
from ..runtime.kube import Kube, StatusRefused
from ..runtime.metrics import STATUS_WRITES
from ..runtime.workloads import ServerWorkload, WorkloadRuntime
from ..status.compute import ObservedCompute, ObservedSite, compute_status
from ..status.conditions import get_condition
from ..status.gateway import OrgSeats, org_seats_of
from ..status.job import SiteWatch
from .objects import Listings, ObjectView, Passes

log = logging.getLogger(__name__)

KIT_KEY = "kit.tar.gz"
CA_KEY = "cert.json"
PLAN_KEY = "plan.json"
DIGEST_ANNOTATION = "flareop.io/kit-digest"


class SpecError(Exception):
    """The spec cannot be acted on; reported as a condition, not retried."""


@dataclass(frozen=True)
class HeldKits:
    plan: FederationPlan
    server_kit: bytes
    admin_kit: bytes
    at: float  # time.monotonic() when provisioned or read


@dataclass
class Hub:
    """What the orchestrator's handlers share."""

    config: OperatorConfig
    kube: Kube
    runtime: WorkloadRuntime
    results_store: Any = None  # store.results.ResultsStore: where finished jobs' results go
    passes: Passes = field(default_factory=Passes)  # each object's passes take turns (handlers/objects.py)
    port_base: int = 18000
    site_watches: dict[str, SiteWatch] = field(default_factory=dict)  # NVFlare job id -> its sites without it
    # (namespace, name) -> (digest of the object applied, its uid and generation then): see apply_changed
    applied: dict[tuple[str, str], tuple[str, str, int]] = field(default_factory=dict)
    # Where NVFlare projects are provisioned: main.py gives a process of its own (RSA key generation
    # holds the GIL: in a thread it stalled every other pass of the hub, docs/benchmarks.md §7);
    # None: the default thread pool.
    provisioner: Executor | None = None
    # The Gateways and Namespaces that place each org's seat (org_hub_namespaces), as recently listed:
    # listed again after an event that can move a seat (handlers/registry.py SeatWatch), at the latest
    # after resyncSeconds. Every ComputeSpec and job pass listed both (100 orgs: two LISTs of ~100
    # objects per pass, docs/benchmarks.md §7).
    listings: Listings = field(init=False)
    # ComputeSpec uid -> its plan and server/admin kits as this process last provisioned or read them
    # (Federation._provision): three Secret reads per pass saved while they are recent.
    provisioned: dict[str, HeldKits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.listings = Listings(lambda kind: self.k("list", kind), max_age=self.config.resync_seconds)

    def lock(self, uid: str) -> asyncio.Lock:
        return self.passes.lock(uid)

    async def k(self, method: str, *args, **kwargs) -> Any:
        return await asyncio.to_thread(getattr(self.kube, method), *args, **kwargs)

    async def apply_changed(self, objects: list[dict], stored: list[dict]) -> list[dict]:
        """Server-side apply the objects a pass wants (the AccessRequests of one ComputeSpec or job, one
        per org), all at once; the stored objects in the same order. ``stored``: the same kind's
        objects as just listed. One this process applied with the same content, whose generation
        has not moved since (nobody changed its spec), is not applied again: the listed object, with
        its current status, is the answer. At 100 orgs, re-applying every request of every pass was
        most of the hub's API requests (docs/benchmarks.md §7); after a restart everything is
        applied once."""
        by_key = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in stored}

        async def one(obj: dict) -> dict:
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            digest = hashlib.sha256(canonical_json(obj).encode()).hexdigest()
            current = by_key.get(key)
            if current is not None and self.applied.get(key) == (digest, current["metadata"]["uid"],
                                                                 current["metadata"].get("generation")):
                return current
            out = await self.k("apply", obj)
            self.applied[key] = (digest, out["metadata"]["uid"], out["metadata"].get("generation"))
            return out

        return list(await asyncio.gather(*(one(obj) for obj in objects)))

    def forget_applied(self, namespace: str, name: str) -> None:
        self.applied.pop((namespace, name), None)


def owner_reference(body: dict) -> dict:
    meta = body["metadata"]
    return {"apiVersion": body.get("apiVersion", API_VERSION), "kind": body["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


async def org_of_namespace(hub: Hub, namespace: str) -> str:
    """The consumer's org: its namespace's org label, from the Namespaces as the seats see them."""
    ns = next((n for n in await hub.listings.list("Namespace") if n["metadata"]["name"] == namespace), None)
    org = ((ns or {}).get("metadata", {}).get("labels") or {}).get(LABEL_ORG)
    if not org:
        raise SpecError(f"namespace {namespace} has no {LABEL_ORG} label: ask the cluster admin to label it "
                        f"with the consumer org (kubectl label namespace {namespace} {LABEL_ORG}=<org>)")
    return org


async def org_hub_namespaces(hub: Hub) -> OrgSeats:
    """org -> the hub namespace where its Gateway (and its AccessRequests and client kits) live.

    A Gateway counts for org X only in a namespace the cluster admin labelled flareop.io/org=X; one
    in an unlabelled namespace or in another org's counts for no org, and when several namespaces
    labelled X hold Gateways for X, X gets none (status/gateway.py `org_seats`; the Gateway timer
    flags each refused Gateway). Any site credential can write a Gateway in its own namespace; only
    the cluster admin labels namespaces. Everything the hub writes for X, and every answer it reads
    back as X's (the AccessRequests' status), is in the namespace returned here, so it is X's by
    construction. `.get(org)` is the namespace or None; `.missing_message(org)` says why there is
    none. From the Gateways and Namespaces as listed after the last event that could move a seat
    (`Hub.listings`): the same picture a fresh list would give, less the watch's delay.
    """
    return org_seats_of(await hub.listings.list("Gateway"), await hub.listings.list("Namespace"))


def secret(name: str, namespace: str, data: dict[str, bytes], *, labels: dict, owner: dict | None,
           annotations: dict | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner:
        meta["ownerReferences"] = [owner]
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def secret_bytes(obj: dict | None, key: str) -> bytes | None:
    value = ((obj or {}).get("data") or {}).get(key)
    return base64.b64decode(value) if value else None


class Federation(ObjectView):
    """One ComputeSpec's reconcile, over what it reads once."""

    spec_model = ComputeSpecSpec
    status_model = ComputeSpecStatus

    def __init__(self, hub: Hub, body: dict):
        super().__init__(body)
        self.hub = hub
        self.fed = naming.federation_name(self.namespace, self.name)
        self.owner = owner_reference(body)
        self.labels = {LABEL_FEDERATION: self.fed}

    @property
    def server_name(self) -> str:
        if self.hub.config.runtime == "process":
            return "localhost"
        return f"{naming.server_name(self.fed)}.{self.namespace}.svc"  # the Service clients dial

    def _extra_host_names(self) -> tuple[str, ...]:
        """Further names in the server's certificate (Kubernetes runtime): the Service's full name, and
        ``localhost`` for the operator's admin relay (runtime/admin_route.py) — only participants of
        this federation trust its CA, so the name grants nothing beyond it."""
        if self.hub.config.runtime == "process":
            return ()
        ext = self.hub.config.external_server
        return (f"{self.server_name}.cluster.local", "localhost", *((ext.host,) if ext else ()))

    def _names(self) -> dict[str, str]:
        return {"ca": f"{self.fed}-ca", "server": f"{self.fed}-server-kit", "admin": f"{self.fed}-admin-kit"}

    async def reconcile(self) -> ComputeSpecStatus:
        try:
            consumer_org = await org_of_namespace(self.hub, self.namespace)
        except SpecError as err:
            return self._invalid(str(err))
        hub_namespaces = await org_hub_namespaces(self.hub)
        content_hash = compute_content_hash(self.spec)
        by_org = datasets_by_org(self.spec)
        wanted = {org: compute_access_request(
            org=org, hub_namespace=hub_ns, source_namespace=self.namespace, source_name=self.name,
            source_uid=self.uid, consumer_org=consumer_org, spec=self.spec, federation=self.fed,
            content_hash=content_hash) for org in by_org if (hub_ns := hub_namespaces.get(org)) is not None}
        listed = await self.hub.k("list", "AccessRequest", None, labels=self.labels)
        requests = dict(zip(wanted, await self.hub.apply_changed(list(wanted.values()), listed), strict=True))
        sites: list[ObservedSite] = []
        for org, datasets in by_org.items():
            if org not in requests:
                sites.append(ObservedSite(org=org, datasets=datasets, gateway=False,
                                          message=hub_namespaces.missing_message(org)))
                continue
            answer = requests[org].get("status") or {}
            current = answer.get("decidedHash") == content_hash
            decision = Decision(answer.get("decision") or "Pending") if current else Decision.PENDING
            sites.append(ObservedSite(org=org, datasets=datasets, gateway=True, decision=decision,
                                      message=answer.get("message") or "",
                                      client_ready=bool(answer.get("clientReady")) and current,
                                      client_problem=(answer.get("clientMessage") or "") if current else ""))
        await self._forget_orgs_no_longer_used(set(by_org), listed)

        observed = ObservedCompute(generation=self.generation, active=self.spec.active, sites=tuple(sites),
                                   previous=self.previous, project=self.fed)
        if sites and all(s.decision == Decision.APPROVED for s in sites):
            try:
                server, plan = await self._provision({s.org: requests[s.org] for s in sites}, hub_namespaces.remote)
            except Exception as err:  # noqa: BLE001 - reported in status, retried by the timer
                log.exception("provisioning %s failed", self.fed)
                return compute_status(replace(observed, provisioning_error=f"provisioning failed: {err}"), _now())
            await self.hub.runtime.ensure_server(server)
            ready = await self.hub.runtime.server_ready(server)
            problem = "" if ready else (await self.hub.runtime.server_problem(server) or "")
            connected = await self.hub.runtime.connected_clients(server)
            sites = [replace(s, client_ready=(s.client_ready if connected is None else client_name(s.org) in connected))
                     for s in sites]
            observed = replace(observed, sites=tuple(sites), provisioned=True, server_ready=ready,
                               server_problem=problem, server_endpoint=f"{plan.server_host}:{plan.fl_port}")
        status = compute_status(observed, _now())
        await self._report_failing(status)
        return status

    async def _report_failing(self, status: ComputeSpecStatus) -> None:
        """A Warning Event when a workload starts failing, or fails for another reason than before."""
        now = next((c for c in status.conditions if c.type == ConditionType.READY), None)
        if now is None or now.reason != Reason.WORKLOAD_FAILING:
            return
        before = next((c for c in self.previous.conditions if c.type == ConditionType.READY), None)
        if before is not None and before.reason == now.reason and before.message == now.message:
            return
        await self.hub.k("event", self.body, type_="Warning", reason=Reason.WORKLOAD_FAILING, note=now.message[:1024])

    def _invalid(self, message: str) -> ComputeSpecStatus:
        from ..status.conditions import set_condition

        conds = set_condition(list(self.previous.conditions), type_=ConditionType.READY, status=False,
                              reason=Reason.INVALID_SPEC, message=message, generation=self.generation, now=_now())
        return ComputeSpecStatus(phase="Failed", observed_generation=self.generation, conditions=conds)

    async def existing_server(self) -> ServerWorkload | None:
        """The provisioned server (kits from its Secrets), without provisioning anything."""
        names = self._names()
        server_kit = await self.hub.k("get", "Secret", self.namespace, names["server"])
        admin_kit = await self.hub.k("get", "Secret", self.namespace, names["admin"])
        ca = await self.hub.k("get", "Secret", self.namespace, names["ca"])
        plan = secret_bytes(ca, PLAN_KEY)
        if not (server_kit and admin_kit and plan):
            return None
        return self._server_workload(HeldKits(plan=_plan_from_json(plan.decode()),
                                              server_kit=secret_bytes(server_kit, KIT_KEY) or b"",
                                              admin_kit=secret_bytes(admin_kit, KIT_KEY) or b"", at=time.monotonic()))

    async def _connect_to(self, plan: FederationPlan, orgs: set[str]) -> dict[str, tuple[str, int]]:
        """Where the clients of ``orgs`` (sites on other clusters) dial the server: the external endpoint."""
        if not orgs or self.hub.config.runtime == "process":
            return {}  # process runtime: every participant runs on this machine, the server on localhost
        ext = self.hub.config.external_server
        which = ", ".join(sorted(orgs))
        if ext is None:
            raise SpecError(f"the sites of {which} are on other clusters (their Gateway says sameClusterAsHub: "
                            "false) but this orchestrator has no endpoint for them: set externalServer (host, port "
                            "or a NodePort, serviceType) in its configuration (kubernetes runtime)")
        if ext.host not in plan.extra_host_names:
            raise SpecError(f"the sites of {which} must dial {ext.host}, which the federation's server certificate "
                            f"does not name (it was provisioned before externalServer.host was set): recreate the "
                            f"ComputeSpec to provision it again")
        port = await self.hub.runtime.external_port(self.fed, self.namespace, self.owner)
        return {client_name(org): (ext.host, port) for org in orgs}

    async def _provision(self, requests: dict[str, dict], remote: frozenset[str] = frozenset()
                         ) -> tuple[ServerWorkload, FederationPlan]:
        """Ensure the NVFlare project has exactly these clients; re-provision only when that changes."""
        names = self._names()
        clients = {client_name(org): org for org in requests}
        # A request without its kit annotation never got its kit (the annotation is written after the
        # kit: a pass that failed or was killed in between, or a request from before the annotation).
        # Provisioning again from the stored CA state re-keys nothing and writes every kit.
        unmarked = sorted(org for org, r in requests.items()
                          if not (r["metadata"].get("annotations") or {}).get(ANNOTATION_KIT))
        held = self.hub.provisioned.get(self.uid)
        if held is not None and not unmarked and time.monotonic() - held.at < self.hub.config.settled_resync_seconds:
            # As this process provisioned or read it less than settledResyncSeconds ago: no reads.
            if held.plan.with_clients(clients, await self._connect_to(held.plan, set(requests) & remote)) == held.plan:
                return self._server_workload(held), held.plan
        ca = await self.hub.k("get", "Secret", self.namespace, names["ca"])
        stored_plan = secret_bytes(ca, PLAN_KEY)
        if stored_plan:
            plan = _plan_from_json(stored_plan.decode())
        else:
            fl_port, admin_port = self._ports()
            plan = FederationPlan(project=self.fed, server_host=self.server_name, fl_port=fl_port,
                                  admin_port=admin_port, clients=(), extra_host_names=self._extra_host_names())
        wanted = plan.with_clients(clients, await self._connect_to(plan, set(requests) & remote))
        server_kit = await self.hub.k("get", "Secret", self.namespace, names["server"])
        admin_kit = await self.hub.k("get", "Secret", self.namespace, names["admin"])
        if wanted != plan or not stored_plan or server_kit is None or admin_kit is None or unmarked:
            log.info("provisioning %s with clients %s%s", self.fed, sorted(clients),
                     f" (no kit handed to {', '.join(unmarked)} yet)" if stored_plan and unmarked else "")
            result = await asyncio.get_running_loop().run_in_executor(self.hub.provisioner, provision, wanted,
                                                                      secret_bytes(ca, CA_KEY))
            plan_json = _plan_to_json(wanted).encode()
            await self.hub.k("apply", secret(names["ca"], self.namespace, {CA_KEY: result.ca_state, PLAN_KEY: plan_json},
                                             labels=self.labels, owner=self.owner))
            server_kit = await self.hub.k("apply", secret(names["server"], self.namespace,
                                                          {KIT_KEY: result.kits[wanted.server_host]},
                                                          labels=self.labels, owner=self.owner))
            admin_kit = await self.hub.k("apply", secret(names["admin"], self.namespace,
                                                         {KIT_KEY: result.kits[ADMIN_IDENTITY]},
                                                         labels=self.labels, owner=self.owner))

            async def hand_over(name: str, org: str) -> None:
                meta = requests[org]["metadata"]
                await self.hub.k("apply", secret(kit_secret_name(meta["name"]), meta["namespace"],
                                                 {KIT_KEY: result.kits[name]}, labels=self.labels, owner=None))
                # Tell the site now (handlers/registry.py kit_written), not at its next resync.
                await self.hub.k("merge_patch", "AccessRequest", meta["namespace"], meta["name"],
                                 {"metadata": {"annotations": {ANNOTATION_KIT: kit_digest(result.kits[name])}}})

            # Every site's kit at once: one after another, 64 sites were 128 requests in a row.
            await asyncio.gather(*(hand_over(name, org) for name, org in clients.items()))
            if not stored_plan:
                await self.hub.k("event", self.body, reason="Provisioned",
                                 note=f"NVFlare project {self.fed}: server, admin and {len(clients)} client kits")
            plan = wanted
        held = HeldKits(plan=plan, server_kit=secret_bytes(server_kit, KIT_KEY) or b"",
                        admin_kit=secret_bytes(admin_kit, KIT_KEY) or b"", at=time.monotonic())
        self.hub.provisioned[self.uid] = held
        return self._server_workload(held), plan

    def _server_workload(self, held: HeldKits) -> ServerWorkload:
        return ServerWorkload(federation=self.fed, namespace=self.namespace, server_name=held.plan.server_host,
                              spec=self.spec, kit=held.server_kit, admin_kit=held.admin_kit,
                              kit_secret=self._names()["server"], owner=self.owner)

    def _ports(self) -> tuple[int, int]:
        if self.hub.config.runtime != "process":
            return 8002, 8003
        from ..runtime.ports import free_port_pair

        return free_port_pair()

    async def _forget_orgs_no_longer_used(self, orgs: set[str], listed: list[dict]) -> None:
        for request in listed:
            if request["spec"]["org"] not in orgs and request["spec"]["source"]["kind"] == "Compute":
                meta = request["metadata"]
                await self.hub.k("delete", "AccessRequest", meta["namespace"], meta["name"])
                self.hub.forget_applied(meta["namespace"], meta["name"])
                await self.hub.k("delete", "Secret", meta["namespace"], kit_secret_name(meta["name"]))

    async def delete(self) -> bool:
        """Remove everything this ComputeSpec created; True when the sites have let go of it too."""
        self.hub.provisioned.pop(self.uid, None)
        await self.hub.runtime.remove_server(self.fed, self.namespace)
        remaining = 0
        for request in await self.hub.k("list", "AccessRequest", None, labels=self.labels):
            meta = request["metadata"]
            await self.hub.k("delete", "AccessRequest", meta["namespace"], meta["name"])
            remaining += 1
        for kit in await self.hub.k("list", "Secret", None, labels=self.labels):
            await self.hub.k("delete", "Secret", kit["metadata"]["namespace"], kit["metadata"]["name"])
        return remaining == 0


def _plan_to_json(plan: FederationPlan) -> str:
    return json.dumps({"project": plan.project, "server_host": plan.server_host, "fl_port": plan.fl_port,
                       "admin_port": plan.admin_port, "clients": [list(c) for c in plan.clients],
                       "extra_host_names": list(plan.extra_host_names),
                       "connect_to": [list(c) for c in plan.connect_to]}, sort_keys=True)


def _plan_from_json(text: str) -> FederationPlan:
    d = json.loads(text)
    return FederationPlan(project=d["project"], server_host=d["server_host"], fl_port=d["fl_port"],
                          admin_port=d["admin_port"], clients=tuple(tuple(c) for c in d["clients"]),
                          extra_host_names=tuple(d.get("extra_host_names", ())),
                          connect_to=tuple(tuple(c) for c in d.get("connect_to", ())))


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def write_status(hub: Hub, body: dict, status: ComputeSpecStatus) -> None:
    """Patch only when something changed; an Event when the phase changes."""
    new = status.to_wire()
    old = ComputeSpecStatus.own_fields(body.get("status"))
    if new == old:
        return
    meta = body["metadata"]
    try:
        await hub.k("apply_status", "ComputeSpec", meta["namespace"], meta["name"], new)
    except StatusRefused:
        return  # Ready=False (InvalidSpec) with the server's message is on the object instead; logged once
    STATUS_WRITES.labels("ComputeSpec").inc()
    if new.get("phase") != old.get("phase"):
        ready = get_condition(status.conditions, ConditionType.READY)
        await hub.k("event", body, reason=str(new.get("phase")), note=ready.message if ready else "",
                    type_="Warning" if new.get("phase") == "Failed" else "Normal")
