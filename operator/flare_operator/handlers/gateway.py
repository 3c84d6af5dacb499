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
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..api.access_request import (
    ANNOTATION_KIT,
    AccessRequestSpec,
    AccessRequestStatus,
    RequestKind,
    RequestSource,
    RuleResult,
)
from ..api.common import Decision
from ..api.compute import ComputeSpecSpec
from ..api.conditions import ConditionType, Reason
from ..api.dataset_grant import DatasetGrantSpec, DatasetGrantStatus, PrivacyEvent
from ..api.gateway import DatasetOffer, DatasetSummary, GatewaySpec, GatewayStatus
from ..api.job_approval import JobApprovalSpec
from ..api.kinds import API_VERSION
from ..api.org_policy import ORG_POLICY_NAME, OrgPolicySpec
from ..builders.federation import client_name
from ..builders.naming import enforcement_configmap_name
from ..builders.nvflare_job import app_code_digest, build_from_api, job_name_for, site_app_files
from ..builders.requests import (
    LABEL_FEDERATION,
    job_access_request,
    kit_digest,
    kit_secret_name,
)
from ..catalog import loader as catalog
from ..config import OperatorConfig, SiteSettings
from ..policy import decider, ledger
from ..policy.content_check import verify_job_content
from ..policy.content_hash import canonical_json
from ..policy.decider import DECIDED_BY
from ..policy.evaluate import EPSILON_BUDGET, ApprovalView, Evaluation, GrantView, evaluate
from ..policy.site_enforcement import ApprovedJob, ApprovedJobs, app_digest, parse, render
from ..runtime.kube import Conflict, Kube, StatusRefused
from ..runtime.metrics import STATUS_WRITES
from ..runtime.workloads import ClientWorkload, DatasetLocation, WorkloadRuntime
from ..status.conditions import Conditions
from .compute import KIT_KEY, secret_bytes
from .objects import Listings, ObjectView, Passes

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
    passes: Passes = field(default_factory=Passes)  # each object's passes take turns (handlers/objects.py)
    # The key the site's admission webhook signs decider records with (handlers/admission.py); None
    # without a webhook: then no JobApproval counts (who decided could not have been recorded).
    decider_key: bytes | None = None
    # What this site computed for a job request's content (policy/content_check.py), by request content.
    content_cache: dict[str, tuple[RuleResult, str | None]] = field(default_factory=dict)
    # When each AccessRequest (by uid) was last answered (time.monotonic): the resync timer skips a
    # settled answer younger than settledResyncSeconds.
    answered: dict[str, float] = field(default_factory=dict)
    # What of each DatasetGrant (by uid) other than its ledger the answers read, as last seen by
    # the site's grant events: an event that changes only the ledger re-answers only the requests
    # it can move (handlers/registry.py inputs_changed).
    grant_inputs: dict[str, tuple] = field(default_factory=dict)
    # The kit annotation (builders/requests.py ANNOTATION_KIT) last seen on each request (by uid).
    kits_seen: dict[str, str] = field(default_factory=dict)
    # The state of each client StatefulSet and Pod (by uid) as last seen (kubernetes runtime).
    clients_seen: dict[str, tuple] = field(default_factory=dict)
    # Federation -> its Compute request here (namespace, name, uid), as last answered: a client's event
    # answers it without listing the requests (kubernetes runtime).
    compute_requests: dict[str, dict] = field(default_factory=dict)
    # Client kits read from the hub, by request uid: (kit_digest, the kit). Used while the request's
    # kit annotation names the same digest (the hub writes the annotation after the kit).
    kits: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    # The Gateway spec this site last applied and the spec the hub stored for it: a heartbeat that finds
    # the stored spec unchanged reads the Gateway instead of applying it again (an apply is the costly
    # request at the hub's API server: docs/benchmarks.md §7).
    published: tuple[dict, dict] | None = None
    # The site's DatasetGrants, JobApprovals and OrgPolicies as recently listed (handlers/objects.py):
    # the site registry's watch of each kind, and this process's own writes, mark them changed.
    listings: Listings = field(init=False)

    def __post_init__(self) -> None:
        self.listings = Listings(lambda kind: self.site("list", kind, self.settings.namespace),
                                 max_age=self.config.settled_resync_seconds)

    def lock(self, uid: str) -> asyncio.Lock:
        return self.passes.lock(uid)

    async def site(self, method: str, *args, **kwargs) -> Any:
        try:
            return await asyncio.to_thread(getattr(self.site_kube, method), *args, **kwargs)
        finally:
            if method not in ("get", "list", "event") and args:  # a write: a list it may be in is stale now
                self.listings.changed(args[0] if isinstance(args[0], str) else args[0].get("kind", ""))

    async def hub(self, method: str, *args, **kwargs) -> Any:
        return await asyncio.to_thread(getattr(self.hub_kube, method), *args, **kwargs)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _parse_time(text: str | None) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else _now()


