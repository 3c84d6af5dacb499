"""Gateway (a data owner's site): registers on the hub, answers its org's AccessRequests from its own
DatasetGrants, OrgPolicy and JobApprovals, and runs the NVFlare clients it approved.

It talks to two API servers (the same one in single-cluster deployments): its site's, where the
owner's objects and clients live, and the hub's, where it may touch only its org's namespace. It
connects outbound only. Every decision about the org's data is made here, from the site's objects.

Each job decision is also written, before it is published on the hub, into the site's
approved-jobs document next to its NVFlare client (policy/site_enforcement.py), which the client's
enforcement component checks every job against: the hub cannot run at this site what was not
approved here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..api.access_request import AccessRequestSpec, AccessRequestStatus, RequestKind
from ..api.common import Decision
from ..api.compute import ComputeSpecSpec
from ..api.conditions import ConditionType, Reason
from ..api.dataset_grant import DatasetGrantSpec, DatasetGrantStatus
from ..api.gateway import DatasetSummary, GatewaySpec, GatewayStatus
from ..api.job_approval import JobApprovalSpec
from ..api.kinds import API_VERSION
from ..api.org_policy import ORG_POLICY_NAME, OrgPolicySpec
from ..builders.federation import client_name
from ..builders.naming import enforcement_configmap_name
from ..builders.requests import LABEL_FEDERATION, kit_secret_name
from ..config import OperatorConfig, SiteSettings
from ..policy import ledger
from ..policy.evaluate import ApprovalView, Evaluation, GrantView, evaluate
from ..policy.site_enforcement import ApprovedJob, ApprovedJobs, parse, render
from ..runtime.kube import Conflict, Kube
from ..runtime.metrics import STATUS_WRITES
from ..runtime.workloads import ClientWorkload, DatasetLocation, WorkloadRuntime
from ..status.conditions import Conditions
from .compute import KIT_KEY, secret_bytes
from .objects import ObjectView

log = logging.getLogger(__name__)

MAX_LEDGER_ATTEMPTS = 5


def kopf_retry(message: str) -> Exception:
    import kopf

    return kopf.TemporaryError(message, delay=1)


@dataclass
class Site:
    """What one gateway's handlers share."""

    config: OperatorConfig
    settings: SiteSettings
    site_kube: Kube
    hub_kube: Kube
    runtime: WorkloadRuntime
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    async def site(self, method: str, *args, **kwargs) -> Any:
        return await asyncio.to_thread(getattr(self.site_kube, method), *args, **kwargs)

    async def hub(self, method: str, *args, **kwargs) -> Any:
        return await asyncio.to_thread(getattr(self.hub_kube, method), *args, **kwargs)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _parse_time(text: str | None) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else _now()


async def read_grants(site: Site) -> list[GrantView]:
    views = []
    for obj in await site.site("list", "DatasetGrant", site.settings.namespace):
        try:
            status = DatasetGrantStatus.model_validate(obj["status"]) if obj.get("status") else None
            views.append(GrantView(obj["metadata"]["name"], DatasetGrantSpec.model_validate(obj["spec"]), status))
        except ValueError:
            log.warning("ignoring invalid DatasetGrant %s", obj["metadata"]["name"], exc_info=True)
    return views


async def read_policy(site: Site) -> OrgPolicySpec | None:
    obj = await site.site("get", "OrgPolicy", site.settings.namespace, ORG_POLICY_NAME)
    return OrgPolicySpec.model_validate(obj["spec"]) if obj else None


async def read_approvals(site: Site) -> list[ApprovalView]:
    views = []
    for obj in await site.site("list", "JobApproval", site.settings.namespace):
        meta = obj["metadata"]
        decided_by = ((obj.get("status") or {}).get("decidedBy") or {}).get("username")
        views.append(ApprovalView(meta["name"], JobApprovalSpec.model_validate(obj["spec"]),
                                  _parse_time(meta.get("creationTimestamp")), decided_by))
    return views


def answer(previous: AccessRequestStatus, ev: Evaluation, spec: AccessRequestSpec, generation: int,
           client_ready: bool | None, now: datetime) -> AccessRequestStatus:
    """The AccessRequest's status for this evaluation; decidedAt moves only when the answer changes."""
    same = previous.decision == ev.decision and previous.decided_hash == spec.content_hash
    decided = ev.decision != Decision.PENDING
    conds = Conditions(previous.conditions, generation=generation, now=now)
    conds.set(ConditionType.DECIDED, decided, ev.reason, ev.message)
    ready_ok = ev.decision == Decision.APPROVED and (client_ready is not False)
    conds.set(ConditionType.READY, ready_ok, Reason.RECONCILED if ready_ok else ev.reason,
              ev.message if not ready_ok or client_ready is None else "client running")
    return AccessRequestStatus(
        observed_generation=generation, conditions=conds.items, decision=ev.decision, reason=ev.reason,
        message=ev.message, rules=ev.status_rules(), decided_hash=spec.content_hash,
        decided_at=previous.decided_at if same and previous.decided_at else now,
        epsilon_reserved=ev.epsilon_to_reserve or None, client_ready=client_ready,
    )


