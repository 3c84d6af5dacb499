"""FederatedJob (hub, consumer namespace): one training run on a ComputeSpec's federation."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from .base import ApiModel, CelRule
from .common import (
    Condition,
    ContentHash,
    Decision,
    LocalObjectReference,
    OrgName,
    ShortText,
    conditions_field,
    observed_generation_field,
)

MAX_ROUNDS = 10000


class DPLevel(StrEnum):
    CLIENT = "Client"
    SAMPLE = "Sample"


class DifferentialPrivacy(ApiModel):
    enabled: bool = Field(False, description="Train under differential privacy at every site (see level).")
    level: DPLevel = Field(
        DPLevel.SAMPLE,
        description="What is protected (default Sample, the cross-silo setting). Sample: each site's records — DP-SGD inside the site (every "
        "record's gradient clipped to clipNorm, Gaussian noise on each Poisson-sampled step, the noise "
        "calibrated at the site for the whole job). Client: each site's whole contribution — its model "
        "update is clipped to clipNorm and noised before it leaves the site.",
    )
    epsilon: float | None = Field(
        None,
        le=100,
        description="Target epsilon for the whole job per site; required when enabled. The noise is "
        "calibrated so the accountant's epsilon after all rounds stays at or below it.",
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="Target delta of (epsilon, delta)-DP.")
    clip_norm: float = Field(
        1.0, gt=0, le=1000,
        description="L2 bound each record's gradient (Sample) or each site's update (Client) is clipped to.",
    )

    cel_rules = (
        CelRule(
            rule="!self.enabled || has(self.epsilon)",
            message="privacy.differentialPrivacy.epsilon is required when differential privacy is enabled",
            check=lambda m: not m.enabled or m.epsilon is not None,
            field_path=".epsilon",
        ),
        CelRule(
            rule="!has(self.epsilon) || self.epsilon > 0.0",
            message="epsilon must be greater than 0",
            check=lambda m: m.epsilon is None or m.epsilon > 0,
            field_path=".epsilon",
        ),
    )


class Privacy(ApiModel):
    differential_privacy: DifferentialPrivacy = Field(
        default_factory=DifferentialPrivacy,
        description="Differential privacy, as the sites' grants may require.",
        json_schema_extra={"default": {}},
    )


class Weighting(StrEnum):
    SAMPLE_COUNT = "SampleCount"
    UNIFORM = "Uniform"
    CAPPED = "Capped"


class Aggregation(ApiModel):
    weighting: Weighting = Field(
        Weighting.SAMPLE_COUNT,
        description="SampleCount (FedAvg), Uniform (every site equal), or Capped (sample-count, but no "
        "site above maxSiteShare: weighting by size amplifies the bias of large datasets).",
    )
    max_site_share: float | None = Field(
        None, gt=0, le=1, description="Capped only: the largest share of the aggregate any one site may have."
    )

    cel_rules = (
        CelRule(
            rule="self.weighting != 'Capped' || has(self.maxSiteShare)",
            message="aggregation.maxSiteShare (0 < share <= 1) is required when weighting is Capped",
            check=lambda m: m.weighting != Weighting.CAPPED or m.max_site_share is not None,
            field_path=".maxSiteShare",
        ),
    )


class FederatedJobSpec(ApiModel):
    compute_spec_ref: LocalObjectReference = Field(description="The ComputeSpec (same namespace) whose federation runs the job.")
    rounds: int = Field(le=MAX_ROUNDS, description="Federated rounds to run (> 0).")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="App parameters, validated against the catalog app's parameter schema at admission.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    privacy: Privacy = Field(
        default_factory=Privacy, description="Privacy settings.", json_schema_extra={"default": {}}
    )
    aggregation: Aggregation = Field(
        default_factory=Aggregation, description="How site updates are combined.", json_schema_extra={"default": {}}
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=30 * 24 * 3600, description="Abort the NVFlare job after this many seconds running (TimedOut)."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=365 * 24 * 3600, description="Delete the job this many seconds after it finished."
    )
    backoff_limit: int = Field(
        2, ge=0, le=10, description="How often to resubmit from the last checkpoint after an NVFlare server or a "
        "site's client lost the job (serverFailures + siteFailures)."
    )
    suspend: bool = Field(
        False, description="true aborts a running job cleanly; false resumes it from the last global checkpoint."
    )

    cel_rules = (
        CelRule(
            rule="self.rounds > 0",
            message="rounds must be greater than 0",
            check=lambda m: m.rounds > 0,
            field_path=".rounds",
        ),
    )


class JobPhase(StrEnum):
    PENDING = "Pending"
    AWAITING_APPROVAL = "AwaitingApproval"
    REJECTED = "Rejected"
    QUEUED = "Queued"
    SUBMITTED = "Submitted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    ABORTED = "Aborted"
    SUSPENDED = "Suspended"
    REVOKED = "Revoked"


FINISHED_PHASES = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.TIMED_OUT, JobPhase.ABORTED,
                             JobPhase.REVOKED})
"""A job in these phases ran and ended (Revoked: an org withdrew its approval while it ran). Rejected is not among them: the sites decide again when
their inputs change (a grant raised, budget freed), so a rejected job can still be admitted."""


class OrgDecision(ApiModel):
    org: OrgName = Field(description="Organisation that decided.")
    decision: Decision = Field(Decision.PENDING, description="Pending, Approved or Rejected.")
    message: ShortText = Field("", description="The org's reasons, in words a person can act on.")
    content_hash: ContentHash | None = Field(None, description="The content hash the decision was made for.")
    decided_at: datetime | None = Field(None, description="When the org decided.")


Metrics = dict[str, float]


class SiteMetrics(ApiModel):
    site: str = Field(max_length=63, description="NVFlare client name.")
    org: OrgName | None = Field(None, description="Organisation of the site.")
    metrics: Metrics = Field(default_factory=dict, description="Latest metrics of the global model on this site's holdout.")
    epsilon_spent: float | None = Field(None, ge=0, description="Epsilon spent so far by this site (DP runs).")


class ResultFile(ApiModel):
    name: str = Field(max_length=512, description="Path relative to the results location.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", max_length=64, description="SHA-256 of the file's content.")


class Results(ApiModel):
    location: str = Field(max_length=1024, description="Where the results are (a directory or a PVC path).")
    files: list[ResultFile] = Field(default_factory=list, max_length=256, description="Files stored, with sizes and hashes.")


class Checkpoint(ApiModel):
    completed_rounds: int = Field(ge=0, description="Rounds the checkpointed global model has been trained for.")
    path: str = Field(max_length=1024, description="Where the global trainable parameters are (safetensors).")
    from_job_id: str = Field(max_length=128, description="The NVFlare job that wrote it.")
    saved_at: datetime | None = Field(None, description="When the operator saved it.")


class FederatedJobStatus(ApiModel):
    phase: JobPhase | None = Field(None, description="Where the job is in its lifecycle.")
    observed_generation: int | None = observed_generation_field()
    conditions: list[Condition] = conditions_field()
    content_hash: ContentHash | None = Field(
        None, description="sha256 of the job spec and its ComputeSpec's spec; decisions bind to it."
    )
    approvals: list[OrgDecision] = Field(
        default_factory=list,
        max_length=64,
        description="Each involved org's decision.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["org"]},
    )
    nvflare_job_id: str | None = Field(None, max_length=128, description="The NVFlare job id of the current attempt.")
    attempts: int = Field(0, ge=0, description="Submissions so far (1 + resumes after suspend + resubmissions "
                          "after server or site failures).")
    server_failures: int = Field(0, ge=0, description="Times the NVFlare server lost the job (counted against "
                                 "spec.backoffLimit).")
    site_failures: int = Field(0, ge=0, description="Times a site's NVFlare client lost the job: it restarted "
                               "mid-job and no longer ran it (counted against spec.backoffLimit).")
    submitted_at: datetime | None = Field(None, description="First submission to NVFlare; the spec is frozen from then on.")
    start_time: datetime | None = Field(None, description="When the NVFlare job started running.")
    completion_time: datetime | None = Field(None, description="When the job finished.")
    current_round: int | None = Field(None, ge=0, description="Rounds completed.")
    progress: str | None = Field(None, max_length=32, description="Rounds completed / total, e.g. 3/5.")
    global_metrics: Metrics = Field(default_factory=dict, description="Latest metrics of the global model.")
    site_metrics: list[SiteMetrics] = Field(
        default_factory=list,
        max_length=64,
        description="Latest per-site metrics (bias across sites shows here).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["site"]},
    )
    results: Results | None = Field(
        None, description="Result files once the job succeeded (model, metrics, model card, logs/); only logs/ "
        "(server and every site) when it did not.")
    checkpoint: Checkpoint | None = Field(
        None, description="The last global checkpoint saved on suspend or after a server failure; the next "
        "attempt resumes from it.")
