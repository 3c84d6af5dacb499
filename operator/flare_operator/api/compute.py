"""ComputeSpec (hub, consumer namespace): a federation for one model over datasets of several orgs."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import ApiModel, CelRule
from .common import (
    ClientResources,
    Condition,
    DatasetId,
    Decision,
    ModelRef,
    OrgName,
    ServerResources,
    ShortText,
    conditions_field,
    observed_generation_field,
)


class DatasetRef(ApiModel):
    org: OrgName = Field(description="Organisation that owns the dataset (its namespace's flareop.io/org label).")
    id: DatasetId = Field(description="Dataset id as declared in that org's DatasetGrant (spec.dataset.id).")


class ComputeSpecSpec(ApiModel):
    model: ModelRef = Field(description="The catalog model (app) this federation trains.")
    datasets: list[DatasetRef] = Field(
        max_length=64,
        description="Datasets to train on; one NVFlare client runs at each org that owns one.",
    )
    server: ServerResources = Field(
        default_factory=ServerResources,
        description="Resources of the NVFlare server on the hub.",
        json_schema_extra={"default": {}},
    )
    client: ClientResources = Field(
        default_factory=ClientResources,
        description="Resources of each site's NVFlare client.",
        json_schema_extra={"default": {}},
    )
    active: bool = Field(
        True,
        description="false scales the server and every client to zero (releases GPUs); "
        "true brings them back with the same identities and workspaces.",
    )

    cel_rules = (
        CelRule(
            rule="size(self.datasets) >= 1",
            message="at least one dataset is required: add an entry {org, id} to spec.datasets",
            check=lambda m: len(m.datasets) >= 1,
            field_path=".datasets",
        ),
        CelRule(
            rule="self.datasets.all(d, self.datasets.exists_one(e, e.org == d.org && e.id == d.id))",
            message="spec.datasets lists the same {org, id} twice: remove the duplicate",
            check=lambda m: len({(d.org, d.id) for d in m.datasets}) == len(m.datasets),
            field_path=".datasets",
        ),
    )


class ComputePhase(StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    STARTING = "Starting"
    READY = "Ready"
    DEACTIVATED = "Deactivated"
    FAILED = "Failed"


class SiteStatus(ApiModel):
    org: OrgName = Field(description="Organisation of the site.")
    site: str = Field("", max_length=63, description="NVFlare client name of this org in the federation.")
    datasets: list[DatasetId] = Field(default_factory=list, max_length=64, description="Datasets this site serves.")
    decision: Decision = Field(Decision.PENDING, description="The org's answer to the AccessRequest.")
    message: ShortText = Field("", description="Why the org decided so, or what the client waits for.")
    client_ready: bool = Field(False, description="The site's NVFlare client is connected to the server.")


class ComputeSpecStatus(ApiModel):
    phase: ComputePhase | None = Field(None, description="Pending, Provisioning, Starting, Ready, Deactivated or Failed.")
    observed_generation: int | None = observed_generation_field()
    conditions: list[Condition] = conditions_field()
    server_endpoint: str | None = Field(
        None, max_length=512, description="host:port of the NVFlare server's FL port, for the clients."
    )
    project: str | None = Field(None, max_length=128, description="NVFlare project (federation) name.")
    sites: list[SiteStatus] = Field(
        default_factory=list,
        max_length=64,
        description="Per-org answer and client readiness.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["org"]},
    )
    ready_clients: str | None = Field(None, max_length=16, description="Connected clients / expected, e.g. 2/2.")