async def read_grants(site: Site) -> list[GrantView]:
    """The site's DatasetGrants, each checked (handlers/grants.py): one the site cannot use (location,
    version constraints, a dataset id claimed by other data) carries the reason in `invalid`, and the
    evaluation never chooses it. One whose stored spec or status does not parse is left out; its
    status says why (Valid=False)."""
    from .grants import checked_grants

    checked = await checked_grants(site)
    views = []
    for obj, grant in zip(checked.objects, checked.inputs, strict=True):
        if grant.spec is None:
            continue
        try:
            status = (DatasetGrantStatus.model_validate(DatasetGrantStatus.own_fields(obj["status"]))
                      if obj.get("status") else None)
        except ValueError:
            log.warning("ignoring DatasetGrant %s: its status does not parse", grant.name, exc_info=True)
            continue
        views.append(GrantView(grant.name, grant.spec, status, invalid=checked.invalid(grant.name)))
    return views


async def read_policy(site: Site) -> OrgPolicySpec | None:
    obj = next((o for o in await site.listings.list("OrgPolicy") if o["metadata"]["name"] == ORG_POLICY_NAME), None)
    return OrgPolicySpec.model_validate(obj["spec"]) if obj else None


async def read_approvals(site: Site) -> list[ApprovalView]:
    views = []
    for obj in await site.listings.list("JobApproval"):
        meta = obj["metadata"]
        spec = JobApprovalSpec.model_validate(obj["spec"])
        recorded = (meta.get("annotations") or {}).get(DECIDED_BY)
        try:
            decided_by = decider.verified_decider(site.decider_key, meta["namespace"], meta["name"], spec,
                                                  json.loads(recorded) if recorded else None)
        except ValueError:
            decided_by = None
        views.append(ApprovalView(meta["name"], spec, _parse_time(meta.get("creationTimestamp")), decided_by))
    return views


MAX_CACHED_CONTENT = 512


def site_content(request: AccessRequestSpec, org: str, hub_namespace: str) -> tuple[RuleResult, str | None]:
    """(the ContentVerified rule, the digest of the app folder this site's client must get — None unless
    verified), computed from the request's specs and this site's *own* catalog. Runs torch-free but
    calibrates DP noise (dp-accounting), so callers cache it."""
    job, compute, app_ref = request.job, request.compute, request.app
    local, problem, rebuilt, build_problem, digest = None, "", None, "", None
    if job is not None and compute is not None and app_ref is not None:
        try:
            app = catalog.load_app(app_ref.id, app_ref.version)
            local = app_code_digest(app)
        except catalog.CatalogError as err:
            problem = str(err)
        if local is not None:
            src = request.source
            try:
                rebuilt = AccessRequestSpec.model_validate(job_access_request(
                    org=org, hub_namespace=hub_namespace, source_namespace=src.namespace, source_name=src.name,
                    source_uid=src.uid, consumer_org=request.consumer_org, job=job, compute=compute, federation="-",
                    content_hash=request.content_hash, app=app_ref, reserve=request.reserve,
                    source_created=src.created_at)["spec"])
                name = job_name_for(src.namespace, src.name)
                files = build_from_api(app, job, compute, job_name=name)
                digest = app_digest(site_app_files(files, name, client_name(org)))
            except (KeyError, ValueError) as err:  # JobBuildError and ParameterError are ValueErrors
                rebuilt, build_problem = None, str(err)
    rule = verify_job_content(request, local_code_digest=local, catalog_problem=problem, rebuilt=rebuilt,
                              build_problem=build_problem)
    return rule, digest if rule.passed else None


