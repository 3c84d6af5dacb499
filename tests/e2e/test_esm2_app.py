"""esm2-finetune as a real NVFlare federation: simulator and provisioned POC processes, 2 sites.

Seeded and deterministic (except DP noise): thresholds are far from the observed values.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, PocFederation, build_job_dir, load_metrics, run_simulator, submit_and_wait

pytestmark = pytest.mark.e2e

SITES = ["site-1", "site-2"]
CHANCE = 0.1  # 10 classes
FULL = {"mode": "full", "rounds": 3, "localSteps": 25}
SAMPLE_DP_EPSILON = 8.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, e2e_data):
    """The simulator runs the tests compare: full, the same with DP, and LoRA."""
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            work = tmp_path_factory.mktemp(f"sim-{kind}")
            privacy = None
            params = dict(FULL)
            if kind == "dp":
                privacy = {
                    "differentialPrivacy": {
                        "enabled": True,
                        "clipNorm": 1.0,
                        "noiseMultiplier": 1.0,
                        "delta": 1e-5,
                    }
                }
            elif kind == "sample-dp":
                params = {"mode": "lora", "rounds": 2, "localSteps": 5, "lora": {"r": 4}}
                privacy = {"differentialPrivacy": {"enabled": True, "level": "sample", "epsilon": SAMPLE_DP_EPSILON,
                                                   "clipNorm": 1.0, "delta": 1e-5}}
            elif kind == "lora":
                params = {"mode": "lora", "rounds": 2, "localSteps": 5, "lora": {"r": 4}}
            aggregation = {"weighting": "capped", "maxShare": 0.5} if kind == "lora" else None
            job = build_job_dir(
                work / "jobs", params, e2e_data, f"esm2-{kind}", privacy=privacy, aggregation=aggregation
            )
            cache[kind] = run_simulator(job, work, SITES)
        return cache[kind]

    return get


def _global_acc(entry):
    return entry["global"]["val_accuracy"]


def test_simulator_full_finetuning_learns(runs):
    res = runs("full")
    m = load_metrics(res)
    assert m["status"] == "completed"
    assert len(m["history"]) == 3
    first, final = _global_acc(m["history"][0]), m["final"]["global"]["val_accuracy"]
    # round 0 evaluates the untrained initial model: about chance
    assert final > 0.25 > CHANCE, m["final"]["global"]
    assert final > first + 0.1, (first, final)
    # per-site fairness view: every site reports holdout accuracy and macro-F1 per round
    for entry in m["history"] + [m["final"]]:
        assert set(entry["sites"]) == set(SITES)
        for s in SITES:
            assert 0 <= entry["sites"][s]["val_accuracy"] <= 1
            assert 0 <= entry["sites"][s]["val_macro_f1"] <= 1
    for entry in m["history"]:
        for s in SITES:
            assert math.isfinite(entry["sites"][s]["train_loss"])
            assert entry["sites"][s]["steps"] == 25
    # sample-count weighting
    w = m["history"][-1]["sites"]
    n = {s: w[s]["train_samples"] for s in SITES}
    assert w["site-1"]["aggregation_weight"] == pytest.approx(n["site-1"] / sum(n.values()))
    # results written by the server side
    assert (res / "model" / "model.safetensors").stat().st_size > 0
    assert (res / "global_trainable.safetensors").exists()
    assert list((res / "tensorboard").glob("events.out.tfevents.*"))
    card = (res / "MODEL_CARD.md").read_text()
    for s in SITES:
        assert s in card
    assert "no differential privacy" in card


def test_final_model_loads_with_transformers(runs):
    from transformers import EsmForSequenceClassification

    res = runs("full")
    model = EsmForSequenceClassification.from_pretrained(res / "model")
    assert model.config.num_labels == 10
    assert model.config.id2label[9] == "Peroxisome"


def test_dp_run_reports_finite_epsilon_and_differs(runs):
    dp, plain = runs("dp"), runs("full")
    m = load_metrics(dp)
    assert m["status"] == "completed"
    prev = {s: 0.0 for s in SITES}
    for entry in m["history"]:
        for s in SITES:
            eps = entry["sites"][s]["dp_epsilon"]
            assert math.isfinite(eps) and eps > prev[s]
            prev[s] = eps
            assert entry["sites"][s]["dp_rounds"] == entry["round"] + 1
    assert set(m["epsilon_spent"]) == set(SITES)
    card = (dp / "MODEL_CARD.md").read_text()
    assert "client-level Gaussian DP" in card and f"{m['epsilon_spent']['site-1']:.3f}" in card
    # same seed, data and schedule: only the DP noise/clipping differs
    from safetensors.numpy import load_file

    a, b = (
        load_file(str(dp / "global_trainable.safetensors")),
        load_file(str(plain / "global_trainable.safetensors")),
    )
    assert a.keys() == b.keys()
    assert any(not np.allclose(a[k], b[k]) for k in a)
    pm = load_metrics(plain)
    assert pm["history"][0]["global"]["val_accuracy"] == pytest.approx(
        m["history"][0]["global"]["val_accuracy"]
    )


def test_sample_level_dp_trains_inside_each_site_within_its_epsilon(runs):
    """DP-SGD (Opacus) in each site's client process through NVFlare: every round reports the site's
    epsilon so far, growing, never above the job's target; the model card says which level ran."""
    run = runs("sample-dp")
    m = load_metrics(run)
    assert m["status"] == "completed"
    prev = {s: 0.0 for s in SITES}
    for entry in m["history"]:
        for s in SITES:
            site = entry["sites"][s]
            assert site["dp_level"] == "sample" and site["dp_steps"] == 5 * (entry["round"] + 1)
            assert prev[s] < site["dp_epsilon"] <= SAMPLE_DP_EPSILON
            prev[s] = site["dp_epsilon"]
    assert set(m["epsilon_spent"]) == set(SITES)
    assert "sample-level DP (DP-SGD at each site)" in (run / "MODEL_CARD.md").read_text()


