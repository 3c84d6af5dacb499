"""OrgPolicy (site, one per org, named 'default'): how the data owner decides."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import ApiModel, CelRule
from .common import (
    MAX_GPUS_PER_CLIENT,
    Condition,
    OrgName,
    PositiveQuantity,
    conditions_field,
    observed_generation_field,
)

ORG_POLICY_NAME = "default"


class ApprovalMode(StrEnum):
    AUTOMATIC = "Automatic"
    MANUAL = "Manual"


class ClientCeiling(ApiModel):
    cpu: PositiveQuantity | None = Field(None, description="Most CPU one client may request at this site.")
    memory: PositiveQuantity | None = Field(None, description="Most memory one client may request at this site.")
    gpu: int | None = Field(None, ge=0, le=MAX_GPUS_PER_CLIENT, description="Most GPUs one client may request.")


class PrivacyFloor(ApiModel):
    dp_required: bool = Field(False, description="Every job on this org's data must use differential privacy.")
    max_epsilon: float | None = Field(None, gt=0, le=100, description="Largest per-job epsilon the org accepts.")


class ConsumerRules(ApiModel):
    allowed: list[OrgName] = Field(
        default_factory=list, max_length=256, description="If non-empty, only these consumer orgs may be served."
    )
    blocked: list[OrgName] = Field(default_factory=list, max_length=256, description="Consumer orgs never served.")


class OrgPolicySpec(ApiModel):
    approval_mode: ApprovalMode = Field(
        ApprovalMode.MANUAL,
        description="Automatic: jobs within the grants and limits are approved at once. Manual: they wait "
        "for a JobApproval by the org's admin (which never overrides the limits).",
    )
    client_limits: ClientCeiling = Field(
        default_factory=ClientCeiling, description="Resource ceilings per client.", json_schema_extra={"default": {}}
    )
    max_job_duration_seconds: int | None = Field(
        None, ge=60, le=30 * 24 * 3600, description="Longest activeDeadlineSeconds a job may have; jobs must set one."
    )
    privacy_floor: PrivacyFloor = Field(
        default_factory=PrivacyFloor, description="Privacy the org requires of every job.", json_schema_extra={"default": {}}
    )
    consumers: ConsumerRules = Field(
        default_factory=ConsumerRules, description="Allowed and blocked consumer orgs.", json_schema_extra={"default": {}}
    )

    cel_rules = (
        CelRule(
            rule="!has(self.consumers.allowed) || !has(self.consumers.blocked) || "
            "!self.consumers.allowed.exists(o, o in self.consumers.blocked)",
            message="an org cannot be both allowed and blocked: remove it from one of consumers.allowed and consumers.blocked",
            check=lambda m: not set(m.consumers.allowed) & set(m.consumers.blocked),
            field_path=".consumers",
        ),
    )


class OrgPolicyStatus(ApiModel):
    observed_generation: int | None = observed_generation_field()
    conditions: list[Condition] = conditions_field()
