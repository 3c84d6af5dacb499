"""Read a site's dataset (CSV or Parquet: sequence, label, optional split) and tokenize it."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

VALID_RESIDUES = set("LAGVSERTIDPKQNFYMHWCXBUZO")
TRAIN_SPLITS = {"train", "training"}
VAL_SPLITS = {"val", "valid", "validation", "holdout", "test", "eval"}


class DataError(ValueError):
    """The dataset is missing or malformed; the message says what and where."""


@dataclass
class Dataset:
    input_ids: list[list[int]]
    labels: np.ndarray
    truncated: int

    def __len__(self):
        return len(self.input_ids)


def _read_csv(path: str) -> tuple[list[str], dict[str, list]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = list(reader.fieldnames or [])
        data: dict[str, list] = {c: [] for c in cols}
        for row in reader:
            for c in cols:
                data[c].append(row.get(c))
    return cols, data


def _read_parquet(path: str) -> tuple[list[str], dict[str, list]]:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return list(t.column_names), {c: t.column(c).to_pylist() for c in t.column_names}


def read_table(path: str) -> dict[str, list]:
    """Columns of the dataset file(s). A directory means every .csv/.parquet file in it, sorted."""
    if not path:
        raise DataError("no dataset path given")
    if not os.path.exists(path):
        raise DataError(f"dataset not found: {path}")
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f) for f in os.listdir(path) if f.endswith((".csv", ".parquet", ".pq"))
        )
        if not files:
            raise DataError(f"dataset directory {path} has no .csv or .parquet files")
    else:
        files = [path]
    merged: dict[str, list] = {}
    for fp in files:
        try:
            if fp.endswith((".parquet", ".pq")):
                cols, data = _read_parquet(fp)
            elif fp.endswith((".csv", ".txt")):
                cols, data = _read_csv(fp)
            else:
                raise DataError(f"{fp}: unsupported format (use .csv or .parquet)")
        except DataError:
            raise
        except Exception as e:  # pyarrow / csv errors
            raise DataError(f"{fp}: cannot be read as a table: {e}") from e
        missing = [c for c in ("sequence", "label") if c not in cols]
        if missing:
            raise DataError(f"{fp}: missing required column(s) {missing}; found columns {cols}")
        for c in ("sequence", "label", "split"):
            if c in data:
                merged.setdefault(c, []).extend(data[c])
            elif c == "split" and "split" in merged:
                merged["split"].extend([None] * len(data["sequence"]))
    if not merged.get("sequence"):
        raise DataError(f"dataset {path} has no rows")
    return merged


def parse_labels(raw: list, classes: list[str], path: str) -> np.ndarray:
    index = {c.lower(): i for i, c in enumerate(classes)}
    out, bad = [], {}
    for row, v in enumerate(raw):
        s = "" if v is None else str(v).strip()
        if s.lower() in index:
            out.append(index[s.lower()])
        elif s.lstrip("-").isdigit() and 0 <= int(s) < len(classes):
            out.append(int(s))
        else:
            bad.setdefault(s, []).append(row + 1)
            out.append(-1)
    if bad:
        detail = "; ".join(
            f"{k!r} (rows {v[:3]}{'...' if len(v) > 3 else ''})" for k, v in list(bad.items())[:5]
        )
        raise DataError(
            f"{path}: unknown label(s) {detail}; expected one of {classes} or 0..{len(classes) - 1}"
        )
    return np.array(out, dtype=np.int64)


def check_sequences(seqs: list, path: str) -> list[str]:
    out, bad = [], []
    for row, s in enumerate(seqs):
        s2 = "" if s is None else str(s).strip().upper()
        if not s2 or not set(s2) <= VALID_RESIDUES:
            bad.append(row + 1)
        out.append(s2)
    if bad:
        raise DataError(
            f"{path}: {len(bad)} row(s) with an empty sequence or characters outside the amino-acid alphabet "
            f"(rows {bad[:5]}{'...' if len(bad) > 5 else ''})"
        )
    return out


def split_indices(
    splits: list | None, n: int, val_fraction: float, seed: int, path: str, require_both: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Train/holdout indices: from the split column when present, else a seeded random holdout.
    ``require_both``: refuse a dataset without training or without holdout rows."""
    if splits is not None and any(s not in (None, "") for s in splits):
        norm = [("" if s is None else str(s).strip().lower()) for s in splits]
        unknown = sorted({s for s in norm if s not in TRAIN_SPLITS | VAL_SPLITS})
        if unknown:
            raise DataError(f"{path}: unknown split value(s) {unknown}; use train or val")
        tr = np.array([i for i, s in enumerate(norm) if s in TRAIN_SPLITS], dtype=int)
        va = np.array([i for i, s in enumerate(norm) if s in VAL_SPLITS], dtype=int)
    else:
        perm = np.random.default_rng(seed).permutation(n)
        k = max(1, int(round(val_fraction * n)))
        va, tr = np.sort(perm[:k]), np.sort(perm[k:])
    if require_both:
        _require_rows(len(tr), len(va), path)
    return tr, va


