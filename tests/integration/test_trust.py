"""The governance data owners rely on, tried as a hostile hub, a hostile member and a careless admin would
(issue 12): who decided is always the site's record, an approval is for one job once, the approver
sees everything the hash binds, a hub running other code is refused, and privacy budgets are
released only where nothing ran and never deadlock. A real API server and real operator processes."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from flare_operator.builders.nvflare_job import app_code_digest
from flare_operator.catalog import ENV_VAR, catalog_root, load_app
from tests.operator_harness import (
    Consortium,
    OperatorProcess,
    apply,
    approval,
    compute,
    consortium_namespaces,
    decisions,
    free_port,
    gateway_config,
    get,
    grant,
    job,
    ledger,
    policy,
    remove_namespaces,
    wait_job,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


@dataclass
class Site:
    cp: object
    c: Consortium
    config: dict
    workdir: Path
    op: OperatorProcess

    def restart(self) -> None:
        self.op.stop()
        self.op = OperatorProcess(self.cp, self.workdir, self.config, name=f"operator-{free_port()}").start()


@pytest.fixture
def manual_b(control_plane, tmp_path):
    """org-a approves automatically; org-b by hand through its admission webhook; budgets of 10 at both."""
    cp = control_plane
    c, a, b, m = consortium_namespaces(cp)
    terms = {"dpRequired": True, "epsilonBudget": 10}
    apply(cp, grant(a, "scl-a", m, privacy=terms), grant(b, "scl-b", m, privacy=terms),
          policy(a, "Automatic"), policy(b, "Manual"))
    sites = [dict(gateway_config(org, org), runtime="kubernetes") for org in (a, b)]
    sites[1]["webhookPort"] = free_port()
    config = {"mode": "all", "runtime": "kubernetes", "adminRoute": "none", "resyncSeconds": 2, "heartbeatSeconds": 5, "gateways": sites,
              "namespaces": [m], "workdir": str(tmp_path / "work")}
    site = Site(cp, c, config, tmp_path, OperatorProcess(cp, tmp_path, config).start())
    try:
        apply(cp, compute(m, "esm2", [(a, "scl-a"), (b, "scl-b")]))
        wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=120)
        yield site
    except BaseException:
        print(site.op.tail(120))
        raise
    finally:
        site.op.stop()
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cp.kubectl("delete", kind, f"{b}.site.flareop.io", "--ignore-not-found", check=False)
        remove_namespaces(cp, a, b, m)


def _message(cp, org_ns: str, m: str, name: str) -> str:
    return (get(cp, "accessrequest", org_ns, f"job-{m}-{name}").get("status") or {}).get("message", "")


def test_who_decided_is_the_sites_record_never_typed(control_plane, manual_b):
    """2: a decision typed past the webhook does not count; the webhook stays registered while the
    gateway is down (failurePolicy Fail), so nothing is accepted unrecorded in that window."""
    cp, s = control_plane, manual_b
    b, m = s.c.org("org-b"), s.c.modeller
    apply(cp, job(m, "run1"))
    waiting = wait_job(cp, m, "run1", "AwaitingApproval")
    content_hash = waiting["status"]["contentHash"]

    # A careless cluster admin removes the webhook; a JobApproval with a typed decider goes in.
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        cp.kubectl("delete", kind, f"{b}.site.flareop.io")
    forged = approval(b, "typed", m, "run1", content_hash)
    forged["spec"]["job"]["uid"] = get(cp, "federatedjob", m, "run1")["metadata"]["uid"]
    forged["metadata"]["annotations"] = {"flareop.io/decided-by": json.dumps(
        {"username": "ceo@org-b", "groups": [], "signature": "0" * 64})}
    apply(cp, forged)
    assert wait_for(lambda: "JobApproval typed does not count" in _message(cp, b, m, "run1"), timeout=30,
                    message="the typed approval is named as not counting")
    assert "org-b's admission webhook did not record who decided" in _message(cp, b, m, "run1").replace(b, "org-b")
    assert decisions(get(cp, "federatedjob", m, "run1"))[b] == "Pending"
    assert not (get(cp, "jobapproval", b, "typed").get("status") or {}).get("decidedBy")
    events = cp.kubectl("get", "events", "-n", b, "--field-selector", "reason=NotRecorded", "-o", "name").stdout
    assert events.strip(), "a Warning Event says the approval was not recorded"

    # The gateway restarts: its webhook is back and records (and signs) who decides.
    s.restart()
    wait_for(lambda: cp.kubectl("get", "mutatingwebhookconfiguration", f"{b}.site.flareop.io",
                                check=False).returncode == 0, timeout=60, message="webhook registered again")

    def approve() -> bool:
        apply(cp, approval(b, "recorded", m, "run1", content_hash))  # raises until the webhook answers
        return True

    wait_for(approve, timeout=30, message="the webhook takes the approval")
    wait_for(lambda: decisions(get(cp, "federatedjob", m, "run1")).get(b) == "Approved", timeout=60,
             message="the recorded approval counts")
    # The count reads the signed annotation; status.decidedBy is its copy for people, written by its own
    # handler, and may land just after the job's decision does.
    wait_for(lambda: (get(cp, "jobapproval", b, "recorded").get("status") or {}).get("decidedBy"), timeout=30,
             message="the site's record of who decided is copied into the approval's status")
    recorded = get(cp, "jobapproval", b, "recorded")
    assert recorded["status"]["decidedBy"]["username"] not in ("", "ceo@org-b")  # from the API request
    assert recorded["spec"]["job"]["uid"] == get(cp, "federatedjob", m, "run1")["metadata"]["uid"]

    # A graceful stop leaves the webhook registered: while the gateway is down, approvals are refused.
    s.op.stop()
    assert cp.kubectl("get", "validatingwebhookconfiguration", f"{b}.site.flareop.io", check=False).returncode == 0
    refused = cp.kubectl("apply", "-f", "-", input=json.dumps(approval(b, "while-down", m, "run1", content_hash)),
                         check=False)
    assert refused.returncode != 0 and "failed calling webhook" in refused.stderr, refused.stderr
    assert get(cp, "jobapproval", b, "while-down") is None


def test_an_approval_is_for_one_job_once(control_plane, manual_b):
    """3: the webhook binds the approval to the job's uid; a job deleted and created again under the same
    name (same content hash) needs a new decision, and an approval naming another uid is refused."""
    cp, s = control_plane, manual_b
    b, m = s.c.org("org-b"), s.c.modeller
    apply(cp, job(m, "again"))
    first = wait_job(cp, m, "again", "AwaitingApproval")
    apply(cp, approval(b, "again", m, "again", first["status"]["contentHash"]))
    wait_for(lambda: decisions(get(cp, "federatedjob", m, "again")).get(b) == "Approved", timeout=60,
             message="approved")
    first_uid = first["metadata"]["uid"]
    assert get(cp, "jobapproval", b, "again")["spec"]["job"]["uid"] == first_uid

    cp.kubectl("delete", "federatedjob", "again", "-n", m, "--timeout=60s")
    apply(cp, job(m, "again"))
    second = wait_job(cp, m, "again", "AwaitingApproval")
    assert second["status"]["contentHash"] == first["status"]["contentHash"]  # same content, another job
    wait_for(lambda: "was for an earlier job of that name" in _message(cp, b, m, "again"), timeout=30,
             message="the old approval is named as another job's")
    assert decisions(get(cp, "federatedjob", m, "again"))[b] == "Pending"

    stale = approval(b, "again-stale", m, "again", second["status"]["contentHash"])
    stale["spec"]["job"]["uid"] = first_uid
    refused = cp.kubectl("apply", "-f", "-", input=json.dumps(stale), check=False)
    assert refused.returncode != 0 and "was deleted and created again" in refused.stderr, refused.stderr


def test_the_approver_sees_everything_the_hash_binds(control_plane, manual_b):
    """4: the AccessRequest at the org carries the parameters, privacy, app, version and code digest."""
    cp, s = control_plane, manual_b
    b, m = s.c.org("org-b"), s.c.modeller
    apply(cp, job(m, "review"))
    waiting = wait_job(cp, m, "review", "AwaitingApproval")
    request = get(cp, "accessrequest", b, f"job-{m}-review")["spec"]
    assert request["contentHash"] == waiting["status"]["contentHash"]
    assert request["job"]["parameters"] == {"preset": "tiny"}
    assert request["job"]["privacy"]["differentialPrivacy"]["epsilon"] == 6
    app = load_app("esm2-finetune", "1.0.0")
    assert request["app"] == {"id": app.id, "version": app.version, "codeDigest": app_code_digest(app)}
    assert request["compute"]["datasets"] == [{"org": s.c.org("org-a"), "id": "scl-a"}, {"org": b, "id": "scl-b"}]
    # what docs/operator.md tells the admin to run before approving
    shown = cp.kubectl("get", "accessrequest", f"job-{m}-review", "-n", b, "-o",
                       "jsonpath={.spec.job.parameters}{' '}{.spec.app.codeDigest}").stdout
    assert '"preset":"tiny"' in shown and app_code_digest(app) in shown


def test_a_job_rejected_anywhere_holds_no_budget_anywhere(control_plane, manual_b):
    """7: org-a reserved epsilon for a job org-b then rejects: org-a's reservation is released at once."""
    cp, s = control_plane, manual_b
    a, b, m = s.c.org("org-a"), s.c.org("org-b"), s.c.modeller
    apply(cp, job(m, "refused"))
    waiting = wait_job(cp, m, "refused", "AwaitingApproval")
    wait_for(lambda: ledger(cp, a, "scl-a").get("epsilonReserved") == 6, timeout=30, message="org-a reserved")
    apply(cp, approval(b, "refused", m, "refused", waiting["status"]["contentHash"], decision="Reject",
                       reason="not this quarter"))
    wait_job(cp, m, "refused", "Rejected")
    wait_for(lambda: ledger(cp, a, "scl-a").get("epsilonReserved", 0) == 0, timeout=30,
             message="org-a released what the rejected job held")
    assert decisions(get(cp, "federatedjob", m, "refused"))[a] == "Approved"  # org-a still says yes
    assert not ledger(cp, a, "scl-a").get("ledger")


