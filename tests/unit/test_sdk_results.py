"""`flare-operator fetch` / sdk.results: a job's results downloaded and checked against its status."""

from __future__ import annotations

import pytest

from flare_operator.sdk.results import download_results
from flare_operator.store.results import LocalStore, ResultsCorrupt


def stored(tmp_path) -> dict:
    tree = tmp_path / "tree"
    (tree / "model").mkdir(parents=True)
    (tree / "metrics.json").write_text('{"history": []}')
    (tree / "model" / "model.safetensors").write_bytes(b"\0" * 1000)
    return LocalStore(tmp_path / "store").put_tree(tree, "modeller", "run1").model_dump(by_alias=True)


def test_every_listed_file_is_downloaded(tmp_path):
    results = stored(tmp_path)
    paths = download_results(results, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in paths) == ["metrics.json", "model/model.safetensors"]
    assert (tmp_path / "out" / "metrics.json").read_text() == '{"history": []}'


def test_a_file_that_differs_from_its_sha256_is_an_error_not_a_download(tmp_path):
    results = stored(tmp_path)
    (tmp_path / "store" / "modeller" / "run1" / "metrics.json").write_text('{"history": [1]}')
    with pytest.raises(ResultsCorrupt, match="metrics.json"):
        download_results(results, tmp_path / "out")
