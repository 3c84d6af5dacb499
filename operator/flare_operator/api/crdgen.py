"""Generate the CRD YAML and docs/api.md from the pydantic models (`make crds`).

pydantic emits JSON Schema 2020-12 (`$ref`/`$defs`, `anyOf` with null for optional fields,
numeric `exclusiveMinimum`, titles); Kubernetes wants a structural OpenAPI v3 schema. The
normaliser below inlines references, drops nullability (optional = not required), turns the
2020-12 forms into their OpenAPI 3.0 spellings, and refuses any field without a description,
so `kubectl explain` documents the whole API.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from .base import ApiModel
from .kinds import API_VERSION, CATEGORY, GROUP, KINDS, VERSION, Kind

_DROP_KEYS = {"title", "$defs", "discriminator"}


class SchemaError(ValueError):
    pass


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $ref / single-element allOf / nullable anyOf into one node."""
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        target.update(node)  # the field's own description/default win over the model's
        node = _resolve(target, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = _resolve(node.pop("allOf")[0], defs)
        inner.update(node)
        node = inner
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"cannot express union {node['anyOf']} structurally")
        node.pop("anyOf")
        inner = _resolve(options[0], defs)
        inner.update(node)
        node = inner
    return node


def _normalise(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        out[key] = value

    if "x-kubernetes-int-or-string" in out:
        return out
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out.setdefault("type", "object")
        return out
    kind = out.get("type")
    if kind is None:
        raise SchemaError(f"{path}: no type (structural schemas need one on every node)")
    if kind == "object":
        if out.get("additionalProperties") is False:
            out.pop("additionalProperties")
        props = out.get("properties")
        if props:
            normalised = {}
            for name, sub in props.items():
                sub_path = f"{path}.{name}"
                normalised[name] = _normalise(sub, defs, sub_path)
                if not normalised[name].get("description"):
                    raise SchemaError(f"{sub_path}: every field needs a description")
            out["properties"] = normalised
            if out.get("default") == {}:
                # The server validates a default against the node's CEL rules as written, without
                # applying the children's defaults first: spell them out.
                out["default"] = {k: v["default"] for k, v in normalised.items() if "default" in v}
        elif isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = _normalise(out["additionalProperties"], defs, f"{path}[*]")
    elif kind == "array":
        out["items"] = _normalise(out["items"], defs, f"{path}[]")
        if "maxItems" not in out:
            raise SchemaError(f"{path}: lists need maxItems (CEL cost and etcd size)")
    elif kind == "string" and "maxLength" not in out and "enum" not in out and "format" not in out:
        raise SchemaError(f"{path}: strings need maxLength")
    if kind == "string" and out.get("format") == "date-time" and path.startswith(".spec"):
        out.setdefault("x-kubernetes-validations", []).append(DATE_TIME_RULE)
    return out


DATE_TIME_RULE = {"rule": "self >= timestamp('1970-01-01T00:00:00Z')",
                  "message": "must be a date-time like 2027-12-31T00:00:00Z (RFC 3339, UTC or with an offset)"}
"""On every date-time in a spec. kube-apiserver 1.36 stores a list of strings (["x"]) in a field of
type string and format date-time without a word; the object then breaks server-side apply (every
status write to it answers 500). A CEL rule types the value and refuses the list, naming the field
(found by the fuzz suite, tests/fuzz)."""


_KEY_ORDER = ("description", "type", "format", "enum", "default")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Readable YAML: description and type first, nested schemas last."""
    nested = ("items", "additionalProperties", "properties")
    keys = [k for k in _KEY_ORDER if k in node]
    keys += sorted(k for k in node if k not in _KEY_ORDER and k not in nested)
    keys += [k for k in nested if k in node]
    out = {}
    for key in keys:
        value = node[key]
        if key == "properties":
            value = {name: _ordered(sub) for name, sub in value.items()}
        elif key in nested and isinstance(value, dict):
            value = _ordered(value)
        out[key] = value
    return out


def openapi_schema(model: type[ApiModel], path: str, description: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    raw["description"] = description
    return _ordered(_normalise(raw, raw.get("$defs", {}), path))


def crd_for(kind: Kind) -> dict[str, Any]:
    spec_schema = openapi_schema(kind.spec, ".spec", f"Desired state of the {kind.kind}.")
    status_schema = openapi_schema(kind.status, ".status", f"Observed state of the {kind.kind}, written by the operator.")
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object: flareop.io/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind of this object: {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if kind.root_rules:
        root["x-kubernetes-validations"] = [r.to_schema() for r in kind.root_rules]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "flare-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.columns),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `make crds` from operator/flare_operator/api/ - do not edit by hand.\n"


def render_crd(kind: Kind) -> str:
    return HEADER + yaml.safe_dump(crd_for(kind), sort_keys=False, width=120)


# --- docs/api.md ----------------------------------------------------------------------------------


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity"
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    kind = node.get("type", "")
    if kind == "array":
        return f"[]{_type_of(node['items'])}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    if node.get("format") == "date-time":
        return "timestamp"
    return kind


def _constraints(node: dict[str, Any]) -> list[str]:
    notes = []
    if "enum" in node:
        notes.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, label in (("minimum", ">="), ("maximum", "<=")):
        if key in node:
            excl = node.get("exclusiveM" + key[1:])
            notes.append(f"{label.replace('=', '') if excl else label} {node[key]}")
    if "maxLength" in node:
        notes.append(f"max length {node['maxLength']}")
    if "maxItems" in node:
        notes.append(f"max {node['maxItems']} items")
    if "pattern" in node and not node.get("x-kubernetes-int-or-string"):
        notes.append(f"pattern `{node['pattern']}`")
    for rule in node.get("x-kubernetes-validations", []):
        notes.append(f"rule: {rule['message']}")
    return notes


def _rows(node: dict[str, Any], prefix: str, required: set[str]) -> list[str]:
    rows = []
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}"
        default = f"`{yaml.safe_dump(sub['default'], default_flow_style=True).strip()}`" if "default" in sub else ""
        req = "yes" if name in required else ""
        notes = "; ".join(_constraints(sub))
        desc = sub.get("description", "").replace("|", "\\|").replace("\n", " ")
        notes = notes.replace("|", "\\|")
        rows.append(f"| `{path}` | {_type_of(sub)} | {req} | {default} | {desc}{' — ' + notes if notes else ''} |")
        child = sub["items"] if sub.get("type") == "array" else sub
        if child.get("properties"):
            child_prefix = f"{path}[]" if sub.get("type") == "array" else path
            rows.extend(_rows(child, child_prefix, set(child.get("required", []))))
    return rows


def render_api_doc() -> str:
    lines = [
        "# API reference: flareop.io/v1alpha1",
        "",
        "Generated by `make crds` from `operator/flare_operator/api/` - do not edit by hand.",
        "Every kind is namespaced, in category `flare` (`kubectl get flare`), with a status subresource.",
        "Conditions follow metav1.Condition; their types and reasons are listed in "
        "`operator/flare_operator/api/conditions.py`.",
        "",
    ]
    for kind in KINDS:
        crd = crd_for(kind)
        version = crd["spec"]["versions"][0]
        root = version["schema"]["openAPIV3Schema"]
        lines += [
            f"## {kind.kind}",
            "",
            f"{kind.description}",
            "",
            f"- lives on the **{kind.side}**; `kubectl get {kind.plural}` (short: {', '.join(kind.short_names)})",
            f"- columns: {', '.join(c['name'] for c in version['additionalPrinterColumns'])}",
        ]
        for rule in root.get("x-kubernetes-validations", []):
            lines.append(f"- rule: {rule['message']}")
        for part in ("spec", "status"):
            node = root["properties"][part]
            lines += ["", f"### {kind.kind} {part}", "", "| field | type | required | default | description |",
                      "|---|---|---|---|---|"]
            for rule in node.get("x-kubernetes-validations", []):
                lines.append(f"| `.{part}` | object | | | rule: {rule['message']} |")
            lines.extend(_rows(node, f".{part}", set(node.get("required", []))))
        lines.append("")
    return "\n".join(lines)


def generated_files(repo_root: Path) -> dict[Path, str]:
    files = {repo_root / "crds" / f"{k.crd_name}.yaml": render_crd(k) for k in KINDS}
    files[repo_root / "docs" / "api.md"] = render_api_doc()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files differ")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_files(args.root).items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(args.root)}")
    if stale:
        print("stale generated files (run `make crds`): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["API_VERSION", "crd_for", "generated_files", "main", "openapi_schema", "render_crd"]