@pytest.fixture
def hub_and_sites(control_plane, tmp_path):
    """An orchestrator whose catalog differs from the sites' (one line of the client code changed under
    the same version), and the sites' gateways with the original catalog: two operator processes."""
    cp = control_plane
    c, a, b, m = consortium_namespaces(cp)
    apply(cp, grant(a, "scl-a", m), grant(b, "scl-b", m), policy(a, "Automatic"), policy(b, "Automatic"))
    hub_catalog = tmp_path / "hub-catalog"
    shutil.copytree(catalog_root(), hub_catalog, ignore=shutil.ignore_patterns("__pycache__"))
    script = hub_catalog / "esm2-finetune" / "custom" / "esm2_client.py"
    script.write_text(script.read_text() + "\nimport os  # the hub's extra: os.system('curl … < data')\n")
    base = {"runtime": "kubernetes", "adminRoute": "none", "resyncSeconds": 2, "heartbeatSeconds": 5, "workdir": str(tmp_path / "work")}
    hub = OperatorProcess(cp, tmp_path, {**base, "mode": "orchestrator", "namespaces": [m]}, name="hub",
                          env={ENV_VAR: str(hub_catalog)}).start()
    sites = OperatorProcess(cp, tmp_path, {**base, "mode": "gateway", "gateways": [
        dict(gateway_config(org, org), runtime="kubernetes") for org in (a, b)]}, name="sites").start()
    try:
        apply(cp, compute(m, "esm2", [(a, "scl-a"), (b, "scl-b")]))
        wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=120)
        yield c
    except BaseException:
        print(hub.tail(80), sites.tail(80))
        raise
    finally:
        hub.stop()
        sites.stop()
        remove_namespaces(cp, a, b, m)


def test_a_hub_running_other_code_under_an_approved_version_is_refused(control_plane, hub_and_sites):
    """5: each site digests the app version from its own catalog; the hub's differs, so no site approves."""
    cp, c = control_plane, hub_and_sites
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    apply(cp, job(m, "other-code", epsilon=None))
    rejected = wait_job(cp, m, "other-code", "Rejected")
    for org in (a, b):
        request = get(cp, "accessrequest", org, f"job-{m}-other-code")
        content = next(r for r in request["status"]["rules"] if r["rule"] == "ContentVerified")
        assert not content["passed"]
        assert f"{org}: the hub's esm2-finetune 1.0.0 is not the code this site has" in content["message"]
    assert "is not the code this site has" in json.dumps(rejected["status"]["approvals"])
