"""What every reconcile reads first from the object it is about: names, generation, typed spec
and the previous status (only our own fields of it); how passes over one object take turns; and
the recent lists of watched kinds that passes share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

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
        self.annotations = meta.get("annotations") or {}
        self.spec = self.spec_model.model_validate(body["spec"])
        self.previous = self.status_model.model_validate(self.status_model.own_fields(body.get("status")))


def seen_change(seen: dict[str, Any], event: dict, value: Callable[[dict], Any]) -> dict | None:
    """The event's object when ``value`` of it differs from what the previous event of the same
    object (by uid) carried, else None; ``seen`` keeps the values by uid. The first event of an
    object (a listing, at start) only records; a DELETED event forgets."""
    obj = event.get("object") or {}
    uid = (obj.get("metadata") or {}).get("uid")
    if not uid:
        return None
    if event.get("type") == "DELETED":
        seen.pop(uid, None)
        return None
    now, before = value(obj), seen.get(uid)
    seen[uid] = now
    return obj if before is not None and before != now else None


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


class Listings:
    """Recent LISTs of the kinds one process watches, shared by the passes that read them.

    A list is fetched once and reused until (a) an event of that kind arrives (the caller's watch
    handlers call `changed`; a write of this process does too), or (b) it is `max_age` seconds old —
    the bound on a change whose event never came (a restarted watch re-lists, and Kopf delivers what
    it lists as events, so this is for a stream that hangs without failing: settledResyncSeconds). Passes that ask while a list is being
    fetched share that request, unless a change came after it started: then they fetch anew. At
    scale every site's answer listed its grants and approvals and read its policy, three requests
    of ten (docs/benchmarks.md §7); an answer's inputs are the state as of the last event, which the
    event's own re-answer then reads. The lists returned are shared: callers must not change them.
    """

    def __init__(self, fetch: Callable[[str], Awaitable[list[dict]]], max_age: float):
        self.fetch, self.max_age = fetch, max_age
        self.changes: dict[str, int] = {}
        self.held: dict[str, tuple[int, float, list[dict]]] = {}  # kind -> (changes then, fetched at, items)
        self.flights: dict[str, tuple[int, asyncio.Future]] = {}
        self.fetched = 0  # lists requested from the API server (the rest were served from here)

    def changed(self, kind: str) -> None:
        self.changes[kind] = self.changes.get(kind, 0) + 1
        self.held.pop(kind, None)

    async def list(self, kind: str) -> list[dict]:
        seen = self.changes.get(kind, 0)
        held = self.held.get(kind)
        if held is not None and held[0] == seen and time.monotonic() - held[1] < self.max_age:
            return held[2]
        flight = self.flights.get(kind)
        if flight is None or flight[0] != seen:
            flight = self.flights[kind] = (seen, asyncio.ensure_future(self._fetch(kind, seen)))
        return await asyncio.shield(flight[1])

    async def _fetch(self, kind: str, seen: int) -> list[dict]:
        started = time.monotonic()
        try:
            self.fetched += 1
            items = await self.fetch(kind)
            if self.changes.get(kind, 0) == seen:
                self.held[kind] = (seen, started, items)
            return items
        finally:
            if self.flights.get(kind, (None, None))[1] is asyncio.current_task():
                del self.flights[kind]
