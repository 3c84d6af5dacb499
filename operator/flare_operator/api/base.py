"""The base of every API model: camelCase on the wire, and validation rules declared once.

A `CelRule` is written once and enforced twice: the CRD generator emits it as an
`x-kubernetes-validations` entry (the API server enforces it), and `ApiModel` runs its Python
twin when a model is parsed (the SDK and the operator see the same message before anything
reaches the server). Transition rules (`oldSelf`) have no Python twin: only the server sees the
old object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class CelRule:
    """One single-object validation rule, with the message a person can act on.

    rule: the CEL expression (`self` is the object the rule is attached to).
    message: shown by the API server, and by pydantic when `check` fails.
    check: the Python twin of `rule`; None for transition rules that need `oldSelf`.
    field_path: JSONPath (relative to `self`) the server reports the error under.
    reason: FieldValueInvalid (default), FieldValueForbidden, FieldValueRequired, FieldValueDuplicate.
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None
    reason: str | None = None

    @property
    def is_transition(self) -> bool:
        return "oldSelf" in self.rule

    def to_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def immutable(message: str) -> CelRule:
    """`self == oldSelf`: the field may be set at creation and never changed."""
    return CelRule(rule="self == oldSelf", message=message)


def validations(*rules: CelRule) -> dict[str, Any]:
    """json_schema_extra for a field whose own schema node carries the rules (no Python twin)."""
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}


def _attach_cel_rules(schema: dict[str, Any], model_cls: type) -> None:
    rules = getattr(model_cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in rules]


class ApiModel(BaseModel):
    """Every spec/status model: camelCase aliases, unknown fields refused, CEL twins checked."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
        use_enum_values=True,
        json_schema_extra=_attach_cel_rules,
    )

    # Rules attached to this object's schema node (see CelRule).
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_twins(self):
        failed = [r.message for r in type(self).cel_rules if r.check is not None and not r.check(self)]
        if failed:
            raise ValueError("; ".join(failed))
        return self

    @classmethod
    def own_fields(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        """The entries of `data` this model declares: a status may carry fields written by others
        (Kopf, a person), which must neither fail parsing nor count as our change."""
        aliases = {f.alias or name for name, f in cls.model_fields.items()}
        return {k: v for k, v in (data or {}).items() if k in aliases}

    def to_wire(self) -> dict[str, Any]:
        """The JSON the API server stores: camelCase, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
