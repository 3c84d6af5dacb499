"""The privacy-budget ledger on a DatasetGrant's status: pure functions, no I/O.

Each DatasetGrant with ``spec.privacy.epsilonBudget`` tracks, in ``status.ledger``, one entry per
job (keyed by the FederatedJob's uid): epsilon *reserved* when the site approved the job, turned
into epsilon *spent* (with the amount the job really used) when it finished. ``epsilonReserved``
and ``epsilonSpent`` are always recomputed from the entries, so they cannot drift from them.

Every function returns a new DatasetGrantStatus and never changes its argument. The site's
controller applies the result with a resourceVersion-guarded update (and retries on conflict
from a fresh read), so two jobs admitted at once cannot both take the last of the budget.

Lifecycle of one job's entry::

    reserve(uid, eps)  -> {uid, eps, spent: false}      (idempotent; a new eps replaces the old)
    spend(uid, used)   -> {uid, used, spent: true}      (finished job: the accountant's figure)
    release(uid)       -> entry removed                  (rejected/deleted before it ran)

Spent entries are never released: privacy spent is spent.

Composition (``epsilonUsed``, what admission counts): a spent entry that carries the privacy *events*
the site's own client recorded (Poisson-subsampled Gaussian steps of DP-SGD, or Gaussian releases of a
clipped update) is composed with the other such entries by the RDP accountant, at the sum of their
deltas — sound for any mix, and tighter than adding their epsilons (RDP adds per order and converts
once). Reservations, and spent entries without events (a runtime that cannot read its client's
record), count their epsilon as it is (basic composition). Where the accountant is unavailable, the
plain sum is used: never less than the truth.
"""

from __future__ import annotations

import functools
import math

from ..api.dataset_grant import DatasetGrantSpec, DatasetGrantStatus, EpsilonReservation, PrivacyEvent
from ..catalog import CatalogError, composed_epsilon

LEDGER_MAX_ENTRIES = 1024
"""status.ledger's maxItems in the CRD."""

MAX_EVENTS = 16
"""An entry's events' maxItems in the CRD (one per attempt of the job)."""

_DIGITS = 9  # totals are rounded so float noise (0.1 + 0.2) never shows in status


class LedgerError(ValueError):
    """The ledger cannot take this change; the message says why."""


def job_key(namespace: str, name: str) -> str:
    """'namespace/name', the form ledger entries and status.jobs use."""
    return f"{namespace}/{name}"


def _check_epsilon(epsilon: float) -> float:
    value = float(epsilon)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise LedgerError(f"epsilon must be a finite number >= 0, not {epsilon!r}")
    return value


def _status(status: DatasetGrantStatus | None) -> DatasetGrantStatus:
    return status if status is not None else DatasetGrantStatus()


def _with(status: DatasetGrantStatus, ledger: list[EpsilonReservation], jobs: list[str]) -> DatasetGrantStatus:
    if len(ledger) > LEDGER_MAX_ENTRIES:
        raise LedgerError(
            f"the grant's ledger already holds {LEDGER_MAX_ENTRIES} jobs, the most it can record; "
            "create a new DatasetGrant for further jobs"
        )
    reserved = round(sum(e.epsilon for e in ledger if not e.spent), _DIGITS)
    spent = round(sum(e.epsilon for e in ledger if e.spent), _DIGITS)
    return status.model_copy(
        update={"ledger": ledger, "epsilon_reserved": reserved, "epsilon_spent": spent,
                "epsilon_used": _used(ledger), "jobs": jobs},
        deep=True,
    )


def _composable(e: EpsilonReservation) -> bool:
    return e.spent and bool(e.events) and e.delta is not None


def _used(entries: list[EpsilonReservation]) -> float:
    """Epsilon the entries use together: composed events where recorded, the rest summed."""
    composable = [e for e in entries if _composable(e)]
    rest = sum(e.epsilon for e in entries if not _composable(e))
    plain = sum(e.epsilon for e in composable)
    composed = plain
    if len(composable) > 1:
        events = tuple((str(ev.mechanism), ev.noise_multiplier, ev.sample_rate, ev.count)
                       for e in composable for ev in e.events)
        try:
            composed = min(plain, _composed(events, sum(e.delta for e in composable)))
        except CatalogError:
            pass  # no accountant here: the sum is an upper bound
    return round(composed + rest, _DIGITS)


@functools.lru_cache(maxsize=256)
def _composed(events: tuple[tuple[str, float, float, int], ...], delta: float) -> float:
    """The accountant's figure, remembered: a site evaluates the same ledger on every pass."""
    return composed_epsilon([{"mechanism": m, "noiseMultiplier": z, "sampleRate": q, "count": n}
                             for m, z, q, n in events], delta)


