"""Manifests for the fuzz suite, made from the CRDs' own OpenAPI schemas (crds/*.yaml).

Two sources, both hypothesis strategies:
- `generated(kind)`: specs drawn from the kind's structural schema, converted to JSON Schema for
  hypothesis-jsonschema (types, bounds, patterns, enums, required fields; the CEL rules are left to
  the API server, so many of these are refused there — which is what the suite checks);
- `mutated(kind, base)`: a valid object (the committed sample, pointed at the test's namespaces) with
  one fault at one place: a value of the wrong type, a number or a length just past its bound, text
  outside the Basic Multilingual Plane, a huge string, an unknown field, or a reference to an object
  that does not exist. Each mutation names the field it touched, so a refusal can be checked for
  naming it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from tests.sample_data import CRD_DIR

ASTRAL = "😀𝔘𝕏🧬𐍈𝄞"
"""Characters outside the Basic Multilingual Plane (UTF-16 surrogate pairs)."""
HUGE = 100_000
"""A huge string: far past every maxLength, well inside the API server's 3 MiB request limit."""


def crds() -> dict[str, dict]:
    """kind → its CRD's openAPIV3Schema (the one served version)."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.flareop.io.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out


def json_schema(node: dict) -> dict:
    """A Kubernetes structural schema as JSON Schema: objects with properties take no other keys
    (the API server prunes or, with strict field validation, refuses them), int-or-string is either,
    preserve-unknown-fields objects take maps of scalars; CEL rules and list-map markers dropped."""
    out: dict[str, Any] = {}
    for key in ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
                "maxLength", "pattern", "minItems", "maxItems", "required", "format", "multipleOf"):
        if key in node:
            out[key] = node[key]
    for bound in ("Minimum", "Maximum"):  # OpenAPI 3.0's boolean exclusive bounds, as JSON Schema's numbers
        if out.get(f"exclusive{bound}") is True:
            out[f"exclusive{bound}"] = out.pop(bound.lower())
        elif out.get(f"exclusive{bound}") is False:
            out.pop(f"exclusive{bound}")
    if out.get("format") not in (None, "date-time"):
        out.pop("format")  # only formats hypothesis-jsonschema knows
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer", "minimum": 0, "maximum": 64},
                        {"type": "string", **({"pattern": node["pattern"]} if "pattern" in node else {})}]
        out.pop("pattern", None)
    elif "anyOf" in node:
        out["anyOf"] = [json_schema(n) for n in node["anyOf"]]
    if "properties" in node:
        out["properties"] = {k: json_schema(v) for k, v in node["properties"].items()}
        out["additionalProperties"] = False
    elif node.get("type") == "object":
        if "additionalProperties" in node:
            out["additionalProperties"] = json_schema(node["additionalProperties"])
        else:  # x-kubernetes-preserve-unknown-fields: any map of scalars
            out["additionalProperties"] = {"type": ["string", "number", "boolean"]}
    if "items" in node:
        out["items"] = json_schema(node["items"])
        out.setdefault("maxItems", 4)
        out["maxItems"] = min(out["maxItems"], 4)  # keep objects small; the bounds are tested by mutation
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


@dataclass(frozen=True)
class Mutation:
    """One fault: `kind` (type, bound, astral, huge, unknown, dangling) at `path` (JSON path in spec)."""

    kind: str
    path: tuple[str | int, ...]

    @property
    def field(self) -> str:
        """The path as the API server writes it: spec.datasets[0].org."""
        out = "spec"
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else f".{part}"
        return out

    @property
    def leaf(self) -> str:
        """The last field name on the path (list indexes skipped)."""
        return next((p for p in reversed(self.path) if isinstance(p, str)), "spec")


def leaves(value: Any, schema: dict, path: tuple = ()) -> list[tuple[tuple, dict]]:
    """(path, schema) of every scalar in `value`, found through `schema`."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        out = []
        for key, sub in value.items():
            if key in props:
                out += leaves(sub, props[key], (*path, key))
        return out
    if isinstance(value, list):
        item = schema.get("items") or {}
        return [leaf for i, sub in enumerate(value) for leaf in leaves(sub, item, (*path, i))]
    return [(path, schema)]


def objects(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every object (dict) in `value`, the spec itself first."""
    if isinstance(value, dict):
        return [path, *(p for k, v in value.items() for p in objects(v, (*path, k)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in objects(v, (*path, i))]
    return []


def _set(spec: dict, path: tuple, value: Any) -> None:
    node = spec
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _wrong_type(schema: dict, draw) -> Any:
    types = {"string": "a string", "integer": 7, "number": 0.5, "boolean": True, "array": ["x"], "object": {"a": 1}}
    allowed = {schema.get("type")} | ({"integer", "string"} if schema.get("x-kubernetes-int-or-string") else set())
    if "number" in allowed:
        allowed.add("integer")
    return draw(st.sampled_from([v for t, v in types.items() if t not in allowed]))


def _past_bound(schema: dict, draw) -> Any | None:
    options = []
    if "maximum" in schema:
        options += [schema["maximum"] + 1, 2**63]
    if "minimum" in schema:
        options += [schema["minimum"] - 1, -(2**63)]
    if "maxLength" in schema:
        options.append("a" * (schema["maxLength"] + 1))
    if "minLength" in schema and schema["minLength"] > 0:
        options.append("")
    if "enum" in schema:
        options.append("NotAnEnumValue")
    return draw(st.sampled_from(options)) if options else None


def mutated(kind: str, base: dict, schemas: dict[str, dict], references: dict[tuple, Any]) -> st.SearchStrategy:
    """(object, Mutation) with one fault in `base`'s spec. `references`: path → a value naming an
    object that does not exist (e.g. ("computeSpecRef", "name") → "no-such-compute")."""
    spec_schema = schemas[kind]["properties"]["spec"]

    @st.composite
    def draw_one(draw):
        obj = copy.deepcopy(base)
        spec = obj["spec"]
        fault = draw(st.sampled_from(["type", "bound", "astral", "huge", "unknown", "dangling"]))
        if fault == "dangling" and references:
            path = draw(st.sampled_from(sorted(references, key=str)))
            _set(spec, path, references[path])
            return obj, Mutation(fault, path)
        if fault in ("unknown", "dangling"):
            where = draw(st.sampled_from(objects(spec)))
            name = draw(st.sampled_from(["unknownField", "x" * 70, "sp ace", "dpEnabled"]))
            node = spec
            for part in where:
                node = node[part]
            node[name] = draw(st.sampled_from(["v", 1, True, {"nested": "v"}]))
            return obj, Mutation("unknown", (*where, name))
        path, schema = draw(st.sampled_from(leaves(spec, spec_schema)))
        if fault == "type":
            value = _wrong_type(schema, draw)
        elif fault == "bound":
            value = _past_bound(schema, draw)
            if value is None:
                value, fault = _wrong_type(schema, draw), "type"
        elif fault == "astral":
            value = draw(st.text(alphabet=ASTRAL, min_size=1, max_size=40))
        else:
            value = draw(st.sampled_from(["a", "0", "😀"])) * HUGE
        _set(spec, path, value)
        return obj, Mutation(fault, path)

    return draw_one()


def generated(kind: str, schemas: dict[str, dict]) -> st.SearchStrategy[dict]:
    """Specs drawn from the kind's schema alone."""
    return from_schema(json_schema(schemas[kind]["properties"]["spec"]))
