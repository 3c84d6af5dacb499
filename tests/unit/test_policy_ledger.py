"""policy.ledger: the privacy-budget ledger on a DatasetGrant's status (pure, idempotent, no drift)."""

from __future__ import annotations

import math

import pytest
import yaml

from flare_operator.api import DatasetGrantSpec, DatasetGrantStatus
from flare_operator.api.dataset_grant import EpsilonReservation, PrivacyEvent
from flare_operator.policy import ledger
from flare_operator.policy.ledger import LedgerError, release, remaining, reserve, spend
from tests.sample_data import VALID_DIR

GRANT = DatasetGrantSpec.model_validate(yaml.safe_load((VALID_DIR / "datasetgrant.yaml").read_text())["spec"])  # budget 30


def _entries(status: DatasetGrantStatus) -> list[tuple[str, float, bool]]:
    return [(e.uid, e.epsilon, e.spent) for e in status.ledger]


def test_reserve_adds_an_entry_and_recomputes_totals():
    s = reserve(None, "modeller/run1", "uid-1", 8)
    assert _entries(s) == [("uid-1", 8.0, False)]
    assert (s.epsilon_reserved, s.epsilon_spent) == (8.0, 0.0)
    assert s.jobs == ["modeller/run1"]
    assert s.ledger[0].job == "modeller/run1"


def test_reserve_is_idempotent_per_uid():
    once = reserve(None, "modeller/run1", "uid-1", 8)
    twice = reserve(once, "modeller/run1", "uid-1", 8)
    assert twice == once
    # The job changed before it ran (new hash, new epsilon): the reservation follows.
    changed = reserve(twice, "modeller/run1", "uid-1", 5)
    assert _entries(changed) == [("uid-1", 5.0, False)]
    assert changed.epsilon_reserved == 5.0
    assert changed.jobs == ["modeller/run1"]


def test_reserve_does_not_touch_a_spent_entry():
    s = spend(reserve(None, "modeller/run1", "uid-1", 8), "uid-1", 7.5)
    assert reserve(s, "modeller/run1", "uid-1", 8) == s


def test_release_drops_only_the_reservation_and_is_idempotent():
    s = reserve(reserve(None, "m/a", "a", 3), "m/b", "b", 4)
    released = release(s, "a")
    assert _entries(released) == [("b", 4.0, False)]
    assert released.epsilon_reserved == 4.0
    assert release(released, "a") == released
    assert release(None, "nobody") == DatasetGrantStatus()


def test_release_keeps_spent_epsilon():
    s = spend(reserve(None, "m/a", "a", 3), "a", 2.5)
    assert release(s, "a") == s
    assert s.epsilon_spent == 2.5


def test_spend_moves_a_reservation_to_spent_with_the_actual_amount():
    s = reserve(reserve(None, "m/a", "a", 8), "m/b", "b", 4)
    spent = spend(s, "a", 6.25)
    assert _entries(spent) == [("a", 6.25, True), ("b", 4.0, False)]
    assert (spent.epsilon_reserved, spent.epsilon_spent) == (4.0, 6.25)
    assert spend(spent, "a", 6.25) == spent  # idempotent
    assert spend(spent, "a", 6.5).epsilon_spent == 6.5  # the latest figure counts


def test_spend_without_a_reservation_needs_the_job_key():
    with pytest.raises(LedgerError, match="job uid-9 has no ledger entry: pass job_key"):
        spend(None, "uid-9", 1.0)
    s = spend(None, "uid-9", 1.0, job_key="m/late")
    assert _entries(s) == [("uid-9", 1.0, True)]
    assert s.jobs == ["m/late"]


def test_totals_are_recomputed_from_the_entries_never_trusted():
    drifted = DatasetGrantStatus(
        epsilon_reserved=99, epsilon_spent=42,
        ledger=[EpsilonReservation(job="m/a", uid="a", epsilon=2, spent=False),
                EpsilonReservation(job="m/b", uid="b", epsilon=3, spent=True)],
    )
    fixed = ledger.recompute(drifted)
    assert (fixed.epsilon_reserved, fixed.epsilon_spent) == (2.0, 3.0)
    assert (release(drifted, "zzz").epsilon_reserved, release(drifted, "zzz").epsilon_spent) == (2.0, 3.0)
    # remaining() reads the entries too, not the drifted totals
    assert remaining(GRANT, drifted) == 25.0


def test_no_float_noise_in_totals():
    s = None
    for i in range(3):
        s = reserve(s, f"m/{i}", str(i), 0.1)
    assert s.epsilon_reserved == 0.3


def test_functions_never_change_their_argument():
    s = reserve(None, "m/a", "a", 3)
    before = s.model_copy(deep=True)
    reserve(s, "m/b", "b", 4)
    spend(s, "a", 1)
    release(s, "a")
    assert s == before


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
def test_bad_epsilon_is_refused(bad):
    with pytest.raises(LedgerError, match="epsilon must be a finite number >= 0"):
        reserve(None, "m/a", "a", bad)
    with pytest.raises(LedgerError, match="epsilon must be a finite number >= 0"):
        spend(None, "a", bad, job_key="m/a")


