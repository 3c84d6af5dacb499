"""Synthetic protein-like sequences with learnable subcellular-localisation motifs.

Pure Python + numpy (no torch). Deterministic for a given seed. Each class is defined by a
sequence feature a protein language model can pick up (N-terminal signal / transit peptides,
C-terminal retention signals, nuclear localisation basic stretches, transmembrane hydrophobic
segments), embedded in a random background, with motif mutations and a little label noise.
Samples are split non-IID across sites with a per-class Dirichlet(alpha) draw, and each site
gets its own holdout (``split`` column: ``train`` / ``val``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The 10 DeepLoc-style location classes, in label-index order (must match flare_apps/esm2-finetune/app.yaml).
LOCATION_CLASSES: tuple[str, ...] = (
    "Cytoplasm",
    "Nucleus",
    "Extracellular",
    "Cell_membrane",
    "Mitochondrion",
    "Plastid",
    "Endoplasmic_reticulum",
    "Lysosome_Vacuole",
    "Golgi_apparatus",
    "Peroxisome",
)

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# Rough natural background frequencies (UniProt), normalised below.
_BG_FREQ = np.array(
    [8.3, 1.4, 5.5, 6.7, 3.9, 7.1, 2.3, 5.9, 5.8, 9.7, 2.4, 4.1, 4.7, 3.9, 5.5, 6.6, 5.3, 6.9, 1.1, 2.9]
)
_BG_P = _BG_FREQ / _BG_FREQ.sum()
_HYDROPHOBIC = "LIVFAM"


@dataclass(frozen=True)
class GeneratorConfig:
    sites: int = 2
    samples_per_site: int = 600
    alpha: float = 0.5
    val_fraction: float = 0.2
    min_len: int = 40
    max_len: int = 90
    motif_noise: float = 0.08
    label_noise: float = 0.03
    test_samples: int = 400
    seed: int = 0
    fmt: str = "csv"
    site_names: Sequence[str] | None = field(default=None)

    def names(self) -> list[str]:
        if self.site_names:
            if len(self.site_names) != self.sites:
                raise ValueError(f"{len(self.site_names)} site names given for {self.sites} sites")
            return list(self.site_names)
        return [f"site-{i + 1}" for i in range(self.sites)]


def _bg(rng: np.random.Generator, n: int) -> str:
    if n <= 0:
        return ""
    idx = rng.choice(len(AMINO_ACIDS), size=n, p=_BG_P)
    return "".join(AMINO_ACIDS[i] for i in idx)


def _pick(rng: np.random.Generator, alphabet: str, n: int) -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))


def _signal_peptide(rng):
    return (
        "M"
        + _pick(rng, "KR", int(rng.integers(1, 3)))
        + _pick(rng, "LLAVIF", int(rng.integers(8, 13)))
        + _pick(rng, "AGS", 1)
        + "X"
        + "A"
    )


def _tm(rng):
    return _pick(rng, "LLIVFAMG", int(rng.integers(18, 23)))


def _mito_tp(rng):
    out = ["M"]
    for _ in range(int(rng.integers(4, 6))):
        out.append(_pick(rng, "R", 1) + _pick(rng, "LAIF", 1) + _pick(rng, "SL", 1) + _pick(rng, "RA", 1))
    return "".join(out)


def _plastid_tp(rng):
    return "MA" + _pick(rng, "SSSTTAPVG", int(rng.integers(18, 26)))


_NLS = ("PKKKRKV", "KRPAATKKAGQAKKKK", "PAAKRVKLD", "KKKRKRKK")


def _compose(rng: np.random.Generator, label: int, length: int) -> str:
    """Build one sequence of about ``length`` residues for class ``label``."""
    n_term, middle, c_term = "", [], ""
    if label == 1:  # Nucleus: basic NLS stretch somewhere in the body
        middle.append(_NLS[int(rng.integers(0, len(_NLS)))])
    elif label == 2:  # Extracellular: secreted, signal peptide only
        n_term = _signal_peptide(rng)
    elif label == 3:  # Cell membrane: two or three transmembrane segments
        middle.extend(_tm(rng) for _ in range(int(rng.integers(2, 4))))
    elif label == 4:  # Mitochondrion: amphipathic Arg-rich transit peptide
        n_term = _mito_tp(rng)
    elif label == 5:  # Plastid: Ser/Thr-rich transit peptide
        n_term = _plastid_tp(rng)
    elif label == 6:  # ER: signal peptide + C-terminal KDEL retention
        n_term, c_term = _signal_peptide(rng), "KDEL"
    elif label == 7:  # Lysosome/vacuole: signal peptide + C-terminal di-leucine/tyrosine motif
        n_term, c_term = _signal_peptide(rng), "GYQTLL"
    elif label == 8:  # Golgi: single N-proximal anchor (type II) + cytoplasmic KXD/E-like tail
        n_term = "M" + _bg(rng, int(rng.integers(3, 8))) + _tm(rng)
        c_term = "KKSE"
    elif label == 9:  # Peroxisome: C-terminal PTS1
        c_term = "SKL"
    n_term = n_term.replace("X", _bg(rng, 1))
    motif_len = len(n_term) + len(c_term) + sum(len(m) for m in middle)
    filler = max(length - motif_len, len(middle) + 4)
    # split the filler into len(middle)+1 chunks
    cuts = np.sort(rng.integers(0, filler + 1, size=len(middle)))
    chunks, prev = [], 0
    for c in cuts:
        chunks.append(_bg(rng, int(c - prev)))
        prev = int(c)
    chunks.append(_bg(rng, filler - prev))
    body = chunks[0]
    for m, ch in zip(middle, chunks[1:], strict=True):
        body += m + ch
    if not n_term:
        body = "M" + body[1:] if body else "M"
    return n_term + body + c_term


def _mutate(rng: np.random.Generator, seq: str, rate: float) -> str:
    if rate <= 0:
        return seq
    arr = list(seq)
    mask = rng.random(len(arr)) < rate
    for i in np.nonzero(mask)[0]:
        arr[i] = AMINO_ACIDS[int(rng.integers(0, 20))]
    return "".join(arr)


def make_samples(rng: np.random.Generator, labels: np.ndarray, cfg: GeneratorConfig) -> list[tuple[str, str]]:
    out = []
    for lab in labels:
        length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        seq = _mutate(rng, _compose(rng, int(lab), length), cfg.motif_noise)
        shown = int(lab)
        if rng.random() < cfg.label_noise:
            shown = int(rng.integers(0, len(LOCATION_CLASSES)))
        out.append((seq, LOCATION_CLASSES[shown]))
    return out


def dirichlet_split(
    rng: np.random.Generator, labels: np.ndarray, n_sites: int, alpha: float
) -> list[np.ndarray]:
    """Indices per site: for every class, its samples are divided by a Dirichlet(alpha) draw."""
    per_site: list[list[int]] = [[] for _ in range(n_sites)]
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        rng.shuffle(idx)
        p = rng.dirichlet([alpha] * n_sites)
        counts = np.floor(p * len(idx)).astype(int)
        counts[int(np.argmax(p))] += len(idx) - counts.sum()
        start = 0
        for s in range(n_sites):
            per_site[s].extend(idx[start : start + counts[s]].tolist())
            start += counts[s]
    return [np.array(sorted(x), dtype=int) for x in per_site]


def _check_lengths(min_len: int, max_len: int) -> None:
    if min_len < 30 or max_len < min_len:
        raise ValueError("need 30 <= min_len <= max_len")


def generate(cfg: GeneratorConfig) -> dict:
    """Generate all sites' rows in memory: {"sites": {name: [row, ...]}, "test": [row, ...]}."""
    if cfg.sites < 1:
        raise ValueError("sites must be >= 1")
    if cfg.alpha <= 0:
        raise ValueError("alpha must be > 0")
    if not 0 < cfg.val_fraction < 1:
        raise ValueError("val_fraction must be in (0, 1)")
    _check_lengths(cfg.min_len, cfg.max_len)
    rng = np.random.default_rng(cfg.seed)
    n_cls = len(LOCATION_CLASSES)
    total = cfg.sites * cfg.samples_per_site
    labels = np.arange(total) % n_cls
    rng.shuffle(labels)
    samples = make_samples(rng, labels, cfg)
    parts = dirichlet_split(rng, labels, cfg.sites, cfg.alpha)
    sites = {}
    for name, idx in zip(cfg.names(), parts, strict=True):
        order = rng.permutation(len(idx))
        n_val = max(1, int(round(cfg.val_fraction * len(idx)))) if len(idx) > 1 else 0
        rows = []
        for k, j in enumerate(order):
            seq, lab = samples[idx[j]]
            rows.append({"sequence": seq, "label": lab, "split": "val" if k < n_val else "train"})
        sites[name] = rows
    test_labels = np.arange(cfg.test_samples) % n_cls
    test = [{"sequence": s, "label": lab, "split": "test"} for s, lab in make_samples(rng, test_labels, cfg)]
    return {"sites": sites, "test": test}


