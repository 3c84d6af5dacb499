"""Local training and evaluation (plain torch), shared by the NVFlare client, the server and the benchmarks."""

from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np

log = logging.getLogger(__name__)


def pick_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_ctx(device, bf16: bool):
    """bf16 autocast on CUDA; on CPU (or bf16 off) a no-op, so the same code runs everywhere."""
    import torch

    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def collate(ids: list[list[int]], pad_id: int = 1):
    import torch

    n = max(len(x) for x in ids)
    arr = np.full((len(ids), n), pad_id, dtype=np.int64)
    for i, x in enumerate(ids):
        arr[i, : len(x)] = x
    t = torch.from_numpy(arr)
    return t, (t != pad_id).long()


def collate_records(records):
    """A batch from (token ids tensor, label) records, as :meth:`BatchStream.next` yields it."""
    import torch

    ids, mask = collate([r[0].tolist() for r in records])
    return ids, mask, torch.tensor([int(r[1]) for r in records], dtype=torch.long)


class BatchStream:
    """Endless shuffled mini-batches over a dataset (seeded); epochs counted."""

    def __init__(self, dataset, batch_size: int, seed: int):
        self.ds = dataset
        self.bs = max(1, min(batch_size, len(dataset)))
        self.rng = np.random.default_rng(seed)
        self.order, self.pos, self.epoch = self.rng.permutation(len(dataset)), 0, 0

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.ds) / self.bs)

    def next(self):
        if self.pos >= len(self.order):
            self.order, self.pos, self.epoch = self.rng.permutation(len(self.ds)), 0, self.epoch + 1
        idx = self.order[self.pos : self.pos + self.bs]
        self.pos += self.bs
        ids, mask = collate([self.ds.input_ids[i] for i in idx])
        import torch

        return ids, mask, torch.from_numpy(self.ds.labels[idx])


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``.

    The schedule runs over the whole training (all rounds), so a federated site and a centralised
    run of the same number of steps see the same learning rates.
    """
    if schedule == "constant" or total <= 0:
        return 1.0
    frac = min(max(step / total, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return 1.0 - frac
    raise ValueError(f"unknown lr schedule {schedule!r}; one of {LR_SCHEDULES}")


def train_steps(
    model,
    stream: BatchStream,
    steps: int,
    lr: float,
    device,
    bf16: bool = False,
    weight_decay: float = 0.0,
    *,
    optimizer=None,
    prox_mu: float = 0.0,
    lr_at=None,
):
    """Run ``steps`` optimizer steps. Returns stats.

    ``optimizer``: an AdamW to continue (its moments carry over); default a fresh AdamW, as in
    plain FedAvg. ``prox_mu`` > 0 adds the FedProx term mu/2 * ||w - w_start||^2 (w_start = the
    parameters at the start of the call, i.e. the global model received). ``lr_at(i)``: learning
    rate of step i (default constant ``lr``).
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    anchor = [p.detach().clone() for p in params] if prox_mu > 0 else None
    model.train()
    losses, seen = [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        ids, mask, y = stream.next()
        ids, mask, y = ids.to(device), mask.to(device), y.to(device)
        if lr_at is not None:
            for g in opt.param_groups:
                g["lr"] = lr_at(i)
        with autocast_ctx(device, bf16):
            out = model(input_ids=ids, attention_mask=mask)
            loss = torch.nn.functional.cross_entropy(out.logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if anchor is not None:
            with torch.no_grad():  # gradient of mu/2 ||w - w0||^2, added in place (no autograd graph)
                for p, a in zip(params, anchor, strict=True):
                    if p.grad is not None:
                        p.grad.add_(p.detach() - a, alpha=prox_mu)
        opt.step()
        losses.append(loss.detach())
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {
        "train_loss": float(torch.stack(losses).double().mean()) if losses else float("nan"),
        "steps": steps,
        "samples_seen": seen,
        "train_seconds": secs,
        "train_cpu_seconds": cpu,
        "seq_per_s": seen / secs if secs > 0 else float("nan"),
    }


def predict(model, dataset, batch_size: int, device, bf16: bool = False) -> np.ndarray:
    import torch

    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(dataset), batch_size):
            ids, mask = collate(dataset.input_ids[s : s + batch_size])
            with autocast_ctx(device, bf16):
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
            preds.append(out.logits.float().argmax(-1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=int)
