"""JobApproval (site): the org admin's decision on one FederatedJob, bound to its content hash."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from .base import ApiModel, CelRule, immutable, validations
from .common import (
    Condition,
    ContentHash,
    ObjectName,
    OrgName,
    ShortText,
    conditions_field,
    observed_generation_field,
)


class ApprovalDecision(StrEnum):
    APPROVE = "Approve"
    REJECT = "Reject"


class JobReference(ApiModel):
    namespace: OrgName = Field(description="Namespace of the FederatedJob on the hub.")
    name: ObjectName = Field(description="Name of the FederatedJob.")
    uid: str | None = Field(
        None, max_length=64,
        description="UID of the FederatedJob (its AccessRequest's spec.source.uid). Filled in by the site's "
        "admission webhook when left out; an approval counts only for this one job: a job deleted and created "
        "again under the same name needs a new decision.",
    )


class JobApprovalSpec(ApiModel):
    job: JobReference = Field(
        description="The FederatedJob on the hub (consumer namespace and name). Immutable.",
        json_schema_extra=validations(immutable("job is immutable: create a new JobApproval for another job")),
    )
    content_hash: ContentHash = Field(
        description="The job's status.contentHash this decision is for. Immutable: if the job changes, "
        "decide again with a new JobApproval.",
        json_schema_extra=validations(immutable("contentHash is immutable: create a new JobApproval for the new hash")),
    )
    decision: ApprovalDecision = Field(
        description="Approve or Reject. Immutable: delete and re-create to change your mind.",
        json_schema_extra=validations(immutable("decision is immutable: delete this JobApproval and create a new one")),
    )
    reason: ShortText = Field("", description="Why; required for Reject (the modeller sees it).")

    cel_rules = (
        CelRule(
            rule="self.decision != 'Reject' || size(self.reason) > 0",
            message="reason is required when rejecting: tell the modeller what to change",
            check=lambda m: m.decision != ApprovalDecision.REJECT or bool(m.reason),
            field_path=".reason",
        ),
    )


class Decider(ApiModel):
    username: str = Field(max_length=256, description="User who created the JobApproval (from the API request).")
    groups: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=64, description="That user's groups."
    )
    signature: str | None = Field(
        None, max_length=128, description="The site webhook's HMAC over this record and the decision: a record "
        "without a valid one was not made by the site's webhook and does not count.",
    )


class JobApprovalStatus(ApiModel):
    observed_generation: int | None = observed_generation_field()
    conditions: list[Condition] = conditions_field()
    decided_by: Decider | None = Field(None, description="Who decided, as the admission webhook saw the request.")
    recorded_at: datetime | None = Field(None, description="When the site's controller recorded the decision.")