PUBLIC_STREAM = 0x5055424C  # "PUBL": the public corpus' own random stream, apart from every site's


def public_corpus(n: int, seed: int = 0, min_len: int = 40, max_len: int = 90, motif_noise: float = 0.08) -> list[str]:
    """``n`` unlabelled sequences from the same family as the sites' data, for pretraining: the
    stand-in for a public corpus such as UniRef, on which the real ESM2 checkpoints were trained.
    Drawn from a random stream of its own (never the sites'), so it shares no sequence with them
    by construction (tests/unit/test_datagen.py checks it)."""
    if n < 1:
        raise ValueError("the corpus needs at least one sequence")
    _check_lengths(min_len, max_len)
    rng = np.random.default_rng([PUBLIC_STREAM, seed])
    labels = rng.integers(0, len(LOCATION_CLASSES), size=n)
    cfg = GeneratorConfig(min_len=min_len, max_len=max_len, motif_noise=motif_noise, label_noise=0.0)
    return [seq for seq, _ in make_samples(rng, labels, cfg)]


def _write_rows(path: Path, rows: list[dict], fmt: str) -> None:
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["sequence", "label", "split"])
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({k: [r[k] for r in rows] for k in ("sequence", "label", "split")})
        pq.write_table(table, path)
    else:
        raise ValueError(f"unknown format {fmt!r} (csv or parquet)")


def write_dataset(cfg: GeneratorConfig, out_dir: str | os.PathLike) -> dict:
    """Write ``<out>/<site>.<fmt>``, ``<out>/test.<fmt>`` and ``<out>/manifest.json``; return the manifest."""
    data = generate(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "seed": cfg.seed,
        "alpha": cfg.alpha,
        "classes": list(LOCATION_CLASSES),
        "format": cfg.fmt,
        "sites": {},
    }
    for name, rows in data["sites"].items():
        p = out / f"{name}.{cfg.fmt}"
        _write_rows(p, rows, cfg.fmt)
        counts = {c: 0 for c in LOCATION_CLASSES}
        for r in rows:
            counts[r["label"]] += 1
        manifest["sites"][name] = {
            "path": str(p.resolve()),
            "samples": len(rows),
            "train": sum(r["split"] == "train" for r in rows),
            "val": sum(r["split"] == "val" for r in rows),
            "label_counts": counts,
        }
    tp = out / f"test.{cfg.fmt}"
    _write_rows(tp, data["test"], cfg.fmt)
    manifest["test"] = {"path": str(tp.resolve()), "samples": len(data["test"])}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
