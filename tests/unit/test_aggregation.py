"""Aggregation weighting: sample-count (FedAvg), uniform, capped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flare_apps" / "_shared"))

from flare_app_common.weighting import aggregation_weights, cap_weights  # noqa: E402


def test_sample_weighting_is_proportional():
    w = aggregation_weights({"a": 300, "b": 100}, "sample")
    assert w == pytest.approx({"a": 0.75, "b": 0.25})


def test_uniform():
    assert aggregation_weights({"a": 1000, "b": 1, "c": 5}, "uniform") == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    )


def test_capped_caps_the_largest_site_and_redistributes_proportionally():
    w = aggregation_weights({"a": 800, "b": 150, "c": 50}, "capped", max_share=0.5)
    assert w["a"] == pytest.approx(0.5)
    assert w["b"] == pytest.approx(0.5 * 150 / 200)
    assert w["c"] == pytest.approx(0.5 * 50 / 200)
    assert sum(w.values()) == pytest.approx(1)


def test_capped_cascades_when_redistribution_overflows():
    # a capped at 0.4 -> b would get 0.6*60/70 > 0.4, so b is capped too, c gets the rest
    w = cap_weights({"a": 900, "b": 60, "c": 10}, 0.4)
    assert w == pytest.approx({"a": 0.4, "b": 0.4, "c": 0.2})
    assert max(w.values()) <= 0.4 + 1e-12


def test_capped_no_op_when_under_cap():
    assert cap_weights({"a": 1, "b": 1}, 0.5) == pytest.approx({"a": 0.5, "b": 0.5})
    assert cap_weights({"a": 2, "b": 1, "c": 1}, 0.9) == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})


def test_capped_exact_uniform_limit():
    assert cap_weights({"a": 99, "b": 1}, 0.5) == pytest.approx({"a": 0.5, "b": 0.5})


@pytest.mark.parametrize("n", [2, 3, 7])
def test_cap_property_holds_for_many_distributions(n):
    import numpy as np

    rng = np.random.default_rng(n)
    for _ in range(50):
        counts = {f"s{i}": int(c) for i, c in enumerate(rng.integers(0, 1000, size=n))}
        cap = float(rng.uniform(1 / n, 1))
        w = aggregation_weights(counts, "capped", cap)
        assert sum(w.values()) == pytest.approx(1)
        assert max(w.values()) <= cap + 1e-9
        assert min(w.values()) >= 0


def test_errors():
    with pytest.raises(ValueError, match="infeasible for 3 sites"):
        cap_weights({"a": 1, "b": 1, "c": 1}, 0.2)
    with pytest.raises(ValueError, match="unknown weighting"):
        aggregation_weights({"a": 1}, "median")
    with pytest.raises(ValueError, match="non-negative"):
        cap_weights({"a": -1, "b": 1}, 1.0)
    assert aggregation_weights({}, "sample") == {}
    assert aggregation_weights({"a": 0, "b": 0}, "sample") == pytest.approx({"a": 0.5, "b": 0.5})
