"""Federated jobs from Python: submit, follow (with a progress bar), results, logs, abort.

    from flare_operator.sdk import job
    job_id = job.submit("esm2-scl", {"preset": "tiny", "localSteps": 8}, rounds=8, epsilon=8)
    job.wait_until_job_finished(job_id, timeout=1800)      # round k/n and the global accuracy, live
    job.download_results(job_id, download_path="results/") # every file checked against its sha256

A job id is the FederatedJob's name in the caller's namespace. Every data owner decides on the job at
its own site; ``wait_until_job_finished`` raises ``JobRejected`` (each org's reasons) as soon as one
rejects it, and ``AwaitingApproval`` (the orgs still to decide) when the wait ends before they did.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import InvalidObject, parse_object
from ..api.kinds import API_VERSION
from .errors import AwaitingApproval, InvalidSpec, JobFailed, JobRejected, NotFound, OrgReason, TimeoutError
from .session import Session, current

KIND = "FederatedJob"
FINISHED = ("Succeeded", "Failed", "TimedOut", "Aborted", "Revoked")


@dataclass(frozen=True)
class JobStatus:
    name: str
    namespace: str
    phase: str
    rounds: int
    current_round: int
    message: str
    global_metrics: dict[str, Any] = field(default_factory=dict)
    site_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    approvals: list[OrgReason] = field(default_factory=list)
    results: dict | None = None
    suspended: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def pending_orgs(self) -> list[str]:
        return [a.org for a in self.approvals if a.decision == "Pending"]

    @property
    def accuracy(self) -> float | None:
        value = self.global_metrics.get("val_accuracy")
        return float(value) if value is not None else None

    @classmethod
    def of(cls, obj: dict) -> JobStatus:
        st, spec = obj.get("status") or {}, obj.get("spec") or {}
        ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        return cls(
            name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"], phase=st.get("phase") or "Pending",
            rounds=int(spec.get("rounds") or 0), current_round=int(st.get("currentRound") or 0),
            message=ready.get("message", ""), global_metrics=dict(st.get("globalMetrics") or {}),
            site_metrics={m["site"]: {**(m.get("metrics") or {}), **({"epsilon_spent": m["epsilonSpent"]}
                                                                       if m.get("epsilonSpent") is not None else {})}
                          for m in st.get("siteMetrics") or []},
            approvals=[OrgReason(a["org"], a.get("decision", "Pending"), a.get("message", ""))
                       for a in st.get("approvals") or []],
            results=st.get("results"), suspended=bool(spec.get("suspend")),
        )


def manifest(compute_spec_id: str, params: dict | None, *, namespace: str, rounds: int, name: str | None = None,
             epsilon: float | None = None, dp_level: str = "Sample", delta: float | None = None,
             aggregation: dict | None = None, active_deadline_seconds: int | None = None,
             suspend: bool = False) -> dict:
    """The FederatedJob object, validated as the API server would (schema and CEL rules)."""
    name = name or f"{compute_spec_id[:48]}-{secrets.token_hex(3)}"
    spec: dict[str, Any] = {"computeSpecRef": {"name": compute_spec_id}, "rounds": rounds,
                            "parameters": dict(params or {}), "suspend": suspend}
    if epsilon is not None:
        dp = {"enabled": True, "level": dp_level, "epsilon": epsilon, **({"delta": delta} if delta else {})}
        spec["privacy"] = {"differentialPrivacy": dp}
    if aggregation:
        spec["aggregation"] = dict(aggregation)
    if active_deadline_seconds:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    obj = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    try:
        parse_object(obj)
    except InvalidObject as err:
        raise InvalidSpec(f"job {name} is not valid: {err}", "kubectl explain federatedjobs.spec") from None
    return obj


def submit(compute_spec_id: str, params: dict | None = None, *, rounds: int, name: str | None = None,
           epsilon: float | None = None, dp_level: str = "Sample", delta: float | None = None,
           aggregation: dict | None = None, active_deadline_seconds: int | None = None, suspend: bool = False,
           session: Session | None = None) -> str:
    """Submit a job to the federation ``compute_spec_id``: ``params`` are the app's parameters (see
    ``flareop models list``); ``epsilon`` turns differential privacy on (``dp_level`` Sample: DP-SGD at
    each site; Client: noised updates). Returns the job id. The orgs decide; the operator submits the job
    to NVFlare once all approved."""
    s = current(session)
    s.get("ComputeSpec", compute_spec_id)  # NotFound, with the command that lists them, before anything is made
    obj = manifest(compute_spec_id, params, namespace=s.namespace, rounds=rounds, name=name, epsilon=epsilon,
                   dp_level=dp_level, delta=delta, aggregation=aggregation,
                   active_deadline_seconds=active_deadline_seconds, suspend=suspend)
    return s.create(obj)["metadata"]["name"]


def status(job_id: str, *, session: Session | None = None) -> JobStatus:
    return JobStatus.of(current(session).get(KIND, job_id))


def list_jobs(*, session: Session | None = None) -> list[JobStatus]:
    return [JobStatus.of(o) for o in current(session).list(KIND)]


def abort(job_id: str, *, session: Session | None = None) -> JobStatus:
    """Stop the job cleanly (``spec.suspend``); it keeps its last global checkpoint, and ``resume``
    continues from there. ``delete`` removes it for good."""
    return JobStatus.of(current(session).patch(KIND, job_id, {"spec": {"suspend": True}}))


def resume(job_id: str, *, session: Session | None = None) -> JobStatus:
    return JobStatus.of(current(session).patch(KIND, job_id, {"spec": {"suspend": False}}))


def delete(job_id: str, *, wait: float | None = 120, session: Session | None = None) -> None:
    """Delete the job (a running one is stopped; its results stay in the store); returns once the
    operator has cleaned up after it (``wait`` seconds at most; None: at once)."""
    current(session).delete(KIND, job_id, wait=wait)


def _hint(s: Session, job_id: str) -> str:
    return f"kubectl describe federatedjob {job_id} -n {s.namespace}"


def _check(st: JobStatus, s: Session) -> None:
    if st.phase == "Rejected":
        rejected = [a for a in st.approvals if a.decision == "Rejected"]
        words = "; ".join(a.message or f"{a.org} rejected it" for a in rejected) or st.message
        raise JobRejected(f"job {st.name} was rejected: {words}", st.approvals, _hint(s, st.name))
    if st.finished and st.phase != "Succeeded":
        raise JobFailed(f"job {st.name} ended {st.phase}: {st.message}", st.phase, _hint(s, st.name))


def wait_until_job_finished(job_id: str, timeout: float | None = None, *, poll_interval: float = 2.0,
                            progress: bool = True, session: Session | None = None,
                            on_update: Callable[[JobStatus], None] | None = None) -> JobStatus:
    """Follow the job until it ends; its final status when it Succeeded. A live progress bar (round k/n,
    the global model's accuracy) in terminals and notebooks unless ``progress=False``.

    Raises ``JobRejected`` (an org rejected it), ``JobFailed`` (it ended otherwise), ``AwaitingApproval``
    or ``TimeoutError`` (``timeout`` seconds passed; the job goes on)."""
    s = current(session)
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = _Bar(job_id) if progress else None
    try:
        while True:
            st = status(job_id, session=s)
            if bar:
                bar.update(st)
            if on_update:
                on_update(st)
            _check(st, s)
            if st.phase == "Succeeded":
                return st
            if deadline is not None and time.monotonic() >= deadline:
                if st.phase in ("Pending", "AwaitingApproval") and st.pending_orgs:
                    raise AwaitingApproval(f"job {job_id} still awaits approval from {', '.join(st.pending_orgs)} "
                                           f"after {timeout:g} s", st.pending_orgs, _hint(s, job_id))
                raise TimeoutError(f"job {job_id} is {st.phase} (round {st.current_round}/{st.rounds}) after "
                                   f"{timeout:g} s; it goes on", _hint(s, job_id))
            time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic())))
    finally:
        if bar:
            bar.close()


class _Bar:
    """rich's progress bar: live in a terminal and in a Jupyter cell."""

    def __init__(self, job_id: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
        self.task = self.progress.add_task(job_id, total=None, detail="")
        self.progress.start()

    def update(self, st: JobStatus) -> None:
        acc = f"  global acc {st.accuracy:.3f}" if st.accuracy is not None else ""
        self.progress.update(self.task, total=st.rounds or None, completed=st.current_round,
                             detail=f"{st.phase}{acc}")

    def close(self) -> None:
        self.progress.stop()


def download_results(job_id: str, download_path: str | Path, *, endpoint_url: str | None = None,
                     session: Session | None = None) -> list[Path]:
    """Download the finished job's results into ``download_path``, each file checked against the size
    and sha256 the job's status lists (a file that differs is an error). An ``s3://`` store is read
    with the caller's own S3 credentials."""
    from .results import download_results as fetch

    s = current(session)
    st = status(job_id, session=s)
    if not (st.results or {}).get("location"):
        raise NotFound(f"job {job_id} has no results (yet): it is {st.phase}", _hint(s, job_id))
    return fetch(st.results, Path(download_path), endpoint_url=endpoint_url)


def logs(job_id: str, *, download_path: str | Path | None = None, endpoint_url: str | None = None,
         session: Session | None = None) -> dict[str, str]:
    """The finished job's logs, per participant ("server" and each site's client), from its results."""
    import tempfile

    s = current(session)
    st = status(job_id, session=s)
    files = [f["name"] for f in (st.results or {}).get("files") or [] if f["name"].startswith("logs/")]
    if not files:
        raise NotFound(f"job {job_id} has no logs yet (it is {st.phase}); the logs are stored with its results "
                       "when it ends", _hint(s, job_id))
    with tempfile.TemporaryDirectory(prefix="flareop-logs-") as tmp:
        paths = download_results(job_id, download_path or tmp, endpoint_url=endpoint_url, session=s)
        return {p.name.removesuffix("-log.txt"): p.read_text(errors="replace")
                for p in paths if p.parent.name == "logs"}
