"""AccessRequest (hub, org namespace): what one ComputeSpec or FederatedJob asks of one org.

The orchestrator writes the spec; the org's gateway controller writes the status (its decision).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from .base import ApiModel, immutable
from .common import (
    ClientResources,
    Condition,
    ContentHash,
    DatasetId,
    Decision,
    ModelId,
    ModelRef,
    ObjectName,
    OrgName,
    Semver,
    ShortText,
    conditions_field,
    observed_generation_field,
)
from .compute import ComputeSpecSpec
from .job import Aggregation, DifferentialPrivacy, FederatedJobSpec

# On a Compute AccessRequest: a digest of the client kit the hub wrote for it (builders/requests.py
# kit_digest); the site answers when it changes instead of finding the kit at its next resync.
ANNOTATION_KIT = "flareop.io/kit"


class RequestKind(StrEnum):
    COMPUTE = "Compute"
    JOB = "Job"


class RequestSource(ApiModel):
    kind: RequestKind = Field(description="Compute (a ComputeSpec wants a client here) or Job (a FederatedJob wants to run).")
    namespace: OrgName = Field(description="Consumer namespace of the source object.")
    name: ObjectName = Field(description="Name of the ComputeSpec or FederatedJob.")
    uid: str = Field(max_length=64, description="UID of the source object (a re-created object is a new request).")
    created_at: datetime | None = Field(
        None, description="When the source object was created: the order every org gives jobs that compete for "
        "a privacy budget (the older one is admitted first).",
    )

    cel_rules = (immutable("source is immutable: create a new AccessRequest for another object"),)


class AppCode(ApiModel):
    """The catalog app a job runs, as the hub has it. The site checks the digest against its own copy."""

    id: ModelId = Field(description="Catalog app (model) id.")
    version: Semver = Field(description="Catalog app version.")
    code_digest: ContentHash = Field(
        description="sha256 of the app's catalog folder at the hub (app.yaml, custom code, the catalog's shared "
        "code): bound into the content hash; each site recomputes it from its own catalog."
    )


class JobOutcome(ApiModel):
    phase: str = Field(
        max_length=16, description="How the job ended: Succeeded, Failed, TimedOut, Aborted or Revoked.",
        json_schema_extra={"enum": ["Succeeded", "Failed", "TimedOut", "Aborted", "Revoked"]},
    )
    epsilon_spent: float | None = Field(
        None, ge=0, description="Epsilon this org's site spent per the job's accountant (None: not reported)."
    )


class AccessRequestSpec(ApiModel):
    source: RequestSource = Field(description="The object this request is made for.")
    org: OrgName = Field(description="The org asked (owner of this namespace).")
    consumer_org: OrgName = Field(description="The org that wants to use the data (the source namespace's org).")
    model: ModelRef = Field(description="Catalog model (app) id and version.")
    datasets: list[DatasetId] = Field(min_length=1, max_length=64, description="This org's datasets the request uses.")
    client: ClientResources = Field(
        default_factory=ClientResources, description="Resources the client at this site would get.",
        json_schema_extra={"default": {}},
    )
    active: bool = Field(
        True, description="Compute only: false asks the site to scale its client to zero (the ComputeSpec is inactive)."
    )
    participating_orgs: list[OrgName] = Field(
        default_factory=list, max_length=64, description="Every org that contributes data to the federation."
    )
    rounds: int | None = Field(None, ge=1, description="Job only: federated rounds.")
    duration_seconds: int | None = Field(None, ge=1, description="Job only: the job's activeDeadlineSeconds.")
    differential_privacy: DifferentialPrivacy | None = Field(None, description="Job only: DP settings.")
    aggregation: Aggregation | None = Field(None, description="Job only: aggregation weighting.")
    content_hash: ContentHash = Field(description="Hash of the job + compute content a decision binds to.")
    job: FederatedJobSpec | None = Field(
        None, description="Job only: the FederatedJob's spec exactly as the content hash binds it (parameters, "
        "privacy, rounds, aggregation, deadline; without suspend and ttlSecondsAfterFinished). The site recomputes "
        "the hash from it and refuses a request whose summary fields or hash do not match it.",
    )
    compute: ComputeSpecSpec | None = Field(
        None, description="Job only: the ComputeSpec's spec exactly as the content hash binds it (model, every "
        "org's datasets, server and client resources; without active).",
    )
    app: AppCode | None = Field(None, description="Job only: the catalog app the job runs and its code digest.")
    reserve: bool = Field(
        True, description="Job only: false once another org rejected the job: this org still decides, but holds "
        "no epsilon for it until every org approves again.",
    )
    outcome: JobOutcome | None = Field(
        None, description="Job only: set by the orchestrator once the job ended; the site then turns its epsilon "
        "reservation into spent epsilon (the reserved amount when none is reported).",
    )


class RuleResult(ApiModel):
    rule: str = Field(max_length=63, description="Machine name of the rule, e.g. MaxRounds.")
    passed: bool = Field(description="Whether the request satisfies the rule.")
    message: ShortText = Field("", description="Why, in words a person can act on.")
    source: str = Field("", max_length=300, description="The object the rule came from, e.g. DatasetGrant/esm2-scl.")


class AccessRequestStatus(ApiModel):
    observed_generation: int | None = observed_generation_field()
    conditions: list[Condition] = conditions_field()
    decision: Decision | None = Field(None, description="Pending, Approved or Rejected.")
    reason: str | None = Field(None, max_length=63, description="Machine reason of the decision.")
    message: ShortText | None = Field(None, description="Why, in words a person can act on.")
    rules: list[RuleResult] = Field(default_factory=list, max_length=64, description="The rules evaluated and their outcome.")
    decided_hash: ContentHash | None = Field(None, description="The content hash the decision is for.")
    decided_at: datetime | None = Field(None, description="When the site decided.")
    epsilon_reserved: float | None = Field(None, ge=0, description="Epsilon reserved on this org's grants for the job.")
    client_ready: bool | None = Field(None, description="Compute only: the site's NVFlare client is running.")
    client_message: ShortText | None = Field(
        None, description="Compute only: why the site's NVFlare client does not run (e.g. its image cannot be "
        "pulled, its Pod cannot be scheduled), from the site's own view of its Pod.")
