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


def train_steps(
    model, stream: BatchStream, steps: int, lr: float, device, bf16: bool = False, weight_decay: float = 0.0
):
    """Run ``steps`` optimizer steps (fresh AdamW each call, as in FedAvg). Returns stats."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    losses, seen = [], 0
    t0 = time.perf_counter()
    for _ in range(steps):
        ids, mask, y = stream.next()
        ids, mask, y = ids.to(device), mask.to(device), y.to(device)
        with autocast_ctx(device, bf16):
            out = model(input_ids=ids, attention_mask=mask)
            loss = torch.nn.functional.cross_entropy(out.logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": steps,
        "samples_seen": seen,
        "train_seconds": secs,
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
