"""Value of federation on non-IID data, same total training budget.

- federated: esm2-finetune in the NVFlare simulator, N sites x R rounds x S local steps
  (sample-count weighting) = N*R*S optimizer steps of one batch each in total;
- centralised (baseline): the same model trained N*R*S steps on the union of the sites' data;
- each site alone: N*R*S steps on its own data only.
Budget = sample gradients: every optimizer step of every contender is one batch of ``batchSize``
sequences, so all three compute N*R*S*batch per-sample gradients. All start from the same seeded
initial model, use the same batch size, learning rate and schedule, and are scored on the same
pooled holdout (every site's own validation split together) and on an IID test set.
Targets: federated >= 0.97 x centralised, and above every site alone.

``--dp``: the demo's comparison instead (issue 17), on the demo's data (``make data``: 2 sites x 600,
alpha 0.5) with the demo job's own parameters and privacy (examples/esm2-scl/30-modeller.yaml), all from
the public pretrained start (``make pretrained``): federated with the job's sample-level DP (epsilon 8)
vs the same federation without DP (baseline) vs each site alone without DP for the same number of
optimizer steps. Targets: DP federated >= 0.8 x non-private federated, and above every site alone.

A single seed is noisy (one data split, one initial model, one snapshot at the end of training:
seed to seed the centralised run alone moves by 0.15), so the comparison runs once per seed
(``--seeds``, default 0 1 2 3) and the verdict is on the mean accuracies over the seeds.

Defaults: 80 rounds x 5 local steps with each site's AdamW state kept across rounds
(keepOptimizerState). ``--classic`` also runs, in the same process and data, the original setting
(a fresh AdamW every round, 10 local steps, half the rounds) for comparison. ``--params`` adds
app parameters (JSON) to the federated run, e.g. '{"serverOptimizer": "momentum"}'.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from esm2_common import APP_PATHS, PY, REPO, machine, make_data, run_federation

SCORE = r"""
import json, sys
import numpy as np
sys.path[:0] = {paths!r}
from esm2_app.data import load_eval_data
from esm2_app.site import SiteTrainer
from esm2_app.modeling import make_tokenizer
from flare_app_common.metrics import accuracy, confusion_matrix, macro_f1
from esm2_app.training import predict
p = json.loads({params!r})
t = SiteTrainer(p, {train!r}, "bench")
tok = make_tokenizer()
pooled = load_eval_data({pooled!r}, t.classes, tok, p["maxSeqLength"])
test = load_eval_data({test!r}, t.classes, tok, p["maxSeqLength"])
for _ in range({rounds}):
    t.train_round()
def score(ds):
    cm = confusion_matrix(ds.labels, predict(t.model, ds, 64, t.device), len(t.classes))
    return {{"accuracy": accuracy(cm), "macro_f1": macro_f1(cm)}}
