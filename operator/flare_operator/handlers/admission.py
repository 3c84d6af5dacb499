"""The site's admission webhook for JobApprovals: who decided, and only for a real, current job.

- mutating: fills in spec.job.uid from the job's AccessRequest when it was left out, and records the
  requesting user (from the API request, not a field anyone can type) in the annotation
  `flareop.io/decided-by`, signed with the site's decider key over the decision it is for
  (policy/decider.py); on updates it puts the original record back;
- validating: refuses a JobApproval for a job that asks nothing of this org, for another job of the
  same name (uid), or for a content hash the job no longer has (the job changed since the admin
  looked at it).
The gateway counts a JobApproval only when that signature verifies, and copies the record into the
JobApproval's status.decidedBy.

The webhook configurations stay registered when the gateway stops (failurePolicy Fail): while the
gateway is down, JobApprovals in its namespace are refused rather than accepted unrecorded.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from datetime import UTC, datetime

import kopf

from ..api.job_approval import JobApprovalSpec
from ..api.kinds import GROUP, VERSION
from ..builders.admission import MUTATE_ID, VALIDATE_ID, webhook_configurations
from ..policy import decider
from ..policy.decider import DECIDED_BY
from .gateway import Site

log = logging.getLogger(__name__)

DECIDER_KEY_SECRET = "flareop-decider-key"


async def load_decider_key(site: Site) -> bytes:
    """The site's decider key, from the Secret in its namespace (created once, kept across restarts)."""
    obj = await site.site("get", "Secret", site.settings.namespace, DECIDER_KEY_SECRET)
    if obj is None:
        obj = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": DECIDER_KEY_SECRET, "namespace": site.settings.namespace,
                            "labels": {"app.kubernetes.io/part-of": "flare-operator"}},
               "data": {"key": base64.b64encode(secrets.token_bytes(decider.KEY_BYTES)).decode()}}
        await site.site("apply", obj, force=False)
        obj = await site.site("get", "Secret", site.settings.namespace, DECIDER_KEY_SECRET)
    return base64.b64decode(obj["data"]["key"])


async def _job_requests(site: Site, job: dict) -> list[dict]:
    return [r for r in await site.hub("list", "AccessRequest", site.settings.hub_namespace)
            if r["spec"]["source"]["kind"] == "Job" and r["spec"]["source"]["namespace"] == job["namespace"]
            and r["spec"]["source"]["name"] == job["name"]]


def register_admission(registry: kopf.OperatorRegistry, site: Site) -> None:
    approvals = (GROUP, VERSION, "jobapprovals")

    @kopf.on.startup(registry=registry)
    async def install_webhooks(**_) -> None:
        site.decider_key = await load_decider_key(site)
        ca = (site.config.workdir / "webhook" / site.settings.site / "ca.crt").read_bytes()
        base = f"https://{site.settings.webhook_host}:{site.settings.webhook_port}"
        for manifest in webhook_configurations(site.settings.site, site.settings.namespace, base, ca,
                                               service=site.settings.webhook_service, port=site.settings.webhook_port):
            await site.site("apply", manifest)

    @kopf.on.mutate(*approvals, registry=registry, operations=["CREATE", "UPDATE"], id=MUTATE_ID)
    async def record_decider(body: kopf.Body, old: dict | None, userinfo: dict, patch: kopf.Patch, operation: str,
                             **_) -> None:
        meta = body.get("metadata", {})
        if meta.get("namespace") != site.settings.namespace:
            return
        previous = ((old or {}).get("metadata", {}).get("annotations") or {}).get(DECIDED_BY)
        if operation == "UPDATE" and previous:
            value = previous
        else:
            spec = dict(body["spec"])
            job = dict(spec["job"])
            if not job.get("uid"):
                requests = await _job_requests(site, job)
                if requests:
                    job["uid"] = requests[0]["spec"]["source"]["uid"]
                    patch.setdefault("spec", {})["job"] = job
            spec["job"] = job
            signed = decider.record(site.decider_key or b"", site.settings.namespace, meta.get("name", ""),
                                    JobApprovalSpec.model_validate(spec), userinfo.get("username", ""),
                                    list(userinfo.get("groups") or []))
            value = json.dumps(signed, sort_keys=True)
        patch.setdefault("metadata", {}).setdefault("annotations", {})[DECIDED_BY] = value

    @kopf.on.validate(*approvals, registry=registry, operations=["CREATE"], id=VALIDATE_ID)
    async def known_job_current_hash(body: kopf.Body, **_) -> None:
        if body.get("metadata", {}).get("namespace") != site.settings.namespace:
            return
        job = body["spec"]["job"]
        wanted = body["spec"]["contentHash"]
        requests = await _job_requests(site, job)
        if not requests:
            raise kopf.AdmissionError(
                f"no FederatedJob {job['namespace']}/{job['name']} asks anything of {site.settings.org}: check the "
                f"job's namespace and name (kubectl get accessrequests -n {site.settings.hub_namespace})", code=400)
        source_uid = requests[0]["spec"]["source"]["uid"]
        if job.get("uid") and job["uid"] != source_uid:
            raise kopf.AdmissionError(
                f"FederatedJob {job['namespace']}/{job['name']} is now another job (uid {source_uid}, not "
                f"{job['uid']}): it was deleted and created again; review the new job and approve it", code=400)
        current = requests[0]["spec"]["contentHash"]
        if current != wanted:
            raise kopf.AdmissionError(
                f"FederatedJob {job['namespace']}/{job['name']} now has content hash {current}; this approval is for "
                f"{wanted}: the job changed, review it again and approve its current hash", code=400)

    async def record_status(body: kopf.Body, **_) -> None:
        recorded = (body.get("metadata", {}).get("annotations") or {}).get(DECIDED_BY)
        if (body.get("status") or {}).get("decidedBy"):
            return
        meta = body["metadata"]
        try:
            record = json.loads(recorded) if recorded else None
            username = decider.verified_decider(site.decider_key, meta["namespace"], meta["name"],
                                                JobApprovalSpec.model_validate(body["spec"]), record)
        except ValueError:
            username = None
        if username is None:
            await site.site("event", dict(body), reason="NotRecorded", type_="Warning",
                            note=f"{site.settings.org}'s admission webhook did not record who decided: this "
                                 "JobApproval does not count; delete it and create it again")
            return
        await site.site("apply_status", "JobApproval", meta["namespace"], meta["name"],
                        {"decidedBy": record, "recordedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
        await site.site("event", dict(body), reason="Decided", type_="Normal",
                        note=f"{body['spec']['decision']} by {username} for "
                             f"{body['spec']['job']['namespace']}/{body['spec']['job']['name']}")

    kopf.on.create(*approvals, registry=registry)(record_status)
    kopf.on.resume(*approvals, registry=registry)(record_status)
