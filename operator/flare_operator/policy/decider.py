"""Pure: the site webhook's signed record of who made a JobApproval's decision.

Who decided is taken from the API request by the site's mutating admission webhook, never typed.
The webhook writes the record into the annotation ``flareop.io/decided-by`` together with an
HMAC-SHA256 over the record *and* the decision it is for (the job's namespace, name and uid, the
content hash, Approve/Reject), keyed with a secret only the site's gateway holds (a Secret in the
site namespace that the org's admin role cannot read). The gateway counts a JobApproval only when
the signature verifies, so a record typed by hand (the webhook bypassed), copied from another
approval or altered afterwards does not count.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from ..api.job_approval import JobApprovalSpec

KEY_BYTES = 32
DECIDED_BY = "flareop.io/decided-by"
"""The JobApproval annotation holding the webhook's signed record (JSON of :func:`record`)."""


def _payload(namespace: str, name: str, spec: JobApprovalSpec, username: str, groups: list[str]) -> bytes:
    document = {"approval": f"{namespace}/{name}", "job": spec.job.to_wire(), "contentHash": spec.content_hash,
                "decision": spec.decision, "username": username, "groups": sorted(groups)}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record(key: bytes, namespace: str, name: str, spec: JobApprovalSpec, username: str,
           groups: list[str]) -> dict[str, Any]:
    """The decider record (status.decidedBy's shape) with its signature."""
    signature = hmac.new(key, _payload(namespace, name, spec, username, groups), hashlib.sha256).hexdigest()
    return {"username": username, "groups": list(groups), "signature": signature}


def verified_decider(key: bytes | None, namespace: str, name: str, spec: JobApprovalSpec,
                     recorded: Mapping | None) -> str | None:
    """The username in ``recorded`` when its signature is the webhook's for this decision, else None."""
    if not key or not isinstance(recorded, Mapping):
        return None
    username, groups, signature = recorded.get("username"), recorded.get("groups") or [], recorded.get("signature")
    if not (isinstance(username, str) and username and isinstance(signature, str) and isinstance(groups, list)
            and all(isinstance(g, str) for g in groups)):
        return None
    expected = record(key, namespace, name, spec, username, groups)["signature"]
    return username if hmac.compare_digest(expected, signature) else None
