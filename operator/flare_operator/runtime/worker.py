"""A worker process started when work arrives and stopped when it has been idle a while.

The orchestrator provisions NVFlare projects in a process of its own: RSA key generation holds the
GIL, so in a thread it stalls every other pass. That process (NVFlare's provisioning imported, ≈ 60
MiB) is needed only while ComputeSpecs are being provisioned, so it is started by the first task and
stopped ``idle_seconds`` after the last one finished; the next task starts a new one (≈ 1 s: a spawn
and NVFlare's import).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any


class OnDemandProcess(Executor):
    """An Executor over one spawned worker process that exists only while there is work."""

    def __init__(self, idle_seconds: float, initializer: Callable[[], None] | None = None):
        self.idle_seconds = idle_seconds
        self.initializer = initializer  # run first in each worker process it starts
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._busy = 0
        self._timer: threading.Timer | None = None
        self._closed = False
        self.started = 0  # how many worker processes it started (tests, metrics)

    @property
    def running(self) -> bool:
        with self._lock:
            return self._pool is not None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit after shutdown")
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=self.initializer)
                self.started += 1
            self._busy += 1
            future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future) -> None:
        with self._lock:
            self._busy -= 1
            if self._busy or self._pool is None or self._closed:
                return
            self._timer = threading.Timer(self.idle_seconds, self._stop_if_idle, args=(self._pool,))
            self._timer.daemon = True
            self._timer.start()

    def _stop_if_idle(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._busy or self._pool is not pool:
                return
            self._pool, self._timer = None, None
        pool.shutdown(wait=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            pool, self._pool, self._timer = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