def test_lora_sends_fewer_bytes_than_full(runs):
    lora, full = load_metrics(runs("lora")), load_metrics(runs("full"))
    assert lora["status"] == "completed" and len(lora["history"]) == 2
    for s in SITES:
        lb = lora["history"][-1]["sites"][s]["bytes_sent"]
        fb = full["history"][-1]["sites"][s]["bytes_sent"]
        assert 0 < lb < fb
        assert lora["history"][-1]["sites"][s]["bytes_received_by_server"] == lb
    assert lora["parameters"]["trainable"] < full["parameters"]["trainable"]
    # capped weighting at 0.5 with 2 unequal sites: both exactly at the cap
    for s in SITES:
        assert lora["history"][-1]["sites"][s]["aggregation_weight"] == pytest.approx(0.5)
    assert lora["history"][0]["bytes_sent_to_each_site"] < full["history"][0]["bytes_sent_to_each_site"]


def test_resume_from_last_global_checkpoint(runs, tmp_path, e2e_data):
    """What the job controller does after a server restart: resubmit from the last global checkpoint."""
    full = runs("full")
    fm = load_metrics(full)
    ckpt = full / "global_trainable.safetensors"
    job = build_job_dir(
        tmp_path / "jobs",
        {**FULL, "rounds": 4, "localSteps": 5},
        e2e_data,
        "esm2-resume",
        resume={"checkpoint": str(ckpt), "startRound": fm["last_completed_round"] + 1},
    )
    m = load_metrics(run_simulator(job, tmp_path, SITES))
    assert m["status"] == "completed" and [h["round"] for h in m["history"]] == [3]
    assert m["resumed_from"]["round"] == 3
    # the first resumed round evaluates exactly the checkpointed global model
    assert m["history"][0]["global"]["val_accuracy"] == pytest.approx(fm["final"]["global"]["val_accuracy"])


def test_poc_provisioned_federation(tmp_path, e2e_data):
    """Provisioned server + 2 clients as real processes, job submitted through the FLARE API."""
    job = build_job_dir(
        tmp_path / "jobs",
        {"mode": "full", "rounds": 2, "localSteps": 20},
        e2e_data,
        "esm2-poc",
        metadata={"contentHash": "sha256:test"},
    )
    fed = PocFederation(tmp_path / "poc", SITES)
    try:
        fed.start()
        out = submit_and_wait(fed, job, token="esm2-poc-e2e")
    finally:
        fed.stop()
    metrics = list(out.rglob("results/metrics.json"))
    assert metrics, f"no metrics.json under {out}: {sorted(str(p) for p in out.rglob('*'))[:50]}"
    m = json.loads(metrics[0].read_text())
    assert m["status"] == "completed" and len(m["history"]) == 2
    assert m["job"]["metadata"] == {"contentHash": "sha256:test"}
    assert m["final"]["global"]["val_accuracy"] > m["history"][0]["global"]["val_accuracy"]
    assert (metrics[0].parent / "model" / "model.safetensors").exists()


def test_pretrained_checkpoint_loading(tmp_path):
    """The real from_pretrained path, on a checkpoint this test saves (no download)."""
    sys.path[:0] = [str(REPO / "flare_apps/esm2-finetune/custom"), str(REPO / "flare_apps/_shared")]
    import torch
    from esm2_app.modeling import ModelError, apply_mode, build_model, esm_config, get_trainable
    from transformers import EsmForMaskedLM

    torch.manual_seed(123)
    mlm = EsmForMaskedLM(esm_config("tiny", 10))  # what a facebook/esm2_* snapshot holds: an MLM checkpoint
    ckpt = tmp_path / "esm2_ckpt"
    mlm.save_pretrained(ckpt)
    model = build_model("tiny", 10, pretrained_path=str(ckpt), seed=0)
    ref = mlm.esm.encoder.layer[0].attention.self.query.weight
    assert torch.equal(model.esm.encoder.layer[0].attention.self.query.weight, ref)
    head = apply_mode(model, "head")
    assert set(get_trainable(head)) == {n for n, _ in model.named_parameters() if n.startswith("classifier.")}
    last = apply_mode(build_model("tiny", 10, pretrained_path=str(ckpt), seed=0), "lastN", last_n=1)
    names = set(get_trainable(last))
    assert any(n.startswith("esm.encoder.layer.1.") for n in names)
    assert not any(n.startswith("esm.encoder.layer.0.") for n in names)
    assert any(n.startswith("classifier.") for n in names)
    with pytest.raises(ModelError, match="expects hidden=320"):
        build_model("8M", 10, pretrained_path=str(ckpt))
    with pytest.raises(ModelError, match="needs pretrainedPath"):
        build_model("35M", 10)
    with pytest.raises(ModelError, match="not a directory"):
        build_model("8M", 10, pretrained_path=str(tmp_path / "nope"))
