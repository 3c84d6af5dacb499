"""Two jobs compete for privacy budgets that fit one of them at each of two orgs (issue 12, 7): one of
them is admitted by both orgs, never each org holding a different job (the older job wins at every
org: wound-wait on reservations of jobs that have not run there). Real NVFlare clients, whose
workspaces are the evidence that the younger job never ran; the jobs are suspended so none trains."""

from __future__ import annotations

import pytest

from tests.operator_harness import apply, automatic_federation, decisions, get, grant, job, ledger
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e


def test_jobs_competing_for_budgets_do_not_deadlock(control_plane, e2e_data, tmp_path):
    cp = control_plane
    paths = [s["path"] for s in e2e_data["sites"].values()]
    with automatic_federation(cp, e2e_data, tmp_path) as fed:
        (a, b), m = fed.orgs, fed.modeller
        terms = {"dpRequired": True, "epsilonBudget": 10}  # each job wants 6: one fits at each org
        apply(cp, grant(a, "scl-a", m, path=str(paths[0]), privacy=terms),
              grant(b, "scl-b", m, path=str(paths[1]), privacy=terms))
        for pair in range(2):
            names = [f"p{pair}-first", f"p{pair}-second"]
            jobs = [job(m, n) for n in names]
            for j in jobs:
                j["spec"]["suspend"] = True  # admitted, never submitted: the contention is about budgets only
            apply(cp, *jobs)

            def settled(names=names):
                """(winner, loser) once one job is approved by both orgs, holds both budgets, and the
                other is rejected by an org; None while the orgs are still deciding."""
                objs = {n: get(cp, "federatedjob", m, n) for n in names}
                both = [n for n in names if set(decisions(objs[n]).values()) == {"Approved"}]
                held = [{e["uid"] for e in ledger(cp, org, g).get("ledger", [])}
                        for org, g in ((a, "scl-a"), (b, "scl-b"))]
                if len(both) != 1 or any(h != {objs[both[0]]["metadata"]["uid"]} for h in held):
                    return None
                loser = next(n for n in names if n != both[0])
                return (both[0], loser) if "Rejected" in decisions(objs[loser]).values() else None

            winner, loser = wait_for(settled, timeout=90, message=f"pair {pair}: one job admitted by both orgs")
            assert wait_for(lambda w=winner: get(cp, "federatedjob", m, w)["status"]["phase"] == "Suspended", timeout=30)
            assert get(cp, "federatedjob", m, loser)["status"]["phase"] == "Rejected"
            for n in names:
                cp.kubectl("delete", "federatedjob", n, "-n", m, "--timeout=60s")
            wait_for(lambda: not ledger(cp, a, "scl-a").get("ledger") and not ledger(cp, b, "scl-b").get("ledger"),
                     timeout=60, message="a job that never ran gives its reservation back when deleted")
