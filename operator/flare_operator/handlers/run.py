"""Orchestrator: run an admitted FederatedJob on its federation — build, submit once, follow, finish.

The NVFlare job is built from the catalog app (builders/nvflare_job.py) with each site's dataset
named by reference (`dataset:<id>`: only the site knows where its data is) and submitted through
the FLARE API with the operator's admin kit and submit token = the job's uid, so a restarted
operator never submits twice. Progress comes from the app's live metrics in the server's
workspace; results are downloaded when NVFlare reports the job finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from ..api.conditions import ConditionType, Reason
from ..api.job import FederatedJobSpec, FederatedJobStatus, JobPhase, ResultFile, Results, SiteMetrics
from ..builders.federation import client_name
from ..builders.nvflare_job import SiteSpec, aggregation_from_api, build_job, privacy_from_api, write_job
from ..builders.requests import datasets_by_org
from ..catalog import loader as catalog
from ..runtime.workloads import ProcessRuntime, ServerWorkload
from ..status.conditions import Conditions
from .compute import Federation, Hub
from .objects import ObjectView

log = logging.getLogger(__name__)

METRICS_FILE = "app_server/results/metrics.json"
RESULTS_DIR = "workspace/app_server/results"
_DONE = {"FINISHED:COMPLETED": JobPhase.SUCCEEDED, "FINISHED:ABORTED": JobPhase.ABORTED}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        if phase in (JobPhase.FAILED, JobPhase.TIMED_OUT, JobPhase.ABORTED):
            self.conds.set(ConditionType.RUNNING, False, reason, message)
            self.conds.set(ConditionType.FAILED, True, reason, message)
        return self.status.model_copy(update={"phase": phase, "conditions": self.conds.items, **fields})

    async def step(self) -> FederatedJobStatus:
        if not self.status.nvflare_job_id and self.status.phase != JobPhase.QUEUED:
            return self.status
        if not isinstance(self.hub.runtime, ProcessRuntime):
            return self._with(JobPhase.QUEUED, Reason.PROGRESSING,
                              "approved; this operator's runtime cannot submit jobs yet (process runtime only)")
        server = await Federation(self.hub, self.compute).existing_server()
        if server is None:
            return self._with(JobPhase.PENDING, Reason.COMPUTE_NOT_READY, "the federation is not provisioned")
        admin = self.hub.runtime.admin(server)
        if not self.status.nvflare_job_id:
            return await self._submit(server, admin)
        return await self._follow(server, admin)

    async def _submit(self, server: ServerWorkload, admin) -> FederatedJobStatus:
        compute_spec = Federation(self.hub, self.compute).spec
        app = catalog.load_app(compute_spec.model.id, compute_spec.model.version)
        sites = [SiteSpec(name=client_name(org), dataset_path=f"dataset:{datasets[0]}")
                 for org, datasets in datasets_by_org(compute_spec).items()]
        job_name = f"{self.namespace}-{self.name}"[:60]
        files = await asyncio.to_thread(
            build_job, app, {**self.spec.parameters, "rounds": self.spec.rounds}, sites, job_name=job_name,
            privacy=privacy_from_api(self.spec.privacy.to_wire(), self.spec.rounds),
            aggregation=aggregation_from_api(self.spec.aggregation.to_wire()),
            metadata={"uid": self.uid, "contentHash": self.status.content_hash, "attempt": 1,
                      "job": f"{self.namespace}/{self.name}"})
        with tempfile.TemporaryDirectory(prefix="flareop-job-") as tmp:
            folder = write_job(files, tmp)
            started = _now()
            job_id = await asyncio.to_thread(admin.submit, folder, self.uid)
        self.status = self.status.model_copy(update={"nvflare_job_id": job_id, "attempts": 1,
                                                     "submitted_at": started})
        await self.hub.k("event", self.body, reason="Submitted", note=f"NVFlare job {job_id} (submit token = uid)")
        return self._with(JobPhase.SUBMITTED, Reason.SUBMITTED, f"submitted as NVFlare job {job_id}",
                          progress=f"0/{self.spec.rounds}", current_round=0)

    async def _follow(self, server: ServerWorkload, admin) -> FederatedJobStatus:
        job_id = self.status.nvflare_job_id
        meta = await asyncio.to_thread(admin.job_meta, job_id)
        state = str(meta.get("status", ""))
        updates = self._progress(server, job_id)
        if self.spec.active_deadline_seconds and self.status.submitted_at:
            elapsed = (_now() - self.status.submitted_at).total_seconds()
            if elapsed > self.spec.active_deadline_seconds and not state.startswith("FINISHED"):
                await asyncio.to_thread(admin.abort, job_id)
                return self._with(JobPhase.TIMED_OUT, Reason.DEADLINE_EXCEEDED,
                                  f"aborted after {elapsed:.0f}s (activeDeadlineSeconds "
                                  f"{self.spec.active_deadline_seconds})", completion_time=_now(), **updates)
        if state == "RUNNING":
            start = self.status.start_time or _now()
            return self._with(JobPhase.RUNNING, Reason.RUNNING, f"round {updates.get('progress', '?')}",
                              start_time=start, **updates)
        if state.startswith("FINISHED"):
            phase = _DONE.get(state, JobPhase.FAILED)
            if phase != JobPhase.SUCCEEDED:
                return self._with(phase, Reason.ABORTED if phase == JobPhase.ABORTED else Reason.JOB_FAILED,
                                  f"NVFlare job {job_id} ended {state}", completion_time=_now(), **updates)
            results = await self._fetch_results(admin, job_id)
            updates.update(self._metrics(results))
            return self._with(JobPhase.SUCCEEDED, Reason.SUCCEEDED,
                              f"completed {self.spec.rounds} rounds; results in {results.location}",
                              completion_time=_now(), results=results, **updates)
        return self._with(JobPhase.SUBMITTED, Reason.SUBMITTED, f"NVFlare job {job_id} is {state or 'queued'}",
                          **updates)

    def _progress(self, server: ServerWorkload, job_id: str) -> dict:
        raw = self.hub.runtime.server_job_file(server, job_id, METRICS_FILE)
        return self._from_metrics(json.loads(raw)) if raw else {}

    def _from_metrics(self, record: dict) -> dict:
        history = record.get("history") or []
        done = (record.get("last_completed_round") or -1) + 1 if record.get("last_completed_round") is not None else 0
        latest = record.get("final") or (history[-1] if history else None)
        if latest is None:
            return {"current_round": done, "progress": f"{done}/{self.spec.rounds}"}
        eps = record.get("epsilon_spent") or {}
        sites = [SiteMetrics(site=s, metrics={k: float(v) for k, v in m.items() if isinstance(v, int | float)},
                             epsilon_spent=eps.get(s, m.get("dp_epsilon")))
                 for s, m in sorted((latest.get("sites") or {}).items())]
        glob = {k: float(v) for k, v in (latest.get("global") or {}).items() if isinstance(v, int | float)}
        return {"current_round": done, "progress": f"{done}/{self.spec.rounds}", "global_metrics": glob,
                "site_metrics": sites}

    def _metrics(self, results: Results) -> dict:
        path = Path(results.location) / "metrics.json"
        return self._from_metrics(json.loads(path.read_text())) if path.exists() else {}

    async def _fetch_results(self, admin, job_id: str) -> Results:
        location = (self.hub.config.workdir / "results" / self.namespace / self.name).resolve()

        def fetch() -> Results:
            with tempfile.TemporaryDirectory(prefix="flareop-dl-") as tmp:
                downloaded = Path(admin.download(job_id, Path(tmp)))
                candidates = [downloaded / RESULTS_DIR, Path(tmp) / job_id / RESULTS_DIR]
                source = next((c for c in candidates if c.exists()), candidates[-1])
                shutil.rmtree(location, ignore_errors=True)
                shutil.copytree(source, location)
                log_txt = next(iter(Path(tmp).rglob("log.txt")), None)
                if log_txt:
                    (location / "logs").mkdir(exist_ok=True)
                    shutil.copy(log_txt, location / "logs" / "server-log.txt")
            files = [ResultFile(name=str(p.relative_to(location)), size=p.stat().st_size, sha256=_sha256(p))
                     for p in sorted(location.rglob("*")) if p.is_file()]
            return Results(location=str(location), files=files[:256])

        return await asyncio.to_thread(fetch)


async def abort_if_running(hub: Hub, body: dict) -> None:
    """The job is being deleted: stop its NVFlare job if it still runs."""
    status = FederatedJobStatus.model_validate(FederatedJobStatus.own_fields(body.get("status")))
    if not status.nvflare_job_id or status.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.ABORTED,
                                                     JobPhase.TIMED_OUT):
        return
    spec = FederatedJobSpec.model_validate(body["spec"])
    compute = await hub.k("get", "ComputeSpec", body["metadata"]["namespace"], spec.compute_spec_ref.name)
    if compute is None or not isinstance(hub.runtime, ProcessRuntime):
        return
    server = await Federation(hub, compute).existing_server()
    if server is not None:
        try:
            await asyncio.to_thread(hub.runtime.admin(server).abort, status.nvflare_job_id)
        except Exception:  # noqa: BLE001 - the server may be gone already
            log.warning("could not abort NVFlare job %s", status.nvflare_job_id, exc_info=True)
