"""The datasets the caller's org may train on: each owner org's public summary and this org's terms,
as the orchestrator gathers them from the sites' Gateways (ConfigMap flare-catalog). Never a path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .session import Session, current


@dataclass(frozen=True)
class Dataset:
    org: str
    id: str
    description: str
    format: str
    sample_count: int
    site_ready: bool
    terms: dict[str, Any] = field(default_factory=dict)  # models, dpRequired, maxEpsilonPerJob, epsilonLeft, ...

    @property
    def ref(self) -> str:
        """``org/id``, as ComputeSpec(dataset_ids=[...]) takes it."""
        return f"{self.org}/{self.id}"


def list_datasets(slug_contains: str = "", *, session: Session | None = None) -> list[Dataset]:
    """Datasets offered to the caller's org whose ``org/id`` contains ``slug_contains``."""
    items = current(session).published_catalog().get("datasets") or []
    return [Dataset(d["org"], d["id"], d.get("description", ""), d.get("format", "csv"), int(d.get("sampleCount", 0)),
                    bool(d.get("siteReady")), d.get("terms") or {})
            for d in items if slug_contains.lower() in f"{d['org']}/{d['id']}".lower()]
