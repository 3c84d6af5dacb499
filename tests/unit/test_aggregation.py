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


def _controller(weighting="sample"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flare_apps" / "esm2-finetune" / "custom"))
    from esm2_app.controller import Esm2FedAvg

    return Esm2FedAvg(
        params={"preset": "tiny", "mode": "full"}, sites=["a", "b"], aggregation={"weighting": weighting}
    )


def _result(site, params, **metrics):
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    return FLModel(params=params, params_type=ParamsType.DIFF, metrics=metrics, meta={"client_name": site})


def test_server_applies_weighted_mean_of_differences():
    import numpy as np

    ctl = _controller()
    g = {"w": np.array([1.0, 1.0], dtype=np.float32), "h": np.zeros(3, dtype=np.float32)}
    res = [
        _result("a", {"w": np.array([2.0, 0.0], dtype=np.float32), "h": np.ones(3, dtype=np.float32)}),
        # site b's filter excluded "h" (ExcludeVars): h averages over the sites that sent it
        _result("b", {"w": np.array([-2.0, 4.0], dtype=np.float32)}),
    ]
    new = ctl._aggregate(g, res, {"a": 0.75, "b": 0.25})
    assert new["w"] == pytest.approx([1.0 + 0.75 * 2 - 0.25 * 2, 1.0 + 0.25 * 4])
    assert new["h"] == pytest.approx([1.0, 1.0, 1.0])
    assert new["w"].dtype == np.float32
    # a tensor no site sent keeps its global value
    new2 = ctl._aggregate({"z": np.ones(2, dtype=np.float32)}, res, {"a": 0.5, "b": 0.5})
    assert new2["z"] == pytest.approx([1.0, 1.0])


def test_server_pools_confusion_matrices_for_global_metrics():
    ctl = _controller()
    per_site = {
        "a": {"val_confusion": [[8, 2], [0, 0]], "val_accuracy": 0.8, "train_loss": 1.0, "train_samples": 30},
        "b": {"val_confusion": [[0, 0], [5, 5]], "val_accuracy": 0.5, "train_loss": 2.0, "train_samples": 10},
    }
    g = ctl._global_eval(per_site)
    assert g["val_accuracy"] == pytest.approx(13 / 20)
    assert g["val_accuracy_min_site"] == 0.5 and g["val_accuracy_max_site"] == 0.8
    assert g["train_loss"] == pytest.approx((30 * 1.0 + 10 * 2.0) / 40)
