"""ESM2 models (Hugging Face transformers) and the training modes: full, head, lastN, lora."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VOCAB_FILE = str(Path(__file__).with_name("vocab.txt"))

# (hidden, layers, heads, intermediate) — shapes of the public facebook/esm2_* checkpoints.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 2, 4, 128),
    "8M": (320, 6, 20, 1280),
    "35M": (480, 12, 20, 1920),
    "150M": (640, 30, 20, 2560),
    "650M": (1280, 33, 20, 5120),
}
HF_CHECKPOINTS = {
    "8M": "facebook/esm2_t6_8M_UR50D",
    "35M": "facebook/esm2_t12_35M_UR50D",
    "150M": "facebook/esm2_t30_150M_UR50D",
    "650M": "facebook/esm2_t33_650M_UR50D",
}
MODES = ("full", "head", "lastN", "lora")


class ModelError(ValueError):
    """Bad model settings or checkpoint."""


def make_tokenizer():
    from transformers import EsmTokenizer

    return EsmTokenizer(vocab_file=VOCAB_FILE)


def esm_config(preset: str, num_labels: int, labels: list[str] | None = None):
    from transformers import EsmConfig

    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}; one of {sorted(PRESETS)}")
    hidden, layers, heads, inter = PRESETS[preset]
    kw = {}
    if labels:
        kw = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    return EsmConfig(
        vocab_size=33,
        pad_token_id=1,
        mask_token_id=32,
        token_dropout=True,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
        num_labels=num_labels,
        problem_type="single_label_classification",
        **kw,
    )


def build_model(
    preset: str,
    num_labels: int,
    pretrained_path: str = "",
    seed: int = 0,
    labels=None,
    allow_random: bool = False,
):
    """EsmForSequenceClassification: random ``tiny`` (or any preset with allow_random) or from a local checkpoint.

    ``pretrained_path`` is a local directory in Hugging Face format (config.json +
    model.safetensors), e.g. a snapshot of facebook/esm2_t12_35M_UR50D. The classification head
    is newly initialised (seeded) when the checkpoint has none.
    """
    import torch
    from transformers import EsmForSequenceClassification

    torch.manual_seed(seed)
    if pretrained_path:
        if not os.path.isdir(pretrained_path):
            raise ModelError(
                f"pretrainedPath {pretrained_path!r} is not a directory (expected a Hugging Face checkpoint)"
            )
        kw = {}
        if labels:
            kw = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
        model = EsmForSequenceClassification.from_pretrained(
            pretrained_path, num_labels=num_labels, problem_type="single_label_classification", **kw
        )
        cfg = model.config
        if cfg.pad_token_id != 1 or cfg.vocab_size != 33:
            raise ModelError(
                f"{pretrained_path}: not an ESM2 checkpoint (pad_token_id={cfg.pad_token_id}, vocab={cfg.vocab_size})"
            )
        if preset in PRESETS and preset != "tiny":
            hidden, layers, _, _ = PRESETS[preset]
            if (cfg.hidden_size, cfg.num_hidden_layers) != (hidden, layers):
                raise ModelError(
                    f"{pretrained_path}: checkpoint has hidden={cfg.hidden_size}, layers={cfg.num_hidden_layers} "
                    f"but preset {preset} expects hidden={hidden}, layers={layers}"
                )
        return model
    if preset != "tiny" and not allow_random:
        raise ModelError(
            f"preset {preset} needs pretrainedPath (a local copy of {HF_CHECKPOINTS.get(preset, 'the checkpoint')})"
        )
    return EsmForSequenceClassification(esm_config(preset, num_labels, labels))


def apply_mode(model, mode: str, last_n: int = 1, lora: dict | None = None, seed: int = 0):
    """Freeze/unfreeze parameters for the mode; wrap with LoRA adapters for ``lora``. Returns the model."""
    import torch

    if mode not in MODES:
        raise ModelError(f"unknown mode {mode!r}; one of {MODES}")
    if mode == "full":
        for p in model.parameters():
            p.requires_grad = True
        # The contact-prediction head is part of EsmModel but unused by the classifier: it never gets
        # a gradient (and Opacus' per-sample gradients refuse a trainable parameter without one).
        for p in model.esm.contact_head.parameters():
            p.requires_grad = False
        return model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = dict(lora or {})
        torch.manual_seed(seed + 1)
        cfg = LoraConfig(
            r=int(lora.get("r", 8)),
            lora_alpha=int(lora.get("alpha", 16)),
            lora_dropout=float(lora.get("dropout", 0.0)),
            target_modules=list(lora.get("targetModules", ["query", "key", "value"])),
            bias="none",
        )
        model = get_peft_model(model, cfg)
        for n, p in model.named_parameters():
            if ".classifier." in f".{n}" or n.startswith("classifier."):
                p.requires_grad = True
        return model
    for p in model.parameters():
        p.requires_grad = False
    for p in model.classifier.parameters():
        p.requires_grad = True
    if mode == "lastN":
        layers = model.esm.encoder.layer
        if not 1 <= last_n <= len(layers):
            raise ModelError(f"lastN={last_n} but the model has {len(layers)} layers")
        for layer in layers[len(layers) - last_n :]:
            for p in layer.parameters():
                p.requires_grad = True
        if model.esm.encoder.emb_layer_norm_after is not None:
            for p in model.esm.encoder.emb_layer_norm_after.parameters():
                p.requires_grad = True
    return model


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def get_trainable(model) -> dict[str, np.ndarray]:
    """The parameters that travel: trainable ones only, as float32 numpy arrays."""
    return {
        n: p.detach().float().cpu().numpy().copy() for n, p in model.named_parameters() if p.requires_grad
    }


def set_trainable(model, params: dict) -> None:
    import torch

    named = dict(model.named_parameters())
    missing = [k for k in params if k not in named]
    if missing:
        raise ModelError(f"received unknown parameters: {missing[:5]}")
    with torch.no_grad():
        for k, v in params.items():
            p = named[k]
            p.copy_(torch.as_tensor(np.asarray(v), dtype=p.dtype, device=p.device).reshape(p.shape))


def params_nbytes(params: dict) -> int:
    return int(sum(np.asarray(v).nbytes for v in params.values()))


def export_model(model, out_dir: str, labels=None) -> str:
    """Save a plain EsmForSequenceClassification (LoRA merged) as safetensors + config + vocab."""
    import shutil

    m = model
    if hasattr(m, "merge_and_unload"):
        m = m.merge_and_unload()
    os.makedirs(out_dir, exist_ok=True)
    m.save_pretrained(out_dir, safe_serialization=True)
    shutil.copy(VOCAB_FILE, os.path.join(out_dir, "vocab.txt"))
    return out_dir
