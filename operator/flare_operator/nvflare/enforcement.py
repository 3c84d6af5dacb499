"""Site enforcement inside the NVFlare client: refuse every job the site's org has not approved.

``ApprovedJobsOnly`` is an FLComponent for a client's *parent* process, configured in the site's
``local/flareop_enforcement__p_resources.json`` (``builders/federation.enforcement_resources``) —
the site's own configuration, not part of any job, so a job cannot switch it off. It reads the
approved-jobs document its gateway materialises (``policy/site_enforcement.py``) again on every
check, so an approval or a revocation applies to the next check without restarting the client,
and it fails closed: a missing or unreadable document refuses every job.

It hooks two client events:

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

Every refusal is logged at ERROR (job id, name, content hash, the site's org) into the client's log.
The client image must be able to import this module (the flare-operator package with nvflare).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import AdminCommandNames, FLContextKey
from nvflare.apis.fl_context import FLContext

from ..policy.site_enforcement import META_KEY, ApprovedJobs, Verdict, check_job, parse

GATED_COMMANDS = frozenset({AdminCommandNames.CHECK_RESOURCES, AdminCommandNames.SUBMIT_JOB})
"""The server requests that bring a job to the site: scheduling (check_resources) and deployment."""

REMEMBERED_JOBS = 256


class ApprovedJobsOnly(FLComponent):
    """Refuse, at this site, every job whose FederatedJob uid + content hash its org has not approved."""

    def __init__(self, approved_file: str, org: str = ""):
        super().__init__()
        if not approved_file:
            raise ValueError("ApprovedJobsOnly needs approved_file (the site's approved-jobs document)")
        self.approved_file = Path(approved_file)
        self.org = org or "this site"
        self._metas: OrderedDict[str, Mapping] = OrderedDict()  # job id -> meta of its last authorization check
        self._lock = threading.Lock()

    # --- the document ---------------------------------------------------------------------------

    def read_approved(self) -> tuple[ApprovedJobs | None, str]:
        """(the approved jobs, "") or (None, why not): read afresh on every check."""
        try:
            return parse(self.approved_file.read_bytes()), ""
        except OSError as err:
            return None, f"{self.approved_file}: {err.strerror or err}"
        except ValueError as err:
            return None, f"{self.approved_file}: {err}"

    def decide(self, meta: Mapping | None, job_id: str = "") -> Verdict:
        approved, why = self.read_approved()
        return check_job(meta, approved, org=self.org, job_id=job_id, unavailable=why)

    # --- events ---------------------------------------------------------------------------------

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.AUTHORIZE_COMMAND_CHECK:
            self._authorize(fl_ctx)
        elif event_type == EventType.BEFORE_CHECK_RESOURCE_MANAGER:
            self._before_resource_check(fl_ctx)

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

    def _remember(self, job_id: str, meta: Mapping) -> None:
        with self._lock:
            self._metas[job_id] = meta
            self._metas.move_to_end(job_id)
            while len(self._metas) > REMEMBERED_JOBS:
                self._metas.popitem(last=False)

    def _log_refusal(self, fl_ctx: FLContext, what: str, job_id: str, meta: Mapping | None, verdict: Verdict) -> None:
        meta = meta if isinstance(meta, Mapping) else {}
        flareop = meta.get(META_KEY) if isinstance(meta.get(META_KEY), Mapping) else {}
        self.log_error(
            fl_ctx,
            f"REFUSED {what} of NVFlare job {job_id or '?'} (name {meta.get('name') or '?'}, FederatedJob "
            f"{flareop.get('job') or '?'}, content hash {flareop.get('contentHash') or 'none'}) at org "
            f"{self.org}: {verdict.message}",
            fire_event=False,
        )
