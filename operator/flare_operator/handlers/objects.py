"""What every reconcile reads first from the object it is about: names, generation, typed spec
and the previous status (only our own fields of it); and how passes over one object take turns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import ClassVar

from ..api.base import ApiModel


class ObjectView:
    spec_model: ClassVar[type[ApiModel]]
    status_model: ClassVar[type[ApiModel]]

    def __init__(self, body: dict):
        self.body = body
        meta = body["metadata"]
        self.namespace, self.name, self.uid = meta.get("namespace"), meta["name"], meta.get("uid", "")
        self.generation = meta.get("generation", 1)
        self.labels = meta.get("labels") or {}
        self.spec = self.spec_model.model_validate(body["spec"])
        self.previous = self.status_model.model_validate(self.status_model.own_fields(body.get("status")))


class Passes:
    """Reconcile passes over one object run one at a time (a lock per object key), and at most one
    waits: a pass asked for while another already waits is absorbed by it — the waiting one reads
    the object fresh once it runs, so it sees whatever prompted the absorbed one. Without this, every
    site's answer (and every resync) queued one more full pass behind the object's lock: at scale a
    ComputeSpec pass waited 16 s behind its own backlog (docs/benchmarks.md §7)."""

    def __init__(self) -> None:
        self.locks: dict[str, asyncio.Lock] = {}
        self.waiting: set[str] = set()

    def lock(self, key: str) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[bool]:
        """Hold the object's lock for one pass (True), or yield False at once when a pass of the
        same kind already waits for it (that one will do this one's work)."""
        if key in self.waiting:
            yield False
            return
        self.waiting.add(key)
        lock = self.lock(key)
        try:
            await lock.acquire()
        finally:
            self.waiting.discard(key)
        try:
            yield True
        finally:
            lock.release()
