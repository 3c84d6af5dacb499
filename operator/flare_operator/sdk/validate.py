"""Manifests checked offline, as the API server would judge them (schema and CEL rules, from the same
models the CRDs are generated from): `flareop validate` and `flare-operator validate`."""

from __future__ import annotations

from pathlib import Path

import yaml


def check_manifests(paths: list[Path]) -> list[dict]:
    """Each flareop.io object in the YAML files, valid or not (and why), as the API server would judge it."""
    from ..api import InvalidObject, parse_object

    results = []
    for path in paths:
        for obj in yaml.safe_load_all(path.read_text()):
            if not obj:
                continue
            label = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
            try:
                parse_object(obj)
                results.append({"file": str(path), "object": label, "valid": True, "error": ""})
            except InvalidObject as err:
                results.append({"file": str(path), "object": label, "valid": False, "error": str(err)})
    return results