def answer(previous: AccessRequestStatus, ev: Evaluation, spec: AccessRequestSpec, generation: int,
           client_ready: bool | None, now: datetime, client_problem: str | None = None) -> AccessRequestStatus:
    """The AccessRequest's status for this evaluation; decidedAt moves only when the answer changes."""
    same = previous.decision == ev.decision and previous.decided_hash == spec.content_hash
    decided = ev.decision != Decision.PENDING
    conds = Conditions(previous.conditions, generation=generation, now=now)
    conds.set(ConditionType.DECIDED, decided, ev.reason, ev.message)
    ready_ok = ev.decision == Decision.APPROVED and (client_ready is not False)
    if ev.decision == Decision.APPROVED and client_problem:
        conds.set(ConditionType.READY, False, Reason.WORKLOAD_FAILING, client_problem)
    else:
        conds.set(ConditionType.READY, ready_ok, Reason.RECONCILED if ready_ok else ev.reason,
                  ev.message if not ready_ok or client_ready is None else "client running")
    return AccessRequestStatus(
        observed_generation=generation, conditions=conds.items, decision=ev.decision, reason=ev.reason,
        message=ev.message, rules=ev.status_rules(), decided_hash=spec.content_hash,
        decided_at=previous.decided_at if same and previous.decided_at else now,
        epsilon_reserved=ev.epsilon_to_reserve or None, client_ready=client_ready,
        client_message=client_problem or None,
    )


def ended_undecided(spec: AccessRequestSpec, generation: int, now: datetime) -> AccessRequestStatus:
    """The status of a request that came with spec.outcome set before this site decided (found by the
    fuzz suite: such a request got no status at all): nothing to decide, the client never takes it."""
    message = (f"the job had already ended ({spec.outcome.phase}) when this site first saw the request: "
               "nothing to decide, and this site's client never takes the job")
    conds = Conditions([], generation=generation, now=now)
    conds.set(ConditionType.DECIDED, True, Reason.REJECTED, message)
    conds.set(ConditionType.READY, False, Reason.REJECTED, message)
    return AccessRequestStatus(observed_generation=generation, conditions=conds.items, decision=Decision.REJECTED,
                               reason=Reason.REJECTED, message=message, decided_hash=spec.content_hash,
                               decided_at=now)


