"""The local results store: a job's files go to <root>/<namespace>/<job>/ whole, come back checked
against their recorded sha256, and never land outside the folder they are fetched into."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from flare_operator.api.job import ResultFile, Results
from flare_operator.config import OperatorConfig, ResultsStoreConfig
from flare_operator.store import LocalStore, ResultsCorrupt, S3Store, store_from_config

TREE = {
    "model.safetensors": b"\x00\x01weights" * 1000,
    "metrics.json": b'{"loss": 0.25}\n',
    "MODEL_CARD.md": b"# ESM2 LoRA\n",
    "logs/site-1/log.txt": b"round 1\nround 2\n",
    "tensorboard/events.out.tfevents.1": b"tb",
}


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_then_get_roundtrip(tmp_path):
    store = LocalStore(tmp_path / "store")
    results = store.put_tree(make_tree(tmp_path / "out", TREE), "consumer-a", "esm2-run")

    job_dir = (tmp_path / "store" / "consumer-a" / "esm2-run").resolve()
    assert results.location == str(job_dir) and Path(results.location).is_absolute()
    assert [f.name for f in results.files] == sorted(TREE)
    for f in results.files:
        assert f.size == len(TREE[f.name]) and f.sha256 == sha(TREE[f.name])
        assert (job_dir / f.name).read_bytes() == TREE[f.name]
    Results.model_validate(results.model_dump())  # fits the API model

    paths = store.get_tree(results, tmp_path / "fetched")
    assert sorted(p.relative_to(tmp_path / "fetched").as_posix() for p in paths) == sorted(TREE)
    for name, data in TREE.items():
        assert (tmp_path / "fetched" / name).read_bytes() == data
    assert not list((tmp_path / "fetched").rglob("*.part"))
    assert not [p for p in (tmp_path / "store" / "consumer-a").iterdir() if p.name.startswith(".")]


def test_put_replaces_the_job_folder_and_leaves_other_jobs(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_tree(make_tree(tmp_path / "v1", TREE), "ns", "job")
    store.put_tree(make_tree(tmp_path / "other", {"a.txt": b"a"}), "ns", "other-job")

    second = {"model.safetensors": b"new weights", "metrics.json": b"{}"}
    results = store.put_tree(make_tree(tmp_path / "v2", second), "ns", "job")

    job_dir = tmp_path / "store" / "ns" / "job"
    on_disk = sorted(p.relative_to(job_dir).as_posix() for p in job_dir.rglob("*") if p.is_file())
    assert on_disk == sorted(second)  # logs/, tensorboard/, MODEL_CARD.md are gone
    assert [f.name for f in results.files] == sorted(second)
    assert (job_dir / "model.safetensors").read_bytes() == b"new weights"
    assert (tmp_path / "store" / "ns" / "other-job" / "a.txt").read_bytes() == b"a"
    assert sorted(p.name for p in (tmp_path / "store" / "ns").iterdir()) == ["job", "other-job"]

    store.delete("ns", "job")
    assert not job_dir.exists() and (tmp_path / "store" / "ns" / "other-job").is_dir()
    store.delete("ns", "job")  # idempotent


def test_tampered_file_is_detected_with_both_hashes(tmp_path):
    store = LocalStore(tmp_path / "store")
    results = store.put_tree(make_tree(tmp_path / "out", TREE), "ns", "job")
    stored = Path(results.location) / "metrics.json"
    stored.write_bytes(b'{"loss": 0.01}\n')  # same length, other content
    expected = sha(TREE["metrics.json"])

    with pytest.raises(ResultsCorrupt) as info:
        store.get_tree(results, tmp_path / "fetched")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "metrics.json" in message and expected in message and sha(b'{"loss": 0.01}\n') in message
    assert not (tmp_path / "fetched" / "metrics.json").exists()

    stored.unlink()
    with pytest.raises(ResultsCorrupt, match="metrics.json.*missing"):
        store.get_tree(results, tmp_path / "fetched2")


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\..\\b"])
def test_names_that_escape_dest_are_refused(tmp_path, name):
    store = LocalStore(tmp_path / "store")
    results = Results(
        location=str(tmp_path / "store"), files=[ResultFile(name=name, size=1, sha256="0" * 64)]
    )
    with pytest.raises(ValueError, match="refusing"):
        store.get_tree(results, tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()


def test_symlinked_folder_under_dest_cannot_lead_outside(tmp_path):
    store = LocalStore(tmp_path / "store")
    results = store.put_tree(make_tree(tmp_path / "out", {"sub/f.txt": b"x"}), "ns", "job")
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (dest / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside"):
        store.get_tree(results, dest)
    assert not (tmp_path / "elsewhere" / "f.txt").exists()


@pytest.mark.parametrize(("namespace", "job"), [("..", "job"), ("ns", "a/b"), ("", "job"), ("ns", ".hidden")])
def test_bad_namespace_or_job_refused(tmp_path, namespace, job):
    with pytest.raises(ValueError, match="invalid"):
        LocalStore(tmp_path).put_tree(make_tree(tmp_path / "out", {"a": b"a"}), namespace, job)


def test_symlinks_out_of_the_results_folder_are_not_stored(tmp_path, caplog):
    secret = tmp_path / "operator-secret.key"
    secret.write_bytes(b"secret")
    out = make_tree(tmp_path / "out", {"model.bin": b"m"})
    (out / "leak.key").symlink_to(secret)
    (out / "alias.bin").symlink_to(out / "model.bin")
    with caplog.at_level(logging.WARNING):
        results = LocalStore(tmp_path / "store").put_tree(out, "ns", "job")
    assert [f.name for f in results.files] == ["alias.bin", "model.bin"]
    assert "leak.key" in caplog.text


def test_more_than_256_files_are_all_stored_first_256_listed(tmp_path, caplog):
    files = {f"shards/part-{i:04d}.bin": str(i).encode() for i in range(300)}
    store = LocalStore(tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="flare_operator.store.results"):
        results = store.put_tree(make_tree(tmp_path / "out", files), "ns", "big")
    assert len(results.files) == 256
    assert [f.name for f in results.files] == sorted(files)[:256]
    assert len(list((Path(results.location) / "shards").iterdir())) == 300
    assert "300 files" in caplog.text and "256" in caplog.text
    Results.model_validate(results.model_dump())


def test_empty_tree_and_missing_source(tmp_path):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "empty").mkdir()
    results = store.put_tree(tmp_path / "empty", "ns", "job")
    assert results.files == [] and Path(results.location).is_dir()
    with pytest.raises(FileNotFoundError):
        store.put_tree(tmp_path / "nope", "ns", "job")


def test_config_defaults_and_store_from_config(tmp_path, monkeypatch):
    cfg = OperatorConfig()
    assert cfg.results_store.type == "local" and cfg.results_store.path is None
    store = store_from_config(cfg, tmp_path / "wd")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "wd" / "results"

    local = OperatorConfig.model_validate({"resultsStore": {"type": "local", "path": str(tmp_path / "r")}})
    assert store_from_config(local.results_store, tmp_path).root == tmp_path / "r"

    with pytest.raises(ValidationError, match="s3"):
        ResultsStoreConfig.model_validate({"type": "s3"})
    with pytest.raises(ValidationError):
        ResultsStoreConfig.model_validate({"type": "s3", "s3": {"bucket": "b", "secretAccessKey": "inline"}})

    s3cfg = OperatorConfig.model_validate(
        {
            "resultsStore": {
                "type": "s3",
                "s3": {
                    "endpoint": "http://127.0.0.1:1",
                    "bucket": "results",
                    "prefix": "flare",
                    "accessKeyIdEnv": "MY_KEY",
                    "secretAccessKeyEnv": "MY_SECRET",
                    "createBucket": True,
                },
            }
        }
    )
    assert s3cfg.results_store.s3 is not None and s3cfg.results_store.s3.region == "us-east-1"
    monkeypatch.setenv("MY_KEY", "AK")
    monkeypatch.setenv("MY_SECRET", "SK")
    s3 = store_from_config(s3cfg, tmp_path)
    assert isinstance(s3, S3Store)
    assert s3.location("ns", "job") == "s3://results/flare/ns/job/"
    creds = s3._client._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("AK", "SK")


def test_get_tree_refuses_foreign_locations(tmp_path):
    with pytest.raises(ValueError, match="not a local folder"):
        LocalStore(tmp_path).get_tree(Results(location="s3://b/ns/job/", files=[]), tmp_path / "d")


def test_put_is_atomic_when_the_copy_fails(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    store.put_tree(make_tree(tmp_path / "v1", {"a.txt": b"old"}), "ns", "job")
    out = make_tree(tmp_path / "v2", {"a.txt": b"new", "b.txt": b"new"})
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("b.txt"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put_tree(out, "ns", "job")
    monkeypatch.undo()
    assert (tmp_path / "store" / "ns" / "job" / "a.txt").read_bytes() == b"old"
    assert sorted(p.name for p in (tmp_path / "store" / "ns").iterdir()) == ["job"]
