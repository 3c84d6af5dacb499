"""The models (catalog apps) a job can run: id, version, description, resource hints and each
parameter's JSON schema — as the orchestrator validates jobs against them (ConfigMap flare-catalog)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .session import Session, current


@dataclass(frozen=True)
class Model:
    id: str
    version: str
    description: str
    resources: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)  # the JSON schema of the job's parameters
    results: list[dict] = field(default_factory=list)

    def parameter_defaults(self) -> dict[str, Any]:
        return {k: p["default"] for k, p in (self.parameters.get("properties") or {}).items() if "default" in p}


def list_models(name_contains: str = "", *, session: Session | None = None) -> list[Model]:
    """Catalog apps whose id contains ``name_contains``, newest version last per id."""
    apps = current(session).published_catalog().get("models") or []
    return [Model(a["id"], a["version"], a.get("description", ""), a.get("resources") or {},
                  a.get("parameters") or {}, a.get("results") or [])
            for a in sorted(apps, key=lambda a: (a["id"], a["version"])) if name_contains.lower() in a["id"].lower()]
