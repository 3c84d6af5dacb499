"""Local-training throughput inside the NVFlare client vs a plain torch loop (same model, data, batch).

Baseline: the same SiteTrainer in a plain Python process, no NVFlare (run before and after the
federated run; their mean is the baseline, to cancel drift from other load on the machine).
Measured: the esm2-finetune job in the NVFlare simulator with one site; the client reports the
sequences/s of its training loop each round. Round 0 (warm-up) is dropped on both sides.
Also printed: effective throughput per round including NVFlare's per-round overhead
(receive, evaluate, send, aggregate), from the server's round timestamps.
Target: in-client / plain >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from esm2_common import PY, REPO, add_app_paths, machine, make_data, run_federation

PLAIN = r"""
import json, sys
sys.path[:0] = {paths!r}
from esm2_app.site import SiteTrainer
p = json.loads({params!r})
t = SiteTrainer(p, {data!r}, "site-1")
out = [t.train_round() for _ in range(p["rounds"])]
print(json.dumps(out))
"""


def plain_run(params: dict, data_path: str) -> list[dict]:
    add_app_paths()
    from esm2_common import APP_PATHS

    from flare_operator.catalog import load_app, validate_params

    p = validate_params(load_app("esm2-finetune"), params)
    code = PLAIN.format(paths=APP_PATHS, params=json.dumps(p), data=data_path)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    params = {
        "preset": a.preset,
        "allowRandomInit": a.preset != "tiny",
        "rounds": a.rounds,
        "localSteps": a.steps,
        "batchSize": a.batch,
        "maxSeqLength": a.max_len,
        "torchThreads": a.threads,
        "learningRate": 1e-3,
    }
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as tmp:
        work = Path(tmp)
        data = make_data(
            work / "data",
            sites=1,
            samples_per_site=800,
            min_len=a.max_len // 2,
            max_len=a.max_len - 2,
            seed=0,
        )
        path = data["sites"]["site-1"]["path"]
        plain1 = plain_run(params, path)
        fed = run_federation(work / "fed", data, params, "bench-throughput")
        plain2 = plain_run(params, path)
    sps = lambda rs: [r["seq_per_s"] for r in rs[1:]]  # noqa: E731
    base = sps(plain1) + sps(plain2)
    inside = [h["sites"]["site-1"]["seq_per_s"] for h in fed["history"][1:]]
    hist = fed["history"]
    eff = [
        hist[i]["sites"]["site-1"]["samples_seen"] / (hist[i]["time"] - hist[i - 1]["time"])
        for i in range(1, len(hist))
    ]
    b, i, e = sum(base) / len(base), sum(inside) / len(inside), sum(eff) / len(eff)
    print(
        f"# local-training throughput, preset {a.preset}, batch {a.batch} x {a.max_len} tokens, "
        f"{a.steps} steps/round, {a.threads} torch threads; machine: {machine()}"
    )
    print(
        f"plain torch loop (baseline)        {b:8.1f} seq/s   (runs: {', '.join(f'{x:.0f}' for x in base)})"
    )
    print(f"inside the NVFlare client          {i:8.1f} seq/s   ratio {i / b:.3f}  (target >= 0.95)")
    print(f"per round incl. NVFlare overhead   {e:8.1f} seq/s   ratio {e / b:.3f}")
    return {"baseline": b, "inside": i, "effective": e}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
