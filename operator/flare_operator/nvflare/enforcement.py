"""Site enforcement inside the NVFlare client: refuse every job the site's org has not approved,
refuse any app that is not the one it approved, and stop a running job the moment its approval goes.

``ApprovedJobsOnly`` is an FLComponent for a client's *parent* process, configured in the site's
``local/flareop_enforcement__p_resources.json`` (``builders/federation.enforcement_resources``) —
the site's own configuration, not part of any job, so a job cannot switch it off. It reads the
approved-jobs document its gateway materialises (``policy/site_enforcement.py``) again on every
check, so an approval or a revocation applies to the next check without restarting the client,
and it fails closed: a missing or unreadable document refuses every job.

Where it acts (NVFlare 2.9, all in the client's parent process):

- ``AUTHORIZE_COMMAND_CHECK`` — fired for every server request that names an admin command, with
  the job's meta in the request's security items. For ``check_resources`` (the scheduler asking
  whether the site takes the job) and ``submit_job`` (the deployment of the job's app) it sets
  ``AUTHORIZATION_RESULT=False`` and the reason, and NVFlare answers the server with an error:
  the scheduler records "<site>: <reason>" in the job's ``schedule_history`` and retries with
  backoff (``FINISHED:CANT_SCHEDULE`` after 10 tries); a refused deployment never unpacks the app.
- ``BEFORE_CHECK_RESOURCE_MANAGER`` — the resource check itself, whose context carries only the
  job id: the component re-checks the meta it saw in that request's authorization check (again
  against the current document) and sets ``JOB_BLOCK_REASON``; a resource check whose meta it
  never saw is blocked too. In NVFlare 2.9 the authorization check always runs first, so this is
  a second lock on the same door, kept in case a server sends the check without the admin command.
- **The app deployer.** The component's id is ``app_deployer`` (``SystemComponents.APP_DEPLOYER``),
  so ``ClientEngine.deploy_app`` (nvflare/private/fed/client/client_engine.py) hands it every app
  the server deploys here — the zip of the job's ``app_<site>/`` folder, after NVFlare verified its
  signature (``training_cmds.DeployProcessor``) and before anything is unpacked. It digests the
  zip's files (``app_digest``) and refuses, unless that is the ``appDigest`` the site approved for
  the job's uid; the refusal is the deployment's error, which the server records as
  "<site>: <reason>" in the job's ``job_deploy_detail`` (the job ends ``FINISHED:FAILED_TO_RUN``
  when too few sites remain). An allowed app goes to NVFlare's own ``AppDeployer``.
- ``BEFORE_JOB_LAUNCH`` — fired by ``fed_utils.get_job_launcher`` when ``ClientExecutor.start_app``
  is about to start the job's process (or pod): it digests the app folder as unpacked in the
  client's workspace and checks it again against the current document. A refusal replaces the
  launchers with one that raises the reason, so no job process starts ("Start job execution
  exception: <reason>" to the server). This also covers a server that starts a job again later
  from a folder deployed earlier.
- **Revocation.** From ``SYSTEM_START`` a thread re-checks, every ``recheck_seconds`` (1 s), each
  job this client runs (``ClientEngine.get_all_job_ids``) against the current document, with the
  meta and app digest it saw at deployment. A job the document no longer allows (its uid removed,
  its content hash or app digest changed) is logged ``REVOKED`` and its process ended at once
  through its job handle (``JobHandleSpec.terminate``: SIGKILL to the job's process group with the
  process launcher, the pod deleted with the Kubernetes launcher); NVFlare reports it to the server
  as aborted, and the server ends the job. No further task of it runs on the site's data. A
  document that cannot be read revokes running jobs only when it stays unreadable for
  ``UNREADABLE_CHECKS`` checks in a row (a replaced ConfigMap is never half-written, but a job is
  not killed for one failed read).

Every refusal and revocation is logged at ERROR (job id, name, content hash, the site's org) into
the client's log. The client image must be able to import this module (the flare-operator package
with nvflare).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nvflare.apis.app_deployer_spec import AppDeployerSpec
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import (
    AdminCommandNames,
    FLContextKey,
    FLMetaKey,
    RunProcessKey,
    SystemComponents,
)
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_launcher_spec import JobLauncherSpec, JobReturnCode
from nvflare.apis.workspace import Workspace

from ..policy.site_enforcement import (
    META_KEY,
    ApprovedJobs,
    Verdict,
    app_digest,
    check_job,
    parse,
    short_hash,
    zip_app_files,
)

GATED_COMMANDS = frozenset({AdminCommandNames.CHECK_RESOURCES, AdminCommandNames.SUBMIT_JOB})
"""The server requests that bring a job to the site: scheduling (check_resources) and deployment."""

REMEMBERED_JOBS = 256
RECHECK_SECONDS = 1.0
UNREADABLE_CHECKS = 3
RESTOP_SECONDS = 5.0  # a revoked job still registered this long after its stop is stopped again


def folder_app_files(folder: str | os.PathLike) -> dict[str, bytes]:
    """The files of an unpacked app folder, keyed by their path relative to it (for ``app_digest``).

    ValueError for a symbolic link or a name that is not text (NVFlare itself refuses both)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    files: dict[str, bytes] = {}
    for current, dirs, names in os.walk(root):
        for name in (*dirs, *names):
            if os.path.islink(os.path.join(current, name)):
                raise ValueError(f"the app holds a symbolic link: {os.path.join(current, name)}")
        for name in names:
            rel = Path(current, name).relative_to(root).as_posix()
            try:
                rel.encode()
            except UnicodeEncodeError:
                raise ValueError(f"the app holds a file whose name is not text: {rel!r}") from None
            files[rel] = Path(current, name).read_bytes()
    return files


