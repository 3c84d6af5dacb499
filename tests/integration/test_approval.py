"""Admission on a real API server: every org decides at its own site, by its own policy, bound to the
job's content hash; manual approvals; the privacy-budget ledger under concurrent admission."""

from __future__ import annotations

import json

import pytest

from tests.operator_harness import (
    Consortium,
    OperatorProcess,
    apply,
    approval,
    compute,
    create_org_namespace,
    decisions,
    free_port,
    gateway_config,
    get,
    grant,
    install_crds,
    job,
    ledger,
    policy,
    remove_namespaces,
    wait_job,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def consortium(control_plane, tmp_path):
    """org-a approves automatically (budget 10 on its grant); org-b decides by hand, requires DP,
    allows at most 10 rounds and 8 epsilon per job from a budget of 10."""
    cp = control_plane
    install_crds(cp)
    c = Consortium()
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    for ns in (a, b, m):
        create_org_namespace(cp, ns, ns)
    apply(cp,
          grant(a, "scl-a", m, privacy={"dpRequired": True, "epsilonBudget": 10}),
          grant(b, "scl-b", m, maxRounds=10, privacy={"dpRequired": True, "maxEpsilonPerJob": 8, "epsilonBudget": 10}),
          policy(a, "Automatic"), policy(b, "Manual", privacyFloor={"dpRequired": True}))
    sites = [dict(gateway_config(org, org), runtime="kubernetes") for org in (a, b)]
    sites[1]["webhookPort"] = free_port()  # org-b records who decided through its admission webhook
    config = {"mode": "all", "runtime": "kubernetes", "adminRoute": "none", "resyncSeconds": 2, "heartbeatSeconds": 5, "gateways": sites,
              "namespaces": [m],
              "workdir": str(tmp_path / "work")}
    op = OperatorProcess(cp, tmp_path, config).start()
    try:
        apply(cp, compute(m, "esm2", [(a, "scl-a"), (b, "scl-b")]))
        wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=120)
        yield c
    except BaseException:
        print(op.tail(100))
        raise
    finally:
        op.stop()
        remove_namespaces(cp, a, b, m)


def test_automatic_and_manual_approval_bound_to_the_hash(control_plane, consortium):
    cp, c = control_plane, consortium
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    apply(cp, job(m, "run1"))
    waiting = wait_job(cp, m, "run1", "AwaitingApproval")
    def approved_condition() -> str:
        return next(x for x in get(cp, "federatedjob", m, "run1")["status"]["conditions"]
                    if x["type"] == "Approved")["message"]

    assert wait_for(lambda: decisions(get(cp, "federatedjob", m, "run1")) == {a: "Approved", b: "Pending"},
                    timeout=30, message="org-a approved, org-b pending")
    # org-b's own answer (Pending until a person decides), not the hub's placeholder before it answered.
    wait_for(lambda: "create a JobApproval" in approved_condition(), timeout=30, message="org-b says how to decide")
    assert f"waiting for {b}" in approved_condition()
    content_hash = waiting["status"]["contentHash"]

    # org-b's admin approves this exact content at org-b's site.
    apply(cp, approval(b, "run1", m, "run1", content_hash, reason="DP settings reviewed"))
    queued = wait_job(cp, m, "run1", "Queued")
    assert decisions(queued) == {a: "Approved", b: "Approved"}
    assert ledger(cp, b, "scl-b")["epsilonReserved"] == 6
    assert ledger(cp, a, "scl-a")["epsilonReserved"] == 6

    # The modeller changes the job before it ran: the manual decision no longer counts, the
    # automatic one is made again for the new hash.
    cp.kubectl("patch", "federatedjob", "run1", "-n", m, "--type=merge", "-p", '{"spec":{"rounds":6}}')
    again = wait_job(cp, m, "run1", "AwaitingApproval")
    assert again["status"]["contentHash"] != content_hash
    wait_for(lambda: decisions(get(cp, "federatedjob", m, "run1")) == {a: "Approved", b: "Pending"}, timeout=30,
             message="org-a re-approved, org-b must decide again")
    wait_for(lambda: ledger(cp, b, "scl-b").get("epsilonReserved", 0) == 0, timeout=30,
             message="org-b gave the reservation back while it waits")


def test_denials_report_every_rule_and_approval_never_overrides_limits(control_plane, consortium):
    cp, c = control_plane, consortium
    b, m = c.org("org-b"), c.modeller
    apply(cp, job(m, "greedy", rounds=20, epsilon=9))
    rejected = wait_job(cp, m, "greedy", "Rejected")
    message = next(x for x in rejected["status"]["conditions"] if x["type"] == "Approved")["message"]
    assert f"{b}: grant scl-b allows at most 10 rounds; job asks 20" in message
    assert "epsilon at most 8.0 per job; job asks 9.0" in message
    # An admin's Approve does not lift the org's own limits.
    apply(cp, approval(b, "greedy", m, "greedy", rejected["status"]["contentHash"]))
    wait_for(lambda: get(cp, "jobapproval", b, "greedy"), timeout=10)
    assert wait_job(cp, m, "greedy", "Rejected")["status"]["phase"] == "Rejected"
    request = get(cp, "accessrequest", b, f"job-{m}-greedy")
    failed = sorted({r["rule"] for r in request["status"]["rules"] if not r["passed"]})
    assert failed == ["DifferentialPrivacy", "MaxRounds"]

    # A manual Reject carries the admin's reason to the modeller.
    apply(cp, job(m, "nope"))
    waiting = wait_job(cp, m, "nope", "AwaitingApproval")
    apply(cp, approval(b, "nope", m, "nope", waiting["status"]["contentHash"], decision="Reject",
                       reason="not this quarter"))
    refused = wait_job(cp, m, "nope", "Rejected")
    assert "not this quarter" in json.dumps(refused["status"]["approvals"])


