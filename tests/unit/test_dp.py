"""Client-level Gaussian DP: clipping, noise, and the dp-accounting epsilon."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flare_apps" / "_shared"))

from flare_app_common.dp import clip_and_noise, epsilon_spent  # noqa: E402


def test_epsilon_single_gaussian_release_is_in_the_textbook_range():
    # sigma = 1, delta = 1e-5: the analytic Gaussian mechanism gives ~4.4; RDP is a little looser
    eps = epsilon_spent(1.0, 1, 1e-5, "rdp")
    assert 4.0 < eps < 6.0
    pld = epsilon_spent(1.0, 1, 1e-5, "pld")
    assert 4.0 < pld <= eps + 1e-6


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    e = [epsilon_spent(2.0, r, 1e-5) for r in (1, 2, 5, 10)]
    assert all(a < b for a, b in zip(e, e[1:], strict=False))
    assert epsilon_spent(4.0, 5, 1e-5) < epsilon_spent(2.0, 5, 1e-5) < epsilon_spent(1.0, 5, 1e-5)
    # composition is sub-linear under RDP
    assert e[3] < 10 * e[0]


def test_epsilon_edge_cases():
    assert epsilon_spent(1.0, 0, 1e-5) == 0.0
    assert math.isinf(epsilon_spent(0.0, 3, 1e-5))
    with pytest.raises(ValueError, match="delta"):
        epsilon_spent(1.0, 1, 0.0)
    with pytest.raises(ValueError, match="accountant"):
        epsilon_spent(1.0, 1, 1e-5, "moments")


def test_clip_without_noise_scales_to_the_bound():
    upd = {"a": np.full((10,), 3.0, dtype=np.float32), "b": np.full((2, 5), 4.0, dtype=np.float32)}
    out, norm = clip_and_noise(upd, 1.0, 0.0, np.random.default_rng(0))
    assert norm == pytest.approx(math.sqrt(10 * 9 + 10 * 16))
    total = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in out.values()))
    assert total == pytest.approx(1.0, rel=1e-5)
    assert out["a"].dtype == np.float32 and out["b"].shape == (2, 5)
    # direction preserved
    assert out["a"][0] / out["b"][0, 0] == pytest.approx(3 / 4)


def test_small_update_is_not_scaled_up():
    upd = {"a": np.array([0.1, 0.0], dtype=np.float32)}
    out, norm = clip_and_noise(upd, 1.0, 0.0, np.random.default_rng(0))
    assert np.allclose(out["a"], upd["a"]) and norm == pytest.approx(0.1)


def test_noise_has_the_configured_std():
    upd = {"w": np.zeros(200_000, dtype=np.float32)}
    out, _ = clip_and_noise(upd, 0.5, 2.0, np.random.default_rng(1))
    assert float(np.std(out["w"])) == pytest.approx(1.0, rel=0.02)  # noise_multiplier * clip_norm
    assert abs(float(np.mean(out["w"]))) < 0.01


def test_nvflare_filter_clips_noises_and_reports_epsilon():
    from flare_app_common.filters import GaussianDPFilter
    from nvflare.apis.dxo import DXO, DataKind, from_shareable
    from nvflare.apis.fl_context import FLContext

    f = GaussianDPFilter(clip_norm=1.0, noise_multiplier=1.5, delta=1e-5)
    eps = []
    for _ in range(3):
        dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": np.full(1000, 1.0, dtype=np.float32)})
        out = from_shareable(f.process(dxo.to_shareable(), FLContext()))
        assert out.data["w"].shape == (1000,)
        assert not np.allclose(out.data["w"], 1.0)
        assert out.meta["dp_update_norm"] == pytest.approx(math.sqrt(1000))
        eps.append(out.meta["dp_epsilon"])
    assert eps == pytest.approx([epsilon_spent(1.5, r, 1e-5) for r in (1, 2, 3)])
    assert out.meta["dp_rounds"] == 3


def test_nvflare_filter_rejects_full_weights():
    from flare_app_common.filters import GaussianDPFilter
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_context import FLContext

    f = GaussianDPFilter()
    dxo = DXO(DataKind.WEIGHTS, data={"w": np.ones(3, dtype=np.float32)})
    res = f.process(dxo.to_shareable(), FLContext())
    # fail closed: full weights cannot be clipped as an update, so nothing is released
    assert res.get_return_code() == "EXECUTION_EXCEPTION"
    assert "DXO" not in res


def test_operator_side_expected_epsilon_matches_the_app_accountant():
    from flare_operator.catalog import expected_epsilon

    assert expected_epsilon(None, 5) is None
    priv = {"differentialPrivacy": {"enabled": True, "noiseMultiplier": 1.3, "delta": 1e-6}}
    assert expected_epsilon(priv, 7) == pytest.approx(epsilon_spent(1.3, 7, 1e-6, "rdp"))


def test_sample_level_noise_is_calibrated_for_the_whole_job():
    """DP-SGD: the calibrated noise keeps epsilon after every planned step at or below the target,
    and a little less noise would not."""
    from flare_app_common.dp import calibrate_sample_noise_multiplier, sample_epsilon_spent

    for target, q, steps in ((8.0, 16 / 300, 60), (1.0, 0.05, 40), (3.0, 0.5, 6)):
        z = calibrate_sample_noise_multiplier(target, q, steps, 1e-5)
        assert sample_epsilon_spent(z, q, steps, 1e-5) <= target
        assert sample_epsilon_spent(z * 0.98, q, steps, 1e-5) > target * 0.99
        spent = [sample_epsilon_spent(z, q, k, 1e-5) for k in range(0, steps + 1, max(1, steps // 4))]
        assert spent[0] == 0 and all(a < b for a, b in zip(spent, spent[1:], strict=False))
    # subsampling amplifies: the same noise over the same steps costs less at a lower sampling rate
    assert sample_epsilon_spent(1.0, 0.01, 50, 1e-5) < sample_epsilon_spent(1.0, 0.1, 50, 1e-5)
    with pytest.raises(ValueError, match="sample_rate"):
        sample_epsilon_spent(1.0, 0.0, 5, 1e-5)
