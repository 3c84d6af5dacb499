"""Aggregation weights: sample-count (FedAvg), uniform, and capped (no site above a share)."""

from __future__ import annotations

from collections.abc import Mapping

WEIGHTINGS = ("sample", "uniform", "capped")


def cap_weights(raw: Mapping[str, float], max_share: float) -> dict[str, float]:
    """Normalise ``raw`` and cap every share at ``max_share`` (water-filling).

    The excess of capped sites is redistributed to the others in proportion to their raw
    weight, repeatedly, until no share exceeds the cap. Needs ``max_share * n >= 1``.
    """
    n = len(raw)
    if n == 0:
        return {}
    if not 0 < max_share <= 1:
        raise ValueError(f"maxShare must be in (0, 1], got {max_share}")
    if max_share * n < 1 - 1e-12:
        raise ValueError(f"maxShare {max_share} is infeasible for {n} sites (needs >= {1 / n:.4f})")
    if any(v < 0 for v in raw.values()):
        raise ValueError("weights must be non-negative")
    total = sum(raw.values())
    if total <= 0:
        return {k: 1.0 / n for k in raw}
    shares = {k: v / total for k, v in raw.items()}
    capped: dict[str, float] = {}
    while True:
        free = {k: v for k, v in shares.items() if k not in capped}
        budget = 1.0 - max_share * len(capped)
        free_total = sum(raw[k] for k in free)
        if free_total <= 0:
            # all remaining sites have zero raw weight: spread the budget evenly
            alloc = {k: budget / len(free) for k in free} if free else {}
        else:
            alloc = {k: budget * raw[k] / free_total for k in free}
        over = [k for k, v in alloc.items() if v > max_share + 1e-12]
        if not over:
            out = dict(alloc)
            out.update({k: max_share for k in capped})
            return {k: out[k] for k in raw}
        for k in over:
            capped[k] = max_share


def aggregation_weights(
    sample_counts: Mapping[str, int], weighting: str = "sample", max_share: float = 1.0
) -> dict[str, float]:
    """Normalised weights per site (sum 1) for the chosen weighting."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; one of {WEIGHTINGS}")
    n = len(sample_counts)
    if n == 0:
        return {}
    if weighting == "uniform":
        return {k: 1.0 / n for k in sample_counts}
    raw = {k: float(max(v, 0)) for k, v in sample_counts.items()}
    if weighting == "sample":
        return cap_weights(raw, 1.0)
    return cap_weights(raw, max_share)
