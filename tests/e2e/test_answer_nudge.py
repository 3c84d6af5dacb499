"""A job is submitted when its last approval arrives, not at the orchestrator's next resync.

org-b approves by hand. The federation comes up under a short resync; then the operator is
replaced by one whose resyncSeconds is 600, so a job waiting for approval is reconciled again only
when something tells the orchestrator: the AccessRequest answer watch (handlers/registry.py
AnswerWatch). Without it this test waits ten minutes for a submission and fails at its timeout.
Nothing here is timed: the 600 s resync is what the test can tell apart, not a latency.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.conftest import BASE_PARAMS
from tests.operator_harness import (
    Consortium,
    OperatorProcess,
    apply,
    approval,
    compute,
    create_org_namespace,
    free_port,
    gateway_config,
    get,
    grant,
    install_crds,
    operator_config,
    policy,
    processes_under,
    remove_namespaces,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e

SLOW_RESYNC = 600


def test_a_job_is_submitted_after_its_last_approval_without_waiting_for_the_resync(control_plane, e2e_data, tmp_path):
    cp = control_plane
    install_crds(cp)
    c = Consortium()
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    for ns in (a, b, m):
        create_org_namespace(cp, ns, ns)
    paths = [s["path"] for s in e2e_data["sites"].values()]
    apply(cp, grant(a, "scl-a", m, path=str(paths[0])), grant(b, "scl-b", m, path=str(paths[1])),
          policy(a, "Automatic"), policy(b, "Manual"))
    gateways = [gateway_config(a, a), dict(gateway_config(b, b), webhookPort=free_port())]
    ops = [OperatorProcess(cp, tmp_path, operator_config(tmp_path, gateways, namespaces=[m])).start()]
    try:
        apply(cp, compute(m, "esm2", [(a, "scl-a"), (b, "scl-b")]))
        wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=180)

        # The same federation, followed from now on by an operator that resyncs every ten minutes
        # (it adopts the running NVFlare processes).
        ops[0].stop(signal.SIGKILL)
        slow = operator_config(tmp_path, gateways, namespaces=[m], resyncSeconds=SLOW_RESYNC)
        ops.append(OperatorProcess(cp, tmp_path, slow, name="operator-slow").start())
        wait_for(lambda: "orchestrator (AccessRequest answers)" in ops[1].log_path.read_text(), timeout=60,
                 message="the slow operator is up")
        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob",
                   "metadata": {"name": "run1", "namespace": m},
                   "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 1,
                            "parameters": {**BASE_PARAMS, "localSteps": 2}}})
        waiting = wait_phase(cp, "federatedjob", m, "run1", "AwaitingApproval", timeout=60)
        # Past the job's first timer pass (initial delay 1 s): the next one is SLOW_RESYNC away.
        time.sleep(3)
        assert get(cp, "federatedjob", m, "run1")["status"]["phase"] == "AwaitingApproval"

        apply(cp, approval(b, "run1", m, "run1", waiting["status"]["contentHash"], reason="reviewed"))
        submitted = wait_for(lambda: (s := (get(cp, "federatedjob", m, "run1") or {}).get("status") or {})
                             .get("nvflareJobId") and s, timeout=120,
                             message=f"run1 submitted after org-b's approval (resync {SLOW_RESYNC} s)")
        assert submitted["attempts"] == 1
        done = wait_phase(cp, "federatedjob", m, "run1", "Succeeded", timeout=300)["status"]
        assert done["nvflareJobId"] == submitted["nvflareJobId"] and done["attempts"] == 1
    except BaseException:
        for op in ops:
            print(f"--- {op.log_path}\n{op.tail(120)}")
        raise
    finally:
        ops[-1].stop()
        remove_namespaces(cp, a, b, m)
        wait_for(lambda: not processes_under(tmp_path / "flare"), timeout=60, message="no participant left")