class RequestAnswer(ObjectView):
    """One AccessRequest's reconcile at the site."""

    spec_model = AccessRequestSpec
    status_model = AccessRequestStatus

    def __init__(self, site: Site, body: dict):
        super().__init__(body)
        self.site = site
        self.hub_namespace = self.namespace
        self.federation = self.labels.get(LABEL_FEDERATION, "")
        self.app_digest: str | None = None  # of the app folder this site's client must get (job requests)

    async def _evaluate(self) -> tuple[Evaluation, list[GrantView]]:
        grants = await read_grants(self.site)
        content = None
        if self.spec.source.kind == RequestKind.JOB:
            content, self.app_digest = await self._content()
        ev = evaluate(self.spec, grants=grants, policy=await read_policy(self.site),
                      approvals=await read_approvals(self.site), now=_now(), content=content)
        return ev, grants

    async def _content(self) -> tuple[RuleResult, str | None]:
        wire = {k: v for k, v in self.spec.to_wire().items() if k not in ("outcome", "reserve")}
        key = hashlib.sha256(canonical_json(wire).encode()).hexdigest()
        cache = self.site.content_cache
        if key not in cache:
            if len(cache) >= MAX_CACHED_CONTENT:
                cache.pop(next(iter(cache)))
            cache[key] = await asyncio.to_thread(site_content, self.spec, self.site.settings.org, self.hub_namespace)
        return cache[key]

    async def reconcile(self) -> None:
        if self.spec.outcome is not None:
            await self._enforce(approved=False)  # the job ended: the client takes it no more
            await self._spend()  # its decision stands, its reservation becomes spent
            if self.previous.decision is None:
                await self._write(ended_undecided(self.spec, self.generation, _now()))
            return
        ev, grants = await self._evaluate()
        client_ready: bool | None = None
        client_problem: str | None = None
        if self.spec.source.kind == RequestKind.COMPUTE:
            client_ready, client_problem = await self._converge_client(ev, grants)
        else:
            ev = await self._hold_budget(ev)
            # The client must allow the job before the hub can see it approved (and submit it).
            await self._enforce(approved=ev.decision == Decision.APPROVED)
        status = answer(self.previous, ev, self.spec, self.generation, client_ready, _now(), client_problem)
        await self._write(status)

    async def _hold_budget(self, ev: Evaluation) -> Evaluation:
        """Reserve the job's epsilon on the grants it is charged to, or give back what it holds.

        Each write is guarded by the grant's resourceVersion and re-applied to a ledger that changed
        meanwhile (`_update_ledger`); when two jobs race for the last of a budget, the loser's
        reservation no longer fits the fresh ledger and raises Conflict, and the job is evaluated
        again — and rejected, or wounds a younger holder.
        """
        uid = self.spec.source.uid
        key = ledger.job_key(self.spec.source.namespace, self.spec.source.name)
        for attempt in range(MAX_LEDGER_ATTEMPTS):
            try:
                if ev.decision != Decision.APPROVED and await self._preempt_younger(ev):
                    ev, _ = await self._evaluate()
                if ev.decision == Decision.APPROVED and ev.epsilon_to_reserve > 0 and self.spec.reserve:
                    for grant in ev.charged_grants:
                        await self._update_ledger(grant, _reserve(key, uid, ev.epsilon_to_reserve))
                else:
                    await self._give_back(unknown=False)
                return ev
            except Conflict:
                log.info("ledger of %s changed meanwhile (attempt %d): deciding again", self.name, attempt + 1)
                ev, _ = await self._evaluate()
        raise kopf_retry("the privacy-budget ledger kept changing; will decide again")

    async def _deployed(self, uid: str, federation: str, *, unknown: bool = True) -> bool:
        """Whether this site's client ran the job (then its epsilon stays spent), from the client's own
        workspace. A runtime that cannot tell (the kubernetes runtime: the workspace is on the client
        Pod's volume) gives ``unknown``: True where the job may have run (it ended or was deleted), False
        where it was rejected or held back before every org approved (no job is submitted then) or deleted
        without an outcome (the orchestrator records one for every job it submitted before deleting it)."""
        known = await self.site.runtime.job_deployed(federation, self.site.settings, self._client_name, uid)
        return unknown if known is None else known

    async def _give_back(self, *, unknown: bool) -> None:
        """The job holds no epsilon here any more (rejected, another org rejected it, deleted): release
        its reservation — or, if this site's client ran it, turn the reservation into spent epsilon."""
        uid = self.spec.source.uid
        holding = [g for g in await read_grants(self.site)
                   if (e := ledger.entry(g.status, uid)) is not None and not e.spent]
        if not holding:
            return
        deployed = await self._deployed(uid, self.federation, unknown=unknown)
        for grant in holding:
            change = ((lambda spec, st: ledger.spend(st, uid, ledger.entry(st, uid).epsilon)) if deployed
                      else (lambda spec, st: ledger.release(st, uid)))
            await self._update_ledger(grant.name, change)

    async def _preempt_younger(self, ev: Evaluation) -> bool:
        """Wound-wait on the budget: when this job fails only for epsilon held by *younger* jobs (created
        later, by the FederatedJob creationTimestamp the request states, then uid) that have not run
        here, release theirs so it can be admitted. Every org orders jobs the same way, so two jobs
        competing for budgets that fit one never each hold a different org (the younger one is
        rejected, and decided again when budget frees up). Where the runtime cannot tell whether a job
        ran here (kubernetes), nothing is taken: the orchestrator's `reserve: false` for a job rejected
        elsewhere is what frees such budgets."""
        if not ev.failed or any(r.rule != EPSILON_BUDGET for r in ev.failed) or not self.spec.reserve:
            return False
        mine = (self.spec.source.created_at.isoformat() if self.spec.source.created_at else "", self.spec.source.uid)
        others = {r["spec"]["source"]["uid"]: r for r in await self.site.hub("list", "AccessRequest", self.hub_namespace)
                  if r["spec"]["source"]["kind"] == RequestKind.JOB.value}
        released = False
        for grant in await read_grants(self.site):
            if grant.spec.dataset.id not in self.spec.datasets or grant.status is None:
                continue
            for entry in grant.status.ledger:
                other = others.get(entry.uid)
                if entry.spent or other is None or entry.uid == mine[1]:
                    continue
                other_source = RequestSource.model_validate(other["spec"]["source"])
                created = other_source.created_at.isoformat() if other_source.created_at else ""
                if (created, entry.uid) <= mine:
                    continue  # older jobs keep what they hold
                fed = (other["metadata"].get("labels") or {}).get(LABEL_FEDERATION, "")
                if fed:  # first take it off the client's list, so it cannot be deployed meanwhile
                    await self.site.runtime.update_approved_jobs(
                        fed, self.site.settings, self._client_name,
                        lambda text, uid=entry.uid: None if text is None else render(_parsed(text, self.site.settings.org)
                                                                                     .without(uid)))
                if await self._deployed(entry.uid, fed):
                    continue  # it ran here: its epsilon is spent, not ours to take (its own pass lists it again)
                log.info("%s: releasing the epsilon younger job %s holds on %s for older job %s", self.site.settings.org,
                         entry.job, grant.name, self.spec.source.name)
                await self._update_ledger(grant.name, lambda spec, st, uid=entry.uid: ledger.release(st, uid))
                released = True
        return released

    async def _enforce(self, *, approved: bool) -> None:
        """Add this job (uid + the content hash decided on) to the site's approved-jobs document, or
        withdraw it. Derived from this site's own evaluation only, never from a status on the hub."""
        if not self.federation:
            log.warning("AccessRequest %s has no %s label: its job cannot be allowed at the client",
                        self.name, LABEL_FEDERATION)
            return
        source, org = self.spec.source, self.site.settings.org
        approved = approved and self.app_digest is not None
        entry = ApprovedJob(source.uid, self.spec.content_hash, f"{source.namespace}/{source.name}",
                            self.app_digest or "")

        def change(text: str | None) -> str | None:
            if text is None and not approved:
                return None  # nothing to withdraw (and no client folder/ConfigMap to create)
            current = _parsed(text, org) if text is not None else ApprovedJobs(org)
            return render(current.with_job(entry) if approved else current.without(source.uid))

        await self.site.runtime.update_approved_jobs(self.federation, self.site.settings, self._client_name, change)

    async def _spend(self) -> None:
        """The job ended (outcome): what it reserved becomes spent; a job this site's client ran without a
        reservation here (e.g. released while it was being deployed) is charged its epsilon on the grants
        of its datasets. The amount is this site's own: the privacy events its client recorded, composed
        by the accountant (kept on the entry, so later jobs compose with them), where the runtime can read
        them; else the reserved epsilon. The hub's reported figure can raise the charge, never lower it."""
        uid, key = self.spec.source.uid, ledger.job_key(self.spec.source.namespace, self.spec.source.name)
        reported = self.spec.outcome.epsilon_spent or 0.0
        grants = await read_grants(self.site)
        entries = {g.name: ledger.entry(g.status, uid) for g in grants}
        dp = self.spec.differential_privacy
        if not any(entries.values()):
            if dp is None or not dp.enabled or not await self._deployed(uid, self.federation):
                return
            charged = {}
            for g in sorted(grants, key=lambda g: g.name):  # one grant per dataset, with a budget
                if g.spec.dataset.id in self.spec.datasets and g.spec.privacy.epsilon_budget is not None:
                    charged.setdefault(g.spec.dataset.id, g.name)
            targets = {name: float(dp.epsilon or 0.0) for name in charged.values()}
        else:
            targets = {name: e.epsilon for name, e in entries.items() if e is not None and not e.spent}
        if not targets:
            return
        own = await self._own_privacy(uid)
        for name, reserved in targets.items():
            if own is not None:
                amount, delta, events = max(reported, own[0]), own[1], own[2]
            else:
                amount, delta, events = max(reported, reserved), None, None
            await self._update_ledger(name, lambda spec, st, a=amount, d=delta, ev=events:
                                      ledger.spend(st, uid, a, key, delta=d, events=ev))

    async def _own_privacy(self, uid: str) -> tuple[float, float, list[PrivacyEvent]] | None:
        """(epsilon, delta, events) of the job at this site from its own client's record; None when the
        runtime cannot read it or the record does not fit the ledger."""
        record = await self.site.runtime.privacy_record(self.federation, self.site.settings, self._client_name, uid)
        if record is None:
            return None
        try:
            if len(record["events"]) > ledger.MAX_EVENTS:
                raise ValueError(f"{len(record['events'])} events, more than a ledger entry holds")
            events = [PrivacyEvent.model_validate(e) for e in record["events"]]
            delta = float(record["delta"])
            return ledger.events_epsilon(events, delta), delta, events
        except (ValueError, KeyError, catalog.CatalogError) as e:
            log.warning("%s: the client's privacy record of job %s is not usable (%s); charging the reservation",
                        self.name, uid, e)
            return None

    async def _update_ledger(self, grant_name: str, change) -> None:
        """Apply ``change`` (a function of the grant's spec and ledger) to the grant's ledger, guarded by
        its resourceVersion. When another answer wrote the ledger meanwhile (several jobs end or start
        at once on one grant), the change is applied again to the fresh ledger; a change that no longer
        holds on it (a reservation the budget cannot take any more) raises Conflict itself, for its
        caller to decide again. This gateway's own answers write one grant's ledger one at a time (at
        scale, ten jobs reserving on one grant at once exhausted the retries: docs/benchmarks.md §7);
        the resourceVersion guards against every other writer."""
        async with self.site.lock(f"ledger/{grant_name}"):
            for attempt in range(MAX_LEDGER_ATTEMPTS):
                obj = await self.site.site("get", "DatasetGrant", self.site.settings.namespace, grant_name)
                if obj is None:
                    return
                current = DatasetGrantStatus.model_validate(DatasetGrantStatus.own_fields(obj.get("status")))
                updated = change(DatasetGrantSpec.model_validate(obj["spec"]), current)
                if updated == current:
                    return
                obj["status"] = {**(obj.get("status") or {}), **updated.to_wire()}
                try:
                    await self.site.site("replace_status", obj)
                    return
                except Conflict:  # the resourceVersion moved
                    log.info("ledger of grant %s changed meanwhile (write %d): applying %s's change again",
                             grant_name, attempt + 1, self.name)
        raise kopf_retry(f"the ledger of grant {grant_name} kept changing; will write again")

    async def _converge_client(self, ev: Evaluation, grants: list[GrantView]) -> tuple[bool, str | None]:
        """(the client runs, what stops it that waiting will not fix: its Pod cannot run, or it cannot
        reach the server)."""
        if ev.decision != Decision.APPROVED:
            await self.site.runtime.remove_client(self.federation, self.site.settings, self._client_name)
            return False, None
        kit = await self._kit()
        if kit is None:
            return False, None  # the orchestrator provisions once every org approved
        workload = self._workload(kit, ev, grants)
        await self.site.runtime.ensure_client(workload)
        running = self.spec.active and await self.site.runtime.client_running(workload)
        return running, await self.site.runtime.client_problem(workload)

    async def _kit(self) -> bytes | None:
        """The client kit the hub wrote for this request: read again only when the request's kit
        annotation names another kit than the one this site holds."""
        held = self.site.kits.get(self.uid)
        if held is not None and held[0] == self.annotations.get(ANNOTATION_KIT):
            return held[1]
        kit = secret_bytes(await self.site.hub("get", "Secret", self.hub_namespace, kit_secret_name(self.name)), KIT_KEY)
        if kit is None:
            self.site.kits.pop(self.uid, None)
        else:
            self.site.kits[self.uid] = (kit_digest(kit), kit)
        return kit

    @property
    def _client_name(self) -> str:
        return client_name(self.spec.org)

    def _workload(self, kit: bytes, ev: Evaluation, grants: list[GrantView]) -> ClientWorkload:
        """The client, with each dataset's data from exactly the grant the evaluation chose for it
        (`Evaluation.granted_by`): never another grant of the same dataset id."""
        by_name = {g.name: g for g in grants}
        datasets = []
        for dataset_id in self.spec.datasets:
            chosen = by_name.get(ev.granted_by.get(dataset_id, ""))
            if chosen is None or chosen.invalid is not None:  # an approved evaluation chose one for each
                raise kopf_retry(f"no usable DatasetGrant chosen for dataset {dataset_id}; deciding again")
            source = chosen.spec.dataset
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
        try:
            await self.site.hub("apply_status", "AccessRequest", self.hub_namespace, self.name, new)
        except StatusRefused:
            return  # Ready=False (InvalidSpec) with the server's message is on the request instead; logged once
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
        if self.spec.outcome is not None:  # it was submitted: what it reserved is spent
            await self._spend()
        await self._give_back(unknown=False)  # still held: it never ran here (by the client's workspace, or
        #                                        where the runtime cannot tell, by the hub: no outcome)


