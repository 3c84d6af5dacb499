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
from ..api.job import FederatedJobStatus, JobPhase, OrgDecision, SiteMetrics
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
    compute_missing: str = ""  # its ComputeSpec does not exist (yet): the job waits, asking nobody
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
    elif o.compute_missing:
        phase, ok, reason, message = JobPhase.PENDING, False, R.COMPUTE_NOT_READY, o.compute_missing
        cond(T.APPROVED, False, R.COMPUTE_NOT_READY, o.compute_missing)
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


def progress_from_metrics(record: dict, rounds: int) -> dict:
    """Status fields from the app's metrics.json: rounds completed, the latest global and per-site
    metrics (the final evaluation once there is one), each site's epsilon spent."""
    history = record.get("history") or []
    last = record.get("last_completed_round")  # 0-based; None before the first round completes
    done = int(last) + 1 if last is not None else 0
    progress = {"current_round": done, "progress": f"{done}/{rounds}"}
    latest = record.get("final") or (history[-1] if history else None)
    if latest is None:
        return progress
    eps = record.get("epsilon_spent") or {}
    sites = [SiteMetrics(site=s, metrics={k: float(v) for k, v in m.items() if isinstance(v, int | float)},
                         epsilon_spent=eps.get(s, m.get("dp_epsilon")))
             for s, m in sorted((latest.get("sites") or {}).items())]
    glob = {k: float(v) for k, v in (latest.get("global") or {}).items() if isinstance(v, int | float)}
    return {**progress, "global_metrics": glob, "site_metrics": sites}


@dataclass
class SiteWatch:
    """The sites of one running NVFlare job: which were seen running it, which answer without it and
    since when.

    A site's NVFlare client that restarts mid-job (its process or Pod died) comes back without the
    job's process, and NVFlare 2.9 neither gives the job back to it nor ends the job: the server
    waits for its answer for ever. A site that was seen running the job and has answered without it
    for ``lost_after`` seconds lost it. One never seen running it may just be slow to start it (a
    loaded node takes a while to start a job's process): it counts as lost only after
    ``start_within`` seconds. Kept in the operator's memory: a restarted operator starts again
    (every site then "never seen").
    """

    checked: float | None = None
    seen: set[str] = field(default_factory=set)
    missing_since: dict[str, float] = field(default_factory=dict)

    def due(self, now: float, every: float) -> bool:
        return self.checked is None or now - self.checked >= every

    def observe(self, sites: list[str], missing: list[str], now: float) -> None:
        self.checked = now
        self.seen |= set(sites) - set(missing)
        self.missing_since = {site: self.missing_since.get(site, now) for site in missing}

    def lost(self, now: float, lost_after: float, start_within: float) -> list[str]:
        return sorted(site for site, since in self.missing_since.items()
                      if now - since >= (lost_after if site in self.seen else start_within))
