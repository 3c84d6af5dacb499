"""Kits (tar.gz of a participant's startup folder) unpack safely with and without CPython's tar
filters (3.11.4+; the images' Debian stand-in base has 3.11.2)."""

from __future__ import annotations

import io
import tarfile

import pytest

from flare_operator.nvflare.provisioning import pack_kit, unpack_kit


def kit(tmp_path) -> bytes:
    src = tmp_path / "site-1"
    (src / "startup").mkdir(parents=True)
    (src / "startup" / "client.crt").write_text("cert")
    (src / "startup" / "client.key").write_text("key")
    (src / "startup" / "client.key").chmod(0o600)
    return pack_kit(src)


def evil() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


@pytest.mark.parametrize("filters", [True, False], ids=["tar-filters", "no-tar-filters"])
def test_a_kit_unpacks_and_a_path_outside_is_refused(tmp_path, monkeypatch, filters):
    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    unpack_kit(kit(tmp_path), tmp_path / "out")
    unpacked = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert unpacked and all(name.startswith("startup/") for name in unpacked), unpacked
    with pytest.raises(Exception, match="outside|relative"):
        unpack_kit(evil(), tmp_path / "evil")
    assert not (tmp_path / "outside.txt").exists()