def events_epsilon(events: list[PrivacyEvent], delta: float) -> float:
    """One job's epsilon at a site from the events its client recorded (all its attempts)."""
    return round(composed_epsilon([ev.to_wire() for ev in events], delta), _DIGITS)


def _jobs_with(status: DatasetGrantStatus, key: str) -> list[str]:
    jobs = list(status.jobs)
    if key and key not in jobs:
        jobs.append(key)
    return jobs[-LEDGER_MAX_ENTRIES:]


def entry(status: DatasetGrantStatus | None, uid: str) -> EpsilonReservation | None:
    """The ledger entry of one job, or None."""
    return next((e for e in _status(status).ledger if e.uid == uid), None)


def recompute(status: DatasetGrantStatus | None) -> DatasetGrantStatus:
    """The same ledger with its totals recomputed from the entries."""
    s = _status(status)
    return _with(s, list(s.ledger), list(s.jobs))


def reserve(status: DatasetGrantStatus | None, job_key: str, uid: str, epsilon: float) -> DatasetGrantStatus:
    """Reserve `epsilon` for the job `uid`. Idempotent: reserving again replaces the amount.

    A job whose entry is already spent keeps it unchanged (it finished; nothing to reserve).
    The caller checks the budget first (see `remaining` and policy.evaluate's EpsilonBudget rule).
    """
    eps = _check_epsilon(epsilon)
    s = _status(status)
    ledger = list(s.ledger)
    for i, e in enumerate(ledger):
        if e.uid == uid:
            if e.spent:
                return recompute(s)
            ledger[i] = EpsilonReservation(job=job_key, uid=uid, epsilon=eps, spent=False)
            break
    else:
        ledger.append(EpsilonReservation(job=job_key, uid=uid, epsilon=eps, spent=False))
    return _with(s, ledger, _jobs_with(s, job_key))


def release(status: DatasetGrantStatus | None, uid: str) -> DatasetGrantStatus:
    """Drop the job's reservation (rejected, invalidated or deleted before it finished).

    Idempotent; a spent entry is kept (privacy spent cannot be given back).
    """
    s = _status(status)
    ledger = [e for e in s.ledger if e.uid != uid or e.spent]
    return _with(s, ledger, list(s.jobs))


def spend(
    status: DatasetGrantStatus | None, uid: str, epsilon_spent: float, job_key: str | None = None,
    delta: float | None = None, events: list[PrivacyEvent] | None = None,
) -> DatasetGrantStatus:
    """Turn the job's reservation into spent epsilon, with the amount it really used, and the privacy
    events (with the job's ``delta``) the site's client recorded, when known.

    Idempotent: spending again records the latest figure. Without a reservation (e.g. the grant
    got its budget after the job was admitted) an entry is created, which needs `job_key`.
    """
    eps = _check_epsilon(epsilon_spent)
    s = _status(status)
    ledger = list(s.ledger)
    recorded = {"delta": delta, "events": list(events)} if events and delta is not None else {}
    for i, e in enumerate(ledger):
        if e.uid == uid:
            key = job_key or e.job
            ledger[i] = EpsilonReservation(job=key, uid=uid, epsilon=eps, spent=True, **recorded)
            break
    else:
        if not job_key:
            raise LedgerError(f"job {uid} has no ledger entry: pass job_key (namespace/name) to record its spend")
        key = job_key
        ledger.append(EpsilonReservation(job=key, uid=uid, epsilon=eps, spent=True, **recorded))
    return _with(s, ledger, _jobs_with(s, key))


def used(status: DatasetGrantStatus | None, exclude_uid: str | None = None) -> float:
    """Epsilon reserved + spent by every job but `exclude_uid`, from the entries (not the totals),
    composed where the sites recorded events (see the module's docstring)."""
    return _used([e for e in _status(status).ledger if e.uid != exclude_uid])


def remaining(
    spec: DatasetGrantSpec, status: DatasetGrantStatus | None, exclude_uid: str | None = None
) -> float | None:
    """Epsilon still available on the grant, None when it has no budget.

    `exclude_uid`: leave that job's own entry out, so evaluating the same job again is idempotent.
    Never negative (an owner who lowered the budget below what was used gets 0).
    """
    budget = spec.privacy.epsilon_budget
    if budget is None:
        return None
    return max(0.0, round(budget - used(status, exclude_uid), _DIGITS))
