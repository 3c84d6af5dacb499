"""Server workflow: FedAvg over the trainable parameters with configurable weighting; writes the results.

Results (``<app_server>/results/``): ``model/`` (final global model, safetensors + config +
vocab; LoRA merged), ``global_trainable.safetensors`` (the exchanged parameters, updated every
round — the checkpoint to resume from), ``metrics.json`` (global and per-site, per round),
``MODEL_CARD.md`` and ``tensorboard/`` event files.

While the job runs, the operator follows it through the FLARE API, never the server's disk (which
is a Pod's volume on Kubernetes): app commands ``flareop.progress`` (metrics.json as it stands) and
``flareop.checkpoint`` (the last global trainable parameters, safetensors, base64). A resumed job
carries its checkpoint inside the job (``initial_checkpoint`` relative to this app's folder).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time

import numpy as np
from flare_app_common.metrics import accuracy, macro_f1
from flare_app_common.server_opt import ServerOptimizer
from flare_app_common.weighting import aggregation_weights
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from . import LOCATION_CLASSES

PROGRESS_TOPIC = "flareop.progress"
CHECKPOINT_TOPIC = "flareop.checkpoint"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


class Esm2FedAvg(ModelController):
    def __init__(
        self,
        params: dict,
        sites: list,
        num_rounds: int = 2,
        aggregation: dict | None = None,
        privacy: dict | None = None,
        app: dict | None = None,
        job_name: str = "",
        metadata: dict | None = None,
        min_clients: int | None = None,
        task_timeout: int = 0,
        initial_checkpoint: str = "",
        start_round: int = 0,
    ):
        super().__init__(persistor_id="")
        self.params = params
        self.sites = list(sites)
        self.num_rounds = int(num_rounds)
        self.aggregation = aggregation or {"weighting": "sample"}
        self.privacy = privacy or {}
        self.app = app or {}
        self.job_name = job_name
        self.metadata = metadata or {}
        self.min_clients = min_clients
        self.task_timeout = int(task_timeout)
        self.initial_checkpoint = initial_checkpoint
        self.start_round = int(start_round)
        self.classes = list(params.get("labels") or LOCATION_CLASSES)
        self.server_opt = ServerOptimizer(
            params.get("serverOptimizer", "avg"),
            float(params.get("serverLearningRate", 1.0)),
            float(params.get("serverMomentum", 0.9)),
        )
        self._published = threading.Lock()
        self._progress_text = ""  # metrics.json as last written
        self._checkpoint: tuple[int, bytes] | None = None  # (last completed round, safetensors)

    # ---- what the operator reads through the FLARE API -----------------------------------
    def _register_app_commands(self):
        register = getattr(self.engine, "register_app_command", None)
        if register is None:  # e.g. the simulator's engine: nobody asks there
            self.warning("the engine takes no app commands: progress only in metrics.json")
            return
        register(PROGRESS_TOPIC, self._on_progress)
        register(CHECKPOINT_TOPIC, self._on_checkpoint)

    def _on_progress(self, topic, cmd_data, fl_ctx) -> dict:
        with self._published:
            return {"metrics": self._progress_text}

    def _on_checkpoint(self, topic, cmd_data, fl_ctx) -> dict:
        with self._published:
            if self._checkpoint is None:
                return {}
            last, data = self._checkpoint
        return {"last_completed_round": last, "safetensors_b64": base64.b64encode(data).decode()}

    # ---- helpers -------------------------------------------------------------------------
    def _results_dir(self) -> str:
        d = os.path.join(self.get_app_dir(), "results")
        os.makedirs(d, exist_ok=True)
        return d

    def _site_metrics(self, res: FLModel) -> tuple[str, dict]:
        site = res.meta.get("client_name", "?")
        m = dict(res.metrics or {})
        for k in (
            "dp_epsilon",
            "dp_delta",
            "dp_rounds",
            "dp_update_norm",
            "dp_noise_multiplier",
            "dp_clip_norm",
        ):
            if k in res.meta:
                m[k] = res.meta[k]
        if res.params is not None:
            m["bytes_received_by_server"] = int(sum(np.asarray(v).nbytes for v in res.params.values()))
        return site, m

    def _global_eval(self, per_site: dict) -> dict:
        cms = [np.asarray(m["val_confusion"]) for m in per_site.values() if "val_confusion" in m]
        out = {}
        if cms:
            cm = sum(cms)
            out = {"val_accuracy": accuracy(cm), "val_macro_f1": macro_f1(cm), "val_samples": int(cm.sum())}
            accs = [m["val_accuracy"] for m in per_site.values()]
            out["val_accuracy_min_site"] = float(min(accs))
            out["val_accuracy_max_site"] = float(max(accs))
        losses = [
            (m["train_loss"], m.get("train_samples", 1)) for m in per_site.values() if "train_loss" in m
        ]
        if losses:
            tot = sum(n for _, n in losses)
            out["train_loss"] = float(sum(loss * n for loss, n in losses) / max(tot, 1))
        return out

    def _aggregate(self, global_params: dict, results: list[FLModel], weights: dict) -> dict:
        """Weighted mean of the sites' differences per tensor (over the sites that sent it), applied
        by the server optimizer (FedAvg: global + mean difference)."""
        deltas = {}
        for k in global_params:
            contrib = [
                (weights[r.meta["client_name"]], r.params[k]) for r in results if r.params and k in r.params
            ]
            wsum = sum(w for w, _ in contrib)
            if not contrib or wsum <= 0:
                continue  # e.g. excluded by ExcludeVars at every site: keeps its value
            deltas[k] = sum(w * np.asarray(d, dtype=np.float64) for w, d in contrib) / wsum
        return self.server_opt.step(global_params, deltas)

    # ---- workflow ------------------------------------------------------------------------
    def run(self):
        import torch

        from .modeling import export_model, get_trainable, set_trainable
        from .site import model_from_params

        torch.set_num_threads(1)
        t_start = time.time()
        results_dir = self._results_dir()
        model = model_from_params(self.params, allow_random=bool(self.params.get("allowRandomInit", False)))
        global_params = get_trainable(model)
        self._register_app_commands()
        if self.initial_checkpoint:
            from safetensors.numpy import load_file

            if not os.path.isabs(self.initial_checkpoint):
                self.initial_checkpoint = os.path.join(self.get_app_dir(), self.initial_checkpoint)
            ck = load_file(self.initial_checkpoint)
            if set(ck) != set(global_params):
                self.panic(
                    f"checkpoint {self.initial_checkpoint} does not match the model's trainable parameters "
                    f"(missing {sorted(set(global_params) - set(ck))[:3]}, unexpected {sorted(set(ck) - set(global_params))[:3]})"
                )
                return
            global_params = {k: ck[k].astype(v.dtype).reshape(v.shape) for k, v in global_params.items()}
            self.info(f"resuming from {self.initial_checkpoint} at round {self.start_round}")
        n_total = sum(p.numel() for p in model.parameters())
        n_train = sum(v.size for v in global_params.values())
        bytes_down = int(sum(v.nbytes for v in global_params.values()))
        self.info(f"global model: {n_train}/{n_total} trainable parameters travel ({bytes_down} bytes)")

        tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(os.path.join(results_dir, "tensorboard"))
        except Exception as e:  # tensorboard missing: metrics.json still has everything
            self.warning(f"TensorBoard disabled: {e}")

        record = {
            "app": self.app,
            "job": {"name": self.job_name, "metadata": self.metadata},
            "classes": self.classes,
            "sites": self.sites,
            "rounds_planned": self.num_rounds,
            "mode": self.params.get("mode"),
            "preset": self.params.get("preset"),
            "parameters": {
                "total": int(n_total),
                "trainable": int(n_train),
                "bytes_per_transfer": bytes_down,
            },
            "aggregation": self.aggregation,
            "server_optimizer": {
                "type": self.server_opt.kind,
                "learning_rate": self.server_opt.lr,
                "momentum": self.server_opt.beta,
            },
            "privacy": self.privacy,
            "history": [],
            "resumed_from": {"checkpoint": self.initial_checkpoint, "round": self.start_round}
            if self.initial_checkpoint
            else None,
            "last_completed_round": None,
            "final": None,
            "status": "running",
        }

        def dump():
            text = json.dumps(_jsonable(record), indent=2)
            with open(os.path.join(results_dir, "metrics.json"), "w") as f:
                f.write(text)
            with self._published:
                self._progress_text = text

        dump()
        for rnd in range(self.start_round, self.num_rounds):
            if self.abort_signal and self.abort_signal.triggered:
                record["status"] = "aborted"
                dump()
                return
            self.info(f"round {rnd + 1}/{self.num_rounds}")
            results = self.send_model_and_wait(
                task_name="train",
                data=FLModel(
                    params=global_params,
                    params_type=ParamsType.FULL,
                    current_round=rnd,
                    total_rounds=self.num_rounds,
                ),
                min_responses=self.min_clients,
                timeout=self.task_timeout,
            )
            results = [r for r in results if r.params is not None]
            if not results:
                self.panic(f"round {rnd}: no usable client results")
                return
            per_site = dict(self._site_metrics(r) for r in results)
            counts = {s: int(m.get("train_samples", 0)) for s, m in per_site.items()}
            weights = aggregation_weights(
                counts,
                self.aggregation.get("weighting", "sample"),
                float(self.aggregation.get("maxShare", 1.0)),
            )
            for s in per_site:
                per_site[s]["aggregation_weight"] = weights[s]
            global_params = self._aggregate(global_params, results, weights)
            entry = {
                "round": rnd,
                "evaluated": "initial model" if rnd == 0 else f"global after round {rnd - 1}",
                "global": self._global_eval(per_site),
                "sites": per_site,
                "bytes_sent_to_each_site": bytes_down,
                "time": time.time() - t_start,
            }
            record["history"].append(entry)
            self._log_tb(tb, rnd, entry)
            data = self._save_trainable(global_params, os.path.join(results_dir, "global_trainable.safetensors"))
            with self._published:
                self._checkpoint = (rnd, data)
            record["last_completed_round"] = rnd
            dump()

        # final evaluation of the last global model on every site's holdout
        results = self.send_model_and_wait(
            task_name="validate",
            data=FLModel(
                params=global_params,
                params_type=ParamsType.FULL,
                current_round=self.num_rounds,
                total_rounds=self.num_rounds,
            ),
            min_responses=self.min_clients,
            timeout=self.task_timeout,
        )
        per_site = dict(self._site_metrics(r) for r in results)
        record["final"] = {
            "evaluated": f"global after round {self.num_rounds - 1}",
            "global": self._global_eval(per_site),
            "sites": per_site,
        }
        self._log_tb(tb, self.num_rounds, record["final"])
        eps = {}
        for entry in record["history"]:
            for s, m in entry["sites"].items():
                if "dp_epsilon" in m:
                    eps[s] = m["dp_epsilon"]
        record["epsilon_spent"] = eps
        set_trainable(model, global_params)
        export_model(model, os.path.join(results_dir, "model"), self.classes)
        record["status"] = "completed"
        record["duration_s"] = time.time() - t_start
        dump()
        with open(os.path.join(results_dir, "MODEL_CARD.md"), "w") as f:
            f.write(self._model_card(record))
        if tb:
            tb.close()
        self.info(f"results written to {results_dir}")

    def _save_trainable(self, params: dict, path: str) -> bytes:
        from safetensors.numpy import save

        data = save({k: np.ascontiguousarray(v) for k, v in params.items()})
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return data

    def _log_tb(self, tb, step: int, entry: dict):
        if not tb:
            return
        for k, v in entry["global"].items():
            if isinstance(v, (int, float)):
                tb.add_scalar(f"global/{k}", v, step)
        for s, m in entry["sites"].items():
            for k in ("val_accuracy", "val_macro_f1", "train_loss", "dp_epsilon", "seq_per_s"):
                if isinstance(m.get(k), (int, float)):
                    tb.add_scalar(f"{s}/{k}", m[k], step)
        tb.flush()

    def _model_card(self, r: dict) -> str:
        p = self.params
        fin = (r.get("final") or {}).get("global", {})
        first = r["history"][0]["global"] if r["history"] else {}
        dp = self.privacy.get("differentialPrivacy") or {}
        lines = [
            f"# Model card: {self.app.get('id', 'esm2-finetune')} {self.app.get('version', '')} — {self.job_name}",
            "",
            "Federated fine-tuning of an ESM2 protein language model (Hugging Face `EsmForSequenceClassification`) "
            "for subcellular localisation; raw data never left the data owners.",
            "",
            "## Training",
            f"- preset: `{p.get('preset')}`"
            + (
                f", weights from `{p.get('pretrainedPath')}`" if p.get("pretrainedPath") else " (random init)"
            ),
            f"- mode: `{p.get('mode')}`"
            + (f" (last {p.get('lastN')} layers)" if p.get("mode") == "lastN" else "")
            + (f" (LoRA {p.get('lora')})" if p.get("mode") == "lora" else ""),
            f"- rounds: {len(r['history'])} of {self.num_rounds}; local steps/round: {p.get('localSteps') or str(p.get('localEpochs')) + ' epoch(s)'}; "
            f"batch {p.get('batchSize')}; lr {p.get('learningRate')} ({p.get('lrSchedule', 'constant')}); "
            f"max length {p.get('maxSeqLength')}; seed {p.get('seed')}"
            + ("; site optimizer state kept across rounds" if p.get("keepOptimizerState") else "")
            + (f"; FedProx mu {p.get('proxMu')}" if p.get("proxMu") else ""),
            f"- parameters: {r['parameters']['trainable']} trainable of {r['parameters']['total']} "
            f"({r['parameters']['bytes_per_transfer']} bytes per transfer)",
            f"- aggregation: {self.aggregation.get('weighting', 'sample')}"
            + (
                f" (max share {self.aggregation.get('maxShare')})"
                if self.aggregation.get("weighting") == "capped"
                else ""
            )
            + f"; server optimizer {self.server_opt.kind} (lr {self.server_opt.lr}"
            + (f", momentum {self.server_opt.beta})" if self.server_opt.kind != "avg" else ")"),
            "",
            "## Data owners (sites)",
            "",
            "| site | train sequences | holdout sequences | aggregation weight (last round) | holdout accuracy (final) | macro-F1 (final) | epsilon spent |",
            "|---|---|---|---|---|---|---|",
        ]
        last = r["history"][-1]["sites"] if r["history"] else {}
        fsites = (r.get("final") or {}).get("sites", {})
        for s in sorted(set(last) | set(fsites)):
            lm, fm = last.get(s, {}), fsites.get(s, {})
            e = r.get("epsilon_spent", {}).get(s)
            lines.append(
                f"| {s} | {lm.get('train_samples', '')} | {fm.get('val_samples', '')} | {lm.get('aggregation_weight', 0):.3f} | "
                f"{fm.get('val_accuracy', float('nan')):.3f} | {fm.get('val_macro_f1', float('nan')):.3f} | "
                f"{'n/a (no DP)' if e is None else f'{e:.3f}'} |"
            )
        lines += [
            "",
            "## Privacy",
            (
                f"- sample-level DP (DP-SGD at each site): every record's gradient clipped to {dp.get('clipNorm')}, "
                f"noise calibrated at each site for target epsilon {dp.get('epsilon')} at delta {dp.get('delta')} over "
                f"the whole job, accountant {dp.get('accountant', 'rdp')}; epsilon per site above"
                if dp.get("enabled") and dp.get("level") == "sample"
                else f"- client-level Gaussian DP: clip {dp.get('clipNorm')}, noise multiplier {dp.get('noiseMultiplier')}, "
                f"delta {dp.get('delta')}, accountant {dp.get('accountant', 'rdp')}; epsilon per site above"
                if dp.get("enabled")
                else "- no differential privacy"
            ),
            f"- other NVFlare filters: {[f.get('type') for f in self.privacy.get('filters', [])] or 'none'}",
            "",
            "## Results",
            f"- global holdout accuracy: {first.get('val_accuracy', float('nan')):.3f} (initial model) -> "
            f"{fin.get('val_accuracy', float('nan')):.3f} (final); macro-F1 {fin.get('val_macro_f1', float('nan')):.3f}",
            "- per round and per site: `metrics.json`; curves: `tensorboard/`; weights: `model/model.safetensors`",
            "",
            "## Job",
            f"- metadata: `{json.dumps(self.metadata, sort_keys=True)}`",
            "",
        ]
        return "\n".join(lines)
