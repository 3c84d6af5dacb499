"""AnswerWatch: which AccessRequest events reconcile their source at once (the e2e test
tests/e2e/test_answer_nudge.py shows it working against a real API server and NVFlare)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from flare_operator.handlers.registry import AnswerWatch


class Objects:
    """The hub as the watch uses it: its configuration only (the watch reads no objects)."""

    def __init__(self, *objs: dict):
        self.config = SimpleNamespace(namespaces=[])

    async def k(self, *args) -> None:
        raise AssertionError(f"the answer watch read {args}: the pass reads the object itself")


def job(uid: str = "job-uid") -> dict:
    return {"kind": "FederatedJob", "metadata": {"namespace": "modeller", "name": "run1", "uid": uid}}


def request(decision: str | None, *, kind: str = "Job", source_uid: str = "job-uid", uid: str = "ar-1",
            source_namespace: str = "modeller", **status) -> dict:
    return {"metadata": {"namespace": "org-b", "name": "job-modeller-run1", "uid": uid},
            "spec": {"source": {"kind": kind, "namespace": source_namespace, "name": "run1", "uid": source_uid}},
            "status": {"decision": decision, **status} if decision else {}}


def watch_with(*objs: dict, namespaces: tuple[str, ...] = ()) -> tuple[AnswerWatch, list]:
    hub = Objects(*objs)
    hub.config.namespaces = list(namespaces)
    reconciled: list = []

    async def reconcile(body: dict) -> None:
        reconciled.append(body["metadata"]["name"])

    return AnswerWatch(hub, {"Job": ("FederatedJob", reconcile), "Compute": ("ComputeSpec", reconcile)}), reconciled


def feed(watch: AnswerWatch, *events: tuple[str | None, dict]) -> None:
    async def run() -> None:
        for type_, obj in events:
            await watch.event(event={"type": type_, "object": obj})

    asyncio.run(run())


def test_a_decision_seen_changing_reconciles_the_job_once():
    watch, reconciled = watch_with(job())
    feed(watch, ("ADDED", request(None)), ("MODIFIED", request("Approved", decidedHash="h1")),
         ("MODIFIED", request("Approved", decidedHash="h1")))  # e.g. the orchestrator re-applied the spec
    assert reconciled == ["run1"] and watch.nudges == 1


def test_what_the_watch_finds_at_start_is_left_to_the_resume_handlers():
    watch, reconciled = watch_with(job())
    feed(watch, (None, request("Approved", decidedHash="h1")))
    assert reconciled == []


def test_a_new_hash_a_revocation_or_a_client_coming_up_each_count():
    watch, reconciled = watch_with(job())
    feed(watch, ("ADDED", request("Approved", decidedHash="h1")),
         ("MODIFIED", request("Approved", decidedHash="h2")),
         ("MODIFIED", request("Rejected", decidedHash="h2")),
         ("MODIFIED", request("Rejected", decidedHash="h2", clientReady=False)))
    assert len(reconciled) == 3


def test_the_pass_is_for_the_request_s_source_by_uid_and_skips_a_recreated_one():
    # The watch reads nothing: it names the source (namespace, name, uid) and the pass, which reads the
    # object itself, does nothing for a later object of that name (handlers/registry.py _same_live).
    from flare_operator.handlers.registry import _same_live

    bodies: list[dict] = []

    async def reconcile(body: dict) -> None:
        bodies.append(body)

    watch = AnswerWatch(Objects(), {"Job": ("FederatedJob", reconcile)})
    feed(watch, ("ADDED", request(None)), ("MODIFIED", request("Approved")))
    assert bodies == [{"metadata": {"namespace": "modeller", "name": "run1", "uid": "job-uid"}}]
    assert _same_live(job(), bodies[0])
    assert not _same_live(job(uid="new-uid"), bodies[0]), "the request was made for an earlier job of that name"
    assert not _same_live(None, bodies[0]), "the job is gone"
    deleting = job()
    deleting["metadata"]["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    assert not _same_live(deleting, bodies[0]), "the job is being deleted"


def test_no_reconcile_for_another_namespace_or_a_deleted_request():
    watch, reconciled = watch_with(job(), namespaces=("other",))
    feed(watch, ("ADDED", request(None)), ("MODIFIED", request("Approved")))
    assert reconciled == [], "the orchestrator does not serve the job's namespace"

    watch, reconciled = watch_with(job())
    feed(watch, ("ADDED", request(None)), ("DELETED", request(None)), ("ADDED", request("Approved")))
    assert reconciled == [] and watch.seen == {"ar-1": ("Approved", None, None, None)}
