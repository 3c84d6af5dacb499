"""The operator's FLARE API client: one admin session per federation, used from worker threads.

Every call is synchronous network I/O: handlers run them with asyncio.to_thread. A session that
fails is closed and re-opened on the next call (the server may have restarted).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ..builders.federation import ADMIN_IDENTITY

log = logging.getLogger(__name__)


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
            except Exception:
                self._close_locked()
                raise

    def connected_clients(self) -> list[str]:
        return sorted(c.name for c in self._call("get_connected_client_list"))

    def submit(self, job_folder: Path, submit_token: str) -> str:
        return self._call("submit_job", str(job_folder), submit_token=submit_token)

    def job_meta(self, job_id: str) -> dict:
        return self._call("get_job_meta", job_id)

    def abort(self, job_id: str) -> None:
        self._call("abort_job", job_id)

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
