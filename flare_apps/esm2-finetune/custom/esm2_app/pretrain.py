"""Masked-language-model pretraining of an ESM2 preset on a public corpus: the project's stand-in for
the public ESM2 checkpoints (facebook/esm2_*, trained on UniRef), which cannot be downloaded here.

The output is a Hugging Face checkpoint (config.json + model.safetensors + vocab.txt) that the app
loads exactly as it loads a real ESM2 snapshot, through ``pretrainedPath`` (modeling.build_model:
the encoder from the checkpoint, a new seeded classification head).

    python -m esm2_app.pretrain --corpus public-corpus.txt --out DIR [--steps 1500] [--preset tiny]

(with ``flare_apps/esm2-finetune/custom`` on PYTHONPATH; ``make pretrained`` runs it on the corpus
``python -m flare_operator.datagen --corpus`` makes, cached by content). Masking is BERT's: 15 % of
the residues, 80 % of those replaced by <mask>, 10 % by a random residue, 10 % kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from .modeling import VOCAB_FILE, esm_config, make_tokenizer
from .training import lr_factor

MASK_PROBABILITY = 0.15


def read_corpus(path: str) -> list[str]:
    with open(path) as f:
        seqs = [line.strip() for line in f if line.strip() and not line.startswith(">")]
    if not seqs:
        raise ValueError(f"{path}: no sequences")
    return seqs


def pretrain_mlm(
    sequences: list[str],
    out_dir: str,
    preset: str = "tiny",
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    max_len: int = 128,
    seed: int = 0,
    threads: int = 0,
) -> dict:
    """Pretrain ``preset`` from random weights by MLM on ``sequences``; write the checkpoint to
    ``out_dir``; return what was measured (MLM loss and masked-residue accuracy, first and last
    100 steps)."""
    import torch
    from transformers import DataCollatorForLanguageModeling, EsmForMaskedLM

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = make_tokenizer()
    model = EsmForMaskedLM(esm_config(preset, num_labels=2))
    encoded = [tok(s, truncation=True, max_length=max_len)["input_ids"] for s in sequences]
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=MASK_PROBABILITY,
                                               return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_at(i: int) -> float:  # linear warm-up, then the app's cosine schedule down to 10 %
        if i < warmup:
            return lr * (i + 1) / warmup
        return lr * (0.1 + 0.9 * lr_factor("cosine", i - warmup, max(1, steps - warmup)))

    model.train()
    losses, accs = [], []
    t0 = time.perf_counter()
    for i in range(steps):
        idx = rng.integers(0, len(encoded), size=batch_size)
        batch = collator([{"input_ids": encoded[j]} for j in idx])
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            masked = batch["labels"] != -100
            accs.append(float((out.logits.argmax(-1)[masked] == batch["labels"][masked]).float().mean()))
        losses.append(float(out.loss.detach()))
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    shutil.copyfile(VOCAB_FILE, os.path.join(out_dir, "vocab.txt"))
    window = min(100, max(1, steps // 5))
    report = {
        "preset": preset,
        "sequences": len(sequences),
        "steps": steps,
        "batch_size": batch_size,
        "mask_probability": MASK_PROBABILITY,
        "mlm_loss_first": float(np.mean(losses[:window])),
        "mlm_loss_last": float(np.mean(losses[-window:])),
        "masked_accuracy_first": float(np.mean(accs[:window])),
        "masked_accuracy_last": float(np.mean(accs[-window:])),
        "seconds": time.perf_counter() - t0,
    }
    with open(os.path.join(out_dir, "pretrain.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esm2_app.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="one sequence per line (FASTA headers skipped)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    try:
        report = pretrain_mlm(read_corpus(a.corpus), a.out, a.preset, a.steps, a.batch_size, a.lr, a.max_len,
                              a.seed, a.threads)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
