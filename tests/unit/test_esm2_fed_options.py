"""esm2-finetune federation options: server optimizers, lr schedules, kept optimizer state, FedProx."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "flare_apps" / "esm2-finetune" / "custom"), str(REPO / "flare_apps" / "_shared")]

from esm2_app.training import lr_factor  # noqa: E402
from flare_app_common.server_opt import ServerOptimizer  # noqa: E402


def _g():
    return {"a": np.array([1.0, 2.0], dtype=np.float32), "b": np.zeros((2, 2), dtype=np.float32)}


def test_avg_with_lr_1_is_plain_fedavg_bit_for_bit():
    g, d = _g(), {"a": np.array([0.1, -0.3]), "b": np.full((2, 2), 0.25)}
    new = ServerOptimizer().step(g, d)
    for k in g:
        ref = (g[k].astype(np.float64) + d[k]).astype(np.float32)
        assert new[k].dtype == np.float32 and np.array_equal(new[k], ref)


def test_missing_delta_keeps_the_global_value():
    g = _g()
    new = ServerOptimizer("momentum").step(g, {"a": np.array([1.0, 1.0])})
    assert new["b"] is g["b"]


def test_server_lr_scales_the_mean_update():
    new = ServerOptimizer("avg", lr=2.0).step({"a": np.zeros(1, np.float32)}, {"a": np.array([0.5])})
    assert new["a"][0] == pytest.approx(1.0)


def test_momentum_accumulates_updates():
    opt, g = ServerOptimizer("momentum", lr=1.0, momentum=0.5), {"a": np.zeros(1, np.float32)}
    d = {"a": np.array([1.0])}
    g = opt.step(g, d)  # m = 1
    g = opt.step(g, d)  # m = 1.5
    assert g["a"][0] == pytest.approx(2.5)


def test_adam_step_is_about_lr_per_coordinate():
    opt, g = ServerOptimizer("adam", lr=0.01, momentum=0.9, tau=1e-9), {"a": np.zeros(2, np.float32)}
    for _ in range(200):
        g = opt.step(g, {"a": np.array([1e-4, -5.0])})
    # constant pseudo-gradient: m/sqrt(v) -> 1 per coordinate whatever its scale
    assert g["a"][0] == pytest.approx(-g["a"][1], rel=1e-3) and g["a"][0] > 0


@pytest.mark.parametrize("kwargs", [{"kind": "sgd"}, {"lr": 0}, {"momentum": 1.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ServerOptimizer(**kwargs)


def test_lr_schedules():
    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert lr_factor("linear", 25, 100) == pytest.approx(0.75)
    assert all(0 <= lr_factor(s, i, 40) <= 1 for s in ("cosine", "linear") for i in range(50))
    with pytest.raises(ValueError):
        lr_factor("step", 1, 10)


def test_site_schedule_continues_across_rounds_like_one_long_run():
    """A site's round r runs steps r*S..(r+1)*S-1 of the schedule planned over rounds*S steps."""
    from esm2_app import site

    seen = []

    def fake_train_steps(model, stream, steps, lr, device, bf16, wd, *, optimizer, prox_mu, lr_at):
        seen.extend(lr_at(i) for i in range(steps))
        return {"steps": steps}

    t = site.SiteTrainer.__new__(site.SiteTrainer)
    t.p = {"learningRate": 0.1, "localSteps": 4, "rounds": 3, "lrSchedule": "linear", "keepOptimizerState": False}
    t.model, t.stream, t.device, t.bf16, t.optimizer, t.rounds_done, t.dp = None, None, None, False, None, 0, None
    t.train_ds, t.truncated = [], 0
    orig = site.train_steps
    site.train_steps = fake_train_steps
    try:
        for r in range(3):
            t.train_round(r, 3)
    finally:
        site.train_steps = orig
    assert seen == pytest.approx([0.1 * (1 - i / 12) for i in range(12)])


def _tiny_trainer(tmp_path, **params):
    from esm2_app.site import SiteTrainer

    from flare_operator.catalog import load_app, validate_params
    from flare_operator.datagen import GeneratorConfig, write_dataset

    data = write_dataset(
        GeneratorConfig(sites=1, samples_per_site=60, min_len=30, max_len=40, seed=0), tmp_path
    )
    p = validate_params(
        load_app("esm2-finetune"),
        {"maxSeqLength": 48, "batchSize": 8, "localSteps": 3, "torchThreads": 1, **params},
    )
    return SiteTrainer(p, data["sites"]["site-1"]["path"], "site-1")


def test_keep_optimizer_state_carries_adam_moments(tmp_path):
    t = _tiny_trainer(tmp_path, keepOptimizerState=True)
    t.train_round(0, 2)
    opt = t.optimizer
    steps = [float(s["step"]) for s in opt.state.values()]
    t.set_params(t.get_params())
    t.train_round(1, 2)
    assert t.optimizer is opt
    assert [float(s["step"]) for s in opt.state.values()] == [x + 3 for x in steps] == [6.0] * len(steps)
    fresh = _tiny_trainer(tmp_path / "fresh", keepOptimizerState=False)
    fresh.train_round(0, 2)
    assert fresh.optimizer is None  # a fresh AdamW inside every round, nothing kept


def test_fedprox_pulls_towards_the_received_model(tmp_path):
    def drift(mu):
        t = _tiny_trainer(tmp_path / str(mu), proxMu=mu, learningRate=0.01, localSteps=10)
        before = t.get_params()
        stats = t.train_round(0, 1)
        assert math.isfinite(stats["train_loss"]) and stats["train_cpu_seconds"] > 0
        after = t.get_params()
        return math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in after))

    assert drift(10.0) < drift(0.0)