def test_settings_that_cannot_run_under_sample_level_dp_fail_before_any_site_is_asked(control_plane, consortium):
    """FedProx's proximal gradient is not clipped per record: a job asking both is refused by the
    orchestrator with the fix, and no site gets an AccessRequest for it."""
    cp, c = control_plane, consortium
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    bad = job(m, "prox-dp")
    bad["spec"]["parameters"]["proxMu"] = 0.1
    bad["spec"]["privacy"]["differentialPrivacy"]["level"] = "Sample"
    apply(cp, bad)
    failed = wait_job(cp, m, "prox-dp", "Failed")
    message = next(x for x in failed["status"]["conditions"] if x["type"] == "Approved")["message"]
    assert "proxMu > 0 cannot be combined with sample-level differential privacy" in message
    assert "set proxMu to 0 or use level Client" in message
    assert get(cp, "accessrequest", a, f"job-{m}-prox-dp") is None
    assert get(cp, "accessrequest", b, f"job-{m}-prox-dp") is None


def test_budget_exhaustion_and_concurrent_admission(control_plane, consortium):
    cp, c = control_plane, consortium
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    # Two jobs reach org-a (automatic, budget 10) at the same moment; each wants 6: one only fits.
    apply(cp, job(m, "twin-1"), job(m, "twin-2"))
    wait_for(lambda: all(decisions(get(cp, "federatedjob", m, n)).get(a) in ("Approved", "Rejected")
                         for n in ("twin-1", "twin-2")), timeout=60, message="org-a decided both")
    outcomes = sorted(decisions(get(cp, "federatedjob", m, n))[a] for n in ("twin-1", "twin-2"))
    assert outcomes == ["Approved", "Rejected"], outcomes
    status = ledger(cp, a, "scl-a")
    assert status["epsilonReserved"] == 6 and len(status["ledger"]) == 1
    loser = next(n for n in ("twin-1", "twin-2") if decisions(get(cp, "federatedjob", m, n))[a] == "Rejected")
    request = get(cp, "accessrequest", a, f"job-{m}-{loser}")
    assert "has 4.0 of 10.0 epsilon left; job asks 6.0" in request["status"]["message"]

    # Deleting the admitted job gives its reservation back; the other job then fits.
    winner = "twin-2" if loser == "twin-1" else "twin-1"
    cp.kubectl("delete", "federatedjob", winner, "-n", m, "--timeout=60s")
    try:
        wait_for(lambda: ledger(cp, a, "scl-a").get("epsilonReserved", 0) == 6
                 and decisions(get(cp, "federatedjob", m, loser)).get(a) == "Approved",
                 timeout=60, message="the freed budget admits the other job")
    except TimeoutError:
        print(json.dumps({"ledger": ledger(cp, a, "scl-a"), "loser": get(cp, "federatedjob", m, loser)["status"],
                          "requests": cp.kubectl("get", "accessrequests", "-A", "-o", "yaml").stdout[-6000:]},
                         indent=1, default=str))
        raise
    assert b  # org-b (manual) still waits for its admin on the remaining job


def test_the_webhook_records_who_decided_and_refuses_unknown_jobs_and_stale_hashes(control_plane, consortium):
    from flare_operator.builders.rbac import ORG_ADMIN_ROLE, org_admin_cluster_role, role_binding

    cp, c = control_plane, consortium
    b, m = c.org("org-b"), c.modeller
    apply(cp, org_admin_cluster_role(), role_binding(b, ORG_ADMIN_ROLE, user=f"alice-{b}", cluster_role=True))
    alice = cp.user_kubeconfig(f"alice-{b}", groups=[f"{b}-admins"])
    apply(cp, job(m, "run2"))
    waiting = wait_job(cp, m, "run2", "AwaitingApproval")
    good = approval(b, "run2", m, "run2", waiting["status"]["contentHash"])
    good["metadata"]["annotations"] = {"flareop.io/decided-by": '{"username": "the-ceo", "groups": []}'}

    def as_alice(manifest):
        import yaml

        return cp.kubectl("create", "-f", "-", input=yaml.safe_dump(manifest), kubeconfig=alice, check=False)

    stale = as_alice(approval(b, "stale", m, "run2", "sha256:" + "0" * 64))
    assert stale.returncode != 0 and "now has content hash" in stale.stderr and "review it again" in stale.stderr
    unknown = as_alice(approval(b, "ghost", m, "no-such-job", waiting["status"]["contentHash"]))
    assert unknown.returncode != 0 and f"no FederatedJob {m}/no-such-job asks anything of {b}" in unknown.stderr
    assert as_alice(good).returncode == 0, "a current approval is admitted"

    recorded = wait_for(lambda: (get(cp, "jobapproval", b, "run2").get("status") or {}).get("decidedBy"),
                        timeout=30, message="decidedBy recorded")
    assert {k: recorded[k] for k in ("username", "groups")} == {
        "username": f"alice-{b}", "groups": [f"{b}-admins", "system:authenticated"]}
    assert len(recorded["signature"]) == 64  # the site webhook's HMAC over the record and this decision
    # Nobody can rewrite who decided afterwards.
    cp.kubectl("annotate", "jobapproval", "run2", "-n", b, "--overwrite",
               'flareop.io/decided-by={"username": "the-ceo", "groups": []}')
    annotation = get(cp, "jobapproval", b, "run2")["metadata"]["annotations"]["flareop.io/decided-by"]
    assert f"alice-{b}" in annotation
    assert wait_job(cp, m, "run2", "Queued")["status"]["phase"] == "Queued"
