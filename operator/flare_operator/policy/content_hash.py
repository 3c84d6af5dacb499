"""The content hash a site's decision binds to.

A decision counts only for the exact job + compute content the site saw. The hash is SHA-256 over
canonical JSON (keys sorted, no whitespace, ASCII only, no NaN) of the wire form of the specs
(camelCase, defaults applied, nulls dropped), so two specs that mean the same thing hash the same
however their YAML was ordered.

What is bound (everything that changes what runs on the data or under which terms):

- the FederatedJob spec, without ``suspend`` and ``ttlSecondsAfterFinished`` (pausing a job or
  choosing when its object is garbage-collected does not change what runs on the data);
- the ComputeSpec spec, without ``active`` (scaling to zero and back runs the same code and
  resources);
- ``extra``: whatever else the caller binds; for jobs (:func:`job_hash`) the catalog app's id,
  version and code digest (``builders.nvflare_job.app_code_digest``), so that changing the training
  code invalidates decisions too — and a site whose own copy of the app digests differently
  computes another hash than the hub and refuses the request.

Hashed document: ``{"job": <job>, "compute": <compute>, "extra": <extra>}`` (``job`` absent for
:func:`compute_content_hash`, ``extra`` absent when empty). Because defaults are applied, adding a
field with a default to the API changes every hash: such a change needs a version bump and
re-approval, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..api.access_request import AppCode
from ..api.compute import ComputeSpecSpec
from ..api.job import FederatedJobSpec

HASH_PREFIX = "sha256:"

JOB_FIELDS_NOT_BOUND = frozenset({"suspend", "ttl_seconds_after_finished"})
"""FederatedJob spec fields (Python names) left out of the hash: they do not change what runs."""

COMPUTE_FIELDS_NOT_BOUND = frozenset({"active"})
"""ComputeSpec spec fields (Python names) left out of the hash: they do not change what runs."""


def canonical_json(document: Any) -> str:
    """Sorted keys, no whitespace, ASCII, no NaN/Infinity: the same document always gives the same text."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _sha256(document: Any) -> str:
    return HASH_PREFIX + hashlib.sha256(canonical_json(document).encode("ascii")).hexdigest()


def bound_job(job_spec: FederatedJobSpec) -> dict[str, Any]:
    """The part of a FederatedJob spec a decision binds to, in wire form."""
    return job_spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=set(JOB_FIELDS_NOT_BOUND))


def bound_compute(compute_spec: ComputeSpecSpec) -> dict[str, Any]:
    """The part of a ComputeSpec spec a decision binds to, in wire form."""
    return compute_spec.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude=set(COMPUTE_FIELDS_NOT_BOUND)
    )


def content_hash(
    job_spec: FederatedJobSpec, compute_spec: ComputeSpecSpec, extra: dict[str, Any] | None = None
) -> str:
    """'sha256:<64 hex>' of a FederatedJob's content: its spec and its ComputeSpec's spec (+ extra).

    Goes into the job's status.contentHash and every AccessRequest made for it; JobApprovals name it.
    """
    document: dict[str, Any] = {"job": bound_job(job_spec), "compute": bound_compute(compute_spec)}
    if extra:
        document["extra"] = extra
    return _sha256(document)


def compute_content_hash(compute_spec: ComputeSpecSpec, extra: dict[str, Any] | None = None) -> str:
    """'sha256:<64 hex>' of a ComputeSpec's content (+ extra), for its Compute AccessRequests."""
    document: dict[str, Any] = {"compute": bound_compute(compute_spec)}
    if extra:
        document["extra"] = extra
    return _sha256(document)


def job_hash(job_spec: FederatedJobSpec, compute_spec: ComputeSpecSpec, app: AppCode) -> str:
    """The content hash of a FederatedJob: its spec, its ComputeSpec's spec and the app's code digest.

    The orchestrator computes it with its catalog; each site computes it again from the specs in its
    AccessRequest and the digest of its *own* copy of the app, and decides only when both agree.
    """
    return content_hash(job_spec, compute_spec,
                        extra={"app": f"{app.id}@{app.version}", "appDigest": app.code_digest})
