"""The operator's FLARE API client: one admin session per federation, used from worker threads.

Every call is synchronous network I/O: handlers run them with asyncio.to_thread. A session that
fails is closed and re-opened on the next call (the server may have restarted).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from ..builders.federation import ADMIN_IDENTITY

log = logging.getLogger(__name__)

# App commands of the catalog apps' server workflows (flare_apps/esm2-finetune/custom/esm2_app/controller.py).
PROGRESS_TOPIC = "flareop.progress"
CHECKPOINT_TOPIC = "flareop.checkpoint"


class FlareUnavailable(ConnectionError):
    """The FLARE API did not answer (the server is down or restarting): worth asking again later."""


def _transient(err: Exception) -> bool:
    from nvflare.fuel.flare_api.api_spec import AuthenticationError, NoConnection, NoReply, SessionClosed

    return isinstance(err, NoConnection | NoReply | SessionClosed | AuthenticationError | TimeoutError | OSError)


def without_job(answers: list[dict], job_id: str) -> list[str]:
    """Clients in a `check_status client` answer (one entry per client and running job: ``job_id``
    and ``status`` ``started``; ``no_jobs`` for a client running none; ``no_reply`` for one that did
    not answer) that answered and run no ``job_id``."""
    answered = {a.get("client_name") for a in answers if a.get("status") != "no_reply"}
    running = {a.get("client_name") for a in answers if a.get("job_id") == job_id}
    return sorted(str(c) for c in answered - running if c)


class FlareAdmin:
    def __init__(self, kit_dir: Path, *, timeout: float = 10.0):
        self.kit_dir = kit_dir
        self.timeout = timeout
        self._session: Any = None
        self._lock = threading.Lock()

    def _open(self):
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        if self._session is None:
            self._session = new_secure_session(ADMIN_IDENTITY, str(self.kit_dir), timeout=self.timeout)
        return self._session

    def _call(self, method: str, *args, **kwargs):
        with self._lock:
            try:
                return getattr(self._open(), method)(*args, **kwargs)
            except Exception as err:
                if _transient(err):  # the session may be broken: open a new one next time
                    self._close_locked()
                    raise FlareUnavailable(f"{method}: {type(err).__name__}: {err}") from err
                raise  # an answer (no such job, an app command the job has not registered yet): the session is fine

    def connected_clients(self) -> list[str]:
        return sorted(c.name for c in self._call("get_connected_client_list"))

    def clients_without_job(self, job_id: str, clients: list[str]) -> list[str]:
        """Of ``clients``, those that answer the server but do not run ``job_id`` (a client that
        restarted mid-job); one that does not answer is not counted (it may be restarting)."""
        return without_job(self._call("get_client_job_status", sorted(clients)) or [], job_id)

    def submit(self, job_folder: Path, submit_token: str) -> str:
        return self._call("submit_job", str(job_folder), submit_token=submit_token)

    def job_meta(self, job_id: str) -> dict:
        return self._call("get_job_meta", job_id)

    def lost_by_server(self, job_id: str, meta: dict) -> bool:
        """The server's record says the job runs, but the server process does not run it.

        NVFlare 2.9 keeps no job snapshot: a server that restarted forgets the jobs it ran, and
        their records may stay RUNNING. Lost = not among the server's running jobs, and the
        server (re)started after the job did.
        """
        info = self._call("get_system_info")
        if any(j.job_id == job_id for j in info.job_info):
            return False
        server_start, job_start = info.server_info.start_time, meta.get("start_time")
        try:
            return float(server_start) > datetime.fromisoformat(str(job_start)).timestamp()
        except (TypeError, ValueError):
            log.info("cannot tell whether job %s outlived a server restart (start times %r, %r)",
                     job_id, server_start, job_start)
            return False

    def app_command(self, job_id: str, topic: str) -> dict | None:
        """A running job's answer to an app command of its server app; None when the job does not
        run (any more) or its app does not answer that topic."""
        from nvflare.fuel.flare_api.api_spec import JobNotRunning

        try:
            reply = self._call("do_app_command", job_id, topic, None)
        except JobNotRunning:
            return None
        except FlareUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - an app without the command, a job just ending
            log.info("app command %s of job %s: %s: %s", topic, job_id, type(err).__name__, err)
            return None
        return reply if isinstance(reply, dict) else None

    def progress(self, job_id: str) -> dict | None:
        """The job's metrics record (metrics.json) as its server app holds it now: ``{}`` while the
        app answers without metrics yet, None when no app of the job answers (not running, or its
        workflow has not registered the command yet). An answer means the job runs in the server."""
        reply = self.app_command(job_id, PROGRESS_TOPIC)
        if reply is None:
            return None
        text = reply.get("metrics")
        if not text:
            return {}
        try:
            record = json.loads(text)
        except ValueError:
            log.warning("job %s: its progress is not JSON", job_id)
            return None
        return record if isinstance(record, dict) else None

    def checkpoint(self, job_id: str) -> tuple[int, bytes] | None:
        """(last completed round, global trainable parameters as safetensors) of a running job."""
        reply = self.app_command(job_id, CHECKPOINT_TOPIC) or {}
        if "safetensors_b64" not in reply or reply.get("last_completed_round") is None:
            return None
        return int(reply["last_completed_round"]), base64.b64decode(reply["safetensors_b64"])

    def job_logs(self, job_id: str) -> dict[str, str]:
        """The job's log per participant ("server" and each client), from the server's log store
        (NVFlare 2.9 clients stream their job logs to the server)."""
        return dict(self._call("get_job_logs", job_id, target="all").get("logs") or {})

    def abort(self, job_id: str) -> bool:
        """Abort the job; False if it was not running any more (already finished, or its record says
        RUNNING while the server does not run it: a server that restarted answers that with an
        internal error, "Job <id> is not running.")."""
        from nvflare.fuel.flare_api.api_spec import InternalError, JobNotRunning

        try:
            self._call("abort_job", job_id)
        except JobNotRunning:
            return False
        except InternalError as err:
            if f"Job {job_id} is not running" in str(err):
                return False
            raise
        return True

    def download(self, job_id: str, destination: Path) -> Path:
        return Path(self._call("download_job_result", job_id, destination=str(destination)))

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            except Exception:  # noqa: BLE001 - closing a broken session
                log.debug("closing FLARE API session failed", exc_info=True)
            self._session = None
