"""For data owners' admins: the jobs waiting for my org, approve or reject one, my grants' budgets.

The session is the org's own namespace (where its DatasetGrants, OrgPolicy and JobApprovals live).
The AccessRequests the hub sends are read there too (one cluster), or from ``hub=`` (a session on the
hub's cluster, in the org's hub namespace) where the site runs on its own cluster.

Approving writes a JobApproval for the job's *current* content hash (from its AccessRequest): a job
changed after that needs a new decision, and the site's controller checks the hash, not this code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..api.kinds import API_VERSION
from .errors import InvalidSpec, NotFound
from .session import Session, current


@dataclass(frozen=True)
class JobRequest:
    """What a job asks of this org, as its AccessRequest states it."""

    job: str  # namespace/name on the hub
    uid: str
    consumer_org: str
    content_hash: str
    decision: str
    message: str
    datasets: list[str]
    rounds: int | None
    model: str  # id@version
    code_digest: str
    dp: str  # e.g. "Sample epsilon 8" or "off"
    participating_orgs: list[str] = field(default_factory=list)
    failed_rules: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, obj: dict) -> JobRequest:
        spec, st = obj["spec"], obj.get("status") or {}
        dp = spec.get("differentialPrivacy") or {}
        app = spec.get("app") or {}
        return cls(
            job=f"{spec['source']['namespace']}/{spec['source']['name']}", uid=spec["source"]["uid"],
            consumer_org=spec["consumerOrg"], content_hash=spec["contentHash"], decision=st.get("decision") or "Pending",
            message=st.get("message") or "", datasets=list(spec.get("datasets") or []), rounds=spec.get("rounds"),
            model=f"{spec['model']['id']}@{spec['model']['version']}", code_digest=app.get("codeDigest", ""),
            dp=(f"{dp.get('level', 'Sample')} epsilon {dp.get('epsilon')}" if dp.get("enabled") else "off"),
            participating_orgs=list(spec.get("participatingOrgs") or []),
            failed_rules=[f"{r['rule']}: {r.get('message', '')}" for r in st.get("rules") or [] if not r.get("passed")],
        )


def job_requests(*, session: Session | None = None, hub: Session | None = None) -> list[JobRequest]:
    """Every job's request to this org (decided or not)."""
    s = hub or current(session)
    return [JobRequest.of(o) for o in s.list("AccessRequest") if o["spec"]["source"]["kind"] == "Job"
            and o["spec"].get("outcome") is None]


def pending(*, session: Session | None = None, hub: Session | None = None) -> list[JobRequest]:
    """Jobs waiting for this org's decision (its policy asks a person to decide)."""
    return [r for r in job_requests(session=session, hub=hub) if r.decision == "Pending"]


def request(job: str, *, session: Session | None = None, hub: Session | None = None) -> JobRequest:
    """The request of one job (``name`` or ``namespace/name``) to this org."""
    s = hub or current(session)
    wanted = job if "/" in job else None
    found = [r for r in job_requests(session=session, hub=hub)
             if r.job == wanted or (wanted is None and r.job.split("/")[1] == job)]
    if not found:
        raise NotFound(f"no job {job} asks org namespace {s.namespace} for data",
                       f"kubectl get accessrequests -n {s.namespace}")
    if len(found) > 1:
        raise InvalidSpec(f"several jobs are named {job}: give namespace/name ({', '.join(r.job for r in found)})")
    return found[0]


def _decide(job: str, decision: str, reason: str, session: Session | None, hub: Session | None) -> dict:
    s = current(session)
    req = request(job, session=session, hub=hub)
    ns, name = req.job.split("/")
    approval_name = re.sub(r"[^a-z0-9-]", "-", f"{ns}-{name}-{req.content_hash.split(':')[-1][:8]}".lower())[:63]
    obj = {"apiVersion": API_VERSION, "kind": "JobApproval",
           "metadata": {"name": approval_name.strip("-"), "namespace": s.namespace},
           "spec": {"job": {"namespace": ns, "name": name, "uid": req.uid}, "contentHash": req.content_hash,
                    "decision": decision, "reason": reason}}
    return s.create(obj)


def approve(job: str, reason: str = "", *, session: Session | None = None, hub: Session | None = None) -> dict:
    """Approve the job (``name`` or ``namespace/name``) as it is now: a JobApproval for its content hash."""
    return _decide(job, "Approve", reason, session, hub)


def reject(job: str, reason: str, *, session: Session | None = None, hub: Session | None = None) -> dict:
    """Reject the job; ``reason`` (required) is what the modeller sees."""
    if not reason.strip():
        raise InvalidSpec("a rejection needs a reason: tell the modeller what to change")
    return _decide(job, "Reject", reason, session, hub)


@dataclass(frozen=True)
class Budget:
    grant: str
    dataset: str
    budget: float | None
    reserved: float
    spent: float
    used: float
    jobs: int

    @property
    def left(self) -> float | None:
        return None if self.budget is None else max(0.0, round(self.budget - self.used, 6))


def budget(*, session: Session | None = None) -> list[Budget]:
    """Epsilon reserved, spent and used (composed by the accountant) per grant of this org."""
    out = []
    for g in current(session).list("DatasetGrant"):
        st = g.get("status") or {}
        out.append(Budget(grant=g["metadata"]["name"], dataset=g["spec"]["dataset"]["id"],
                          budget=(g["spec"].get("privacy") or {}).get("epsilonBudget"),
                          reserved=float(st.get("epsilonReserved") or 0), spent=float(st.get("epsilonSpent") or 0),
                          used=float(st.get("epsilonUsed") or 0), jobs=len(st.get("ledger") or [])))
    return out
