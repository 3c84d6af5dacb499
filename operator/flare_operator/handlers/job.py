"""Orchestrator: FederatedJob admission — ask every involved org, bind answers to the content hash.

Each org whose data the job touches gets a Job AccessRequest in its hub namespace; its gateway
decides at its own site. The job's status aggregates the answers (per-org decisions, Approved).
A decision counts only for the content hash it was made for. Running the approved job is the job
controller's part.
"""

from __future__ import annotations

import logging
from datetime import datetime

from ..api.access_request import AppCode
from ..api.common import Decision
from ..api.compute import ComputeSpecSpec
from ..api.job import FINISHED_PHASES, FederatedJobSpec, FederatedJobStatus
from ..builders import naming
from ..builders.federation import client_name
from ..builders.nvflare_job import app_code_digest, privacy_settings_problem
from ..builders.requests import LABEL_SOURCE_NAME, LABEL_SOURCE_NAMESPACE, datasets_by_org, job_access_request
from ..catalog import loader as catalog
from ..policy.content_hash import job_hash
from ..runtime.kube import StatusRefused
from ..runtime.metrics import JOBS_FINISHED, STATUS_WRITES
from ..status.job import ObservedAdmission, ObservedApproval, admission_status
from .compute import Hub, SpecError, _now, org_hub_namespaces, org_of_namespace
from .objects import ObjectView

log = logging.getLogger(__name__)


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None