def test_remaining():
    no_budget = GRANT.model_copy(update={"privacy": GRANT.privacy.model_copy(update={"epsilon_budget": None})})
    assert remaining(no_budget, None) is None
    assert remaining(GRANT, None) == 30.0
    s = spend(reserve(reserve(None, "m/a", "a", 8), "m/b", "b", 12), "a", 7)
    assert remaining(GRANT, s) == 11.0  # 30 - 7 spent - 12 reserved
    assert remaining(GRANT, s, exclude_uid="b") == 23.0  # b's own reservation does not count against b
    assert remaining(GRANT, s, exclude_uid="a") == 18.0
    over = reserve(s, "m/c", "c", 50)  # the owner lowered the budget, or an old overspend
    assert remaining(GRANT, over) == 0.0


def test_ledger_is_bounded_by_the_crd_limit():
    s = DatasetGrantStatus(
        ledger=[EpsilonReservation(job=f"m/{i}", uid=str(i), epsilon=0, spent=True)
                for i in range(ledger.LEDGER_MAX_ENTRIES)]
    )
    with pytest.raises(LedgerError, match="already holds 1024 jobs"):
        reserve(s, "m/new", "new", 1)
    assert reserve(s, "m/0", "0", 1) == ledger.recompute(s)  # an existing (spent) entry is still fine


def test_job_key():
    assert ledger.job_key("modeller", "run1") == "modeller/run1"
    assert ledger.entry(reserve(None, "m/a", "a", 1), "a").epsilon == 1.0
    assert ledger.entry(None, "a") is None


# --- composition of recorded privacy events (issue 17) ----------------------------------------------

def demo_job_events(target: float = 8.0, delta: float = 1e-5):
    """(epsilon, events) of one sample-level DP job as a site's client records it: 8 rounds x 8 steps
    on 480 records at batch 32 (the demo's org-b), the noise calibrated for the target."""
    from flare_operator.catalog.privacy import _dp_module

    dp = _dp_module()
    rate, steps = 1 / 15, 64
    sigma = dp.calibrate_sample_noise_multiplier(target, rate, steps, delta)
    events = [PrivacyEvent(mechanism="PoissonGaussian", noise_multiplier=sigma, sample_rate=rate, count=steps)]
    return ledger.events_epsilon(events, delta), events


def test_spent_jobs_with_recorded_events_compose_below_the_sum_of_their_epsilons():
    eps, events = demo_job_events()
    assert 7.5 < eps <= 8.0  # calibrated to the target, never above it
    s = None
    for uid in ("a", "b"):
        s = spend(reserve(s, f"modeller/{uid}", uid, 8), uid, eps, delta=1e-5, events=events)
    assert s.epsilon_spent == pytest.approx(2 * eps)  # the plain sum stays on show
    assert eps < s.epsilon_used < 0.8 * s.epsilon_spent  # the accountant: RDP adds per order, converts once
    assert s.ledger[0].events == events and s.ledger[0].delta == 1e-5
    # A reservation (its events unknown until it ran) counts its epsilon on top: basic composition.
    with_reservation = reserve(s, "modeller/c", "c", 8)
    assert with_reservation.epsilon_used == pytest.approx(s.epsilon_used + 8)
    assert ledger.used(with_reservation, exclude_uid="c") == pytest.approx(s.epsilon_used)
    # An entry spent without events (a runtime that cannot read its client's record) counts as it is.
    blind = spend(with_reservation, "c", 8)
    assert blind.epsilon_used == pytest.approx(s.epsilon_used + 8)


def test_one_job_with_events_counts_its_own_epsilon_and_a_missing_accountant_falls_back_to_the_sum(monkeypatch):
    eps, events = demo_job_events()
    one = spend(reserve(None, "modeller/a", "a", 8), "a", eps, delta=1e-5, events=events)
    assert one.epsilon_used == pytest.approx(eps)
    two = spend(reserve(one, "modeller/b", "b", 8), "b", eps, delta=1e-5, events=events)

    def no_accountant(events, delta):
        raise ledger.CatalogError("epsilon accounting needs the dp-accounting package")

    monkeypatch.setattr(ledger, "composed_epsilon", no_accountant)
    ledger._composed.cache_clear()
    assert ledger.recompute(two).epsilon_used == pytest.approx(2 * eps)  # never less than the truth


def test_a_mix_of_sample_and_client_level_jobs_composes():
    from flare_operator.catalog.privacy import _dp_module

    dp = _dp_module()
    eps_s, sample = demo_job_events()
    sigma = dp.calibrate_noise_multiplier(8.0, 3, 1e-5)
    client = [PrivacyEvent(mechanism="Gaussian", noise_multiplier=sigma, count=3)]
    eps_c = ledger.events_epsilon(client, 1e-5)
    assert eps_c == pytest.approx(dp.epsilon_spent(sigma, 3, 1e-5))  # the client filter's own figure
    s = spend(reserve(None, "modeller/s", "s", 8), "s", eps_s, delta=1e-5, events=sample)
    s = spend(reserve(s, "modeller/c", "c", 8), "c", eps_c, delta=1e-5, events=client)
    assert max(eps_s, eps_c) < s.epsilon_used < eps_s + eps_c


def test_the_operator_reads_the_record_file_the_apps_write():
    from flare_operator.catalog.privacy import _dp_module
    from flare_operator.runtime.workloads import PRIVACY_RECORD_FILE

    assert PRIVACY_RECORD_FILE == _dp_module().PRIVACY_RECORD
