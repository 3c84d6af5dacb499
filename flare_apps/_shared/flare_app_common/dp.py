"""Differential privacy accounting for both levels, and the client-level mechanism.

Sample level (DP-SGD, ``sample_dp.py``): each local optimizer step at a site is a Poisson-subsampled
Gaussian mechanism on the site's records (sampling rate q = batch size / records); a job of
``steps`` steps at a site composes ``steps`` of them. The noise multiplier is calibrated for the
whole job (rounds x local steps) before the first step, so the site's epsilon never exceeds the
target; :func:`sample_epsilon_spent` reports it after each round.

Client level:

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


# Integer RDP orders for subsampled steps: dp-accounting's fractional orders below 2 do not converge
# for small sampling rates (it warns and drops them), and cost seconds per calibration.
SAMPLED_RDP_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 256)


def _accountant(accountant: str, orders=None):
    if accountant == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant

        return rdp_privacy_accountant.RdpAccountant(orders=list(orders) if orders else None)
    if accountant == "pld":
        from dp_accounting.pld import pld_privacy_accountant

        return pld_privacy_accountant.PLDAccountant()
    raise ValueError(f"unknown accountant {accountant!r}; one of {ACCOUNTANTS}")


def _epsilon(event, delta: float, accountant: str, orders=None) -> float:
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    acc = _accountant(accountant, orders)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def epsilon_spent(noise_multiplier: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """Client level: epsilon after ``rounds`` Gaussian releases with ``noise_multiplier`` at ``delta``."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    from dp_accounting import dp_event

    return _epsilon(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), rounds), delta, accountant)


def sample_epsilon_spent(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Sample level: epsilon after ``steps`` Poisson-subsampled Gaussian steps (rate ``sample_rate``)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    if not 0 < sample_rate <= 1:
        raise ValueError("sample_rate must be in (0, 1]")
    from dp_accounting import dp_event

    step = dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier))
    return _epsilon(dp_event.SelfComposedDpEvent(step, steps), delta, accountant, SAMPLED_RDP_ORDERS)


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


def _smallest_noise(epsilon_of, target_epsilon: float, what: str, tol: float = 1e-3) -> float:
    """Smallest noise multiplier whose ``epsilon_of(noise)`` is <= ``target_epsilon`` (bisection)."""
    if target_epsilon <= 0:
        raise ValueError("target epsilon must be > 0")
    lo, hi = 1e-3, 1.0
    while epsilon_of(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise ValueError(f"epsilon {target_epsilon} is unreachable for {what}")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if epsilon_of(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def calibrate_noise_multiplier(
    target_epsilon: float, rounds: int, delta: float, accountant: str = "rdp", tol: float = 1e-3
) -> float:
    """Client level: smallest noise multiplier whose epsilon after ``rounds`` rounds is <= ``target_epsilon``."""
    if rounds <= 0:
        raise ValueError("rounds must be > 0")
    return _smallest_noise(lambda z: epsilon_spent(z, rounds, delta, accountant), target_epsilon,
                           f"{rounds} rounds at delta {delta}", tol)


def calibrate_sample_noise_multiplier(
    target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp", tol: float = 1e-3
) -> float:
    """Sample level: smallest noise multiplier whose epsilon after ``steps`` steps at ``sample_rate``
    is <= ``target_epsilon``."""
    if steps <= 0:
        raise ValueError("steps must be > 0")
    return _smallest_noise(lambda z: sample_epsilon_spent(z, sample_rate, steps, delta, accountant), target_epsilon,
                           f"{steps} steps at sampling rate {sample_rate:.4g} and delta {delta}", tol)


# --- a site's privacy record, and composition across jobs -----------------------------------------

PRIVACY_RECORD = "flareop_privacy.json"
"""The file a site's client writes into its job folder (``<client workspace>/<job id>/``, beside
NVFlare's meta.json) before each release: the privacy events the job has used at this site so far,
counted up to the end of the round in progress. The site's gateway reads it (its own client's record,
not the hub's word) to compose privacy across jobs on a grant's ledger."""


def sample_event(noise_multiplier: float, sample_rate: float, steps: int) -> dict:
    """A run of ``steps`` Poisson-subsampled Gaussian steps (sample level)."""
    return {"mechanism": "PoissonGaussian", "noiseMultiplier": float(noise_multiplier),
            "sampleRate": float(sample_rate), "count": int(steps)}


def gaussian_event(noise_multiplier: float, releases: int) -> dict:
    """``releases`` Gaussian releases of the site's clipped update (client level: one per round; DP for
    the whole site's data, so for each of its records too)."""
    return {"mechanism": "Gaussian", "noiseMultiplier": float(noise_multiplier), "sampleRate": 1.0,
            "count": int(releases)}


def write_privacy_record(path: str, level: str, delta: float, target_epsilon: float | None, events: list[dict]) -> None:
    """Replace the record at ``path`` atomically (a reader never sees half of it)."""
    import json
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"level": level, "delta": float(delta), "targetEpsilon": target_epsilon, "events": events}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _dp_event(event: Mapping):
    from dp_accounting import dp_event

    sigma, count = float(event["noiseMultiplier"]), int(event["count"])
    if sigma <= 0 or count < 0:
        raise ValueError(f"not a privacy event: {dict(event)}")
    step = dp_event.GaussianDpEvent(sigma)
    if event["mechanism"] == "PoissonGaussian":
        step = dp_event.PoissonSampledDpEvent(float(event["sampleRate"]), step)
    elif event["mechanism"] != "Gaussian":
        raise ValueError(f"unknown mechanism {event['mechanism']!r}")
    return dp_event.SelfComposedDpEvent(step, count)


def composed_epsilon(events: list[Mapping], delta: float) -> float:
    """Epsilon at ``delta`` of all ``events`` together (each a dict as :func:`sample_event` or
    :func:`gaussian_event` make), composed with the RDP accountant: sound for any mix of the two, and
    below the sum of their separate epsilons (RDP composes additively per order, then converts once)."""
    if not events:
        return 0.0
    from dp_accounting import dp_event

    # dp-accounting's default orders (fractional ones too) where nothing is subsampled: the client
    # filter's own figure, exactly; integer orders as soon as one event is (see SAMPLED_RDP_ORDERS).
    sampled = any(e["mechanism"] != "Gaussian" for e in events)
    return _epsilon(dp_event.ComposedDpEvent([_dp_event(e) for e in events]), delta, "rdp",
                    SAMPLED_RDP_ORDERS if sampled else None)
