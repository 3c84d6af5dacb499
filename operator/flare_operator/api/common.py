"""Types shared by several kinds: quantities, conditions, references, resources."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from .base import ApiModel, CelRule

# --- Kubernetes resource quantities -------------------------------------------------------------
# Parsed here rather than with kubernetes.utils.parse_quantity: importing that module pulls the
# whole Kubernetes client into api/, which must stay free of it (see the layering contract).

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}


def parse_quantity(value: str | int | float) -> Decimal:
    """'500m' -> 0.5, '4Gi' -> 4294967296; ValueError with the accepted forms otherwise."""
    text = str(value).strip()
    if not _QUANTITY_RE.match(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (examples: 500m, 2, 4Gi, 1.5G)")
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    if text[-1] in _DECIMAL and not text[-1].isdigit():
        return Decimal(text[:-1]) * _DECIMAL[text[-1]]
    return Decimal(text)


def _normalise_quantity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a quantity such as 500m, 2 or 4Gi")
    parse_quantity(value)
    return str(value)


def _positive_quantity(value: str) -> str:
    if parse_quantity(value) <= 0:
        raise ValueError(f"{value} must be a positive quantity, like 500m, 2 or 4Gi")
    return value


POSITIVE_QUANTITY_RULE = CelRule(
    rule="isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
    message="must be a positive quantity, like 500m, 2 or 4Gi",
)

_QUANTITY_SCHEMA = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": QUANTITY_PATTERN,
    "x-kubernetes-int-or-string": True,
}

Quantity = Annotated[str, BeforeValidator(_normalise_quantity), WithJsonSchema(_QUANTITY_SCHEMA)]
PositiveQuantity = Annotated[
    str,
    BeforeValidator(_normalise_quantity),
    AfterValidator(_positive_quantity),
    WithJsonSchema({**_QUANTITY_SCHEMA, "x-kubernetes-validations": [POSITIVE_QUANTITY_RULE.to_schema()]}),
]

# --- names ---------------------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

OrgName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
DatasetId = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
ModelId = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
SEMVER_PATTERN = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
Semver = Annotated[str, Field(min_length=5, max_length=64, pattern=SEMVER_PATTERN)]
ContentHash = Annotated[str, Field(min_length=71, max_length=71, pattern=r"^sha256:[0-9a-f]{64}$")]
ShortText = Annotated[str, Field(max_length=1024)]
Label = Annotated[str, Field(max_length=63)]
LongText = Annotated[str, Field(max_length=32768)]


class Decision(StrEnum):
    """An org's answer to an AccessRequest."""

    PENDING = "Pending"
    APPROVED = "Approved"
    REJECTED = "Rejected"


class LocalObjectReference(ApiModel):
    name: ObjectName = Field(description="Name of the referenced object in the same namespace.")


class ModelRef(ApiModel):
    id: ModelId = Field(
        description="Model id in the app catalog (flare_apps/<id>/app.yaml), e.g. esm2-finetune. "
        "In flare-operator a model is a catalog app: training code plus its parameter schema."
    )
    version: Semver = Field(description="Exact semantic version of the catalog app, e.g. 1.0.0.")


class ServerResources(ApiModel):
    cpu: PositiveQuantity = Field("1", description="CPU for the NVFlare server (request and limit).")
    memory: PositiveQuantity = Field("2Gi", description="Memory for the NVFlare server (request and limit).")


MAX_GPUS_PER_CLIENT = 8


class ClientResources(ApiModel):
    cpu: PositiveQuantity = Field("2", description="CPU for each site's NVFlare client (request and limit).")
    memory: PositiveQuantity = Field("8Gi", description="Memory for each site's NVFlare client (request and limit).")
    gpu: int = Field(
        0,
        description="GPUs for each site's NVFlare client, 0 to 8 (the site chooses the GPU resource name).",
    )

    cel_rules = (
        CelRule(
            rule=f"self.gpu >= 0 && self.gpu <= {MAX_GPUS_PER_CLIENT}",
            message=f"client gpu must be between 0 and {MAX_GPUS_PER_CLIENT}",
            check=lambda m: 0 <= m.gpu <= MAX_GPUS_PER_CLIENT,
            field_path=".gpu",
        ),
    )


# --- conditions (metav1.Condition) ---------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """The metav1.Condition shape, so kstatus, Argo CD and Flux understand our status."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, e.g. Ready.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field("", max_length=32768, description="Human-readable details about the transition.")
    last_transition_time: datetime = Field(description="When the condition last changed status.")
    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation the condition was computed from."
    )


def conditions_field() -> Any:
    return Field(
        default_factory=list,
        max_length=16,
        description="Current state in the metav1.Condition shape; Ready summarises the others.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def observed_generation_field() -> Any:
    return Field(None, ge=0, description="The .metadata.generation this status was computed from.")
