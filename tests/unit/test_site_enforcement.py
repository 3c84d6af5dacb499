"""Site enforcement: the pure check (policy/site_enforcement.py), the NVFlare component that applies
it inside a client (nvflare/enforcement.py), and how the site configuration carries it."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import tarfile

import pytest

from flare_operator.builders.federation import (
    ENFORCEMENT_COMPONENT,
    ENFORCEMENT_RESOURCES_FILE,
    enforcement_resources,
)
from flare_operator.policy.site_enforcement import (
    APPROVED_FILE,
    ApprovedJob,
    ApprovedJobs,
    check_job,
    parse,
    readable_or_empty,
    render,
)

HASH = "sha256:" + "ab" * 32
OTHER_HASH = "sha256:" + "cd" * 32
DIGEST = "sha256:" + "ef" * 32
OTHER_DIGEST = "sha256:" + "01" * 32
RUN = ApprovedJob("uid-1", HASH, "modeller/esm2-run", DIGEST)
APPROVED = ApprovedJobs("org-b", (RUN,))


def meta(uid: str | None = "uid-1", content_hash: str | None = HASH, **extra) -> dict:
    flareop = {k: v for k, v in {"uid": uid, "contentHash": content_hash, "job": "modeller/esm2-run"}.items() if v}
    return {"job_id": "j-42", "name": "modeller-esm2-run", "flareop": flareop, **extra}


CASES = [
    # (case, meta, approved document, allowed, words the reason must contain)
    ("approved", meta(), APPROVED, True, ["org-b approved job modeller/esm2-run", "sha256:abababababab…"]),
    ("missing meta", None, APPROVED, False, ["org-b refuses NVFlare job j-42", "no job meta"]),
    ("empty meta", {}, APPROVED, False, ["no job meta"]),
    ("no flareop block", {"job_id": "j-42", "name": "hello"}, APPROVED, False,
     ["NVFlare job j-42 (hello)", "no FederatedJob uid and content hash", "JobApproval at org-b's site"]),
    ("hash without uid", meta(uid=None), APPROVED, False, ["no FederatedJob uid"]),
    ("unknown job", meta(uid="uid-9", content_hash=OTHER_HASH), APPROVED, False,
     ["org-b has not approved job modeller/esm2-run (content hash sha256:cdcdcdcdcdcd…",
      "approve it with a JobApproval at org-b's site"]),
    ("approved hash, other job", meta(uid="uid-9"), APPROVED, False, ["org-b has not approved job"]),
    ("changed content", meta(content_hash=OTHER_HASH), APPROVED, False,
     ["org-b approved job modeller/esm2-run for content hash sha256:abababababab…",
      "carries sha256:cdcdcdcdcdcd…", "approve the new content"]),
    ("revoked", meta(), APPROVED.without("uid-1"), False, ["org-b has not approved job modeller/esm2-run"]),
    ("nothing approved", meta(), ApprovedJobs("org-b"), False, ["has not approved"]),
    ("document unavailable", meta(), None, False,
     ["org-b refuses NVFlare job j-42", "list of approved jobs is unavailable (gone)", "check the gateway"]),
]
DEPLOY_CASES = [
    # (case, meta, deployed app digest, allowed, words the reason must contain)
    ("approved app", meta(), DIGEST, True, ["org-b approved job modeller/esm2-run"]),
    ("other app", meta(), OTHER_DIGEST, False,
     ["org-b refuses NVFlare job j-42 for job modeller/esm2-run", "digests to sha256:010101010101…",
      "not to sha256:efefefefefef…", "the hub sent other code under this job's identity"]),
    ("other app, unknown job", meta(uid="uid-9"), DIGEST, False, ["org-b has not approved job"]),
    ("approved app, changed content", meta(content_hash=OTHER_HASH), DIGEST, False, ["approve the new content"]),
]


@pytest.mark.parametrize(("case", "job_meta", "approved", "allowed", "words"), CASES, ids=[c[0] for c in CASES])
def test_check_job(case, job_meta, approved, allowed, words):
    verdict = check_job(job_meta, approved, org="org-b", job_id="j-42", unavailable="gone")
    assert verdict.allowed is allowed
    for w in words:
        assert w in verdict.message, (w, verdict.message)


@pytest.mark.parametrize(("case", "job_meta", "digest", "allowed", "words"), DEPLOY_CASES,
                         ids=[c[0] for c in DEPLOY_CASES])
def test_check_job_at_deployment_compares_the_app_digest(case, job_meta, digest, allowed, words):
    verdict = check_job(job_meta, APPROVED, org="org-b", job_id="j-42", deployed_digest=digest)
    assert verdict.allowed is allowed
    for w in words:
        assert w in verdict.message, (w, verdict.message)


def test_document_round_trip_with_and_without():
    doc = ApprovedJobs("org-b").with_job(ApprovedJob("uid-2", OTHER_HASH, "m/b", OTHER_DIGEST)).with_job(RUN)
    assert [j.uid for j in doc.jobs] == ["uid-1", "uid-2"]  # sorted: equal content, equal text
    assert parse(render(doc)) == doc
    assert render(doc) == render(ApprovedJobs("org-b").with_job(RUN).with_job(
        ApprovedJob("uid-2", OTHER_HASH, "m/b", OTHER_DIGEST)))
    changed = doc.with_job(ApprovedJob("uid-1", OTHER_HASH, "modeller/esm2-run", DIGEST))  # new hash replaces the old
    assert changed.by_uid("uid-1").content_hash == OTHER_HASH and len(changed.jobs) == 2
    assert doc.without("uid-1").without("uid-1").jobs == (doc.by_uid("uid-2"),)
    assert json.loads(render(doc))["approved"][0] == {"uid": "uid-1", "contentHash": HASH, "job": "modeller/esm2-run",
                                                      "appDigest": DIGEST}


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"approved": []}', '{"formatVersion": 1, "org": "o", "approved": []}',
                                  '{"formatVersion": 2, "org": "o", "approved": [{"uid": "u"}]}',
                                  '{"formatVersion": 2, "org": "o", "approved": [{"uid": "u", "contentHash": "h", '
                                  '"job": "j"}]}',  # a version-1 entry: no appDigest
                                  '{"formatVersion": 2, "org": "o", "approved": "all"}'])
def test_malformed_documents_are_refused(text):
    with pytest.raises(ValueError):
        parse(text)
    assert parse(readable_or_empty(text, "o")) == ApprovedJobs("o")


def test_readable_or_empty_keeps_a_valid_document_and_creates_a_missing_one():
    assert readable_or_empty(render(APPROVED), "org-b") is None
    assert parse(readable_or_empty(None, "org-b")) == ApprovedJobs("org-b")


# --- the NVFlare component -----------------------------------------------------------------------


def _component(tmp_path, document: str | None):
    from flare_operator.nvflare.enforcement import ApprovedJobsOnly

    path = tmp_path / APPROVED_FILE
    if document is not None:
        path.write_text(document)
    return ApprovedJobsOnly(approved_file=str(path), org="org-b"), path


def _authorize(component, command: str, job_meta):
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext

    ctx = FLContext()
    ctx.set_prop(FLContextKey.COMMAND_NAME, command, sticky=False)
    ctx.set_prop(FLContextKey.SECURITY_ITEMS, {FLContextKey.JOB_META: job_meta}, sticky=False)
    component.handle_event(EventType.AUTHORIZE_COMMAND_CHECK, ctx)
    return ctx.get_prop(FLContextKey.AUTHORIZATION_RESULT, True), ctx.get_prop(FLContextKey.AUTHORIZATION_REASON, "")


def _resource_check(component, job_id: str):
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext

    ctx = FLContext()
    ctx.set_prop(FLContextKey.CURRENT_JOB_ID, job_id, sticky=False)
    component.handle_event(EventType.BEFORE_CHECK_RESOURCE_MANAGER, ctx)
    return ctx.get_prop(FLContextKey.JOB_BLOCK_REASON)


@pytest.mark.parametrize("command", ["check_resources", "submit_job"])
def test_component_refuses_scheduling_and_deployment_of_unapproved_jobs(tmp_path, caplog, command):
    component, _ = _component(tmp_path, render(APPROVED))
    assert _authorize(component, command, meta()) == (True, "")
    with caplog.at_level("ERROR"):
        allowed, reason = _authorize(component, command, meta(uid="uid-9", content_hash=OTHER_HASH))
    assert allowed is False and "org-b has not approved job modeller/esm2-run" in reason
    refusal = next(r for r in caplog.records if r.levelname == "ERROR")
    assert f"REFUSED {command} of NVFlare job j-42" in refusal.getMessage()
    assert OTHER_HASH in refusal.getMessage() and "at org org-b" in refusal.getMessage()


def test_component_ignores_commands_that_bring_no_job(tmp_path):
    component, _ = _component(tmp_path, None)  # even without a document
    assert _authorize(component, "check_status", None) == (True, "")
    assert _authorize(component, "abort_job", meta(uid="uid-9")) == (True, "")


def test_component_reads_the_document_on_every_check(tmp_path):
    component, path = _component(tmp_path, render(ApprovedJobs("org-b")))
    assert _authorize(component, "check_resources", meta())[0] is False
    path.write_text(render(APPROVED))  # approved: applies at once
    assert _authorize(component, "check_resources", meta())[0] is True
    assert _resource_check(component, "j-42") is None
    path.write_text(render(APPROVED.without("uid-1")))  # revoked: applies at once, also to the resource check
    assert "has not approved" in _resource_check(component, "j-42")


@pytest.mark.parametrize("document", [None, "not json", '{"formatVersion": 1}'])
def test_component_fails_closed(tmp_path, document):
    component, _ = _component(tmp_path, document)
    allowed, reason = _authorize(component, "submit_job", meta())
    assert allowed is False and "list of approved jobs is unavailable" in reason and str(tmp_path) in reason


def test_resource_check_without_a_seen_meta_is_blocked(tmp_path):
    component, _ = _component(tmp_path, render(APPROVED))
    assert "no job meta" in _resource_check(component, "never-seen")


def test_site_configuration_names_the_component():
    config = enforcement_resources("/etc/flareop/enforcement/approved.json", "org-b")
    assert ENFORCEMENT_RESOURCES_FILE.endswith("__p_resources.json")  # parent process only
    (component,) = config["components"]
    module, _, name = component["path"].rpartition(".")
    assert component["path"] == ENFORCEMENT_COMPONENT
    from nvflare.apis.fl_constant import SystemComponents

    assert component["id"] == SystemComponents.APP_DEPLOYER  # the client's engine deploys every app through it
    assert getattr(importlib.import_module(module), name).__name__ == name
    assert component["args"] == {"approved_file": "/etc/flareop/enforcement/approved.json", "org": "org-b"}


def test_with_local_files_adds_the_file_deterministically():
    from flare_operator.nvflare.provisioning import with_local_files

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("startup/fed_client.json", b"{}"), ("local/resources.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    kit = buf.getvalue()
    once = with_local_files(kit, {ENFORCEMENT_RESOURCES_FILE: b"{\"x\": 1}"})
    assert once == with_local_files(kit, {ENFORCEMENT_RESOURCES_FILE: b"{\"x\": 1}"})
    assert with_local_files(once, {ENFORCEMENT_RESOURCES_FILE: b"{\"x\": 1}"}) == once
    with tarfile.open(fileobj=io.BytesIO(once), mode="r:gz") as tar:
        names = tar.getnames()
        assert tar.extractfile(f"local/{ENFORCEMENT_RESOURCES_FILE}").read() == b"{\"x\": 1}"
    assert set(names) == {"startup/fed_client.json", "local/resources.json", f"local/{ENFORCEMENT_RESOURCES_FILE}"}
    with pytest.raises(ValueError):
        with_local_files(kit, {"../startup/x": b""})


def test_process_runtime_updates_the_document_atomically_and_only_on_change(tmp_path):
    from flare_operator.config import SiteSettings
    from flare_operator.runtime.workloads import ProcessRuntime

    runtime = ProcessRuntime(tmp_path)
    site = SiteSettings(org="org-b", site="org-b", namespace="org-b", hub_namespace="org-b")
    seen: list[str | None] = []

    def change(text):
        seen.append(text)
        return render(APPROVED)

    asyncio.run(runtime.update_approved_jobs("fed", site, "org-b", change))
    path = tmp_path / "site-org-b" / "fed" / "org-b" / "enforcement" / APPROVED_FILE
    assert seen == [None] and parse(path.read_text()) == APPROVED
    mtime = path.stat().st_mtime_ns
    asyncio.run(runtime.update_approved_jobs("fed", site, "org-b", change))
    assert seen[-1] == render(APPROVED) and path.stat().st_mtime_ns == mtime  # unchanged: not rewritten
    asyncio.run(runtime.update_approved_jobs("fed", site, "org-b", lambda text: None))
    assert parse(path.read_text()) == APPROVED
    assert [p.name for p in path.parent.iterdir()] == [APPROVED_FILE]  # no temporary file left
