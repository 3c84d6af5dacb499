"""DatasetGrant (site): a dataset and who may use it, under which terms. Written by the data owner."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from .base import ApiModel, CelRule, immutable, validations
from .common import (
    Condition,
    DatasetId,
    ModelId,
    ObjectName,
    OrgName,
    ShortText,
    conditions_field,
    observed_generation_field,
)
from .gateway import DatasetFormat

JobKey = Annotated[str, Field(max_length=300)]  # namespace/name

_DOT_DOT = re.compile(r"(^|/)\.\.(/|$)")
_DOT_OR_DOT_DOT = re.compile(r"(^|/)\.\.?(/|$)")

PATH_NO_DOT_DOT = CelRule(
    rule="!has(self.path) || !self.path.matches('(^|/)\\\\.\\\\.(/|$)')",
    message="dataset.path must not contain '..' segments: name the data's own file or folder "
    "(the site accepts only paths under its dataRoots)",
    check=lambda m: m.path is None or not _DOT_DOT.search(m.path),
    field_path=".path",
)
PATH_NO_NUL = CelRule(
    rule="!has(self.path) || !self.path.contains('\\u0000')",
    message="dataset.path must not contain a NUL character",
    check=lambda m: m.path is None or "\x00" not in m.path,
    field_path=".path",
)
SUB_PATH_INSIDE = CelRule(
    rule="!has(self.subPath) || !self.subPath.matches('(^|/)\\\\.\\\\.?(/|$)')",
    message="persistentVolumeClaim.subPath must name a file or folder inside the volume, "
    "without '.' or '..' segments (e.g. scl/train.parquet)",
    check=lambda m: not _DOT_OR_DOT_DOT.search(m.sub_path),
    field_path=".subPath",
)
SUB_PATH_NO_NUL = CelRule(
    rule="!has(self.subPath) || !self.subPath.contains('\\u0000')",
    message="persistentVolumeClaim.subPath must not contain a NUL character",
    check=lambda m: "\x00" not in m.sub_path,
    field_path=".subPath",
)


class VolumeSource(ApiModel):
    claim_name: ObjectName = Field(description="PersistentVolumeClaim (site namespace) holding the data, mounted read-only.")
    sub_path: str = Field("", max_length=1024, description="File or folder inside the volume.")

    cel_rules = (SUB_PATH_INSIDE, SUB_PATH_NO_NUL)


class DatasetSource(ApiModel):
    id: DatasetId = Field(
        description="Dataset id; immutable (ledgers and approvals refer to it).",
        json_schema_extra=validations(
            immutable("dataset.id is immutable: create a new DatasetGrant for another dataset")
        ),
    )
    path: str | None = Field(
        None, min_length=1, max_length=1024,
        description="Path of the data file or folder on the site (process runtime: relative to the operator's "
        "working directory if not absolute; kubernetes runtime: an absolute node path, mounted with hostPath). "
        "The site uses it only if it lies under one of its dataRoots (symlinks resolved); no '..' segments.",
    )
    persistent_volume_claim: VolumeSource | None = Field(None, description="The data on a volume (kubernetes runtime).")
    format: DatasetFormat = Field(DatasetFormat.CSV, description="csv or parquet with columns sequence, label[, split].")
    sample_count: int = Field(0, ge=0, description="Number of samples (published to the hub in the Gateway).")
    description: ShortText = Field("", description="What the data is; published to the hub.")

    cel_rules = (
        CelRule(
            rule="has(self.path) != has(self.persistentVolumeClaim)",
            message="set exactly one of dataset.path and dataset.persistentVolumeClaim",
            check=lambda m: (m.path is None) != (m.persistent_volume_claim is None),
        ),
        PATH_NO_DOT_DOT,
        PATH_NO_NUL,
    )


class ModelConstraint(ApiModel):
    id: ModelId = Field(description="Catalog model (app) id allowed on the data.")
    versions: str = Field(
        "*",
        min_length=1,
        max_length=128,
        description="Version constraint, e.g. '>=1.0.0,<2.0.0', '1.2.*' or '*' (PEP 440 specifier syntax).",
    )


class GrantPrivacy(ApiModel):
    dp_required: bool = Field(False, description="Jobs must enable differential privacy (either level).")
    max_epsilon_per_job: float | None = Field(None, gt=0, le=100, description="Largest epsilon one job may use.")
    epsilon_budget: float | None = Field(
        None, gt=0, le=10000, description="Total epsilon all jobs together may spend on this dataset."
    )

    cel_rules = (
        CelRule(
            rule="!has(self.maxEpsilonPerJob) || !has(self.epsilonBudget) || self.maxEpsilonPerJob <= self.epsilonBudget",
            message="maxEpsilonPerJob cannot exceed epsilonBudget",
            check=lambda m: m.max_epsilon_per_job is None or m.epsilon_budget is None
            or m.max_epsilon_per_job <= m.epsilon_budget,
        ),
        CelRule(
            rule="self.dpRequired || (!has(self.maxEpsilonPerJob) && !has(self.epsilonBudget))",
            message="epsilon limits only bind jobs that use differential privacy: set dpRequired: true "
            "(or remove maxEpsilonPerJob and epsilonBudget)",
            check=lambda m: m.dp_required or (m.max_epsilon_per_job is None and m.epsilon_budget is None),
        ),
    )


class DatasetGrantSpec(ApiModel):
    dataset: DatasetSource = Field(description="The dataset this grant is about.")
    consumers: list[OrgName] = Field(
        min_length=1, max_length=64, description="Consumer orgs allowed to train on it ('*' is not accepted: name them)."
    )
    models: list[ModelConstraint] = Field(
        min_length=1, max_length=32, description="Models (catalog apps) allowed, each with a version constraint."
    )
    max_rounds: int | None = Field(None, ge=1, le=10000, description="Most federated rounds one job may run.")
    min_participating_orgs: int = Field(
        1, ge=1, le=64, description="Fewest orgs that must contribute data to a federation (hides one org's update)."
    )
    privacy: GrantPrivacy = Field(
        default_factory=GrantPrivacy, description="Privacy terms.", json_schema_extra={"default": {}}
    )
    expires_at: datetime | None = Field(None, description="After this time the grant allows nothing.")


class PrivacyMechanism(StrEnum):
    GAUSSIAN = "Gaussian"
    POISSON_GAUSSIAN = "PoissonGaussian"


class PrivacyEvent(ApiModel):
    mechanism: PrivacyMechanism = Field(
        description="PoissonGaussian: DP-SGD steps on Poisson samples of the site's records (sample level); "
        "Gaussian: noised releases of the site's whole clipped update (client level)."
    )
    noise_multiplier: float = Field(gt=0, le=1e6, description="Noise standard deviation / clip norm.")
    sample_rate: float = Field(1.0, gt=0, le=1, description="Poisson sampling rate (1 for Gaussian).")
    count: int = Field(ge=0, le=100_000_000, description="Steps (PoissonGaussian) or releases (Gaussian).")


class EpsilonReservation(ApiModel):
    job: str = Field(max_length=300, description="namespace/name of the FederatedJob.")
    uid: str = Field(max_length=64, description="UID of the FederatedJob.")
    epsilon: float = Field(ge=0, description="Epsilon reserved (or spent).")
    spent: bool = Field(False, description="false: reserved by an admitted job; true: spent by a finished one.")
    delta: float | None = Field(None, gt=0, lt=1, description="The job's delta, where events are recorded.")
    events: list[PrivacyEvent] = Field(
        default_factory=list, max_length=16,
        description="What the site's own client recorded it used (one event per attempt): spent entries with "
        "events are composed with the RDP accountant across jobs (epsilonUsed) instead of summed.",
    )


class DatasetGrantStatus(ApiModel):
    observed_generation: int | None = observed_generation_field()
    conditions: list[Condition] = conditions_field()
    epsilon_reserved: float = Field(0, ge=0, description="Epsilon reserved by admitted, unfinished jobs.")
    epsilon_spent: float = Field(0, ge=0, description="Epsilon spent by finished jobs (the sum of their epsilons).")
    epsilon_used: float = Field(
        0, ge=0,
        description="What admission counts against epsilonBudget: the spent jobs whose privacy events the site's "
        "own clients recorded, composed with the RDP accountant at the sum of their deltas (at most their sum), "
        "plus every other entry's epsilon.",
    )
    ledger: list[EpsilonReservation] = Field(
        default_factory=list,
        max_length=1024,
        description="One entry per job that reserved or spent epsilon on this dataset.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"]},
    )
    jobs: list[JobKey] = Field(default_factory=list, max_length=1024, description="namespace/name of jobs that used it.")

