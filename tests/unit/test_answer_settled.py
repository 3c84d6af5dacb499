"""status/requests.py: which answers the resync timer may leave alone for settledResyncSeconds."""

from __future__ import annotations

import pytest

from flare_operator.status.requests import answer_settled


def request(kind: str = "Compute", *, generation: int = 3, observed: int | None = 3, decision: str | None = "Approved",
            decided: str | None = "h1", content: str = "h1", client_ready: bool | None = True, active: bool = True,
            outcome: dict | None = None) -> dict:
    spec = {"source": {"kind": kind}, "contentHash": content, "active": active}
    if outcome is not None:
        spec["outcome"] = outcome
    status = {"observedGeneration": observed, "decision": decision, "decidedHash": decided, "clientReady": client_ready}
    return {"metadata": {"generation": generation}, "spec": spec,
            "status": {k: v for k, v in status.items() if v is not None}}


@pytest.mark.parametrize(("body", "settled"), [
    (request(), True),  # approved, client running
    (request(client_ready=False), False),  # the client has yet to start: keep looking
    (request(client_ready=None), False),
    (request(client_ready=False, active=False), True),  # scaled to zero, as asked
    (request(decision="Rejected", client_ready=None), True),
    (request(decision="Pending"), False),  # waiting for a person or a budget
    (request(decision=None), False),
    (request(observed=2), False),  # a newer generation not answered yet
    (request(observed=None), False),
    (request(decided="h0"), False),  # decided for other content
    (request("Job", client_ready=None), True),  # a job request has no client of its own
    (request("Job", decision="Pending", client_ready=None), False),
    (request("Job", client_ready=None, outcome={"phase": "Succeeded"}), True),
    ({"metadata": {"generation": 1}, "spec": {}}, False),  # never answered
])
def test_answer_settled(body: dict, settled: bool):
    assert answer_settled(body) is settled
