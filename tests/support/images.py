"""The project's container images for tests on a real node: built (or reused) by
hack/images/build.sh, which prints what it built as JSON on the last line of stdout.

    imgs = project_images()
    imgs.runtime_ref        # localhost/flare-operator/runtime:<content hash>
    imgs.archives()         # [pause, operator, runtime] OCI archives for `cluster up --import`

``FLARE_IMAGES_JSON`` (a file holding that JSON) skips the build, e.g. to reuse a built set.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.controlplane import REPO_ROOT

BUILD_SH = REPO_ROOT / "hack" / "images" / "build.sh"

__all__ = ["ProjectImages", "project_images"]


@dataclass(frozen=True)
class ProjectImages:
    pause: Path
    pause_ref: str
    operator: Path
    operator_ref: str
    runtime: Path
    runtime_ref: str

    def archives(self, *names: str) -> list[Path]:
        """Archives to import, pause always first (the node cannot start pods without it)."""
        names = names or ("operator", "runtime")
        return [self.pause, *(getattr(self, n) for n in names)]

    @classmethod
    def from_json(cls, data: dict) -> ProjectImages:
        return cls(
            pause=Path(data["pause"]),
            pause_ref=data["pause_ref"],
            operator=Path(data["operator"]["archive"]),
            operator_ref=data["operator"]["ref"],
            runtime=Path(data["runtime"]["archive"]),
            runtime_ref=data["runtime"]["ref"],
        )


@functools.lru_cache(maxsize=1)
def project_images() -> ProjectImages:
    """Build (cold: minutes; cached by content afterwards: about a second) and describe them."""
    override = os.environ.get("FLARE_IMAGES_JSON")
    if override:
        return ProjectImages.from_json(json.loads(Path(override).read_text()))
    proc = subprocess.run(
        ["bash", str(BUILD_SH)], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SH} failed with exit code {proc.returncode} (its output is above)")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    images = ProjectImages.from_json(json.loads(lines[-1]))
    for archive in (images.pause, images.operator, images.runtime):
        if not archive.is_file():
            raise RuntimeError(f"{BUILD_SH} named {archive}, which does not exist")
    return images
