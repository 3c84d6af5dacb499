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

from flare_operator.config import FINALIZER
from tests.e2e.conftest import BASE_PARAMS
from tests.operator_harness import OperatorProcess, apply, approval, automatic_federation, get, wait_phase
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e

SLOW_RESYNC = 600


def test_a_job_is_submitted_after_its_last_approval_without_waiting_for_the_resync(control_plane, e2e_data, tmp_path):
    cp = control_plane
    with automatic_federation(cp, e2e_data, tmp_path, org_b_policy="Manual") as fed:
        m, (_, b) = fed.modeller, fed.orgs
        # The same federation, followed from now on by an operator that resyncs every ten minutes
        # (it adopts the running NVFlare processes).
        fed.operators[0].stop(signal.SIGKILL)
        slow = OperatorProcess(cp, tmp_path, dict(fed.config, resyncSeconds=SLOW_RESYNC), name="operator-slow")
        fed.operators.append(slow.start())
        wait_for(lambda: "orchestrator (AccessRequest answers)" in slow.log_path.read_text(), timeout=60,
                 message="the slow operator is up")
        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob",
                   "metadata": {"name": "run1", "namespace": m},
                   "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 1,
                            "parameters": {**BASE_PARAMS, "localSteps": 2}}})
        waiting = wait_phase(cp, "federatedjob", m, "run1", "AwaitingApproval", timeout=60)
        # Past the job's first timer pass (initial delay 1 s): the next one is SLOW_RESYNC away.
        time.sleep(3)
        assert get(cp, "federatedjob", m, "run1")["status"]["phase"] == "AwaitingApproval"
        # The watch keeps its hands off the requests: the gateway's finalizer stays (a shared Kopf
        # finalizer name made the watch strip it, and deleted requests were never released).
        assert FINALIZER in get(cp, "accessrequest", b, f"job-{m}-run1")["metadata"]["finalizers"]

        apply(cp, approval(b, "run1", m, "run1", waiting["status"]["contentHash"], reason="reviewed"))
        submitted = wait_for(lambda: (s := (get(cp, "federatedjob", m, "run1") or {}).get("status") or {})
                             .get("nvflareJobId") and s, timeout=120,
                             message=f"run1 submitted after org-b's approval (resync {SLOW_RESYNC} s)")
        assert submitted["attempts"] == 1
        done = wait_phase(cp, "federatedjob", m, "run1", "Succeeded", timeout=300)["status"]
        assert done["nvflareJobId"] == submitted["nvflareJobId"] and done["attempts"] == 1
