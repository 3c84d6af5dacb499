"""The app catalog: ``flare_apps/<app-id>/app.yaml`` files, loaded and validated (pure, no torch/nvflare)."""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

ENV_VAR = "FLARE_APPS_DIR"
APP_FILE = "app.yaml"
ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# semver 2.0.0
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

# What an app.yaml must look like (the catalog's own format).
APP_META_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id", "version", "description", "parameters", "resources", "results", "nvflare"],
    "properties": {
        "id": {"type": "string", "pattern": ID_RE.pattern},
        "version": {"type": "string", "pattern": SEMVER_RE.pattern},
        "description": {"type": "string", "minLength": 1},
        "framework": {"type": "string"},
        "labels": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "dataset": {"type": "object"},
        "nvflare": {
            "type": "object",
            "required": ["clientScript", "serverController"],
            "properties": {
                "clientScript": {"type": "string", "minLength": 1},
                "serverController": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$"},
                "custom": {"type": "array", "items": {"type": "string"}},
                "paramsTransfer": {"enum": ["FULL", "DIFF"]},
            },
        },
        "resources": {
            "type": "object",
            "properties": {
                "client": {"$ref": "#/$defs/res"},
                "server": {"$ref": "#/$defs/res"},
                "presets": {"type": "object", "additionalProperties": {"$ref": "#/$defs/res"}},
            },
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "description"],
                "properties": {"path": {"type": "string"}, "description": {"type": "string"}},
            },
        },
        "parameters": {"type": "object"},
    },
    "$defs": {
        "res": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "cpu": {"type": ["string", "number"]},
                "memory": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"},
                "gpu": {"type": "integer", "minimum": 0},
            },
        }
    },
}
_META_VALIDATOR = Draft202012Validator(APP_META_SCHEMA)


class CatalogError(Exception):
    """The catalog or an app.yaml is missing or malformed."""


