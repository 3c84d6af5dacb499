"""A site's dataset: missing or malformed data gives the documented DataError; long sequences are truncated."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "flare_apps" / "esm2-finetune" / "custom"), str(ROOT / "flare_apps" / "_shared")]

from esm2_app import LOCATION_CLASSES  # noqa: E402
from esm2_app.data import DataError, encode, load_site_data, read_table  # noqa: E402

CLASSES = list(LOCATION_CLASSES)


class CharTokenizer:
    """Stand-in for EsmTokenizer (no transformers import in the unit tier): <cls> residues <eos>."""

    def encode(self, s, add_special_tokens=True):
        return [0] + [4 + (ord(c) % 20) for c in s] + [2]


def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="dataset not found: .*nope.csv"):
        read_table(str(tmp_path / "nope.csv"))


def test_missing_column(tmp_path):
    p = _csv(tmp_path, "seq,label\nMKV,Nucleus\n")
    with pytest.raises(
        DataError, match=r"missing required column\(s\) \['sequence'\]; found columns \['seq', 'label'\]"
    ):
        read_table(p)


def test_unknown_labels_listed_with_rows(tmp_path):
    p = _csv(tmp_path, "sequence,label\nMKV,Nucleus\nMKL,Golgi\nMKK,12\nMKA,Golgi\n")
    with pytest.raises(DataError) as ei:
        load_site_data(p, CLASSES, CharTokenizer(), 32)
    msg = str(ei.value)
    assert (
        "unknown label(s) 'Golgi' (rows [2, 4])" in msg and "'12' (rows [3])" in msg and "Peroxisome" in msg
    )


def test_bad_sequence_characters(tmp_path):
    p = _csv(tmp_path, "sequence,label\nMKV,Nucleus\nMK1V,Nucleus\n,Nucleus\n")
    with pytest.raises(
        DataError,
        match=r"2 row\(s\) with an empty sequence or characters outside the amino-acid alphabet \(rows \[2, 3\]\)",
    ):
        load_site_data(p, CLASSES, CharTokenizer(), 32)


def test_unknown_split_value(tmp_path):
    p = _csv(tmp_path, "sequence,label,split\nMKV,Nucleus,train\nMKL,Nucleus,dev\n")
    with pytest.raises(DataError, match=r"unknown split value\(s\) \['dev'\]"):
        load_site_data(p, CLASSES, CharTokenizer(), 32)


def test_no_holdout_rows(tmp_path):
    p = _csv(tmp_path, "sequence,label,split\nMKV,Nucleus,train\nMKL,Nucleus,train\n")
    with pytest.raises(DataError, match="no holdout rows"):
        load_site_data(p, CLASSES, CharTokenizer(), 32)


def test_unsupported_format_and_empty(tmp_path):
    with pytest.raises(DataError, match="unsupported format"):
        read_table(_csv(tmp_path, "x", name="d.json"))
    with pytest.raises(DataError, match="has no rows"):
        read_table(_csv(tmp_path, "sequence,label\n"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="no .csv or .parquet files"):
        read_table(str(tmp_path / "emptydir"))


def test_corrupt_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot be read as a table"):
        read_table(str(p))


def test_long_sequences_truncated_and_counted(tmp_path, caplog):
    rows = ["sequence,label,split"] + [f"{'A' * 100},Cytoplasm,train", "MKV,nucleus,val", f"{'L' * 50},3,val"]
    p = _csv(tmp_path, "\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        tr, va = load_site_data(p, CLASSES, CharTokenizer(), 32)
    assert max(len(x) for x in tr.input_ids) == 32
    assert tr.truncated == 1 and va.truncated == 1
    assert list(va.labels) == [1, 3]  # case-insensitive names and indices both accepted
    assert "2 of 3 sequences longer than maxSeqLength=32 were truncated" in caplog.text


def test_encode_counts_truncation():
    ids, n = encode(CharTokenizer(), ["A" * 10, "A" * 3], 8)
    assert n == 1 and len(ids[0]) == 8 and len(ids[1]) == 5


def test_parquet_and_seeded_holdout_without_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"sequence": ["MKV" * 5] * 20, "label": ["Nucleus"] * 20}), p)
    tr, va = load_site_data(str(p), CLASSES, CharTokenizer(), 64, val_fraction=0.25, seed=0)
    assert len(tr) == 15 and len(va) == 5


def test_several_datasets_of_one_site_are_concatenated(tmp_path):
    a = _csv(tmp_path, "sequence,label,split\nMKV,Nucleus,train\nMKL,Nucleus,val\nMKA,Plastid,train\n", "a.csv")
    b = _csv(tmp_path, f"sequence,label,split\n{'A' * 40},Cytoplasm,train\nMKW,Cytoplasm,val\n", "b.csv")
    tr, va = load_site_data([a, b], CLASSES, CharTokenizer(), 16)
    assert len(tr) == 3 and len(va) == 2
    idx = {c: i for i, c in enumerate(CLASSES)}
    assert list(tr.labels) == [idx["Nucleus"], idx["Plastid"], idx["Cytoplasm"]]
    assert list(va.labels) == [idx["Nucleus"], idx["Cytoplasm"]]
    assert tr.truncated == 1 and va.truncated == 0
    with pytest.raises(DataError, match="dataset not found: .*missing.csv"):
        load_site_data([a, str(tmp_path / "missing.csv")], CLASSES, CharTokenizer(), 16)
    with pytest.raises(DataError, match="no dataset path"):
        load_site_data([], CLASSES, CharTokenizer(), 16)


def test_one_of_several_datasets_may_be_training_only_but_the_union_needs_both(tmp_path):
    train_only = _csv(tmp_path, "sequence,label,split\nMKV,Nucleus,train\nMKA,Plastid,train\n", "t.csv")
    val_only = _csv(tmp_path, "sequence,label,split\nMKW,Cytoplasm,val\n", "v.csv")
    tr, va = load_site_data([train_only, val_only], CLASSES, CharTokenizer(), 16)
    assert (len(tr), len(va)) == (2, 1)
    with pytest.raises(DataError, match=r"t.csv: no holdout rows"):
        load_site_data(train_only, CLASSES, CharTokenizer(), 16)
    other_train_only = _csv(tmp_path, "sequence,label,split\nMKL,Nucleus,train\n", "t2.csv")
    with pytest.raises(DataError, match=r"t.csv \+ .*t2.csv: no holdout rows"):
        load_site_data([train_only, other_train_only], CLASSES, CharTokenizer(), 16)
