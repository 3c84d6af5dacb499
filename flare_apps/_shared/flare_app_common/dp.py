"""Client-level differential privacy: clip the model update, add Gaussian noise, account epsilon.

Mechanism (per site, per round): the site's update Δ (difference between its locally trained
trainable parameters and the global ones it received) is clipped to L2 norm ``clip_norm`` over
all exchanged tensors together, then N(0, (noise_multiplier * clip_norm)^2) noise is added to
every coordinate before the update leaves the site. One round is one Gaussian mechanism with
L2 sensitivity ``clip_norm`` on the site's whole dataset (add/remove the site's contribution),
and a site takes part in every round (no sub-sampling), so ``rounds`` releases compose.
Epsilon at a fixed delta is computed with Google's dp-accounting (RDP or PLD).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ACCOUNTANTS = ("rdp", "pld")


def epsilon_spent(noise_multiplier: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon after ``rounds`` Gaussian releases with ``noise_multiplier`` at ``delta``."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    from dp_accounting import dp_event

    event = dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), rounds)
    if accountant == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant

        acc = rdp_privacy_accountant.RdpAccountant()
    elif accountant == "pld":
        from dp_accounting.pld import pld_privacy_accountant

        acc = pld_privacy_accountant.PLDAccountant()
    else:
        raise ValueError(f"unknown accountant {accountant!r}; one of {ACCOUNTANTS}")
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def clip_and_noise(
    update: Mapping[str, np.ndarray], clip_norm: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], float]:
    """Return (clipped + noised update, the update's L2 norm before clipping)."""
    if clip_norm <= 0:
        raise ValueError("clip_norm must be > 0")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in update.items()}
    norm = float(np.sqrt(sum(float(np.sum(a * a)) for a in arrays.values())))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    out = {}
    for k, a in arrays.items():
        orig = np.asarray(update[k])
        noised = a * scale + (rng.normal(0.0, std, size=a.shape) if std > 0 else 0.0)
        out[k] = noised.astype(orig.dtype if np.issubdtype(orig.dtype, np.floating) else np.float32)
    return out, norm


def calibrate_noise_multiplier(
    target_epsilon: float, rounds: int, delta: float, accountant: str = "rdp", tol: float = 1e-3
) -> float:
    """Smallest noise multiplier whose epsilon after ``rounds`` rounds is <= ``target_epsilon`` (bisection)."""
    if target_epsilon <= 0:
        raise ValueError("target epsilon must be > 0")
    if rounds <= 0:
        raise ValueError("rounds must be > 0")
    lo, hi = 1e-3, 1.0
    while epsilon_spent(hi, rounds, delta, accountant) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise ValueError(f"epsilon {target_epsilon} is unreachable for {rounds} rounds at delta {delta}")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if epsilon_spent(mid, rounds, delta, accountant) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
