"""Pure: what a ComputeSpec asks of each org, as AccessRequest objects for the orgs' hub namespaces."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import datetime

from ..api.access_request import AccessRequestSpec, AppCode, RequestKind, RequestSource
from ..api.compute import ComputeSpecSpec
from ..api.job import FederatedJobSpec
from ..api.kinds import API_VERSION

LABEL_FEDERATION = "flareop.io/federation"
LABEL_SOURCE_NAMESPACE = "flareop.io/source-namespace"
LABEL_SOURCE_NAME = "flareop.io/source-name"
LABEL_REQUEST_KIND = "flareop.io/request-kind"


def kit_digest(kit: bytes) -> str:
    """The value of a client kit's annotation on its request (api/access_request.py ANNOTATION_KIT)."""
    return hashlib.sha256(kit).hexdigest()[:16]


def _short(name: str, limit: int = 63) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def access_request_name(kind: RequestKind, namespace: str, name: str) -> str:
    return _short(f"{kind.value.lower()}-{namespace}-{name}")


def kit_secret_name(request_name: str) -> str:
    """The Secret next to a Compute AccessRequest that carries the site's NVFlare client kit."""
    return _short(f"{request_name}-kit", 253)


def _request_object(request: AccessRequestSpec, hub_namespace: str, federation: str) -> dict:
    """The AccessRequest object: named and labelled after its source, so the source can find it."""
    src = request.source
    return {
        "apiVersion": API_VERSION,
        "kind": "AccessRequest",
        "metadata": {
            "name": access_request_name(RequestKind(src.kind), src.namespace, src.name),
            "namespace": hub_namespace,
            "labels": {
                LABEL_FEDERATION: federation,
                LABEL_SOURCE_NAMESPACE: src.namespace,
                LABEL_SOURCE_NAME: _short(src.name),
                LABEL_REQUEST_KIND: RequestKind(src.kind).value,
            },
        },
        "spec": request.to_wire(),
    }


def datasets_by_org(spec: ComputeSpecSpec) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for ref in spec.datasets:
        grouped[ref.org].append(ref.id)
    return {org: tuple(sorted(ids)) for org, ids in sorted(grouped.items())}


def compute_access_request(*, org: str, hub_namespace: str, source_namespace: str, source_name: str, source_uid: str,
                           consumer_org: str, spec: ComputeSpecSpec, federation: str, content_hash: str) -> dict:
    """The AccessRequest a ComputeSpec sends to one org: run a client for these datasets and this model."""
    by_org = datasets_by_org(spec)
    request = AccessRequestSpec(
        source=RequestSource(kind=RequestKind.COMPUTE, namespace=source_namespace, name=source_name, uid=source_uid),
        org=org,
        consumer_org=consumer_org,
        model=spec.model,
        datasets=list(by_org[org]),
        client=spec.client,
        active=spec.active,
        participating_orgs=list(by_org),
        content_hash=content_hash,
    )
    return _request_object(request, hub_namespace, federation)


def bound_specs(job: FederatedJobSpec, compute: ComputeSpecSpec) -> tuple[FederatedJobSpec, ComputeSpecSpec]:
    """The specs as an AccessRequest carries them: the fields the content hash leaves out at their
    defaults, so pausing a job or its compute does not change what the sites are asked."""
    return (job.model_copy(update={"suspend": False, "ttl_seconds_after_finished": None}),
            compute.model_copy(update={"active": True}))


def job_access_request(*, org: str, hub_namespace: str, source_namespace: str, source_name: str, source_uid: str,
                       consumer_org: str, job: FederatedJobSpec, compute: ComputeSpecSpec, federation: str,
                       content_hash: str, app: AppCode, reserve: bool = True,
                       source_created: datetime | None = None) -> dict:
    """The AccessRequest a FederatedJob sends to one org: run this job on your data.

    It carries everything the content hash binds (the job's and compute's specs, the app and its code
    digest), so the org's admin reviews exactly what is approved and the site can recompute the hash.
    """
    job, compute = bound_specs(job, compute)
    by_org = datasets_by_org(compute)
    request = AccessRequestSpec(
        source=RequestSource(kind=RequestKind.JOB, namespace=source_namespace, name=source_name, uid=source_uid,
                             created_at=source_created),
        org=org,
        consumer_org=consumer_org,
        model=compute.model,
        datasets=list(by_org[org]),
        client=compute.client,
        participating_orgs=list(by_org),
        rounds=job.rounds,
        duration_seconds=job.active_deadline_seconds,
        differential_privacy=job.privacy.differential_privacy,
        aggregation=job.aggregation,
        content_hash=content_hash,
        job=job,
        compute=compute,
        app=app,
        reserve=reserve,
    )
    return _request_object(request, hub_namespace, federation)
