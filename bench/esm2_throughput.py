"""Local-training throughput inside the NVFlare client vs a plain torch loop (same model, data, batch).

Baseline: the same SiteTrainer in a plain Python process, no NVFlare. Measured: the esm2-finetune
job in the NVFlare simulator with one site; the client reports the sequences/s of its training
loop each round. Both run with the same environment (OMP_NUM_THREADS, TMPDIR) and the same
torchThreads; round 0 (warm-up) is dropped on both sides.

The machine may be shared (other builds/tests), so absolute seq/s drift. To make the ratio robust:
``--pairs`` pairs of runs, the two runs of a pair back to back and their order alternating
(plain→client, client→plain, ...); each run's figure is the median over its rounds; the headline
is the median of the per-pair ratios, with their spread. Also printed, per pair:
- the CPU-normalised ratio (sequences per CPU-second of the training process), which contention
  from other processes does not move: it shows whether the training code itself runs slower
  inside NVFlare (background threads of the client process count against it);
- the effective throughput per round including NVFlare's per-round overhead (receive, evaluate,
  send, aggregate), from the server's round timestamps.
``--no-log-streamer`` removes the JobLogStreamer the job builder adds to every client (A/B check).
Target: in-client / plain >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from esm2_common import PY, REPO, add_app_paths, env, machine, make_data, run_federation

PLAIN = r"""
import json, sys
sys.path[:0] = {paths!r}
from esm2_app.site import SiteTrainer
p = json.loads({params!r})
t = SiteTrainer(p, {data!r}, "site-1")
out = []
for r in range(p["rounds"]):
    t.evaluate()  # as the client does before training (not timed)
    out.append(t.train_round(r, p["rounds"]))
print(json.dumps(out))
"""


def plain_run(work: Path, params: dict, data_path: str) -> list[dict]:
    add_app_paths()
    from esm2_common import APP_PATHS

    code = PLAIN.format(paths=APP_PATHS, params=json.dumps(params), data=data_path)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO, env=env(work))
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _rates(rounds: list[dict]) -> tuple[float, float]:
    """(median seq/s, median seq per CPU-second) over the rounds after the first."""
    rs = rounds[1:]
    wall = statistics.median(r["seq_per_s"] for r in rs)
    cpu = statistics.median(r["samples_seen"] / r["train_cpu_seconds"] for r in rs)
    return wall, cpu


def _spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f}, min {min(xs):.3f}, max {max(xs):.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--no-log-streamer", action="store_true")
    a = ap.parse_args()
    from flare_operator.catalog import load_app, validate_params

    params = validate_params(
        load_app("esm2-finetune"),
        {
            "preset": a.preset,
            "allowRandomInit": a.preset != "tiny",
            "rounds": a.rounds,
            "localSteps": a.steps,
            "batchSize": a.batch,
            "maxSeqLength": a.max_len,
            "torchThreads": a.threads,
            "learningRate": 1e-3,
        },
    )
    load0 = os.getloadavg()
    pairs = []
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
        for i in range(a.pairs):
            runs = {}
            for kind in ("plain", "client") if i % 2 == 0 else ("client", "plain"):
                if kind == "plain":
                    runs["plain"] = plain_run(work, params, path)
                else:
                    fed = run_federation(
                        work / f"fed{i}",
                        data,
                        params,
                        "bench-throughput",
                        log_streamer=not a.no_log_streamer,
                    )
                    runs["client"] = [h["sites"]["site-1"] for h in fed["history"]]
                    hist = fed["history"]
                    runs["effective"] = statistics.median(
                        hist[j]["sites"]["site-1"]["samples_seen"] / (hist[j]["time"] - hist[j - 1]["time"])
                        for j in range(1, len(hist))
                    )
            (pw, pc), (cw, cc) = _rates(runs["plain"]), _rates(runs["client"])
            pairs.append(
                {"plain": pw, "client": cw, "plain_cpu": pc, "client_cpu": cc, "eff": runs["effective"]}
            )
            print(
                f"pair {i + 1} ({'plain first' if i % 2 == 0 else 'client first'}): plain {pw:6.1f} seq/s, "
                f"client {cw:6.1f} seq/s, ratio {cw / pw:.3f}; per CPU-second {pc:6.1f} vs {cc:6.1f}, "
                f"ratio {cc / pc:.3f}; per round incl. NVFlare {runs['effective']:6.1f} seq/s",
                flush=True,
            )
    load1 = os.getloadavg()
    ratio = [p["client"] / p["plain"] for p in pairs]
    cpu_ratio = [p["client_cpu"] / p["plain_cpu"] for p in pairs]
    eff_ratio = [p["eff"] / p["plain"] for p in pairs]
    print(
        f"# local-training throughput, preset {a.preset}, batch {a.batch} x {a.max_len} tokens, "
        f"{a.rounds} rounds x {a.steps} steps, {a.threads} torch threads, {a.pairs} alternating pairs, "
        f"log streamer {'off' if a.no_log_streamer else 'on'}; machine: {machine()}; "
        f"load average (1 min) {load0[0]:.1f} at start, {load1[0]:.1f} at end"
    )
    print(
        f"plain torch loop (baseline)       median {statistics.median(p['plain'] for p in pairs):7.1f} seq/s"
    )
    print(
        f"inside the NVFlare client         median {statistics.median(p['client'] for p in pairs):7.1f} seq/s"
    )
    print(f"ratio client / plain (target >= 0.95): {_spread(ratio)}")
    print(f"ratio per CPU-second:                  {_spread(cpu_ratio)}")
    print(f"per round incl. NVFlare overhead / plain: {_spread(eff_ratio)}")
    return statistics.median(ratio) >= 0.95


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
