"""Sample-level DP in the esm2 app: DP-SGD (Opacus) at one site for the whole job, tiny ESM on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "flare_apps" / "esm2-finetune" / "custom"), str(REPO / "flare_apps" / "_shared")]

TARGET = 4.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from flare_operator.datagen import GeneratorConfig, write_dataset

    out = write_dataset(GeneratorConfig(sites=1, samples_per_site=80, min_len=30, max_len=36, seed=0),
                        tmp_path_factory.mktemp("dp-data"))
    return out["sites"]["site-1"]["path"]


def _trainer(data, mode="full", prior=0, record=None, **params):
    from esm2_app.site import SiteTrainer

    from flare_operator.catalog import load_app, validate_params

    p = validate_params(load_app("esm2-finetune"), {"maxSeqLength": 40, "batchSize": 8, "localSteps": 2,
                                                    "torchThreads": 1, "rounds": 2, "mode": mode, **params})
    dp = {"epsilon": TARGET, "delta": 1e-5, "clip_norm": 1.0, "rounds": 2, "prior_releases": prior}
    return SiteTrainer(p, data, "site-1", sample_dp=dp, privacy_record=record)


@pytest.mark.parametrize("mode", ["full", "head", "lastN", "lora"])
def test_every_mode_trains_under_dp_sgd_and_epsilon_stays_within_the_target(data, mode):
    t = _trainer(data, mode)
    before = t.get_params()
    t.evaluate()  # as the client does each round: the model arrives in eval mode
    reported = [t.train_round(r, 2) for r in range(2)]
    after = t.get_params()
    assert all(not np.array_equal(after[k], before[k]) for k in after), "every exchanged tensor moved"
    eps = [s["dp_epsilon"] for s in reported]
    assert 0 < eps[0] < eps[1] <= TARGET
    assert [s["dp_steps"] for s in reported] == [2, 4] and reported[1]["dp_level"] == "sample"
    assert t.bf16 is False  # DP-SGD in fp32 (opacus#740)


def test_the_noise_is_not_reproducible_from_the_jobs_seed(data):
    """Same seed, data and schedule: without DP two runs agree bit for bit; under DP they must not
    (noise and Poisson draws come from the OS's entropy, not from the public seed)."""
    from esm2_app.site import SiteTrainer

    from flare_operator.catalog import load_app, validate_params

    p = validate_params(load_app("esm2-finetune"), {"maxSeqLength": 40, "batchSize": 8, "localSteps": 2,
                                                    "torchThreads": 1, "mode": "head"})
    plain = [SiteTrainer(p, data, "site-1") for _ in range(2)]
    for t in plain:
        t.train_round(0, 1)
    assert all(np.array_equal(a, b) for a, b in zip(plain[0].get_params().values(), plain[1].get_params().values(),
                                                     strict=True))
    private = [_trainer(data, "head") for _ in range(2)]
    for t in private:
        t.train_round(0, 2)
    assert any(not np.array_equal(a, b) for a, b in zip(private[0].get_params().values(),
                                                         private[1].get_params().values(), strict=True))


def test_a_resumed_job_keeps_counting_the_sites_privacy(data):
    """One round counted by an earlier attempt: this attempt's first round reports what a fresh run
    reports after its second."""
    fresh = _trainer(data, "head")
    second = [fresh.train_round(r, 2) for r in range(2)][1]
    resumed = _trainer(data, "head", prior=1).train_round(1, 2)
    assert resumed["dp_steps"] == second["dp_steps"] == 4
    assert resumed["dp_epsilon"] == pytest.approx(second["dp_epsilon"])


def test_fedprox_is_refused_under_sample_level_dp(data):
    with pytest.raises(ValueError, match="proxMu"):
        _trainer(data, "head", proxMu=0.1)


def test_the_site_records_its_privacy_events_before_each_round_and_they_give_its_epsilon(data, tmp_path):
    """The record the site's gateway composes on its ledger (dp.PRIVACY_RECORD in the client's job
    folder): written before each round's first step, counting that round, so a client killed mid-round
    has used no more than it says; its events give the epsilon the site reports."""
    import json

    from flare_app_common.dp import composed_epsilon

    record = tmp_path / "flareop_privacy.json"
    t = _trainer(data, "head", record=str(record))
    seen = []
    for r in range(2):
        reported = t.train_round(r, 2)
        seen.append(json.loads(record.read_text()))
        assert composed_epsilon(seen[-1]["events"], seen[-1]["delta"]) == pytest.approx(reported["dp_epsilon"])
    assert [r["events"][0]["count"] for r in seen] == [2, 4]
    assert seen[0]["level"] == "sample" and seen[0]["events"][0]["mechanism"] == "PoissonGaussian"
    # a resumed attempt records only its own steps, in its own job folder (the gateway adds them up)
    resumed = tmp_path / "resumed.json"
    t2 = _trainer(data, "head", prior=1, record=str(resumed))
    t2.train_round(1, 2)
    assert json.loads(resumed.read_text())["events"][0]["count"] == 2
