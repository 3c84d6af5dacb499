"""Epsilon a job will spend, for a site's budget check before it runs.

Uses the same accountant code the apps run (``flare_apps/_shared/flare_app_common/dp.py``, loaded
from the catalog by path, so there is one implementation) and Google's ``dp-accounting``, imported
only when called (it is in the ``train`` extra, not the operator's base dependencies).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping

from .loader import CatalogError, shared_dir


def _dp_module(root: str | os.PathLike | None = None):
    path = shared_dir(root) / "flare_app_common" / "dp.py"
    if not path.is_file():
        raise CatalogError(f"DP accountant not found at {path}")
    return _load(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int):
    spec = importlib.util.spec_from_file_location("_flareop_catalog_dp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def expected_epsilon(
    privacy: Mapping | None, rounds: int, root: str | os.PathLike | None = None
) -> float | None:
    """Epsilon per site after ``rounds`` rounds under ``privacy`` (validated shape); None without DP."""
    from .schemas import validate_privacy

    p = validate_privacy(privacy)["differentialPrivacy"]
    if not p["enabled"]:
        return None
    try:
        mod = _dp_module(root)
        return float(mod.epsilon_spent(p["noiseMultiplier"], int(rounds), p["delta"], p["accountant"]))
    except ModuleNotFoundError as e:  # dp-accounting not installed
        raise CatalogError(f"epsilon accounting needs the dp-accounting package: {e}") from e


def noise_multiplier_for_epsilon(
    target_epsilon: float,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
    root: str | os.PathLike | None = None,
) -> float:
    """Smallest Gaussian noise multiplier that keeps each site's epsilon after ``rounds`` at or below the target."""
    try:
        mod = _dp_module(root)
        return float(
            mod.calibrate_noise_multiplier(float(target_epsilon), int(rounds), float(delta), accountant)
        )
    except ModuleNotFoundError as e:
        raise CatalogError(f"epsilon accounting needs the dp-accounting package: {e}") from e


def composed_epsilon(events: list[Mapping], delta: float, root: str | os.PathLike | None = None) -> float:
    """Epsilon at ``delta`` of privacy events composed with the RDP accountant (``dp.composed_epsilon``;
    events as a DatasetGrant's ledger holds them: mechanism, noiseMultiplier, sampleRate, count)."""
    try:
        return float(_dp_module(root).composed_epsilon(list(events), float(delta)))
    except ModuleNotFoundError as e:
        raise CatalogError(f"epsilon accounting needs the dp-accounting package: {e}") from e
