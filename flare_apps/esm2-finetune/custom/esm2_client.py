"""NVFlare Client API script for esm2-finetune (runs in each site's client process).

Reads its settings from site_config.json next to this file (written by the job builder):
{"params": {...validated app parameters...}, "datasetPath": "..." (or a list of them), "site": "site-1",
 "sampleDP": {"args": {...}} under sample-level differential privacy}.
Each round: load the received global (trainable) parameters, evaluate them on the site's own
holdout, train locally, and send back only the difference of the trainable parameters.
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import nvflare.client as flare  # noqa: E402
import torch  # noqa: E402
from esm2_app.modeling import params_nbytes  # noqa: E402
from esm2_app.site import SiteTrainer  # noqa: E402
from flare_app_common.dp import PRIVACY_RECORD  # noqa: E402
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType  # noqa: E402


def resolve_dataset(path: str) -> str:
    """A job names a dataset by reference (`dataset:<id>`) when the hub must not know where it is:
    the site's own config ($FLAREOP_SITE_CONFIG, written by the site's gateway) says where."""
    if not path.startswith("dataset:"):
        return path
    dataset_id = path.split(":", 1)[1]
    config_file = os.environ.get("FLAREOP_SITE_CONFIG")
    if not config_file or not os.path.exists(config_file):
        raise SystemExit(f"dataset {dataset_id}: this site has no FLAREOP_SITE_CONFIG to resolve it")
    with open(config_file) as f:
        datasets = json.load(f).get("datasets", {})
    if dataset_id not in datasets:
        raise SystemExit(f"dataset {dataset_id} is not granted at this site (known: {sorted(datasets)})")
    return datasets[dataset_id]


def main():
    with open(os.path.join(HERE, "site_config.json")) as f:
        cfg = json.load(f)
    flare.init()
    site = flare.get_site_name()
    t0 = time.perf_counter()
    refs = cfg["datasetPath"]
    paths = resolve_dataset(refs) if isinstance(refs, str) else [resolve_dataset(r) for r in refs]
    # sample-level DP (the job's privacy.differentialPrivacy.level Sample): DP-SGD for the whole job
    # its privacy events go beside NVFlare's meta.json in this job's folder (<workspace>/<job id>/),
    # where the site's gateway reads them to compose privacy across jobs on its grants' ledgers
    record = os.path.join(os.path.dirname(os.path.dirname(HERE)), PRIVACY_RECORD)
    trainer = SiteTrainer(cfg["params"], paths, site, sample_dp=(cfg.get("sampleDP") or {}).get("args"),
                          privacy_record=record)
    print(
        f"[{site}] model ready in {time.perf_counter() - t0:.1f}s: {len(trainer.train_ds)} train / "
        f"{len(trainer.val_ds)} holdout sequences, {trainer.truncated} truncated, device {trainer.device}, "
        f"{torch.get_num_threads()} torch threads"
    )
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        trainer.set_params(model.params)
        metrics = trainer.evaluate()
        metrics["truncated"] = int(trainer.truncated)
        if flare.is_evaluate():
            flare.send(FLModel(metrics=metrics))
            continue
        before = trainer.get_params()
        stats = trainer.train_round(model.current_round, model.total_rounds)
        after = trainer.get_params()
        diff = {k: after[k] - before[k] for k in after}
        metrics.update(stats)
        metrics["bytes_sent"] = params_nbytes(diff)
        metrics["bytes_received"] = params_nbytes(model.params or {})
        print(
            f"[{site}] round {model.current_round}: holdout acc {metrics['val_accuracy']:.3f} (received model), "
            f"train loss {stats['train_loss']:.4f}, {stats['seq_per_s']:.1f} seq/s"
        )
        flare.send(
            FLModel(
                params=diff,
                params_type=ParamsType.DIFF,
                metrics=metrics,
                meta={"NUM_STEPS_CURRENT_ROUND": stats["steps"], "train_samples": stats["train_samples"]},
            )
        )


if __name__ == "__main__":
    main()
