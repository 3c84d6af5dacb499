"""Orchestrator: run an admitted FederatedJob on its federation — build, submit once, follow, finish.

The NVFlare job is built from the catalog app (builders/nvflare_job.py) with each site's dataset
named by reference (`dataset:<id>`: only the site knows where its data is) and submitted through
the FLARE API with the operator's admin kit and submit token = the job's uid (attempt 1) or
uid-<attempt>, so a restarted operator never submits twice. Progress and the last global
checkpoint come from the server app through the FLARE API (app commands), never from the server's
disk, so both runtimes follow a job the same way; results are downloaded when NVFlare reports the
job finished and put into the operator's results store (a local folder or an S3 bucket).

Lifecycle beyond the happy path:
- suspend: the last global checkpoint is saved, the NVFlare job aborted; resuming submits a new
  attempt that starts from the checkpoint's round;
- NVFlare server lost the job (it restarted: FINISHED:ABANDONED, or its job process died:
  FINISHED:ABNORMAL): resubmitted from the last checkpoint, up to spec.backoffLimit times;
- the ComputeSpec deactivated or deleted under the job: aborted, Failed (ComputeDeactivated);
- the FLARE API not answering: the phase stays, the Ready condition says so, it is asked again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from ..api.access_request import RequestKind
from ..api.common import Decision
from ..api.conditions import ConditionType, Reason
from ..api.job import (
    FINISHED_PHASES,
    Checkpoint,
    FederatedJobSpec,
    FederatedJobStatus,
    JobPhase,
    OrgDecision,
    Results,
)
from ..builders.federation import client_name
from ..builders.nvflare_job import build_from_api, job_name_for, write_job
from ..builders.requests import LABEL_REQUEST_KIND, LABEL_SOURCE_NAME, LABEL_SOURCE_NAMESPACE, datasets_by_org
from ..catalog import loader as catalog
from ..nvflare.admin import FlareUnavailable
from ..runtime.metrics import APPROVAL_WAIT_SECONDS, JOB_SUBMISSIONS, ROUNDS_COMPLETED, SUBMIT_SECONDS
from ..runtime.workloads import ServerWorkload
from ..status.conditions import Conditions
from ..status.job import SiteWatch, progress_from_metrics
from .compute import Federation, Hub
from .objects import ObjectView

log = logging.getLogger(__name__)

RESULTS_DIR = "workspace/app_server/results"
_DONE = {"FINISHED:COMPLETED": JobPhase.SUCCEEDED, "FINISHED:ABORTED": JobPhase.ABORTED}
LOST_BY_SERVER = frozenset({"FINISHED:ABANDONED", "FINISHED:ABNORMAL", "FINISHED:FAILED_TO_RUN"})
"""NVFlare states meaning the server, not the job, failed: a restarted server marks the jobs it ran
ABANDONED; ABNORMAL means the server's job process died; FAILED_TO_RUN, that it could not deploy or
start the job (a participant died at that moment; found by the chaos suite). All are worth another
attempt, within backoffLimit (a job that can never start fails after that many)."""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Run(ObjectView):
    spec_model = FederatedJobSpec
    status_model = FederatedJobStatus

    def __init__(self, hub: Hub, body: dict, admitted: FederatedJobStatus, compute: dict):
        super().__init__(body)
        self.hub = hub
        self.status = admitted
        self.compute = compute
        self.conds = Conditions(admitted.conditions, generation=self.generation, now=_now())

    def _with(self, phase: JobPhase, reason: str, message: str, **fields) -> FederatedJobStatus:
        ready = phase == JobPhase.SUCCEEDED
        self.conds.set(ConditionType.READY, ready, reason, message)
        if phase in (JobPhase.SUBMITTED, JobPhase.RUNNING, JobPhase.SUCCEEDED):
            self.conds.set(ConditionType.SUBMITTED, True, Reason.SUBMITTED, f"NVFlare job {self.status.nvflare_job_id}")
        if phase == JobPhase.RUNNING:
            self.conds.set(ConditionType.RUNNING, True, Reason.RUNNING, message)
        if phase == JobPhase.SUCCEEDED:
            self.conds.set(ConditionType.RUNNING, False, Reason.SUCCEEDED, message)
            self.conds.set(ConditionType.COMPLETE, True, Reason.SUCCEEDED, message)
        if phase in (JobPhase.FAILED, JobPhase.TIMED_OUT, JobPhase.ABORTED, JobPhase.REVOKED):
            self.conds.set(ConditionType.RUNNING, False, reason, message)
            self.conds.set(ConditionType.FAILED, True, reason, message)
        return self.status.model_copy(update={"phase": phase, "conditions": self.conds.items, **fields})

    @property
    def _running(self) -> bool:
        return bool(self.status.nvflare_job_id)

    async def step(self) -> FederatedJobStatus:
        """One pass: submit, follow, suspend or recover, from the admission status just computed."""
        if not self._running and self.status.phase != JobPhase.QUEUED:
            return self.status  # waiting (approval, compute, suspended) or decided; nothing runs
        federation = Federation(self.hub, self.compute)
        server = await federation.existing_server()
        if self._running and (server is None or not federation.spec.active):
            return await self._compute_gone(server)
        if server is None:
            return self._with(JobPhase.PENDING, Reason.COMPUTE_NOT_READY, "the federation is not provisioned")
        try:
            admin = await self.hub.runtime.admin(server)
            if not self._running:
                return await self._submit(server, admin)
            withdrawn = self._withdrawn(self.status.approvals)
            if withdrawn:
                return await self._revoke(server, admin, withdrawn)
            if self.spec.suspend:
                return await self._suspend(server, admin)
            return await self._follow(server, admin)
        except FlareUnavailable as err:
            # The FLARE API is down (a server restarting): keep the phase, say why, ask again next pass.
            log.warning("FLARE API of %s/%s: %s", self.namespace, self.name, err)
            self.conds.set(ConditionType.READY, False, Reason.SERVER_UNREACHABLE,
                           f"the NVFlare server does not answer ({type(err).__name__}: {err}); retrying")
            kept = {}
            if self._running:  # NVFlare may still run the job: not Suspended or Queued before it says otherwise
                before = self.previous.phase
                kept["phase"] = before if before in (JobPhase.SUBMITTED, JobPhase.RUNNING) else JobPhase.SUBMITTED
            return self.status.model_copy(update={"conditions": self.conds.items, **kept})

    async def _submit(self, server: ServerWorkload, admin) -> FederatedJobStatus:
        compute_spec = Federation(self.hub, self.compute).spec
        app = catalog.load_app(compute_spec.model.id, compute_spec.model.version)
        attempt = self.status.attempts + 1
        checkpoint = self.status.checkpoint
        resume = None
        if checkpoint is not None and Path(checkpoint.path).exists():
            # DP: count conservatively — every earlier attempt may have released the round it was in.
            resume = {"checkpoint": Path(checkpoint.path).read_bytes(),
                      "startRound": min(checkpoint.completed_rounds, self.spec.rounds - 1),
                      "priorReleases": checkpoint.completed_rounds + self.status.attempts}
        job_name = job_name_for(self.namespace, self.name)
        started = _now()
        with SUBMIT_SECONDS.time():
            files = await asyncio.to_thread(
                build_from_api, app, self.spec, compute_spec, job_name=job_name,
                metadata={"uid": self.uid, "contentHash": self.status.content_hash, "attempt": attempt,
                          "job": f"{self.namespace}/{self.name}"},
                resume=resume)
            token = self.uid if attempt == 1 else f"{self.uid}-{attempt}"
            with tempfile.TemporaryDirectory(prefix="flareop-job-") as tmp:
                folder = write_job(files, tmp)
                job_id = await asyncio.to_thread(admin.submit, folder, token)
        JOB_SUBMISSIONS.labels("first" if attempt == 1 else "resubmit").inc()
        if attempt == 1:
            approved = next((c.last_transition_time for c in self.status.conditions
                             if c.type == ConditionType.APPROVED and c.status == "True"), None)
            created = self.body["metadata"].get("creationTimestamp")
            if approved and created:
                APPROVAL_WAIT_SECONDS.observe(max(0.0, (approved - _time(created)).total_seconds()))
        start_round = resume["startRound"] if resume else 0
        how = f"attempt {attempt}, from round {start_round}" if attempt > 1 else "submit token = uid"
        await self.hub.k("event", self.body, reason="Submitted" if attempt == 1 else "Resubmitted",
                         note=f"NVFlare job {job_id} ({how})")
        self.status = self.status.model_copy(update={
            "nvflare_job_id": job_id, "attempts": attempt, "submitted_at": self.status.submitted_at or started})
        return self._with(JobPhase.SUBMITTED, Reason.SUBMITTED, f"submitted as NVFlare job {job_id} ({how})",
                          progress=f"{start_round}/{self.spec.rounds}", current_round=start_round)

    async def _follow(self, server: ServerWorkload, admin) -> FederatedJobStatus:
        job_id = self.status.nvflare_job_id
        # One FLARE API call per pass while the job trains: its server app's answer to the
        # progress command says that it runs (in the server's process, so not lost by a restarted
        # server) and how far. Without an answer, the job's record says where it stands.
        record = await asyncio.to_thread(admin.progress, job_id)
        meta = None if record is not None else await asyncio.to_thread(admin.job_meta, job_id)
        state = "RUNNING" if meta is None else str(meta.get("status", ""))
        updates = await self._progress(admin, job_id, record)
        if self.spec.active_deadline_seconds and self.status.submitted_at:
            elapsed = (_now() - self.status.submitted_at).total_seconds()
            # FINISHED:ABORTED past the deadline: this operator's deadline abort, not recorded before a restart.
            finished = state.startswith("FINISHED")
            if elapsed > self.spec.active_deadline_seconds and (not finished or state == "FINISHED:ABORTED"):
                if not finished:
                    await asyncio.to_thread(admin.abort, job_id)
                return self._with(JobPhase.TIMED_OUT, Reason.DEADLINE_EXCEEDED,
                                  f"aborted after {elapsed:.0f}s (activeDeadlineSeconds "
                                  f"{self.spec.active_deadline_seconds})", completion_time=_now(),
                                  results=await self._logs_only(admin, job_id), **updates)
        if state == "RUNNING" and meta is not None and await asyncio.to_thread(admin.lost_by_server, job_id, meta):
            state = "FINISHED:ABANDONED"  # what NVFlare would call it: the restarted server forgot the job
        if state == "RUNNING" and record is not None and updates.get("current_round", 0) < self.spec.rounds:
            lost = await self._sites_without_job(admin, job_id)
            if lost:
                withdrawn = self._withdrawn(await self._current_approvals())
                if withdrawn:  # a site stopped it because its org withdrew: that is a revocation
                    return await self._revoke(server, admin, withdrawn)
                return await self._recover(server, admin, f"lost at {', '.join(lost)} (its client restarted "
                                           "mid-job)", updates, sites=lost)
        if state == "RUNNING":
            start = self.status.start_time or _now()
            return self._with(JobPhase.RUNNING, Reason.RUNNING, f"round {updates.get('progress', '?')}",
                              start_time=start, **updates)
        if state in LOST_BY_SERVER:
            return await self._recover(server, admin, f"ended {state}", updates)
        if state.startswith("FINISHED"):
            phase = _DONE.get(state, JobPhase.FAILED)
            withdrawn = [] if phase == JobPhase.SUCCEEDED else self._withdrawn(await self._current_approvals())
            if withdrawn:  # it ended because an org stopped it at its site: say so
                return await self._revoke(server, admin, withdrawn)
            if phase == JobPhase.ABORTED:
                # Nothing in the job's spec asked for this abort (a suspend, a deactivation or a
                # revocation is handled before this pass follows the job, a deadline above): an
                # operator killed between aborting an attempt a site lost and recording it (found by
                # the chaos suite), or someone at the FLARE admin console. The spec still says run:
                # resubmit, within backoffLimit.
                return await self._recover(server, admin, f"ended {state}, which nothing in the job's spec asked "
                                           "for", updates)
            if phase != JobPhase.SUCCEEDED:  # FAILED: an aborted one was resubmitted just above
                return self._with(JobPhase.FAILED, Reason.JOB_FAILED,
                                  f"NVFlare job {job_id} ended {state}", completion_time=_now(),
                                  results=await self._logs_only(admin, job_id), **updates)
            results, final = await self._fetch_results(admin, job_id)
            updates.update(final)
            return self._with(JobPhase.SUCCEEDED, Reason.SUCCEEDED,
                              f"completed {self.spec.rounds} rounds; results in {results.location}",
                              completion_time=_now(), results=results, **updates)
        return self._with(JobPhase.SUBMITTED, Reason.SUBMITTED, f"NVFlare job {job_id} is {state or 'queued'}",
                          **updates)

    def _withdrawn(self, approvals: Iterable[OrgDecision]) -> list[str]:
        """'org: reason' for each org whose approval of the running job's content no longer stands."""
        return [f"{a.org}: {a.message or a.decision}" if a.content_hash == self.status.content_hash
                else f"{a.org}: its decision is for other content than the running job's (the compute changed)"
                for a in approvals if a.decision != Decision.APPROVED or a.content_hash != self.status.content_hash]

    async def _current_approvals(self) -> list[OrgDecision]:
        """The orgs' answers as they are now (the light pass follows with the last full pass's)."""
        labels = {LABEL_SOURCE_NAMESPACE: self.namespace, LABEL_SOURCE_NAME: self.name,
                  LABEL_REQUEST_KIND: RequestKind.JOB.value}
        out = []
        for request in await self.hub.k("list", "AccessRequest", None, labels=labels):
            answer = request.get("status") or {}
            out.append(OrgDecision(org=request["spec"]["org"], decision=answer.get("decision") or Decision.PENDING,
                                   message=(answer.get("message") or "")[:1024],
                                   content_hash=answer.get("decidedHash")))
        return out or list(self.status.approvals)

    async def _revoke(self, server: ServerWorkload, admin, withdrawn: list[str]) -> FederatedJobStatus:
        """An org withdrew its approval while the job ran (its client already stopped the job there):
        abort the NVFlare job, keep what it produced so far (the last global model, metrics, logs)."""
        job_id = self.status.nvflare_job_id
        updates = await self._progress(admin, job_id, await asyncio.to_thread(admin.progress, job_id))
        # _progress just saved a newer checkpoint if the job had one; otherwise the saved one is the latest
        checkpoint = updates.pop("checkpoint", None) or self.status.checkpoint
        try:
            await asyncio.to_thread(admin.abort, job_id)
        except Exception:  # noqa: BLE001 - it may have ended already
            log.info("NVFlare job %s: abort after revocation", job_id, exc_info=True)
        results = await self._logs_only(admin, job_id, checkpoint)
        message = (f"approval withdrawn ({' | '.join(withdrawn)}); NVFlare job {job_id} stopped after "
                   f"{updates.get('progress', self.status.progress or '0/' + str(self.spec.rounds))} rounds")
        await self.hub.k("event", self.body, type_="Warning", reason="Revoked", note=message[:1024])
        return self._with(JobPhase.REVOKED, Reason.REVOKED, message[:32768], completion_time=_now(), results=results,
                          **({"checkpoint": checkpoint} if checkpoint else {}), **updates)

    async def _suspend(self, server: ServerWorkload, admin) -> FederatedJobStatus:
        """spec.suspend: keep the last global checkpoint, abort the NVFlare job; resuming resubmits."""
        job_id = self.status.nvflare_job_id
        try:
            checkpoint = await self._save_checkpoint(admin, job_id)
        except FlareUnavailable as err:  # the job's app does not answer (starting, or hung): suspend it all the same
            log.info("%s/%s: no checkpoint from NVFlare job %s before suspending it (%s)", self.namespace, self.name,
                     job_id, err)
            checkpoint = self.status.checkpoint
        await asyncio.to_thread(admin.abort, job_id)
        where = f"round {checkpoint.completed_rounds}" if checkpoint else "round 0 (no checkpoint yet)"
        await self.hub.k("event", self.body, reason="Suspended", note=f"NVFlare job {job_id} aborted; resumes from {where}")
        self.conds.set(ConditionType.RUNNING, False, Reason.SUSPENDED, "spec.suspend is true")
        return self._stopped(JobPhase.SUSPENDED, Reason.SUSPENDED,
                             f"spec.suspend is true: NVFlare job {job_id} aborted; resumes from {where}", checkpoint)

    async def _recover(self, server: ServerWorkload, admin, what: str, updates: dict,
                       sites: list[str] = ()) -> FederatedJobStatus:
        """The server lost the job, or ``sites`` did (the server still runs it, waiting for them:
        aborted first): resubmit from the last checkpoint while backoffLimit allows (the one saved
        while the job ran: the lost job answers no more)."""
        job_id = self.status.nvflare_job_id
        checkpoint = updates.pop("checkpoint", None) or self.status.checkpoint
        counter = "site_failures" if sites else "server_failures"
        self.status = self.status.model_copy(update={counter: getattr(self.status, counter) + 1})
        failures = self.status.server_failures + self.status.site_failures
        if sites:
            try:
                await asyncio.to_thread(admin.abort, job_id)
            except FlareUnavailable:
                raise
            except Exception:  # noqa: BLE001 - it may have ended meanwhile
                log.info("NVFlare job %s: abort after a site lost it", job_id, exc_info=True)
            self.hub.site_watches.pop(job_id, None)
        if failures > self.spec.backoff_limit:
            return self._with(JobPhase.FAILED, Reason.BACKOFF_LIMIT_EXCEEDED,
                              f"NVFlare job {job_id} {what}; {failures} server and site failures exceed "
                              f"backoffLimit {self.spec.backoff_limit}", completion_time=_now(), **updates)
        where = f"round {checkpoint.completed_rounds}" if checkpoint else "round 0 (no checkpoint)"
        log.warning("%s/%s: NVFlare job %s %s; resubmitting from %s", self.namespace, self.name, job_id, what, where)
        await self.hub.k("event", self.body, type_="Warning", reason="SiteLostJob" if sites else "ServerLostJob",
                         note=f"NVFlare job {job_id} {what}; resubmitting from {where}")
        self.status = self.status.model_copy(update={"nvflare_job_id": None, "checkpoint": checkpoint,
                                                     **updates})
        self.conds.set(ConditionType.READY, False, Reason.RESUBMITTED, f"NVFlare job {job_id} {what}")
        return await self._submit(server, admin)

    async def _sites_without_job(self, admin, job_id: str) -> list[str]:
        """The job's sites whose NVFlare client lost it (status/job.py SiteWatch); the sites are asked
        at most every site_check_seconds."""
        config, now, watches = self.hub.config, time.monotonic(), self.hub.site_watches
        for stale in [j for j, w in watches.items() if w.checked is not None and now - w.checked > 600]:
            del watches[stale]  # jobs no longer followed (finished, suspended, deleted)
        watch = watches.setdefault(job_id, SiteWatch())
        if watch.due(now, config.site_check_seconds):
            sites = self._sites()
            watch.observe(sites, await asyncio.to_thread(admin.clients_without_job, job_id, sites), now)
        return watch.lost(now, config.site_lost_seconds, config.site_start_seconds)

    async def _compute_gone(self, server: ServerWorkload | None) -> FederatedJobStatus:
        """The ComputeSpec was deactivated (or its server removed) under the running job."""
        job_id = self.status.nvflare_job_id
        if server is not None:
            try:
                await asyncio.to_thread((await self.hub.runtime.admin(server)).abort, job_id)
            except Exception:  # noqa: BLE001 - the server is stopping anyway
                log.info("could not abort NVFlare job %s on a deactivated federation", job_id, exc_info=True)
        name = self.spec.compute_spec_ref.name
        return self._with(JobPhase.FAILED, Reason.COMPUTE_DEACTIVATED,
                          f"ComputeSpec {name} was deactivated while NVFlare job {job_id} ran; the job was aborted",
                          completion_time=_now())

    def _stopped(self, phase: JobPhase, reason: str, message: str, checkpoint: Checkpoint | None) -> FederatedJobStatus:
        self.conds.set(ConditionType.READY, False, reason, message)
        update = {"phase": phase, "conditions": self.conds.items, "nvflare_job_id": None}
        if checkpoint is not None:
            update["checkpoint"] = checkpoint
        return self.status.model_copy(update=update)

    async def _save_checkpoint(self, admin, job_id: str, record: dict | None = None) -> Checkpoint | None:
        """The running job's last global checkpoint, asked of its server app and kept in the operator's
        workdir with the metrics record of that moment (the app records a round's checkpoint before
        its metrics). The last saved one when the job has nothing newer (or does not answer)."""
        answer = await asyncio.to_thread(admin.checkpoint, job_id)
        if answer is None:
            return self.status.checkpoint
        last, weights = answer
        if record is None:
            record = await asyncio.to_thread(admin.progress, job_id)
        folder = self._job_dir("checkpoints")
        path = folder / f"global_trainable-{job_id}.safetensors"

        def save() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, weights)
            if record is not None:
                _write_atomic(folder / f"metrics-{job_id}.json", json.dumps(record, indent=1).encode())

        await asyncio.to_thread(save)
        return Checkpoint(completed_rounds=last + 1, path=str(path), from_job_id=job_id, saved_at=_now())

    def _job_dir(self, kind: str) -> Path:
        return (self.hub.config.workdir / kind / self.namespace / self.name).resolve()

    async def _progress(self, admin, job_id: str, record: dict | None) -> dict:
        """Status fields from the job's live metrics ``record`` (``admin.progress``); with a newer
        global checkpoint than the one saved, that one too (so a server lost mid-job resumes from
        its last round)."""
        if not record:
            return {}
        updates = self._from_metrics(record)
        done, before = updates.get("current_round"), self.status.current_round or 0
        if done is not None and done > before:
            ROUNDS_COMPLETED.inc(done - before)
        last = record.get("last_completed_round")
        saved = self.status.checkpoint
        if isinstance(last, int) and (saved is None or saved.from_job_id != job_id or saved.completed_rounds <= last):
            checkpoint = await self._save_checkpoint(admin, job_id, record)
            if checkpoint is not None and checkpoint is not saved:
                updates["checkpoint"] = checkpoint
        return updates

    def _from_metrics(self, record: dict) -> dict:
        return progress_from_metrics(record, self.spec.rounds)

    async def _fetch_results(self, admin, job_id: str) -> tuple[Results, dict]:
        """The finished job's results (the server app's results folder, every participant's log, the
        metrics of earlier attempts) into the results store; with the status fields of its metrics."""
        earlier = self._job_dir("checkpoints")

        def fetch() -> tuple[Results, dict]:
            with tempfile.TemporaryDirectory(prefix="flareop-dl-") as tmp:
                downloaded = Path(admin.download(job_id, Path(tmp) / "download"))
                candidates = [downloaded / RESULTS_DIR, Path(tmp) / "download" / job_id / RESULTS_DIR]
                source = next((c for c in candidates if c.exists()), candidates[-1])
                tree = Path(tmp) / "results"
                shutil.copytree(source, tree)
                log_txt = next(iter((Path(tmp) / "download").rglob("log.txt")), None)
                if log_txt:
                    (tree / "logs").mkdir(exist_ok=True)
                    shutil.copy(log_txt, tree / "logs" / "server-log.txt")
                _store_logs(admin, job_id, tree / "logs", self._participants())
                for previous in sorted(earlier.glob("metrics-*.json")):  # attempts before a suspend / server loss
                    if previous.name != f"metrics-{job_id}.json":
                        (tree / "attempts").mkdir(exist_ok=True)
                        shutil.copy(previous, tree / "attempts" / previous.name)
                metrics = tree / "metrics.json"
                fields = self._from_metrics(json.loads(metrics.read_text())) if metrics.exists() else {}
                return self.hub.results_store.put_tree(tree, self.namespace, self.name), fields

        return await asyncio.to_thread(fetch)

    def _sites(self) -> list[str]:
        return [client_name(org) for org in datasets_by_org(Federation(self.hub, self.compute).spec)]

    def _participants(self) -> list[str]:
        return ["server", *self._sites()]

    async def _logs_only(self, admin, job_id: str, checkpoint: Checkpoint | None = None) -> Results | None:
        """A job that did not succeed keeps its logs (server and every site) for whoever debugs it, and a
        revoked one the last global model it reached (``checkpoint``)."""

        def fetch() -> Results | None:
            with tempfile.TemporaryDirectory(prefix="flareop-logs-") as tmp:
                tree = Path(tmp)
                kept = _store_logs(admin, job_id, tree / "logs", self._participants())
                if checkpoint is not None and Path(checkpoint.path).exists():
                    shutil.copy(checkpoint.path, tree / "global_trainable.safetensors")
                    metrics = Path(checkpoint.path).with_name(f"metrics-{checkpoint.from_job_id}.json")
                    if metrics.exists():
                        shutil.copy(metrics, tree / "metrics.json")
                    kept += 1
                return self.hub.results_store.put_tree(tree, self.namespace, self.name) if kept else None

        return await asyncio.to_thread(fetch)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _store_logs(admin, job_id: str, folder: Path, expected: Iterable[str] = (), *, tries: int = 6) -> int:
    """`<folder>/<participant>-log.txt` for every participant whose job log the server holds.

    Clients stream their job logs to the server as their job process ends, which can be a few
    seconds after NVFlare reports the job finished: wait a little for the `expected` ones.
    """
    logs: dict[str, str] = {}
    for attempt in range(tries):
        try:
            logs = admin.job_logs(job_id)
        except Exception:  # noqa: BLE001 - logs are a convenience; the job's outcome does not depend on them
            log.warning("could not fetch the logs of NVFlare job %s", job_id, exc_info=True)
            return 0
        missing = set(expected) - set(logs)
        if not missing or attempt == tries - 1:
            break
        time.sleep(2.0)
    if set(expected) - set(logs):
        log.info("NVFlare job %s: no log from %s (a site may not stream logs)", job_id, sorted(set(expected) - set(logs)))
    folder.mkdir(parents=True, exist_ok=True)
    for participant, text in logs.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in participant)
        (folder / f"{safe}-log.txt").write_text(text if isinstance(text, str) else str(text))
    return len(logs)