@dataclass(frozen=True)
class ParamError:
    path: str  # JSON path, e.g. "$.lora.r"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ParameterError(ValueError):
    """Parameters do not satisfy the app's schema; ``errors`` lists each problem with its JSON path."""

    def __init__(self, app_id: str, errors: list[ParamError]):
        self.app_id = app_id
        self.errors = errors
        super().__init__(f"invalid parameters for {app_id}: " + "; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class App:
    id: str
    version: str
    description: str
    path: Path
    parameters_schema: dict
    resources: dict
    results: list
    nvflare: dict
    labels: list = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def defaults(self) -> dict:
        return apply_defaults(self.parameters_schema, {})

    def summary(self) -> dict:
        """What an SDK lists: id, version, description, resources, parameters (schema)."""
        return {
            "id": self.id,
            "version": self.version,
            "description": self.description,
            "resources": self.resources,
            "results": self.results,
            "parameters": self.parameters_schema,
        }


def catalog_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else $FLARE_APPS_DIR, else the repository's flare_apps/."""
    if root:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "flare_apps"


def shared_dir(root: str | os.PathLike | None = None) -> Path:
    """Code shared by all apps (``_shared/``), copied into every job's custom folder."""
    return catalog_root(root) / "_shared"


def _fmt_path(err) -> str:
    return getattr(err, "json_path", None) or "$" + "".join(f"[{p!r}]" for p in err.absolute_path)


# Parsed and checked apps by app.yaml path: (sha256 of its bytes, the App). Every FederatedJob pass
# and every site's answer loads its app; parsing and schema-checking app.yaml each time was half of
# the hub's event-loop samples at scale (docs/benchmarks.md §7). Keyed by content, so an edited
# app.yaml is loaded anew; callers get their own copy.
_LOADED: dict[Path, tuple[str, App]] = {}


def load_app_dir(path: str | os.PathLike) -> App:
    p = Path(path)
    f = p / APP_FILE
    try:
        data = f.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CatalogError(f"{p}: no {APP_FILE}") from None
    digest = hashlib.sha256(data).hexdigest()
    cached = _LOADED.get(f)
    if cached is None or cached[0] != digest:
        cached = _LOADED[f] = (digest, _parse_app(p, f, data))
    return copy.deepcopy(cached[1])


def _parse_app(p: Path, f: Path, data: bytes) -> App:
    try:
        raw = yaml.safe_load(data.decode())
    except yaml.YAMLError as e:
        raise CatalogError(f"{f}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise CatalogError(f"{f}: must be a mapping")
    errs = sorted(_META_VALIDATOR.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errs:
        raise CatalogError(f"{f}: " + "; ".join(f"{_fmt_path(e)}: {e.message}" for e in errs))
    if raw["id"] != p.name:
        raise CatalogError(f"{f}: id {raw['id']!r} does not match the folder name {p.name!r}")
    schema = raw["parameters"]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise CatalogError(f"{f}: parameters is not a valid JSON Schema (2020-12): {e.message}") from e
    if schema.get("type") != "object":
        raise CatalogError(f"{f}: parameters schema must have type: object")
    app = App(
        id=raw["id"],
        version=raw["version"],
        description=raw["description"].strip(),
        path=p,
        parameters_schema=schema,
        resources=raw.get("resources", {}),
        results=raw.get("results", []),
        nvflare=raw["nvflare"],
        labels=list(raw.get("labels", [])),
        raw=raw,
    )
    # the defaults themselves must be valid
    try:
        validate_params(app, {})
    except ParameterError as e:
        raise CatalogError(f"{f}: the parameter defaults do not validate: {e}") from e
    return app


def list_apps(root: str | os.PathLike | None = None) -> list[App]:
    """Every app in the catalog, sorted by id (folders starting with '_' or '.' are not apps)."""
    r = catalog_root(root)
    if not r.is_dir():
        raise CatalogError(f"catalog root {r} is not a directory (set {ENV_VAR})")
    return [
        load_app_dir(d)
        for d in sorted(r.iterdir())
        if d.is_dir() and not d.name.startswith(("_", ".")) and (d / APP_FILE).exists()
    ]


def load_app(app_id: str, version: str | None = None, root: str | os.PathLike | None = None) -> App:
    if not isinstance(app_id, str) or not ID_RE.match(app_id):
        raise CatalogError(f"invalid app id {app_id!r}")
    d = catalog_root(root) / app_id
    if not (d / APP_FILE).is_file():
        known = (
            [a.name for a in catalog_root(root).iterdir() if (a / APP_FILE).is_file()]
            if catalog_root(root).is_dir()
            else []
        )
        raise CatalogError(f"unknown app {app_id!r}; the catalog has {sorted(known)}")
    app = load_app_dir(d)
    if version is not None and version != app.version:
        raise CatalogError(f"app {app_id} is at version {app.version}, not {version}")
    return app


def apply_defaults(schema: Mapping, params: Mapping | None) -> dict:
    """Fill missing properties with their schema ``default`` (recursively into objects)."""
    out = copy.deepcopy(dict(params or {}))
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, Mapping):
            continue
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if isinstance(out.get(name), dict) and sub.get("properties"):
            out[name] = apply_defaults(sub, out[name])
    return out


def validate_against(schema: Mapping, params: Any, what: str) -> dict:
    if not isinstance(params, Mapping):
        raise ParameterError(what, [ParamError("$", f"must be an object, got {type(params).__name__}")])
    full = apply_defaults(schema, params)
    errs = sorted(
        Draft202012Validator(schema).iter_errors(full), key=lambda e: (list(e.absolute_path), e.message)
    )
    if errs:
        out = []
        for e in errs:
            msg = e.message
            hint = _conditional_hint(schema, list(e.schema_path))
            if hint:
                msg += f" ({hint})"
            out.append(ParamError(_fmt_path(e), msg))
        raise ParameterError(what, out)
    return full


def _conditional_hint(schema: Mapping, schema_path: list) -> str | None:
    """The ``description`` of the ``then`` branch an error came from, if any."""
    node: Any = schema
    hint = None
    for key in schema_path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
        if key == "then" and isinstance(node, Mapping):
            hint = node.get("description") or hint
    return hint


def validate_params(app: App, params: Mapping | None) -> dict:
    """Validate ``params`` against the app's schema; returns them with defaults applied."""
    return validate_against(app.parameters_schema, params or {}, app.id)
