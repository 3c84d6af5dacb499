"""Job-level settings shared by every app: privacy (DP + NVFlare filters) and aggregation weighting."""

from __future__ import annotations

from collections.abc import Mapping

from .loader import validate_against

PRIVACY_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "differentialPrivacy": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": False},
                "level": {"enum": ["client", "sample"], "default": "client"},
                "epsilon": {"description": "sample level: the target epsilon each site calibrates its noise to",
                            "type": "number", "exclusiveMinimum": 0},
                "clipNorm": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
                "noiseMultiplier": {"type": "number", "minimum": 0, "default": 1.0},
                "delta": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 1e-5},
                "accountant": {"enum": ["rdp", "pld"], "default": "rdp"},
            },
        },
        "filters": {
            "description": "NVFlare's own result filters, applied at every site after DP, in order",
            "type": "array",
            "default": [],
            "items": {
                "type": "object",
                "required": ["type"],
                "additionalProperties": False,
                "properties": {
                    "type": {"enum": ["ExcludeVars", "PercentilePrivacy", "SVTPrivacy"]},
                    "args": {"type": "object", "default": {}},
                },
                "allOf": [
                    {
                        "if": {"properties": {"type": {"const": "ExcludeVars"}}},
                        "then": {
                            "properties": {
                                "args": {
                                    "additionalProperties": False,
                                    "properties": {"exclude_vars": {"type": ["string", "array"]}},
                                }
                            }
                        },
                    },
                    {
                        "if": {"properties": {"type": {"const": "PercentilePrivacy"}}},
                        "then": {
                            "properties": {
                                "args": {
                                    "additionalProperties": False,
                                    "properties": {
                                        "percentile": {"type": "integer", "minimum": 0, "maximum": 100},
                                        "gamma": {"type": "number", "exclusiveMinimum": 0},
                                    },
                                }
                            }
                        },
                    },
                    {
                        "if": {"properties": {"type": {"const": "SVTPrivacy"}}},
                        "then": {
                            "properties": {
                                "args": {
                                    "additionalProperties": False,
                                    "properties": {
                                        "fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                        "epsilon": {"type": "number", "exclusiveMinimum": 0},
                                        "noise_var": {"type": "number", "exclusiveMinimum": 0},
                                        "gamma": {"type": "number", "exclusiveMinimum": 0},
                                        "tau": {"type": "number"},
                                        "optimize_vars_only": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                ],
            },
        },
    },
}

AGGREGATION_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "weighting": {
            "description": "sample = FedAvg by training-sample count; uniform = equal; capped = by samples, no site above maxShare",
            "enum": ["sample", "uniform", "capped"],
            "default": "sample",
        },
        "maxShare": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5},
    },
}


def validate_privacy(privacy: Mapping | None) -> dict:
    return validate_against(PRIVACY_SCHEMA, privacy or {}, "privacy")


def validate_aggregation(aggregation: Mapping | None, n_sites: int | None = None) -> dict:
    out = validate_against(AGGREGATION_SCHEMA, aggregation or {}, "aggregation")
    if n_sites and out["weighting"] == "capped" and out["maxShare"] * n_sites < 1 - 1e-9:
        from .loader import ParamError, ParameterError

        raise ParameterError(
            "aggregation",
            [
                ParamError(
                    "$.maxShare",
                    f"{out['maxShare']} is infeasible for {n_sites} sites (needs >= {1 / n_sites:.4f})",
                )
            ],
        )
    return out
