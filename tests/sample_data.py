"""The committed samples: valid ones (crds/samples) and invalid ones with the error a user should see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
VALID_DIR = REPO / "crds" / "samples"
INVALID_DIR = REPO / "tests" / "data" / "invalid"
CRD_DIR = REPO / "crds"
EXPECTED = "test.flareop.io/expected-error"


def _load(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(p.stem, yaml.safe_load(p.read_text())) for p in sorted(directory.glob("*.yaml"))]


def valid_samples() -> list[tuple[str, dict[str, Any]]]:
    return _load(VALID_DIR)


def invalid_samples() -> list[tuple[str, dict[str, Any]]]:
    return _load(INVALID_DIR)


def expected_error(obj: dict[str, Any], layer: str) -> str:
    """The message a user should see, from the model ('model') or from the API server ('server')."""
    annotations = obj["metadata"]["annotations"]
    return annotations.get(f"{EXPECTED}-{layer}") or annotations[EXPECTED]


def crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.flareop.io.yaml"))