print(json.dumps({{"pooled": score(pooled), "test": score(test)}}))
"""

FED_TEST = r"""
import json, sys
sys.path[:0] = {paths!r}
import torch
from transformers import EsmForSequenceClassification
from esm2_app.data import load_eval_data
from esm2_app.modeling import make_tokenizer
from esm2_app.training import predict
from flare_app_common.metrics import accuracy, confusion_matrix, macro_f1
m = EsmForSequenceClassification.from_pretrained({model!r})
test = load_eval_data({test!r}, {classes!r}, make_tokenizer(), {max_len})
cm = confusion_matrix(test.labels, predict(m, test, 64, torch.device("cpu")), len({classes!r}))
print(json.dumps({{"accuracy": accuracy(cm), "macro_f1": macro_f1(cm)}}))
"""


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sequence", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _run(code):
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="default 80 (--dp: the demo job's)")
    ap.add_argument("--steps", type=int, default=None, help="local steps per site per round (default 5; --dp: the demo job's)")
    ap.add_argument(
        "--fresh-optimizer",
        action="store_true",
        help="a fresh AdamW every round (keepOptimizerState false)",
    )
    ap.add_argument("--params", default="{}", help="extra app parameters (JSON) for the federated run")
    ap.add_argument(
        "--classic", action="store_true", help="also run classic FedAvg: fresh AdamW, 10 local steps"
    )
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--samples-per-site", type=int, default=None, help="default 600 (--dp: the demo's 2000)")
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--dp", action="store_true",
                    help="the demo's job with its sample-level DP vs without DP vs each site alone (pretrained start)")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3],
        help="one full comparison per seed (data split, initial model, sampling); the verdict is on the means",
    )
    a = ap.parse_args()
    if not a.dp:
        a.rounds, a.steps = a.rounds or 80, a.steps or 5
    a.samples_per_site = a.samples_per_site or (DEMO_SAMPLES if a.dp else 600)
    return a


def base_params(a, seed: int) -> dict:
    return {
        "preset": "tiny",
        "maxSeqLength": 64,
        "batchSize": 32,
        "learningRate": a.lr,
        "torchThreads": 1,
        "seed": seed,
        "rounds": a.rounds,
        "localSteps": a.steps,
    }


def compare(a, seed: int) -> tuple[list[tuple[str, dict, dict]], dict]:
    """One seed: [(contender, pooled-holdout scores, IID-test scores)], centralised first, and the
    sites' label counts."""
    budget = a.sites * a.rounds * a.steps
    params = base_params(a, seed)
    fed_params = {**params, "keepOptimizerState": not a.fresh_optimizer, **json.loads(a.params)}
    with tempfile.TemporaryDirectory(prefix="bench-fv-") as tmp:
        work = Path(tmp)
        data = make_data(
            work / "data",
            sites=a.sites,
            samples_per_site=a.samples_per_site,
            min_len=30,
            max_len=60,
            alpha=a.alpha,
            seed=seed,
            test_samples=400,
        )
        names = list(data["sites"])
        site_rows = {n: _rows(data["sites"][n]["path"]) for n in names}
        union = _write(work / "union.csv", [r for n in names for r in site_rows[n]])
        pooled = _write(
            work / "pooled_val.csv", [r for n in names for r in site_rows[n] if r["split"] == "val"]
        )

        run = _Runs(work, data, pooled, params)
        rows = [("centralised on union (base)", *run.trained(union, budget))]
        rows.append((f"federated ({a.rounds}x{a.steps} steps/site)", *run.federated("fed", fed_params)))
        if a.classic:
            r_classic = max(1, a.rounds * a.steps // 10)
            classic = {
                **params,
                "rounds": r_classic,
                "localSteps": a.steps * a.rounds // r_classic,
                "keepOptimizerState": False,
            }
            rows.append(
                (
                    f"classic FedAvg ({r_classic}x{classic['localSteps']}, fresh)",
                    *run.federated("classic", classic),
                )
            )
        rows += [(f"{n} alone", *run.trained(data["sites"][n]["path"], budget)) for n in names]
        counts = {n: {k: v for k, v in data["sites"][n]["label_counts"].items() if v} for n in names}
    return rows, counts


DEMO_JOB = REPO / "examples" / "esm2-scl" / "30-modeller.yaml"
DEMO_SAMPLES = 2000  # hack/demo.sh: make data DATA_SAMPLES=2000


def demo_job(a) -> tuple[dict, dict, dict]:
    """The demo FederatedJob's parameters, privacy (as built for the sites) and aggregation; ``--rounds``
    and ``--steps`` replace its rounds and local steps (the noise is calibrated for them)."""
    import yaml

    sys.path.insert(0, str(REPO / "operator"))
    from flare_operator.api.job import FederatedJobSpec
    from flare_operator.builders.nvflare_job import aggregation_from_api, privacy_from_api

    doc = next(d for d in yaml.safe_load_all(DEMO_JOB.read_text()) if d and d["kind"] == "FederatedJob")
    spec = FederatedJobSpec.model_validate(doc["spec"]).to_wire()
    spec["rounds"] = a.rounds or spec["rounds"]
    spec["parameters"]["localSteps"] = a.steps or spec["parameters"]["localSteps"]
    return ({**spec["parameters"], "rounds": spec["rounds"]}, privacy_from_api(spec["privacy"], spec["rounds"]),
            aggregation_from_api(spec.get("aggregation") or {}))


def pretrained_path() -> str:
    r = subprocess.run([PY, str(REPO / "hack" / "pretrained.py")], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return r.stdout.strip().splitlines()[-1]


def compare_dp(a, seed: int, pretrained: str) -> tuple[list[tuple[str, dict, dict]], dict]:
    """One seed of the demo's comparison: [(contender, pooled scores, IID-test scores)], the non-private
    federation first (the baseline), and the sites' label counts."""
    params, privacy, aggregation = demo_job(a)
    params = {**params, "seed": seed, "pretrainedPath": pretrained}
    eps = privacy["differentialPrivacy"]["epsilon"]
    with tempfile.TemporaryDirectory(prefix="bench-fv-dp-") as tmp:
        work = Path(tmp)
        data = make_data(work / "data", sites=a.sites, samples_per_site=a.samples_per_site, alpha=a.alpha, seed=seed)
        names = list(data["sites"])
        pooled = _write(work / "pooled_val.csv",
                        [r for n in names for r in _rows(data["sites"][n]["path"]) if r["split"] == "val"])
        run = _Runs(work, data, pooled, params)
        rounds, steps = params["rounds"], params["localSteps"]
        rows = [(f"federated, no DP ({rounds}x{steps}) (base)", *run.federated("fed", params, None, aggregation)),
                (f"federated, sample DP eps {eps:g}", *run.federated("fed-dp", params, privacy, aggregation))]
        rows += [(f"{n} alone, no DP", *run.trained(data["sites"][n]["path"], a.sites * rounds * steps))
                 for n in names]
        counts = {n: {k: v for k, v in data["sites"][n]["label_counts"].items() if v} for n in names}
    return rows, counts


class _Runs:
    """Train and score contenders on one seed's data: a federation in the NVFlare simulator, or one
    site's (or the union's) data alone in a plain loop of the app's own trainer."""

    def __init__(self, work: Path, data: dict, pooled: str, params: dict):
        self.work, self.data, self.pooled, self.params = work, data, pooled, params

    def federated(self, name, params, privacy=None, aggregation=None):
        from esm2_common import add_app_paths

        add_app_paths()
        from esm2_app import LOCATION_CLASSES

        fed = run_federation(self.work / name, self.data, params, f"bench-{name}", privacy=privacy,
                             aggregation=aggregation)
        model = self.work / name / "ws" / "server" / "simulate_job" / "app_server" / "results" / "model"
        t = _run(FED_TEST.format(paths=APP_PATHS, model=str(model), test=self.data["test"]["path"],
                                 classes=list(LOCATION_CLASSES), max_len=params["maxSeqLength"]))
        return {"accuracy": fed["final"]["global"]["val_accuracy"],
                "macro_f1": fed["final"]["global"]["val_macro_f1"]}, t

    def trained(self, train_path, steps):
        p = {**self.params, "localSteps": steps}
        r = _run(SCORE.format(paths=APP_PATHS, params=json.dumps(_full(p)), train=train_path, pooled=self.pooled,
                              test=self.data["test"]["path"], rounds=1))
        return r["pooled"], r["test"]


def _table(rows, base_acc, base="centralised"):
    vs = f"vs {base}"
    print(f"{'run':<38} {'pooled-holdout acc':>18} {'macro-F1':>9} {'IID test acc':>13} {vs:>{len(vs) + 1}}")
    for name, p, t in rows:
        print(
            f"{name:<38} {p['accuracy']:>18.3f} {p['macro_f1']:>9.3f} {t['accuracy']:>13.3f} "
            f"{p['accuracy'] / base_acc:>{len(vs) + 1}.3f}"
        )


def main():
    a = parse_args()
    load0 = os.getloadavg()
    if a.dp:
        params, privacy, aggregation = demo_job(a)
        pretrained = pretrained_path()
        budget = a.sites * params["rounds"] * params["localSteps"]
        base, fed, target = "non-private federated", 1, 0.8
        print(f"# federation under sample-level DP (the demo's job, {DEMO_JOB.relative_to(REPO)}): {a.sites} sites x "
              f"{a.samples_per_site}, alpha {a.alpha}, seeds {a.seeds}, budget {budget} optimizer steps of batch "
              f"{params['batchSize']} per contender; pretrained start {pretrained}; machine: {machine()}", flush=True)
        print(f"# job: {json.dumps(params)}; privacy {json.dumps(privacy)}; aggregation {json.dumps(aggregation)}",
              flush=True)
    else:
        budget = a.sites * a.rounds * a.steps
        base, fed, target = "centralised", 1, 0.97
        print(
            f"# value of federation: {a.sites} sites, Dirichlet alpha {a.alpha}, seeds {a.seeds}, budget {budget} "
            f"optimizer steps of batch 32 (= {budget * 32} sample gradients) for every contender; machine: {machine()}",
            flush=True,
        )
        fed_params = {"keepOptimizerState": not a.fresh_optimizer, **json.loads(a.params)}
        print(f"# federated: {a.rounds} rounds x {a.steps} local steps per site, {json.dumps(fed_params)}", flush=True)
    per_seed = []
    for seed in a.seeds:
        rows, counts = compare_dp(a, seed, pretrained) if a.dp else compare(a, seed)
        per_seed.append(rows)
        print(f"\n## seed {seed}; site label counts: {json.dumps(counts)}")
        _table(rows, rows[0][1]["accuracy"], base)
        sys.stdout.flush()
    load1 = os.getloadavg()

    def mean(i, split, metric):
        return statistics.mean(rows[i][1 if split == "pooled" else 2][metric] for rows in per_seed)

    names = [r[0] for r in per_seed[0]]
    means = [
        (
            n,
            {m: mean(i, "pooled", m) for m in ("accuracy", "macro_f1")},
            {"accuracy": mean(i, "test", "accuracy")},
        )
        for i, n in enumerate(names)
    ]
    print(f"\n## mean over {len(a.seeds)} seeds (ratio = mean accuracy / mean {base} accuracy)")
    _table(means, means[0][1]["accuracy"], base)
    ratios = [rows[fed][1]["accuracy"] / rows[0][1]["accuracy"] for rows in per_seed]
    who = names[fed].split(" (")[0]
    print(f"per-seed {who} / {base}: {', '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})")
    alone = [i for i, n in enumerate(names) if " alone" in n]
    fed_acc, base_acc = means[fed][1]["accuracy"], means[0][1]["accuracy"]
    ok1 = fed_acc >= target * base_acc
    ok2 = all(fed_acc > means[i][1]["accuracy"] for i in alone)
    wins = sum(all(rows[fed][1]["accuracy"] > rows[i][1]["accuracy"] for i in alone) for rows in per_seed)
    print(
        f"{who} >= {target} x {base} (means): {'yes' if ok1 else 'NO'} ({fed_acc / base_acc:.3f}); "
        f"above every site alone (means): {'yes' if ok2 else 'NO'}; in {wins} of {len(per_seed)} seeds"
    )
    print(f"# load average (1 min) {load0[0]:.1f} at start, {load1[0]:.1f} at end")


def _full(p):
    from flare_operator.catalog import load_app, validate_params

    return validate_params(load_app("esm2-finetune"), p)


if __name__ == "__main__":
    main()
