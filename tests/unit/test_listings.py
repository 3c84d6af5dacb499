"""Recent lists shared by passes (handlers/objects.py Listings): one request for many readers, a new
one after every change, none older than max_age."""

from __future__ import annotations

import asyncio

import pytest

from flare_operator.handlers.objects import Listings


class Server:
    """A fetch that counts its calls and can be held open."""

    def __init__(self):
        self.calls = 0
        self.items = ["v0"]
        self.gate: asyncio.Event | None = None

    async def fetch(self, kind: str) -> list:
        self.calls += 1
        snapshot = [f"{kind}:{i}" for i in self.items]
        if self.gate is not None:
            await self.gate.wait()
        return snapshot


def test_concurrent_readers_share_one_request_and_later_ones_reuse_it():
    async def go():
        server = Server()
        listings = Listings(server.fetch, max_age=60)
        first = await asyncio.gather(*(listings.list("Grant") for _ in range(5)))
        again = await listings.list("Grant")
        return server.calls, first, again, listings.fetched

    calls, first, again, fetched = asyncio.run(go())
    assert calls == 1 and fetched == 1
    assert all(f == ["Grant:v0"] for f in first) and again == ["Grant:v0"]


def test_a_change_makes_the_next_reader_list_anew_and_other_kinds_are_untouched():
    async def go():
        server = Server()
        listings = Listings(server.fetch, max_age=60)
        await listings.list("Grant")
        await listings.list("Approval")
        server.items = ["v1"]
        listings.changed("Grant")
        return await listings.list("Grant"), await listings.list("Approval"), server.calls

    grant, approval, calls = asyncio.run(go())
    assert grant == ["Grant:v1"], "a change is read at once"
    assert approval == ["Approval:v0"] and calls == 3, "another kind's list is still shared"


def test_a_change_during_a_request_is_not_hidden_by_it():
    """A list requested before a change may predate it: readers after the change do not join that
    request, and its result is not kept."""

    async def go():
        server = Server()
        server.gate = asyncio.Event()
        listings = Listings(server.fetch, max_age=60)
        early = asyncio.ensure_future(listings.list("Grant"))
        while server.calls == 0:  # its request has read the old state and waits for the gate
            await asyncio.sleep(0)
        server.items = ["v1"]
        listings.changed("Grant")
        late = asyncio.ensure_future(listings.list("Grant"))
        while server.calls == 1:
            await asyncio.sleep(0)
        server.gate.set()
        results = await early, await late
        return results, await listings.list("Grant"), server.calls

    (early, late), after, calls = asyncio.run(go())
    assert early == ["Grant:v0"] and late == ["Grant:v1"] and after == ["Grant:v1"]
    assert calls == 2


def test_lists_older_than_max_age_are_fetched_again():
    async def go():
        server = Server()
        listings = Listings(server.fetch, max_age=0.05)
        await listings.list("Grant")
        server.items = ["v1"]
        await asyncio.sleep(0.1)
        return await listings.list("Grant"), server.calls

    assert asyncio.run(go()) == (["Grant:v1"], 2)


def test_a_failed_request_fails_its_readers_and_is_not_kept():
    async def go():
        calls = 0

        async def fetch(kind):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("api server away")
            return ["ok"]

        listings = Listings(fetch, max_age=60)
        with pytest.raises(ConnectionError):
            await listings.list("Grant")
        return await listings.list("Grant"), calls

    assert asyncio.run(go()) == (["ok"], 2)


def test_seat_watch_lists_again_only_when_a_seat_can_move():
    """The hub's Gateway and Namespace lists (handlers/registry.py SeatWatch): a heartbeat (status
    only) keeps them; a new or deleted Gateway, a changed org or sameClusterAsHub, or a namespace's
    org label drops them."""
    from flare_operator.handlers.registry import SeatWatch, _gateway_seat, _namespace_seat

    def gateway(uid: str, org: str, same: bool | None = None, status: dict | None = None) -> dict:
        spec = {"org": org} if same is None else {"org": org, "sameClusterAsHub": same}
        return {"metadata": {"uid": uid, "namespace": "ns", "name": "gw"}, "spec": spec, "status": status or {}}

    def namespace(uid: str, org: str | None) -> dict:
        return {"metadata": {"uid": uid, "name": "ns", "labels": {"flareop.io/org": org} if org else {}}}

    async def go() -> list[bool]:
        server = Server()
        listings = Listings(server.fetch, max_age=60)
        seats = SeatWatch(listings)
        on_gateway, on_namespace = seats.watching("Gateway", _gateway_seat), seats.watching("Namespace", _namespace_seat)
        relisted = []

        async def after(handler, event_type: str, obj: dict) -> None:
            before = server.calls
            await handler(event={"type": event_type, "object": obj})
            await listings.list("Gateway")
            await listings.list("Namespace")
            relisted.append(server.calls > before)

        await after(on_gateway, None, gateway("g1", "org-a"))  # first seen (the watch's listing)
        await after(on_gateway, "MODIFIED", gateway("g1", "org-a", status={"conditions": [1]}))  # heartbeat
        await after(on_gateway, "MODIFIED", gateway("g1", "org-b"))  # claims another org
        await after(on_gateway, "MODIFIED", gateway("g1", "org-b", same=False))  # now on another cluster
        await after(on_namespace, "ADDED", namespace("n1", None))
        await after(on_namespace, "MODIFIED", namespace("n1", None))  # another label, not the org's
        await after(on_namespace, "MODIFIED", namespace("n1", "org-b"))  # labelled with an org
        await after(on_gateway, "DELETED", gateway("g1", "org-b", same=False))
        return relisted

    assert asyncio.run(go()) == [True, False, True, True, True, False, True, True]
