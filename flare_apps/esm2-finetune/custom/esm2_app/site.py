"""One site's trainer: model in the chosen mode + its own data. Used by the NVFlare client script and benchmarks."""

from __future__ import annotations

import logging
import math

import numpy as np
from flare_app_common.metrics import accuracy, confusion_matrix, macro_f1

from . import LOCATION_CLASSES
from .data import load_site_data
from .modeling import apply_mode, build_model, get_trainable, make_tokenizer, set_trainable
from .training import BatchStream, collate_records, lr_factor, pick_device, predict, train_steps

log = logging.getLogger(__name__)


def model_from_params(p: dict, allow_random: bool = False):
    """Build the model exactly as every participant does (same seed -> same frozen weights)."""
    classes = list(p.get("labels") or LOCATION_CLASSES)
    model = build_model(
        p["preset"],
        len(classes),
        p.get("pretrainedPath", ""),
        seed=int(p["seed"]),
        labels=classes,
        allow_random=allow_random,
    )
    return apply_mode(model, p["mode"], int(p.get("lastN", 1)), p.get("lora"), seed=int(p["seed"]))


class SiteTrainer:
    def __init__(
        self,
        params: dict,
        dataset_path: str | list[str],
        site_name: str = "site",
        allow_random: bool = False,
        sample_dp: dict | None = None,
        privacy_record: str | None = None,
    ):
        """``sample_dp``: the arguments of :class:`flare_app_common.sample_dp.SampleDP` (target
        epsilon, delta, clip_norm, accountant, rounds, prior_releases) for sample-level DP-SGD at
        this site; None trains without it. ``privacy_record``: where the site's privacy events are
        written before each round (flare_app_common.dp.PRIVACY_RECORD in the client's job folder)."""
        import torch

        self.p = params
        self.site = site_name
        self.classes = list(params.get("labels") or LOCATION_CLASSES)
        self.device = pick_device(params.get("device", "auto"))
        self.bf16 = bool(params.get("bf16", True))
        torch.set_num_threads(max(1, int(params.get("torchThreads", 0)) or torch.get_num_threads()))
        self.model = model_from_params(params, allow_random=allow_random).to(self.device)
        tok = make_tokenizer()
        self.train_ds, self.val_ds = load_site_data(
            dataset_path,
            self.classes,
            tok,
            int(params["maxSeqLength"]),
            float(params.get("valFraction", 0.2)),
            int(params["seed"]),
        )
        site_seed = int(params["seed"]) * 1000 + sum(site_name.encode())
        torch.manual_seed(site_seed)
        self.stream = BatchStream(self.train_ds, int(params["batchSize"]), site_seed)
        self.truncated = self.train_ds.truncated + self.val_ds.truncated
        self.optimizer = None  # kept across rounds when keepOptimizerState
        self.rounds_done = 0
        self.dp = None
        self.privacy_record = privacy_record
        if sample_dp:
            from flare_app_common.sample_dp import SampleDP

            if float(params.get("proxMu", 0.0)) > 0:
                raise ValueError("proxMu > 0 cannot be combined with sample-level DP: the proximal term's "
                                 "gradient is not clipped per record; set proxMu to 0")
            self.dp = SampleDP(**sample_dp)
            self.bf16 = False  # DP-SGD in fp32 (opacus#740)

    def steps_per_round(self) -> int:
        steps = int(self.p.get("localSteps", 0))
        if steps > 0:
            return steps
        return max(1, math.ceil(float(self.p.get("localEpochs", 1)) * self.stream.batches_per_epoch()))

    def get_params(self) -> dict[str, np.ndarray]:
        return get_trainable(self.model)

    def set_params(self, params: dict) -> None:
        if params:
            set_trainable(self.model, params)

    def evaluate(self) -> dict:
        pred = predict(self.model, self.val_ds, int(self.p.get("evalBatchSize", 64)), self.device, self.bf16)
        cm = confusion_matrix(self.val_ds.labels, pred, len(self.classes))
        return {
            "val_accuracy": accuracy(cm),
            "val_macro_f1": macro_f1(cm),
            "val_samples": int(len(self.val_ds)),
            "val_confusion": cm.tolist(),
        }

    def train_round(self, current_round: int | None = None, total_rounds: int | None = None) -> dict:
        """One round of local training. ``current_round``/``total_rounds`` (from the server's task)
        place the round in the learning-rate schedule; default: rounds counted here, ``rounds`` planned."""
        import torch

        p = self.p
        rnd = self.rounds_done if current_round is None else int(current_round)
        total = int(p.get("rounds", 1)) if total_rounds is None else int(total_rounds)
        steps = self.steps_per_round()
        base_lr = float(p["learningRate"])
        schedule = p.get("lrSchedule", "constant")
        lr_at = None
        if schedule != "constant":
            first, planned = rnd * steps, max(1, total) * steps

            def lr_at(i):
                return base_lr * lr_factor(schedule, first + i, planned)

        model, stream, opt = self.model, self.stream, None
        if self.dp is not None:  # one private model, optimizer and sampler for the whole job
            if self.dp.model is None:
                params = [q for q in self.model.parameters() if q.requires_grad]
                adamw = torch.optim.AdamW(params, lr=base_lr, weight_decay=float(p.get("weightDecay", 0.0)))
                records = [(torch.tensor(ids), int(y)) for ids, y in zip(self.train_ds.input_ids,
                                                                          self.train_ds.labels, strict=True)]
                self.dp.make_private(self.model, adamw, records, self.stream.bs, collate_records, steps)
            if self.privacy_record:
                self.dp.write_record(self.privacy_record)
            model, stream, opt = self.dp.model, self.dp, self.dp.optimizer
        elif p.get("keepOptimizerState", True):  # the app.yaml default
            if self.optimizer is None:
                params = [q for q in self.model.parameters() if q.requires_grad]
                self.optimizer = torch.optim.AdamW(
                    params, lr=base_lr, weight_decay=float(p.get("weightDecay", 0.0))
                )
            opt = self.optimizer
        stats = train_steps(
            model,
            stream,
            steps,
            base_lr,
            self.device,
            self.bf16,
            float(p.get("weightDecay", 0.0)),
            optimizer=opt,
            prox_mu=float(p.get("proxMu", 0.0)),
            lr_at=lr_at,
        )
        if self.dp is not None:
            stats.update(self.dp.round_done())
        self.rounds_done = rnd + 1
        stats["train_samples"] = int(len(self.train_ds))
        stats["truncated"] = int(self.truncated)
        return stats
