"""A grant's privacy budget across jobs (issue 17): two DP-SGD jobs train for real at both orgs; each
site charges what its own client recorded (the privacy events in its job folder, not the hub's word),
and the ledger composes those events with the accountant. A third job fits the budget only because of
that composition (the plain sum of epsilons would refuse it); a fourth, with the third's reservation
held, would overspend and is refused, the message giving the epsilon left."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from tests.e2e.conftest import BASE_PARAMS
from tests.operator_harness import apply, automatic_federation, decisions, get, grant, job, ledger, wait_phase
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e

EPSILON = 4.0


def _job(m: str, name: str, *, suspend: bool = False) -> dict:
    j = job(m, name, rounds=2, epsilon=EPSILON)
    j["spec"]["parameters"] = {**BASE_PARAMS, "localSteps": 3}
    j["spec"]["suspend"] = suspend  # admitted, never submitted: only its reservation counts
    return j


def test_the_ledger_composes_earlier_jobs_and_refuses_one_that_would_overspend(control_plane, e2e_data, tmp_path):
    cp = control_plane
    paths = [s["path"] for s in e2e_data["sites"].values()]
    with automatic_federation(cp, e2e_data, tmp_path) as fed:
        (a, b), m = fed.orgs, fed.modeller
        grants = ((a, "scl-a"), (b, "scl-b"))
        apply(cp, *(grant(org, g, m, path=str(p), privacy={"dpRequired": True, "epsilonBudget": 100})
                    for (org, g), p in zip(grants, paths, strict=True)))
        for name in ("first", "second"):
            apply(cp, _job(m, name))
            wait_phase(cp, "federatedjob", m, name, "Succeeded", timeout=420)

        def composed(org, g):
            st = ledger(cp, org, g)
            entries = st.get("ledger") or []
            return st if len(entries) == 2 and all(e["spent"] and e.get("events") for e in entries) else None

        seen = {org: wait_for(lambda org=org, g=g: composed(org, g), timeout=60,
                              message=f"{org}'s ledger holds both jobs with their events") for org, g in grants}
        for st in seen.values():
            assert all(0 < e["epsilon"] <= EPSILON and e["delta"] == 1e-5 for e in st["ledger"]), st
            assert all(e["events"][0]["mechanism"] == "PoissonGaussian" and e["events"][0]["count"] == 6
                       for e in st["ledger"]), st
            assert st["epsilonUsed"] < st["epsilonSpent"] - 0.5, "the accountant composes: less than the sum"

        used = max(st["epsilonUsed"] for st in seen.values())
        budget = round(used + EPSILON + 0.5, 3)
        assert min(st["epsilonSpent"] for st in seen.values()) + EPSILON > budget, "a plain sum would refuse"
        for org, g in grants:
            cp.kubectl("patch", "datasetgrant", g, "-n", org, "--type=merge", "-p",
                       json.dumps({"spec": {"privacy": {"epsilonBudget": budget}}}))

        apply(cp, _job(m, "third", suspend=True))
        wait_for(lambda: set(decisions(get(cp, "federatedjob", m, "third")).values()) == {"Approved"}, timeout=90,
                 message="the third job fits the composed budget at both orgs")
        # Jobs are ordered by creationTimestamp (whole seconds), then uid: a fourth job created in the same
        # second as the third could be the *older* one and take the third's reservation (wound-wait). Create
        # it in a later second, so it is the younger job at both orgs.
        third_created = datetime.fromisoformat(get(cp, "federatedjob", m, "third")["metadata"]["creationTimestamp"]
                                               .replace("Z", "+00:00"))
        time.sleep(max(0.0, third_created.timestamp() + 1.1 - time.time()))
        apply(cp, _job(m, "fourth", suspend=True))
        rejected = wait_phase(cp, "federatedjob", m, "fourth", "Rejected", timeout=90)
        messages = " ".join(x.get("message", "") for x in rejected["status"]["approvals"])
        assert "epsilon left; job asks 4.0" in messages and f"of {budget} epsilon left" in messages, messages
        assert get(cp, "federatedjob", m, "third")["status"]["phase"] == "Suspended"
