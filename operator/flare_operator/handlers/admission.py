"""The site's admission webhook for JobApprovals: who decided, and only for a real, current job.

- mutating: records the requesting user (from the API request, not a field anyone can type) in the
  annotation `flareop.io/decided-by`; on updates it puts the original value back;
- validating: refuses a JobApproval for a job that asks nothing of this org, or for a content hash
  the job no longer has (the job changed since the admin looked at it).
The gateway then copies the recorded user into the JobApproval's status.decidedBy.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import kopf

from ..api.kinds import GROUP, VERSION
from ..builders.admission import MUTATE_ID, VALIDATE_ID, webhook_configurations
from .gateway import Site

log = logging.getLogger(__name__)

DECIDED_BY = "flareop.io/decided-by"


def register_admission(registry: kopf.OperatorRegistry, site: Site) -> None:
    approvals = (GROUP, VERSION, "jobapprovals")

    @kopf.on.startup(registry=registry)
    async def install_webhooks(**_) -> None:
        ca = (site.config.workdir / "webhook" / site.settings.site / "ca.crt").read_bytes()
        base = f"https://{site.settings.webhook_host}:{site.settings.webhook_port}"
        for manifest in webhook_configurations(site.settings.site, site.settings.namespace, base, ca):
            await site.site("apply", manifest)

    @kopf.on.cleanup(registry=registry)
    async def remove_webhooks(**_) -> None:
        for manifest in webhook_configurations(site.settings.site, site.settings.namespace, "https://x", b""):
            await site.site("delete", manifest["kind"], None, manifest["metadata"]["name"])

    @kopf.on.mutate(*approvals, registry=registry, operations=["CREATE", "UPDATE"], id=MUTATE_ID)
    def record_decider(body: kopf.Body, old: dict | None, userinfo: dict, patch: kopf.Patch, operation: str,
                       **_) -> None:
        if body.get("metadata", {}).get("namespace") != site.settings.namespace:
            return
        previous = ((old or {}).get("metadata", {}).get("annotations") or {}).get(DECIDED_BY)
        value = previous if operation == "UPDATE" and previous else json.dumps(
            {"username": userinfo.get("username", ""), "groups": list(userinfo.get("groups") or [])},
            sort_keys=True)
        patch.setdefault("metadata", {}).setdefault("annotations", {})[DECIDED_BY] = value

    @kopf.on.validate(*approvals, registry=registry, operations=["CREATE"], id=VALIDATE_ID)
    async def known_job_current_hash(body: kopf.Body, **_) -> None:
        if body.get("metadata", {}).get("namespace") != site.settings.namespace:
            return
        job = body["spec"]["job"]
        wanted = body["spec"]["contentHash"]
        requests = [r for r in await site.hub("list", "AccessRequest", site.settings.hub_namespace)
                    if r["spec"]["source"]["kind"] == "Job" and r["spec"]["source"]["namespace"] == job["namespace"]
                    and r["spec"]["source"]["name"] == job["name"]]
        if not requests:
            raise kopf.AdmissionError(
                f"no FederatedJob {job['namespace']}/{job['name']} asks anything of {site.settings.org}: check the "
                f"job's namespace and name (kubectl get accessrequests -n {site.settings.hub_namespace})", code=400)
        current = requests[0]["spec"]["contentHash"]
        if current != wanted:
            raise kopf.AdmissionError(
                f"FederatedJob {job['namespace']}/{job['name']} now has content hash {current}; this approval is for "
                f"{wanted}: the job changed, review it again and approve its current hash", code=400)

    async def record_status(body: kopf.Body, **_) -> None:
        recorded = (body.get("metadata", {}).get("annotations") or {}).get(DECIDED_BY)
        if not recorded or (body.get("status") or {}).get("decidedBy"):
            return
        decider = json.loads(recorded)
        await site.site("apply_status", "JobApproval", body["metadata"]["namespace"], body["metadata"]["name"],
                        {"decidedBy": decider, "recordedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
        await site.site("event", dict(body), reason="Decided", type_="Normal",
                        note=f"{body['spec']['decision']} by {decider['username']} for "
                             f"{body['spec']['job']['namespace']}/{body['spec']['job']['name']}")

    kopf.on.create(*approvals, registry=registry)(record_status)
    kopf.on.resume(*approvals, registry=registry)(record_status)
