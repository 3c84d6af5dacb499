"""MLM pretraining of the tiny ESM on the public corpus (esm2_app/pretrain.py): a checkpoint the app
loads through pretrainedPath, as it loads a real ESM2 snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "flare_apps" / "esm2-finetune" / "custom"
sys.path[:0] = [str(APP), str(REPO / "flare_apps" / "_shared")]


def test_pretraining_learns_and_the_app_loads_the_checkpoint(tmp_path):
    from esm2_app.modeling import apply_mode, build_model
    from esm2_app.pretrain import pretrain_mlm

    from flare_operator.datagen import public_corpus

    out = tmp_path / "ckpt"
    report = pretrain_mlm(public_corpus(2000, seed=0), str(out), steps=120, batch_size=32, threads=1)
    assert report["mlm_loss_last"] < report["mlm_loss_first"]  # it learned something of the residue statistics
    assert json.loads((out / "pretrain.json").read_text())["steps"] == 120
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in out.iterdir()}

    from safetensors.numpy import load_file

    saved = load_file(str(out / "model.safetensors"))
    model = build_model("tiny", 10, str(out), seed=0)
    encoder = {k: v.detach().numpy() for k, v in model.state_dict().items() if k.startswith("esm.")}
    shared = [k for k in encoder if k in saved]
    assert len(shared) >= 20 and all(np.array_equal(encoder[k], saved[k]) for k in shared), "encoder from the checkpoint"
    assert apply_mode(model, "head").classifier.dense.weight.requires_grad


def test_cli_refuses_an_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    run = subprocess.run([sys.executable, "-m", "esm2_app.pretrain", "--corpus", str(empty), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=APP, env={"PYTHONPATH": str(APP), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "no sequences" in run.stderr


def test_make_pretrained_builds_once_and_reuses_by_content(tmp_path):
    """hack/pretrained.py (make pretrained): the checkpoint's folder on the last line, built once per
    content key; the same settings again reuse it, other settings build another."""
    env = {"FLARE_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run(*args):
        done = subprocess.run([sys.executable, str(REPO / "hack" / "pretrained.py"), "--corpus", "300", *args],
                              capture_output=True, text=True, env=env, check=True, cwd=REPO)
        return Path(done.stdout.strip().splitlines()[-1]), done.stderr

    first, log = run("--steps", "10")
    assert (first / "model.safetensors").is_file() and "pretraining" in log
    again, log = run("--steps", "10")
    assert again == first and "pretraining" not in log
    other, _ = run("--steps", "12")
    assert other != first and json.loads((other / "pretrain.json").read_text())["steps"] == 12
