"""ComputeSpec status is computed from observed state: phase, conditions, transition times."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from flare_operator.api.common import Decision
from flare_operator.status.compute import ObservedCompute, ObservedSite, compute_status
from flare_operator.status.conditions import get_condition

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
A = ObservedSite(org="org-a", datasets=("scl-org-a",), gateway=True, decision=Decision.APPROVED, client_ready=True)
B = ObservedSite(org="org-b", datasets=("scl-org-b",), gateway=True, decision=Decision.APPROVED, client_ready=True)
READY = ObservedCompute(generation=3, active=True, sites=(A, B), provisioned=True, server_ready=True,
                        server_endpoint="localhost:18002", project="modeller-esm2")


def _cond(status, type_):
    c = get_condition(status.conditions, type_)
    return c.status, c.reason, c.message


@pytest.mark.parametrize(
    ("observed", "phase", "ready_reason", "message_part"),
    [
        (READY, "Ready", "Reconciled", "server and every client are connected"),
        (replace(READY, active=False), "Deactivated", "Deactivated", "spec.active is false"),
        (replace(READY, sites=(A, replace(B, gateway=False, decision=Decision.PENDING)), provisioned=False),
         "Pending", "GatewayMissing", "no Gateway registered on the hub for org-b"),
        (replace(READY, sites=(A, replace(B, gateway=False, decision=Decision.PENDING, message=(
            "org-b has no Gateway on the hub: org-b's Gateway org-b is in namespace org-c, which belongs to org-c"))),
            provisioned=False),
         "Pending", "GatewayMissing", "(org-b has no Gateway on the hub: org-b's Gateway org-b is in namespace org-c"),
        (replace(READY, sites=(A, replace(B, decision=Decision.REJECTED, message="grant allows 5 rounds")),
                 provisioned=False), "Failed", "DatasetDenied", "org-b refused scl-org-b: grant allows 5 rounds"),
        (replace(READY, sites=(A, replace(B, decision=Decision.PENDING)), provisioned=False),
         "Pending", "AwaitingSites", "waiting for org-b"),
        (replace(READY, provisioned=False, server_ready=False), "Provisioning", "Progressing", "provisioning"),
        (replace(READY, provisioning_error="provisioning failed: boom"), "Failed", "ProvisioningFailed", "boom"),
        (replace(READY, server_ready=False), "Starting", "ServerStarting", "server is starting"),
        (replace(READY, sites=(A, replace(B, client_ready=False))), "Starting", "ClientsStarting",
         "waiting for clients of org-b"),
        (replace(READY, server_ready=False, server_problem="Pod m/x-server-0, container server: ErrImageNeverPull"),
         "Starting", "WorkloadFailing", "server: Pod m/x-server-0, container server: ErrImageNeverPull"),
        (replace(READY, sites=(A, replace(B, client_ready=False, client_problem="Pod b/c-0 cannot be scheduled"))),
         "Starting", "WorkloadFailing", "org-b: Pod b/c-0 cannot be scheduled"),
    ],
)
def test_phase_and_ready_condition(observed, phase, ready_reason, message_part):
    status = compute_status(observed, NOW)
    assert status.phase == phase
    ready, reason, message = _cond(status, "Ready")
    assert ready == ("True" if phase == "Ready" else "False")
    assert reason == ready_reason and message_part in message
    assert status.observed_generation == 3
    assert {c.type for c in status.conditions} == {"DatasetsGranted", "Provisioned", "ServerReady", "ClientsReady",
                                                   "Ready"}


def test_sites_and_client_count_are_reported():
    status = compute_status(replace(READY, sites=(A, replace(B, client_ready=False))), NOW)
    assert status.ready_clients == "1/2"
    assert [(s.org, s.decision, s.client_ready) for s in status.sites] == [("org-a", "Approved", True),
                                                                           ("org-b", "Approved", False)]


def test_transition_time_moves_only_when_status_changes():
    first = compute_status(replace(READY, server_ready=False), NOW)
    later = NOW + timedelta(minutes=5)
    same = compute_status(replace(READY, server_ready=False, previous=first), later)
    assert get_condition(same.conditions, "Ready").last_transition_time == NOW
    ready = compute_status(replace(READY, previous=same), later)
    assert get_condition(ready.conditions, "Ready").last_transition_time == later
    assert get_condition(ready.conditions, "DatasetsGranted").last_transition_time == NOW


def test_a_failing_client_is_named_in_its_site_and_the_clients_condition():
    status = compute_status(replace(READY, sites=(A, replace(B, client_ready=False, message="approved",
                                                               client_problem="ImagePullBackOff"))), NOW)
    assert _cond(status, "ClientsReady") == ("False", "WorkloadFailing", "org-b: ImagePullBackOff")
    assert _cond(status, "ServerReady")[0] == "True"
    assert [s.message for s in status.sites] == ["", "ImagePullBackOff"]
