"""Pure: what the orchestrator observed about a FederatedJob's admission -> phase and conditions.

This covers admission (issue 6): the orgs' decisions bound to the content hash, and whether the
compute can take the job. Running and finishing phases come from the job controller's observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..api.common import Decision
from ..api.conditions import ConditionType as T
from ..api.conditions import Reason as R
from ..api.job import FederatedJobStatus, JobPhase, OrgDecision
from .conditions import Conditions


@dataclass(frozen=True)
class ObservedApproval:
    org: str
    decision: Decision
    message: str = ""
    decided_hash: str | None = None
    decided_at: datetime | None = None


@dataclass(frozen=True)
class ObservedAdmission:
    generation: int
    content_hash: str | None
    approvals: tuple[ObservedApproval, ...]
    compute_ready: bool
    compute_message: str = ""
    invalid: str = ""  # the job cannot run as written (e.g. parameters refused by the app's schema)
    suspended: bool = False
    previous: FederatedJobStatus = field(default_factory=FederatedJobStatus)


def admission_status(o: ObservedAdmission, now: datetime) -> FederatedJobStatus:
    conds = Conditions(o.previous.conditions, generation=o.generation, now=now)
    cond = conds.set

    current = [a if a.decided_hash == o.content_hash else ObservedApproval(a.org, Decision.PENDING,
               "the job or its compute changed since this org decided: it decides again") for a in o.approvals]
    rejected = [a for a in current if a.decision == Decision.REJECTED]
    waiting = [a for a in current if a.decision == Decision.PENDING]

    if o.invalid:
        phase, ok, reason, message = JobPhase.FAILED, False, R.INVALID_SPEC, o.invalid
        cond(T.APPROVED, False, R.INVALID_SPEC, o.invalid)
    elif rejected:
        message = "; ".join(f"{a.org}: {a.message}" for a in rejected)
        phase, ok, reason = JobPhase.REJECTED, False, R.REJECTED
        cond(T.APPROVED, False, R.REJECTED, message)
    elif waiting or not current:
        message = "waiting for " + ", ".join(a.org for a in waiting) if waiting else "no org asked yet"
        detail = "; ".join(f"{a.org}: {a.message}" for a in waiting if a.message)
        message = f"{message} ({detail})" if detail else message
        phase, ok, reason = JobPhase.AWAITING_APPROVAL, False, R.AWAITING_APPROVAL
        cond(T.APPROVED, False, R.AWAITING_APPROVAL, message)
    else:
        cond(T.APPROVED, True, R.APPROVED, f"approved by {', '.join(a.org for a in current)}")
        if o.suspended:
            phase, ok, reason, message = JobPhase.SUSPENDED, False, R.SUSPENDED, "spec.suspend is true"
        elif not o.compute_ready:
            phase, ok, reason, message = JobPhase.PENDING, False, R.COMPUTE_NOT_READY, o.compute_message
        else:
            phase, ok, reason, message = JobPhase.QUEUED, False, R.PROGRESSING, "approved; waiting to be submitted"
    cond(T.READY, ok, reason, message)
    approvals = [OrgDecision(org=a.org, decision=a.decision, message=a.message[:1024],
                             content_hash=a.decided_hash, decided_at=a.decided_at) for a in o.approvals]
    return o.previous.model_copy(update={
        "phase": phase, "observed_generation": o.generation, "conditions": conds.items,
        "content_hash": o.content_hash, "approvals": approvals,
    })