class RequestAnswer(ObjectView):
    """One AccessRequest's reconcile at the site."""

    spec_model = AccessRequestSpec
    status_model = AccessRequestStatus

    def __init__(self, site: Site, body: dict):
        super().__init__(body)
        self.site = site
        self.hub_namespace = self.namespace
        self.federation = self.labels.get(LABEL_FEDERATION, "")

    async def _evaluate(self) -> tuple[Evaluation, list[GrantView]]:
        grants = await read_grants(self.site)
        ev = evaluate(self.spec, grants=grants, policy=await read_policy(self.site),
                      approvals=await read_approvals(self.site), now=_now())
        return ev, grants

    async def reconcile(self) -> None:
        if self.spec.outcome is not None:
            await self._spend()  # the job ended: its decision stands, its reservation becomes spent
            await self._enforce(approved=False)  # and the client takes it no more
            return
        ev, grants = await self._evaluate()
        client_ready: bool | None = None
        if self.spec.source.kind == RequestKind.COMPUTE:
            client_ready = await self._converge_client(ev, grants)
        else:
            ev = await self._hold_budget(ev)
            # The client must allow the job before the hub can see it approved (and submit it).
            await self._enforce(approved=ev.decision == Decision.APPROVED)
        status = answer(self.previous, ev, self.spec, self.generation, client_ready, _now())
        await self._write(status)

    async def _hold_budget(self, ev: Evaluation) -> Evaluation:
        """Reserve the job's epsilon on the grants it is charged to, or give back what it holds.

        Each write is guarded by the grant's resourceVersion: when two jobs race for the last of a
        budget, one write conflicts, and its retry re-evaluates from the fresh ledger and rejects.
        """
        uid = self.spec.source.uid
        key = ledger.job_key(self.spec.source.namespace, self.spec.source.name)
        for attempt in range(MAX_LEDGER_ATTEMPTS):
            try:
                if ev.decision == Decision.APPROVED and ev.epsilon_to_reserve > 0:
                    for grant in ev.charged_grants:
                        await self._update_ledger(grant, _reserve(key, uid, ev.epsilon_to_reserve))
                else:
                    await self._release_all(uid)
                return ev
            except Conflict:
                log.info("ledger of %s changed meanwhile (attempt %d): deciding again", self.name, attempt + 1)
                ev, _ = await self._evaluate()
        raise kopf_retry("the privacy-budget ledger kept changing; will decide again")

    async def _enforce(self, *, approved: bool) -> None:
        """Add this job (uid + the content hash decided on) to the site's approved-jobs document, or
        withdraw it. Derived from this site's own evaluation only, never from a status on the hub."""
        if not self.federation:
            log.warning("AccessRequest %s has no %s label: its job cannot be allowed at the client",
                        self.name, LABEL_FEDERATION)
            return
        source, org = self.spec.source, self.site.settings.org
        entry = ApprovedJob(source.uid, self.spec.content_hash, f"{source.namespace}/{source.name}")

        def change(text: str | None) -> str | None:
            if text is None and not approved:
                return None  # nothing to withdraw (and no client folder/ConfigMap to create)
            try:
                current = parse(text) if text is not None else ApprovedJobs(org)
            except ValueError as err:
                log.warning("approved-jobs document of %s is invalid (%s): writing it anew", self.federation, err)
                current = ApprovedJobs(org)
            return render(current.with_job(entry) if approved else current.without(source.uid))

        await self.site.runtime.update_approved_jobs(self.federation, self.site.settings, self._client_name, change)

    async def _spend(self) -> None:
        uid = self.spec.source.uid
        for grant in await read_grants(self.site):
            entry = ledger.entry(grant.status, uid)
            if entry is None or entry.spent:
                continue
            spent = self.spec.outcome.epsilon_spent
            amount = entry.epsilon if spent is None else spent
            await self._update_ledger(grant.name, lambda spec, st, amount=amount: ledger.spend(st, uid, amount))

    async def _release_all(self, uid: str) -> None:
        for grant in await read_grants(self.site):
            entry = ledger.entry(grant.status, uid)
            if entry is not None and not entry.spent:
                await self._update_ledger(grant.name, lambda spec, st: ledger.release(st, uid))

    async def _update_ledger(self, grant_name: str, change) -> None:
        obj = await self.site.site("get", "DatasetGrant", self.site.settings.namespace, grant_name)
        if obj is None:
            return
        current = DatasetGrantStatus.model_validate(DatasetGrantStatus.own_fields(obj.get("status")))
        updated = change(DatasetGrantSpec.model_validate(obj["spec"]), current)
        if updated == current:
            return
        obj["status"] = {**(obj.get("status") or {}), **updated.to_wire()}
        await self.site.site("replace_status", obj)  # Conflict if the resourceVersion moved

    async def _converge_client(self, ev: Evaluation, grants: list[GrantView]) -> bool:
        if ev.decision != Decision.APPROVED:
            await self.site.runtime.remove_client(self.federation, self.site.settings, self._client_name)
            return False
        kit_secret = await self.site.hub("get", "Secret", self.hub_namespace, kit_secret_name(self.name))
        kit = secret_bytes(kit_secret, KIT_KEY)
        if kit is None:
            return False  # the orchestrator provisions once every org approved
        workload = self._workload(kit, grants)
        await self.site.runtime.ensure_client(workload)
        return self.spec.active and await self.site.runtime.client_running(workload)

    @property
    def _client_name(self) -> str:
        return client_name(self.spec.org)

    def _workload(self, kit: bytes, grants: list[GrantView]) -> ClientWorkload:
        by_id = {g.spec.dataset.id: g.spec.dataset for g in sorted(grants, key=lambda g: g.name)}
        datasets = []
        for dataset_id in self.spec.datasets:
            source = by_id[dataset_id]
            pvc = source.persistent_volume_claim
            datasets.append(DatasetLocation(dataset_id=dataset_id, path=source.path,
                                            claim_name=pvc.claim_name if pvc else None,
                                            sub_path=pvc.sub_path if pvc else ""))
        compute = ComputeSpecSpec(model=self.spec.model, datasets=[
            {"org": self.spec.org, "id": d} for d in self.spec.datasets], client=self.spec.client,
            active=self.spec.active)
        return ClientWorkload(federation=self.federation, site=self.site.settings, client_name=self._client_name,
                              spec=compute, kit=kit, kit_secret=kit_secret_name(self.name),
                              datasets=tuple(datasets), enforcement_configmap=enforcement_configmap_name(self.federation))

    async def _write(self, status: AccessRequestStatus) -> None:
        new = status.to_wire()
        if new == AccessRequestStatus.own_fields(self.body.get("status")):
            return
        await self.site.hub("apply_status", "AccessRequest", self.hub_namespace, self.name, new)
        STATUS_WRITES.labels("AccessRequest").inc()
        if status.decision != self.previous.decision or status.decided_hash != self.previous.decided_hash:
            await self.site.hub("event", self.body, reason=str(status.reason), note=status.message or "",
                                type_="Warning" if status.decision == Decision.REJECTED else "Normal")

    async def release(self) -> None:
        """The request is going away: stop this site's client, or give back the job's reservation."""
        if self.spec.source.kind == RequestKind.COMPUTE:
            await self.site.runtime.remove_client(self.federation, self.site.settings, self._client_name)
            return
        await self._enforce(approved=False)
        await self._release_all(self.spec.source.uid)