async def abort_if_running(hub: Hub, body: dict) -> None:
    """The job is being deleted: stop its NVFlare job if it still runs."""
    status = FederatedJobStatus.model_validate(FederatedJobStatus.own_fields(body.get("status")))
    if not status.nvflare_job_id or status.phase in FINISHED_PHASES:
        return
    spec = FederatedJobSpec.model_validate(body["spec"])
    compute = await hub.k("get", "ComputeSpec", body["metadata"]["namespace"], spec.compute_spec_ref.name)
    if compute is None:
        return
    server = await Federation(hub, compute).existing_server()
    if server is not None:
        try:
            await asyncio.to_thread((await hub.runtime.admin(server)).abort, status.nvflare_job_id)
        except Exception:  # noqa: BLE001 - the server may be gone already
            log.warning("could not abort NVFlare job %s", status.nvflare_job_id, exc_info=True)


async def expire_if_due(hub: Hub, body: dict, status: FederatedJobStatus) -> None:
    """spec.ttlSecondsAfterFinished: delete the finished job once its time is up (results stay)."""
    ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
    if ttl is None or status.completion_time is None:
        return
    if (_now() - status.completion_time).total_seconds() >= ttl:
        meta = body["metadata"]
        log.info("FederatedJob %s/%s finished %s ago: deleting (ttlSecondsAfterFinished %s)",
                 meta["namespace"], meta["name"], _now() - status.completion_time, ttl)
        await hub.k("delete", "FederatedJob", meta["namespace"], meta["name"])