class Admission(ObjectView):
    spec_model = FederatedJobSpec
    status_model = FederatedJobStatus

    def __init__(self, hub: Hub, body: dict):
        super().__init__(body)
        self.hub = hub
        self.compute: dict | None = None  # the ComputeSpec object, once reconcile read it

    def _observed(self, **kw) -> ObservedAdmission:
        return ObservedAdmission(generation=self.generation, previous=self.previous,
                                 suspended=self.spec.suspend, **kw)

    async def reconcile(self) -> FederatedJobStatus:
        compute_obj = await self.hub.k("get", "ComputeSpec", self.namespace, self.spec.compute_spec_ref.name)
        self.compute = compute_obj
        if compute_obj is None:
            name = self.spec.compute_spec_ref.name
            if self.previous.approvals or self.previous.attempts or self.previous.nvflare_job_id:
                # It went away under the job (which asked the orgs, maybe holds their epsilon, maybe ran):
                # the job ends, and its outcome releases what the sites hold for it.
                return admission_status(self._observed(
                    content_hash=None, approvals=(), compute_ready=False,
                    invalid=f"ComputeSpec {name} does not exist in {self.namespace} any more"), _now())
            # Not yet, maybe: an apply of a whole folder may create the job first. It waits, asking
            # nobody, and the ComputeSpec's first status reconciles it (registry.py jobs_of_compute_changed).
            return admission_status(self._observed(
                content_hash=None, approvals=(), compute_ready=False,
                compute_missing=f"ComputeSpec {name} does not exist in {self.namespace}: the job waits for it "
                                "and asks the orgs once it exists"), _now())
        compute = ComputeSpecSpec.model_validate(compute_obj["spec"])
        try:
            consumer_org = await org_of_namespace(self.hub, self.namespace)
            app = catalog.load_app(compute.model.id, compute.model.version)
            problem = privacy_settings_problem(catalog.validate_params(app, self.spec.parameters),
                                               self.spec.privacy.to_wire())
            if problem:
                raise SpecError(problem)
        except (SpecError, catalog.CatalogError, catalog.ParameterError) as err:
            return admission_status(self._observed(content_hash=None, approvals=(), compute_ready=False,
                                                   invalid=str(err)), _now())
        app_code = AppCode(id=app.id, version=app.version, code_digest=app_code_digest(app))
        digest = job_hash(self.spec, compute, app_code)
        fed = naming.federation_name(self.namespace, compute_obj["metadata"]["name"])
        hub_namespaces = await org_hub_namespaces(self.hub)
        previous = {a.org for a in self.previous.approvals
                    if a.content_hash == digest and a.decision == Decision.REJECTED}
        created = _time(self.body["metadata"].get("creationTimestamp"))

        def request(org: str, reserve: bool) -> dict:
            return job_access_request(
                org=org, hub_namespace=hub_namespaces.get(org), source_namespace=self.namespace,
                source_name=self.name, source_uid=self.uid, consumer_org=consumer_org, job=self.spec, compute=compute,
                federation=fed, content_hash=digest, app=app_code, reserve=reserve, source_created=created)

        orgs = list(datasets_by_org(compute))
        seated = [org for org in orgs if hub_namespaces.get(org) is not None]
        # An org holds epsilon for the job only while no other org rejects it (7: a job rejected
        # anywhere releases its reservations everywhere at once).
        reserve = {org: not previous - {org} for org in seated}
        listed = await self.hub.k("list", "AccessRequest", None, labels=self._request_labels())
        stored = dict(zip(seated, await self.hub.apply_changed([request(org, reserve[org]) for org in seated], listed),
                          strict=True))
        approvals = []
        for org in orgs:
            if org not in stored:
                approvals.append(ObservedApproval(org, Decision.PENDING, hub_namespaces.missing_message(org)))
                continue
            answer = stored[org].get("status") or {}
            approvals.append(ObservedApproval(org, Decision(answer.get("decision") or "Pending"),
                                              answer.get("message") or "", answer.get("decidedHash"),
                                              _time(answer.get("decidedAt"))))
        rejecting = {a.org for a in approvals if a.decision == Decision.REJECTED and a.decided_hash == digest}
        # A rejection seen in this pass: tell the others now.
        changed = [org for org in seated if reserve[org] != (not rejecting - {org})]
        await self.hub.apply_changed([request(org, not reserve[org]) for org in changed], list(stored.values()))
        compute_status = compute_obj.get("status") or {}
        compute_phase = compute_status.get("phase")
        why = next((c.get("message") for c in compute_status.get("conditions") or []
                    if c.get("type") == "Ready" and c.get("status") != "True"), None)
        return admission_status(self._observed(
            content_hash=digest, approvals=tuple(approvals), compute_ready=compute_phase == "Ready",
            compute_message=f"ComputeSpec {compute_obj['metadata']['name']} is {compute_phase or 'not ready'}"
                            + (f": {why}" if why else "")),
            _now())

    async def record_outcome(self, status: FederatedJobStatus) -> None:
        """Tell every org how the job ended (its epsilon spent), once, in its Job AccessRequest."""
        eps = {s.site: s.epsilon_spent for s in status.site_metrics}
        for request in await self.hub.k("list", "AccessRequest", None, labels=self._request_labels()):
            if request["spec"].get("outcome"):
                continue
            org = request["spec"]["org"]
            outcome = {"phase": str(status.phase)}
            if eps.get(client_name(org)) is not None:
                outcome["epsilonSpent"] = eps[client_name(org)]
            meta = request["metadata"]
            await self.hub.k("merge_patch", "AccessRequest", meta["namespace"], meta["name"],
                             {"spec": {"outcome": outcome}})

    def _request_labels(self) -> dict:
        return {LABEL_SOURCE_NAMESPACE: self.namespace, LABEL_SOURCE_NAME: self.name,
                "flareop.io/request-kind": "Job"}

    async def delete(self) -> None:
        for request in await self.hub.k("list", "AccessRequest", None, labels=self._request_labels()):
            meta = request["metadata"]
            await self.hub.k("delete", "AccessRequest", meta["namespace"], meta["name"])


async def write_job_status(hub: Hub, body: dict, status: FederatedJobStatus) -> None:
    new = status.to_wire()
    old = FederatedJobStatus.own_fields(body.get("status"))
    if new == old:
        return
    meta = body["metadata"]
    try:
        await hub.k("apply_status", "FederatedJob", meta["namespace"], meta["name"], new)
    except StatusRefused:
        return  # Ready=False (InvalidSpec) with the server's message is on the job instead; logged once
    STATUS_WRITES.labels("FederatedJob").inc()
    if new.get("phase") != old.get("phase"):
        if status.phase in FINISHED_PHASES:
            JOBS_FINISHED.labels(str(status.phase)).inc()
        ready = next((c for c in status.conditions if c.type == "Ready"), None)
        await hub.k("event", body, reason=str(new.get("phase")), note=ready.message if ready else "",
                    type_="Warning" if new.get("phase") in ("Rejected", "Failed") else "Normal")