@dataclass(frozen=True)
class _Deployed:
    """What the component checked when it deployed a job here: the meta and the app's digest."""

    meta: Mapping | None
    digest: str


class _RefusedLaunch(JobLauncherSpec):
    """The only launcher a refused job gets: it starts nothing and says why."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def launch_job(self, job_meta: dict, fl_ctx: FLContext):
        raise RuntimeError(self.reason)


class ApprovedJobsOnly(FLComponent, AppDeployerSpec):
    """Refuse, at this site, every job whose FederatedJob uid + content hash its org has not approved
    or whose app is not the app it approved; stop a running job as soon as its approval is withdrawn."""

    def __init__(self, approved_file: str, org: str = "", recheck_seconds: float = RECHECK_SECONDS):
        super().__init__()
        if not approved_file:
            raise ValueError("ApprovedJobsOnly needs approved_file (the site's approved-jobs document)")
        if not recheck_seconds > 0:
            raise ValueError("recheck_seconds must be > 0")
        self.approved_file = Path(approved_file)
        self.org = org or "this site"
        self.recheck_seconds = float(recheck_seconds)
        self._metas: OrderedDict[str, Mapping] = OrderedDict()  # job id -> meta of its last authorization check
        self._deployed: OrderedDict[str, _Deployed] = OrderedDict()  # job id -> what deploy/launch checked
        self._revoked: dict[str, float] = {}  # job id -> monotonic time its stop was (last) sent
        self._revoked_at: dict[str, float] = {}  # job id -> monotonic time the revocation was seen
        self._unreadable = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- the document ---------------------------------------------------------------------------

    def read_approved(self) -> tuple[ApprovedJobs | None, str]:
        """(the approved jobs, "") or (None, why not): read afresh on every check."""
        try:
            return parse(self.approved_file.read_bytes()), ""
        except OSError as err:
            return None, f"{self.approved_file}: {err.strerror or err}"
        except ValueError as err:
            return None, f"{self.approved_file}: {err}"

    def decide(self, meta: Mapping | None, job_id: str = "", deployed_digest: str | None = None,
               approved: tuple[ApprovedJobs | None, str] | None = None) -> Verdict:
        document, why = approved if approved is not None else self.read_approved()
        return check_job(meta, document, org=self.org, job_id=job_id, unavailable=why,
                         deployed_digest=deployed_digest)

    # --- events ---------------------------------------------------------------------------------

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.AUTHORIZE_COMMAND_CHECK:
            self._authorize(fl_ctx)
        elif event_type == EventType.BEFORE_CHECK_RESOURCE_MANAGER:
            self._before_resource_check(fl_ctx)
        elif event_type == EventType.BEFORE_JOB_LAUNCH:
            self._before_launch(fl_ctx)
        elif event_type in (EventType.SYSTEM_START, EventType.AFTER_JOB_LAUNCH):
            self.start_monitor(fl_ctx.get_engine())
        elif event_type == EventType.JOB_COMPLETED:
            self._forget(str(fl_ctx.get_prop(FLContextKey.CURRENT_JOB_ID) or ""))
        elif event_type == EventType.SYSTEM_END:
            self.stop_monitor()

    def _authorize(self, fl_ctx: FLContext) -> None:
        command = fl_ctx.get_prop(FLContextKey.COMMAND_NAME)
        if command not in GATED_COMMANDS:
            return
        items = fl_ctx.get_prop(FLContextKey.SECURITY_ITEMS) or {}
        meta = items.get(FLContextKey.JOB_META) if isinstance(items, Mapping) else None
        job_id = str(meta.get("job_id") or "") if isinstance(meta, Mapping) else ""
        if job_id:
            self._remember(job_id, meta)
        verdict = self.decide(meta, job_id)
        if verdict.allowed:
            self.log_info(fl_ctx, f"allowed {command} of NVFlare job {job_id}: {verdict.message}")
            return
        fl_ctx.set_prop(FLContextKey.AUTHORIZATION_RESULT, False, private=True, sticky=False)
        fl_ctx.set_prop(FLContextKey.AUTHORIZATION_REASON, verdict.message, private=True, sticky=False)
        self._log_refusal(fl_ctx, command, job_id, meta, verdict)

    def _before_resource_check(self, fl_ctx: FLContext) -> None:
        job_id = str(fl_ctx.get_prop(FLContextKey.CURRENT_JOB_ID) or "")
        with self._lock:
            meta = self._metas.get(job_id)
        verdict = self.decide(meta, job_id)
        if not verdict.allowed:
            fl_ctx.set_prop(FLContextKey.JOB_BLOCK_REASON, verdict.message, private=True, sticky=False)
            self._log_refusal(fl_ctx, "resource check", job_id, meta, verdict)

    # --- deployment: the app this site gets must be the app it approved --------------------------

    def deploy(self, workspace: Workspace, job_id: str, job_meta: dict, app_name: str, app_data: bytes,
               fl_ctx: FLContext) -> str:
        """NVFlare's AppDeployerSpec: check the app (zip bytes, not yet unpacked), then let NVFlare's own
        deployer unpack it. Returns the error ("" when deployed)."""
        meta = job_meta if isinstance(job_meta, Mapping) else None
        try:
            digest = app_digest(zip_app_files(app_data))
        except ValueError as err:
            digest, verdict = "", Verdict(False, f"{self.org} refuses NVFlare job {job_id}: {err}")
        else:
            verdict = self.decide(meta, job_id, deployed_digest=digest)
        if not verdict.allowed:
            self._log_refusal(fl_ctx, "deployment", job_id, meta, verdict)
            return verdict.message
        with self._lock:
            self._deployed[job_id] = _Deployed(meta, digest)
            self._deployed.move_to_end(job_id)
            while len(self._deployed) > REMEMBERED_JOBS:
                self._deployed.popitem(last=False)
        self.log_info(fl_ctx, f"deploying app {app_name} of NVFlare job {job_id} (app digest {short_hash(digest)}): "
                              f"{verdict.message}")
        deployer = fl_ctx.get_prop(SystemComponents.DEFAULT_APP_DEPLOYER)
        if deployer is None or deployer is self:
            from nvflare.private.fed.utils.app_deployer import AppDeployer

            deployer = AppDeployer()
        return deployer.deploy(workspace=workspace, job_id=job_id, job_meta=job_meta, app_name=app_name,
                               app_data=app_data, fl_ctx=fl_ctx)

    def _before_launch(self, fl_ctx: FLContext) -> None:
        meta = fl_ctx.get_prop(FLContextKey.JOB_META)
        meta = meta if isinstance(meta, Mapping) else None
        job_id = str(meta.get("job_id") or "") if meta else ""
        with self._lock:
            deployed = self._deployed.get(job_id)
        workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
        digest = ""
        if deployed is None:
            verdict = Verdict(False, f"{self.org} refuses to start NVFlare job {job_id or '?'}: this client did not "
                                     "check and deploy its app (was the client restarted since?); deploy the job again")
        elif not isinstance(workspace, Workspace):
            verdict = Verdict(False, f"{self.org} refuses to start NVFlare job {job_id}: no workspace to check its app in")
        else:
            try:
                digest = app_digest(folder_app_files(workspace.get_app_dir(job_id)))
            except (OSError, ValueError) as err:
                verdict = Verdict(False, f"{self.org} refuses to start NVFlare job {job_id}: its app folder cannot "
                                         f"be checked ({err})")
            else:
                document = self.read_approved()
                verdict = self.decide(deployed.meta, job_id, deployed_digest=digest, approved=document)
                if verdict.allowed and meta is not None and meta.get(META_KEY) != (deployed.meta or {}).get(META_KEY):
                    verdict = Verdict(False, f"{self.org} refuses to start NVFlare job {job_id}: the server starts it "
                                             "as another FederatedJob than the one it deployed here")
        if not verdict.allowed:
            fl_ctx.set_prop(FLContextKey.JOB_LAUNCHER, [_RefusedLaunch(verdict.message)], private=True, sticky=False)
            self._log_refusal(fl_ctx, "launch", job_id, deployed.meta if deployed else meta, verdict)
            return
        with self._lock:
            self._deployed[job_id] = _Deployed(deployed.meta, digest)
        self.log_info(fl_ctx, f"starting NVFlare job {job_id}: its app digests to {short_hash(digest)}, as approved")

    # --- revocation: a running job stops as soon as the document no longer allows it ----------------

    def start_monitor(self, engine) -> None:
        with self._lock:
            if engine is None or (self._monitor is not None and self._monitor.is_alive()):
                return
            self._stop.clear()
            self._monitor = threading.Thread(target=self._watch, args=(engine,), name="flareop-revocation",
                                             daemon=True)
            self._monitor.start()

    def stop_monitor(self) -> None:
        self._stop.set()

    def _watch(self, engine) -> None:
        while not self._stop.wait(self.recheck_seconds):
            try:
                self.recheck(engine)
            except Exception as err:  # the watch must outlive any one bad check
                self.logger.error(f"re-checking running jobs at org {self.org} failed: {err!r}")

    def recheck(self, engine) -> list[str]:
        """Check every job this client runs against the current document; stop those it no longer
        allows. Returns the ids of the jobs revoked by this check."""
        running = [str(j) for j in engine.get_all_job_ids()]
        now = time.monotonic()
        for job_id in list(self._revoked):
            if job_id not in running:
                self._log_stopped(engine, job_id, now)
            elif now - self._revoked[job_id] >= RESTOP_SECONDS:
                self._revoked[job_id] = now
                self._terminate(engine, job_id)
        candidates = [j for j in running if j not in self._revoked]
        if not candidates:
            self._unreadable = 0
            return []
        document = self.read_approved()
        if document[0] is None:
            self._unreadable += 1
            if self._unreadable < UNREADABLE_CHECKS:
                return []
        else:
            self._unreadable = 0
        revoked = []
        for job_id in candidates:
            with self._lock:
                deployed = self._deployed.get(job_id)
            if deployed is None:
                verdict = Verdict(False, f"{self.org} did not check and deploy NVFlare job {job_id} at its site")
            else:
                verdict = self.decide(deployed.meta, job_id, deployed_digest=deployed.digest or None,
                                      approved=document)
            if not verdict.allowed:
                self._revoke(engine, job_id, deployed.meta if deployed else None, verdict)
                revoked.append(job_id)
        return revoked

    def _revoke(self, engine, job_id: str, meta: Mapping | None, verdict: Verdict) -> None:
        now = time.monotonic()
        self._revoked[job_id] = self._revoked_at[job_id] = now
        with engine.new_context() as fl_ctx:
            self.log_error(fl_ctx, f"REVOKED {self._describe(job_id, meta)} at org {self.org}: {verdict.message}; "
                                   "stopping the job at this site now", fire_event=False)
        self._terminate(engine, job_id)

    def _terminate(self, engine, job_id: str) -> None:
        """End the job's process now: tell NVFlare it was aborted (the return-code file the job process
        itself would leave), then terminate it through its job handle; without a handle, NVFlare's own
        abort (graceful first, terminated after its grace period)."""
        workspace = getattr(getattr(engine, "args", None), "workspace", None)
        if workspace:
            try:
                rc_file = Path(workspace, job_id, FLMetaKey.PROCESS_RC_FILE)
                if rc_file.parent.is_dir():
                    rc_file.write_text(f"{JobReturnCode.ABORTED}\n")
            except OSError as err:
                self.logger.warning(f"could not record job {job_id} as aborted: {err}")
        executor = getattr(engine, "client_executor", None)
        processes = getattr(executor, "run_processes", None)
        handle = processes.get(job_id, {}).get(RunProcessKey.JOB_HANDLE) if isinstance(processes, dict) else None
        if handle is not None:
            try:
                handle.terminate()
                return
            except Exception as err:  # fall back to NVFlare's abort
                self.logger.error(f"terminating job {job_id} failed ({err!r}); asking NVFlare to abort it")
        threading.Thread(target=engine.abort_app, args=(job_id,), name=f"flareop-abort-{job_id}", daemon=True).start()

    def _log_stopped(self, engine, job_id: str, now: float) -> None:
        seen = self._revoked_at.pop(job_id, now)
        self._revoked.pop(job_id, None)
        with engine.new_context() as fl_ctx:
            self.log_info(fl_ctx, f"revoked NVFlare job {job_id} no longer runs at org {self.org} (seen "
                                  f"{now - seen:.1f}s after its revocation)", fire_event=False)
        self._forget(job_id)

    # --- bookkeeping --------------------------------------------------------------------------------

    def _remember(self, job_id: str, meta: Mapping) -> None:
        with self._lock:
            self._metas[job_id] = meta
            self._metas.move_to_end(job_id)
            while len(self._metas) > REMEMBERED_JOBS:
                self._metas.popitem(last=False)

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._deployed.pop(job_id, None)

    def _describe(self, job_id: str, meta: Mapping | None) -> str:
        meta = meta if isinstance(meta, Mapping) else {}
        flareop = meta.get(META_KEY) if isinstance(meta.get(META_KEY), Mapping) else {}
        return (f"NVFlare job {job_id or '?'} (name {meta.get('name') or '?'}, FederatedJob "
                f"{flareop.get('job') or '?'}, content hash {flareop.get('contentHash') or 'none'})")

    def _log_refusal(self, fl_ctx: FLContext, what: str, job_id: str, meta: Mapping | None, verdict: Verdict) -> None:
        self.log_error(fl_ctx, f"REFUSED {what} of {self._describe(job_id, meta)} at org {self.org}: {verdict.message}",
                       fire_event=False)
