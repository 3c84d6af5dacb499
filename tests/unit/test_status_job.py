"""FederatedJob admission status: per-org decisions bound to the content hash."""

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from flare_operator.api.common import Decision
from flare_operator.status.conditions import get_condition
from flare_operator.status.job import ObservedAdmission, ObservedApproval, admission_status

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
H = "sha256:" + "a" * 64
OLD = "sha256:" + "b" * 64
A = ObservedApproval("org-a", Decision.APPROVED, "org-a: approved automatically", H, NOW)
B = ObservedApproval("org-b", Decision.APPROVED, "org-b: approved by JobApproval esm2", H, NOW)
BASE = ObservedAdmission(generation=2, content_hash=H, approvals=(A, B), compute_ready=True)


@pytest.mark.parametrize(
    ("observed", "phase", "approved", "message_part"),
    [
        (BASE, "Queued", "True", "approved by org-a, org-b"),
        (replace(BASE, compute_ready=False, compute_message="ComputeSpec esm2 is Starting"), "Pending", "True",
         "approved by"),
        (replace(BASE, approvals=(A, replace(B, decision=Decision.PENDING, message="waiting for org-b's admin"))),
         "AwaitingApproval", "False", "waiting for org-b (org-b: waiting for org-b's admin)"),
        (replace(BASE, approvals=(A, replace(B, decision=Decision.REJECTED, message="allows at most 5 rounds"))),
         "Rejected", "False", "org-b: allows at most 5 rounds"),
        (replace(BASE, approvals=(A, replace(B, decided_hash=OLD))), "AwaitingApproval", "False",
         "changed since this org decided"),
        (replace(BASE, suspended=True), "Suspended", "True", "approved by"),
        (replace(BASE, invalid="invalid parameters for esm2-finetune: batchSize: -1 is less than 1"), "Failed",
         "False", "batchSize"),
        # its ComputeSpec not created yet (an apply of a whole folder): it waits, it does not fail
        (replace(BASE, compute_missing="ComputeSpec esm2 does not exist in modeller: the job waits for it"),
         "Pending", "False", "the job waits for it"),
    ],
)
def test_admission_phase(observed, phase, approved, message_part):
    status = admission_status(observed, NOW)
    assert status.phase == phase
    cond = get_condition(status.conditions, "Approved")
    assert cond.status == approved and message_part in cond.message + get_condition(status.conditions, "Ready").message
    assert status.content_hash == H
    assert [a.org for a in status.approvals] == ["org-a", "org-b"]
