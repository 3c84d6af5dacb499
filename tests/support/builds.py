"""Artifacts the test fixtures build once and cache outside the repo (hack/*/build.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def built(build_sh: Path, override_env: str) -> Path:
    """``$override_env`` if set, else the path ``build_sh`` prints last (it builds or reuses by content)."""
    override = os.environ.get(override_env)
    if override:
        return Path(override)
    proc = subprocess.run(["bash", str(build_sh)], stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{build_sh} failed with exit code {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"{build_sh} printed nothing")
    return Path(lines[-1].strip())
