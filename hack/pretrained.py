"""Build (or reuse) the pretrained tiny ESM2 checkpoint and print its directory on the last line:

    ${FLARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flare-operator}/pretrained/<hash>/

The stand-in for the public ESM2 checkpoints (which cannot be downloaded here): masked-language-model
pretraining (flare_apps/esm2-finetune/custom/esm2_app/pretrain.py) of the ``tiny`` preset on a
public synthetic corpus (``python -m flare_operator.datagen --corpus``: its own random stream, no
sequence shared with any site's data). Jobs load it with ``parameters.pretrainedPath``, as they
would load facebook/esm2_t12_35M_UR50D.

<hash> covers the corpus generator, the pretraining and model code, the vocabulary, this script and
the settings, so a change builds into a new directory and an unchanged tree reuses the old one.
About 2-3 minutes on two cores.

    python hack/pretrained.py [--steps 1500] [--corpus 20000] [--seed 0]     # make pretrained
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "flare_apps" / "esm2-finetune" / "custom"
INPUTS = [
    REPO / "operator" / "flare_operator" / "datagen" / "generator.py",
    APP / "esm2_app" / "pretrain.py",
    APP / "esm2_app" / "modeling.py",
    APP / "esm2_app" / "vocab.txt",
    Path(__file__),
]


def cache_root() -> Path:
    base = os.environ.get("FLARE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flare-operator")
    return Path(base) / "pretrained"


def key(settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in INPUTS:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build(settings: dict, out: Path) -> None:
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        corpus = Path(tmp) / "public-corpus.txt"
        subprocess.run([py, "-m", "flare_operator.datagen", "--corpus", str(settings["corpus"]), "--seed",
                        str(settings["seed"]), "--out", str(corpus)], check=True, stdout=subprocess.DEVNULL)
        ckpt = Path(tmp) / "checkpoint"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([py, "-m", "esm2_app.pretrain", "--corpus", str(corpus), "--out", str(ckpt),
                        "--steps", str(settings["steps"]), "--seed", str(settings["seed"]),
                        "--preset", settings["preset"]], check=True, env=env, stdout=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
        ckpt.rename(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--corpus", type=int, default=20000, help="public sequences to pretrain on")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    settings = {"preset": "tiny", "steps": a.steps, "corpus": a.corpus, "seed": a.seed}
    root = cache_root()
    out = root / key(settings)
    if not (out / "model.safetensors").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the loser reuses the winner's
            if not (out / "model.safetensors").is_file():
                print(f"pretrained.py: pretraining {settings} into {out}", file=sys.stderr)
                build(settings, out)
        keep = int(os.environ.get("PRETRAINED_KEEP_BUILDS", "3"))
        builds = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.stat().st_mtime, reverse=True)
        for old in builds[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
