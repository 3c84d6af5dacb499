"""Gateway (hub, org namespace): a site's registration, written by the site's gateway controller."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from .base import ApiModel
from .common import (
    Condition,
    DatasetId,
    Label,
    OrgName,
    ShortText,
    conditions_field,
    observed_generation_field,
)


class RuntimeKind(StrEnum):
    KUBERNETES = "kubernetes"
    PROCESS = "process"


class DatasetFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


class Capacity(ApiModel):
    gpu_class: str = Field("", max_length=63, description="GPU model offered, e.g. A100-80GB; empty for CPU-only sites.")
    gpu_count: int = Field(0, ge=0, le=4096, description="GPUs the site offers to federations in total.")


class DatasetOffer(ApiModel):
    """The terms one consumer org has on a dataset (from the owner's DatasetGrants naming it). The hub
    shows each consumer only its own offers (the `flare-catalog` ConfigMap in its namespace)."""

    consumer: OrgName = Field(description="The consumer org these terms are for.")
    models: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=32, description="Models allowed, as 'id versions', e.g. 'esm2-finetune >=1.0.0'."
    )
    dp_required: bool = Field(False, description="Jobs must use differential privacy.")
    max_epsilon_per_job: float | None = Field(None, ge=0, description="Largest epsilon one job may use.")
    epsilon_left: float | None = Field(None, ge=0, description="Epsilon the consumer's jobs may still use (budget left).")
    max_rounds: int | None = Field(None, ge=1, description="Most federated rounds one job may run.")
    expires_at: datetime | None = Field(None, description="When the grant stops allowing jobs.")


class DatasetSummary(ApiModel):
    """What a site says publicly about a dataset: never its path or content."""

    id: DatasetId = Field(description="Dataset id, as in the site's DatasetGrant.")
    description: ShortText = Field("", description="What the data is, for modellers choosing datasets.")
    format: DatasetFormat = Field(DatasetFormat.CSV, description="File format: csv or parquet.")
    sample_count: int = Field(0, ge=0, description="Number of samples (the owner may round it).")
    models: list[Label] = Field(
        default_factory=list, max_length=32, description="Model ids the grant allows."
    )
    offers: list[DatasetOffer] = Field(
        default_factory=list, max_length=64,
        description="Each consumer org's terms, from the first grant (by name) of this dataset naming it.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["consumer"]},
    )


class GatewaySpec(ApiModel):
    org: OrgName = Field(description="The organisation this site belongs to (must match the namespace's org).")
    site: OrgName = Field(description="Site name, used as the NVFlare client name prefix (e.g. org-a).")
    runtime: RuntimeKind = Field(RuntimeKind.KUBERNETES, description="How the site runs NVFlare clients: kubernetes or process.")
    same_cluster_as_hub: bool = Field(
        True, description="The site runs on the hub's cluster: its clients dial the server's in-cluster Service. "
        "false: another cluster; its clients dial the orchestrator's external server endpoint.")
    capacity: Capacity = Field(
        default_factory=Capacity, description="Compute the site offers.", json_schema_extra={"default": {}}
    )
    datasets: list[DatasetSummary] = Field(
        default_factory=list,
        max_length=256,
        description="Public summary of the datasets the site offers, published from its DatasetGrants.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )


class GatewayStatus(ApiModel):
    observed_generation: int | None = observed_generation_field()
    conditions: list[Condition] = conditions_field()
    last_heartbeat_time: datetime | None = Field(None, description="When the site's controller last reported in.")
    datasets_offered: int = Field(0, ge=0, description="Number of datasets offered.")
    clients_running: int = Field(0, ge=0, description="NVFlare clients the site runs now.")
    operator_version: str | None = Field(None, max_length=64, description="Version of the site's gateway controller.")
