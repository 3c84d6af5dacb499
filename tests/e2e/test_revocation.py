"""Revocation stops a running job (issue 12, 6 and 7): a data owner narrows its grant while the job
trains; its gateway withdraws the job from its client's approved list, the client stops the job at
that site within seconds, the FederatedJob ends Revoked naming the org and its reason, keeps what it
produced so far, and the epsilon of the rounds that ran stays spent at every org."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BASE_PARAMS
from tests.operator_harness import apply, automatic_federation, get, grant, ledger, wait_phase, wait_round
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e


def _revoked_lines(root: Path) -> list[str]:
    return [line for log in root.rglob("log.txt") for line in log.read_text(errors="replace").splitlines()
            if "REVOKED" in line]


def test_narrowing_a_grant_mid_job_stops_it_at_that_site(control_plane, e2e_data, tmp_path):
    cp = control_plane
    paths = [s["path"] for s in e2e_data["sites"].values()]
    with automatic_federation(cp, e2e_data, tmp_path) as fed:
        (a, b), m = fed.orgs, fed.modeller
        terms = {"dpRequired": True, "epsilonBudget": 50}
        apply(cp, grant(a, "scl-a", m, path=str(paths[0]), privacy=terms),
              grant(b, "scl-b", m, path=str(paths[1]), privacy=terms))
        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": "long", "namespace": m},
                   "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 40,
                            "parameters": {**BASE_PARAMS, "localSteps": 2},
                            "privacy": {"differentialPrivacy": {"enabled": True, "epsilon": 20}},
                            "activeDeadlineSeconds": 900}})
        wait_round(cp, m, "long", 1, timeout=300, logs=tmp_path / "flare")
        assert ledger(cp, b, "scl-b")["epsilonReserved"] == 20

        # org-b's owner narrows the grant below what the running job needs.
        revoked_at = time.monotonic()
        apply(cp, grant(b, "scl-b", m, path=str(paths[1]), privacy=terms, maxRounds=5))
        lines = wait_for(lambda: _revoked_lines(tmp_path / "flare"), timeout=30,
                         message="org-b's client logs REVOKED")
        stopped = time.monotonic() - revoked_at
        print(f"grant narrowed -> org-b's client stopped the job: {stopped:.1f} s")
        assert stopped < 10, f"revocation took {stopped:.1f} s (issue 12 asks for 10 s)"
        assert all(b in line for line in lines) and not any(f"org {a}" in line for line in lines), lines

        done = wait_phase(cp, "federatedjob", m, "long", "Revoked", timeout=120)
        status = done["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "Revoked"
        assert f"{b}: grant scl-b allows at most 5 rounds; job asks 40" in ready["message"], ready["message"]
        rounds_done = status["currentRound"]
        assert 1 <= rounds_done < 40
        names = {f["name"] for f in status["results"]["files"]}
        assert "global_trainable.safetensors" in names and "logs/server-log.txt" in names, names

        # Privacy spent stays spent: nothing goes back to either budget.
        for org, name in ((a, "scl-a"), (b, "scl-b")):
            wait_for(lambda org=org, name=name: ledger(cp, org, name).get("epsilonSpent"), timeout=60,
                     message=f"{org} records the spend")
            status_ = ledger(cp, org, name)
            assert status_["epsilonReserved"] == 0 and status_["epsilonSpent"] > 0, status_
            assert [e["spent"] for e in status_["ledger"]] == [True]
        outcome = get(cp, "accessrequest", b, f"job-{m}-long")["spec"]["outcome"]
        assert outcome["phase"] == "Revoked"
