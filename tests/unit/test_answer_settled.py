"""status/requests.py: which answers the resync timer may leave alone for settledResyncSeconds."""

from __future__ import annotations

import pytest

from flare_operator.api.access_request import ANNOTATION_KIT
from flare_operator.status.requests import answer_settled, grant_inputs, moved_by_ledger


def request(kind: str = "Compute", *, generation: int = 3, observed: int | None = 3, decision: str | None = "Approved",
            decided: str | None = "h1", content: str = "h1", client_ready: bool | None = True, active: bool = True,
            outcome: dict | None = None, kit: str | None = "0123abcd", client_message: str | None = None) -> dict:
    spec = {"source": {"kind": kind}, "contentHash": content, "active": active}
    if outcome is not None:
        spec["outcome"] = outcome
    status = {"observedGeneration": observed, "decision": decision, "decidedHash": decided, "clientReady": client_ready,
              "clientMessage": client_message}
    meta = {"generation": generation, **({"annotations": {ANNOTATION_KIT: kit}} if kit else {})}
    return {"metadata": meta, "spec": spec,
            "status": {k: v for k, v in status.items() if v is not None}}


@pytest.mark.parametrize(("body", "settled"), [
    (request(), True),  # approved, client running
    (request(client_ready=False), False),  # the client has yet to start: keep looking
    (request(client_ready=None), False),
    (request(client_ready=False, kit=None), True),  # no kit yet: the hub's kit annotation will answer it
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


@pytest.mark.parametrize(("body", "settled"), [
    (request(client_ready=False), True),  # starting: its StatefulSet's and Pod's events answer it
    (request(client_ready=False, client_message="Pod org-a/c-0 cannot be scheduled"), False),  # look again
    (request(client_ready=False, kit=None), True),
    (request(), True),
    (request(decision="Pending"), False),
])
def test_answer_settled_where_the_site_answers_on_its_clients_events(body: dict, settled: bool):
    assert answer_settled(body, client_events=True) is settled


def grant_obj(ledger: list[dict] | None = None, *, dataset: str = "scl", conditions: list[dict] | None = None,
              generation: int = 1) -> dict:
    return {"kind": "DatasetGrant", "metadata": {"uid": "g1", "generation": generation, "labels": {"a": "b"}},
            "spec": {"dataset": {"id": dataset}, "consumers": ["m"]},
            "status": {"ledger": ledger or [], "conditions": conditions or [{"type": "Valid", "status": "True"}]}}


def job_request(decision: str | None = "Approved", *, uid: str = "j1", reserved: float | None = 2.0,
                datasets: tuple[str, ...] = ("scl",), outcome: dict | None = None) -> dict:
    spec = {"source": {"kind": "Job", "uid": uid}, "datasets": list(datasets), "contentHash": "h"}
    if outcome:
        spec["outcome"] = outcome
    status = {k: v for k, v in {"decision": decision, "epsilonReserved": reserved}.items() if v is not None}
    return {"metadata": {"generation": 1}, "spec": spec, "status": status}


def test_grant_inputs_ignore_the_ledger_but_not_the_spec_or_the_conditions():
    base = grant_inputs(grant_obj())
    assert grant_inputs(grant_obj([{"uid": "j1", "epsilon": 2, "spent": False}])) == base
    assert grant_inputs(grant_obj(conditions=[{"type": "Valid", "status": "False"}])) != base
    assert grant_inputs(grant_obj(dataset="other", generation=2)) != base


HOLDING = [{"uid": "j1", "epsilon": 2, "spent": False}]


@pytest.mark.parametrize(("request_", "ledger", "moved"), [
    (job_request(), HOLDING, False),  # approved and holding here: the rest of the ledger cannot move it
    (job_request(), [], True),  # approved, reserved, but its entry is gone here (wounded): answer again
    (job_request(reserved=None), [], False),  # approved without DP: holds nothing anywhere
    (job_request("Pending", reserved=None), HOLDING, True),  # budget taken or freed decides it
    (job_request("Rejected", reserved=None), [], True),
    (job_request("Rejected", reserved=None, datasets=("other",)), [], False),  # another dataset's grant
    (job_request("Pending", outcome={"phase": "Succeeded"}), [], False),  # over: its own answer spends
    ({"metadata": {}, "spec": {"source": {"kind": "Compute"}, "datasets": ["scl"]},
      "status": {"decision": "Pending"}}, [], False),  # a Compute request never reads the ledger
])
def test_moved_by_ledger(request_: dict, ledger: list[dict], moved: bool):
    assert moved_by_ledger(request_, grant_obj(ledger)) is moved
