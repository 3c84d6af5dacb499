"""Synthetic data generator: determinism, non-IID split, per-site holdouts, CLI, formats."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from flare_operator.datagen import LOCATION_CLASSES, GeneratorConfig, dirichlet_split, generate, write_dataset


def _label_hist(rows):
    h = np.zeros(len(LOCATION_CLASSES))
    for r in rows:
        h[LOCATION_CLASSES.index(r["label"])] += 1
    return h / max(h.sum(), 1)


def test_deterministic_by_seed():
    cfg = GeneratorConfig(sites=3, samples_per_site=100, seed=7)
    assert generate(cfg) == generate(cfg)
    other = generate(GeneratorConfig(sites=3, samples_per_site=100, seed=8))
    assert other != generate(cfg)


def test_files_are_byte_identical_across_runs(tmp_path):
    cfg = GeneratorConfig(sites=2, samples_per_site=80, seed=3)
    write_dataset(cfg, tmp_path / "a")
    write_dataset(cfg, tmp_path / "b")
    for name in ("site-1.csv", "site-2.csv", "test.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_non_iid_split_with_small_alpha():
    cfg = GeneratorConfig(sites=2, samples_per_site=500, alpha=0.3, seed=0, label_noise=0.0)
    d = generate(cfg)
    h1, h2 = (_label_hist(d["sites"][s]) for s in ("site-1", "site-2"))
    tv = 0.5 * np.abs(h1 - h2).sum()  # total-variation distance between label distributions
    assert tv > 0.3
    # every sample assigned exactly once
    assert sum(len(v) for v in d["sites"].values()) == 1000


def test_large_alpha_is_close_to_iid():
    d = generate(GeneratorConfig(sites=2, samples_per_site=500, alpha=1000.0, seed=0, label_noise=0.0))
    h1, h2 = (_label_hist(d["sites"][s]) for s in ("site-1", "site-2"))
    assert 0.5 * np.abs(h1 - h2).sum() < 0.1


def test_dirichlet_split_partitions_indices():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 10
    parts = dirichlet_split(rng, labels, 4, 0.5)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(300))


def test_per_site_holdouts_and_columns():
    d = generate(GeneratorConfig(sites=3, samples_per_site=200, val_fraction=0.25, seed=1))
    for rows in d["sites"].values():
        splits = [r["split"] for r in rows]
        assert set(splits) == {"train", "val"}
        assert splits.count("val") == pytest.approx(0.25 * len(rows), abs=1)
        for r in rows:
            assert set(r) == {"sequence", "label", "split"}
            assert set(r["sequence"]) <= set("ACDEFGHIKLMNPQRSTVWY")
            assert 30 <= len(r["sequence"])
    assert {r["split"] for r in d["test"]} == {"test"}


def test_motifs_are_present():
    d = generate(GeneratorConfig(sites=1, samples_per_site=400, seed=2, motif_noise=0.0, label_noise=0.0))
    rows = d["sites"]["site-1"]
    er = [r["sequence"] for r in rows if r["label"] == "Endoplasmic_reticulum"]
    pex = [r["sequence"] for r in rows if r["label"] == "Peroxisome"]
    assert er and all(s.endswith("KDEL") for s in er)
    assert pex and all(s.endswith("SKL") for s in pex)


def test_cli_writes_sites_manifest_and_parquet(tmp_path):
    out = tmp_path / "data"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flare_operator.datagen",
            "--sites",
            "2",
            "--out",
            str(out),
            "--seed",
            "0",
            "--samples-per-site",
            "50",
            "--format",
            "parquet",
            "--site-names",
            "org-a,org-b",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = json.loads(r.stdout)
    assert set(printed["sites"]) == {"org-a", "org-b"}
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == list(LOCATION_CLASSES)
    import pyarrow.parquet as pq

    t = pq.read_table(out / "org-a.parquet")
    assert t.column_names == ["sequence", "label", "split"]
    assert t.num_rows == m["sites"]["org-a"]["samples"]


def test_cli_csv_and_bad_args(tmp_path):
    out = tmp_path / "c"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "flare_operator.datagen",
            "--sites",
            "1",
            "--out",
            str(out),
            "--samples-per-site",
            "20",
        ],
        check=True,
        capture_output=True,
    )
    with open(out / "site-1.csv") as f:
        assert next(csv.reader(f)) == ["sequence", "label", "split"]
    r = subprocess.run(
        [sys.executable, "-m", "flare_operator.datagen", "--out", str(out), "--alpha", "0"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "alpha must be > 0" in r.stderr


def test_datagen_imports_no_torch():
    code = "import sys, flare_operator.datagen; assert 'torch' not in sys.modules and 'nvflare' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_config():
    with pytest.raises(ValueError, match="site names"):
        GeneratorConfig(sites=2, site_names=["a"]).names()
    with pytest.raises(ValueError, match="min_len"):
        generate(GeneratorConfig(min_len=10))


def test_the_public_corpus_is_the_same_family_and_shares_nothing_with_the_sites(tmp_path):
    """The pretraining corpus: deterministic by seed, unlabelled, with the sites' motifs, and no
    sequence of any site's data or the test set in it (its own random stream)."""
    from flare_operator.datagen import public_corpus

    corpus = public_corpus(3000, seed=0)
    assert corpus == public_corpus(3000, seed=0) and corpus != public_corpus(3000, seed=1)
    assert all(40 <= len(s) <= 200 and set(s) <= set("ACDEFGHIKLMNPQRSTVWY") for s in corpus)
    assert sum("KDEL" in s[-4:] for s in corpus) > 100  # ER retention, one class in ten
    data = generate(GeneratorConfig(sites=3, seed=0))
    held = {r["sequence"] for rows in data["sites"].values() for r in rows} | {r["sequence"] for r in data["test"]}
    assert not held & set(corpus)
    out = tmp_path / "corpus.txt"
    subprocess.run([sys.executable, "-m", "flare_operator.datagen", "--corpus", "50", "--out", str(out)], check=True,
                   capture_output=True)
    assert out.read_text().split() == public_corpus(50, seed=0)
    with pytest.raises(ValueError):
        public_corpus(0)