def _reserve(key: str, uid: str, epsilon: float):
    """A ledger change that reserves, after checking the budget on the freshly read grant."""

    def change(spec: DatasetGrantSpec, status: DatasetGrantStatus) -> DatasetGrantStatus:
        left = ledger.remaining(spec, status, exclude_uid=uid)
        if left is not None and left < epsilon:
            raise Conflict(f"budget moved: {left} left, {epsilon} asked")  # decide again from the fresh ledger
        return ledger.reserve(status, key, uid, epsilon)

    return change



# --- registration on the hub -----------------------------------------------------------------------


def gateway_object(site: Site, grants: list[GrantView]) -> dict:
    s = site.settings
    spec = GatewaySpec(
        org=s.org, site=s.site, runtime=s.runtime,
        capacity={"gpuClass": s.gpu_class, "gpuCount": s.gpu_count},
        datasets=[DatasetSummary(id=g.spec.dataset.id, description=g.spec.dataset.description,
                                 format=g.spec.dataset.format, sample_count=g.spec.dataset.sample_count,
                                 models=sorted({m.id for m in g.spec.models}))
                  for g in sorted(grants, key=lambda g: g.spec.dataset.id)
                  if not g.spec.expires_at or g.spec.expires_at > _now()],
    )
    return {"apiVersion": API_VERSION, "kind": "Gateway",
            "metadata": {"name": s.site, "namespace": s.hub_namespace}, "spec": spec.to_wire()}


async def heartbeat(site: Site) -> None:
    """Publish the Gateway (public summary of the grants) and a heartbeat in its status."""
    grants = await read_grants(site)
    stored = await site.hub("apply", gateway_object(site, grants))
    now = _now()
    generation = stored["metadata"].get("generation")
    previous = GatewayStatus.model_validate(GatewayStatus.own_fields(stored.get("status")))
    conds = Conditions(previous.conditions, generation=generation, now=now)
    conds.set(ConditionType.CONNECTED, True, Reason.HEARTBEAT, f"{site.settings.site} reported in")
    conds.set(ConditionType.READY, True, Reason.HEARTBEAT, "gateway connected")
    status = GatewayStatus(
        observed_generation=generation, conditions=conds.items, last_heartbeat_time=now,
        datasets_offered=len(stored["spec"].get("datasets") or []),
        clients_running=await site.runtime.clients_running(site.settings), operator_version=__version__,
    )
    await site.hub("apply_status", "Gateway", site.settings.hub_namespace, site.settings.site, status.to_wire())