def _require_rows(n_train: int, n_val: int, where: str) -> None:
    if n_train == 0:
        raise DataError(f"{where}: no training rows")
    if n_val == 0:
        raise DataError(f"{where}: no holdout rows (split == 'val')")


def encode(tokenizer, seqs: list[str], max_len: int) -> tuple[list[list[int]], int]:
    """Token ids with <cls> ... <eos>; sequences longer than max_len-2 residues are truncated (counted)."""
    ids, truncated = [], 0
    keep = max_len - 2
    for s in seqs:
        if len(s) > keep:
            truncated += 1
            s = s[:keep]
        ids.append(tokenizer.encode(s, add_special_tokens=True))
    return ids, truncated


def load_site_data(
    path: str | list[str],
    classes: list[str],
    tokenizer,
    max_len: int,
    val_fraction: float = 0.2,
    seed: int = 0,
):
    """(train Dataset, holdout Dataset) for one site.

    Several paths (a site training on several of its datasets): each is read, checked and split
    on its own, then the training parts and the holdout parts are concatenated; one of them may
    be training-only or holdout-only, the union must have both."""
    if isinstance(path, str):
        return _load_one(path, classes, tokenizer, max_len, val_fraction, seed, require_both=True)
    if not path:
        raise DataError("no dataset path given")
    parts = [_load_one(p, classes, tokenizer, max_len, val_fraction, seed, require_both=False) for p in path]
    tr_set, va_set = (
        Dataset(
            [ids for part in parts for ids in part[i].input_ids],
            np.concatenate([part[i].labels for part in parts]),
            sum(part[i].truncated for part in parts),
        )
        for i in (0, 1)
    )
    _require_rows(len(tr_set), len(va_set), " + ".join(path))
    return tr_set, va_set


def _load_one(path, classes, tokenizer, max_len, val_fraction, seed, *, require_both: bool):
    t = read_table(path)
    seqs = check_sequences(t["sequence"], path)
    labels = parse_labels(t["label"], classes, path)
    tr, va = split_indices(t.get("split"), len(seqs), val_fraction, seed, path, require_both)
    ids, truncated = encode(tokenizer, seqs, max_len)
    if truncated:
        log.warning(
            "%s: %d of %d sequences longer than maxSeqLength=%d were truncated",
            path,
            truncated,
            len(seqs),
            max_len,
        )
    tr_set = Dataset([ids[i] for i in tr], labels[tr], int(sum(len(seqs[i]) > max_len - 2 for i in tr)))
    va_set = Dataset([ids[i] for i in va], labels[va], int(sum(len(seqs[i]) > max_len - 2 for i in va)))
    return tr_set, va_set


def load_eval_data(path: str, classes: list[str], tokenizer, max_len: int) -> Dataset:
    """Every row of a labelled file as one evaluation set (the split column is ignored)."""
    t = read_table(path)
    seqs = check_sequences(t["sequence"], path)
    labels = parse_labels(t["label"], classes, path)
    ids, truncated = encode(tokenizer, seqs, max_len)
    return Dataset(ids, labels, truncated)