def _parsed(text: str, org: str) -> ApprovedJobs:
    """The site's approved-jobs document; an invalid one is written anew (it approves nothing)."""
    try:
        return parse(text)
    except ValueError as err:
        log.warning("approved-jobs document of %s is invalid (%s): writing it anew", org, err)
        return ApprovedJobs(org)


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
    """The Gateway the site publishes: one summary per dataset id (spec.datasets is a list-map keyed by
    id, so two entries with one id would make the API server refuse every heartbeat), from the valid,
    unexpired grants. Grants of one id name the same data (policy/grants.py), so the first by name
    describes it; the models are those any of them allows."""
    s = site.settings
    now = _now()
    by_id: dict[str, list[GrantView]] = {}
    for g in sorted(grants, key=lambda g: (g.spec.dataset.id, g.name)):
        expires = g.spec.expires_at
        if g.invalid is None and (expires is None or (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) > now):
            by_id.setdefault(g.spec.dataset.id, []).append(g)
    spec = GatewaySpec(
        org=s.org, site=s.site, runtime=s.runtime, same_cluster_as_hub=s.hub_kubeconfig is None,
        capacity={"gpuClass": s.gpu_class, "gpuCount": s.gpu_count},
        datasets=[DatasetSummary(id=dataset_id, description=same[0].spec.dataset.description,
                                 format=same[0].spec.dataset.format, sample_count=same[0].spec.dataset.sample_count,
                                 models=sorted({m.id for g in same for m in g.spec.models}), offers=_offers(same))
                  for dataset_id, same in by_id.items()],
    )
    return {"apiVersion": API_VERSION, "kind": "Gateway",
            "metadata": {"name": s.site, "namespace": s.hub_namespace}, "spec": spec.to_wire()}


def _offers(grants: list[GrantView]) -> list[DatasetOffer]:
    """Each consumer's terms on one dataset, from the first grant (by name) naming it."""
    offers: dict[str, DatasetOffer] = {}
    for g in grants:
        for consumer in g.spec.consumers:
            if consumer not in offers:
                p = g.spec.privacy
                offers[consumer] = DatasetOffer(
                    consumer=consumer, models=[f"{m.id} {m.versions}" for m in g.spec.models],
                    dp_required=p.dp_required, max_epsilon_per_job=p.max_epsilon_per_job,
                    epsilon_left=ledger.remaining(g.spec, g.status), max_rounds=g.spec.max_rounds,
                    expires_at=g.spec.expires_at)
    return [offers[c] for c in sorted(offers)]


async def heartbeat(site: Site) -> None:
    """Publish the Gateway (public summary of the grants) and a heartbeat in its status.

    The site owns Connected; the hub owns OrgVerified (is this Gateway's namespace really its org's?
    handlers/liveness.py). Ready is derived from both (status/gateway.py `set_ready`), and the hub's
    conditions are kept as read: a Gateway the hub refused stays Ready=False with the hub's reason
    through every heartbeat instead of flapping back to True; only the hub clears its flag.
    """
    from ..status.gateway import set_ready

    grants = await read_grants(site)
    clients_running = await site.runtime.clients_running(site.settings)
    wanted = gateway_object(site, grants)
    stored = None
    if site.published is not None and site.published[0] == wanted["spec"]:
        stored = await site.hub("get", "Gateway", site.settings.hub_namespace, site.settings.site)
        if stored is not None and stored.get("spec") != site.published[1]:
            stored = None  # changed by someone else: this site's own spec again
    if stored is None:
        stored = await site.hub("apply", wanted)
        site.published = (wanted["spec"], stored.get("spec"))
    # ``stored`` was read just before the status write (the hub's conditions in it are kept)
    now = _now()
    generation = stored["metadata"].get("generation")
    previous = GatewayStatus.model_validate(GatewayStatus.own_fields(stored.get("status")))
    conds = Conditions(previous.conditions, generation=generation, now=now)
    conds.set(ConditionType.CONNECTED, True, Reason.HEARTBEAT, f"{site.settings.site} reported in")
    set_ready(conds)
    status = GatewayStatus(
        observed_generation=generation, conditions=conds.items, last_heartbeat_time=now,
        datasets_offered=len(stored["spec"].get("datasets") or []),
        clients_running=clients_running, operator_version=__version__,
    )
    await site.hub("apply_status", "Gateway", site.settings.hub_namespace, site.settings.site, status.to_wire())
