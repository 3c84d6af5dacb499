"""DatasetGrants a site cannot use (policy/grants.py, handlers/grants.py): location, version constraints,
one dataset id naming two sets of data; invalid grants are never chosen (policy/evaluate.py), the client
gets exactly the chosen grant's data, the Gateway lists each id once; status writes the API server
refuses (runtime/kube.py)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flare_operator.api import AccessRequestSpec, DatasetGrantSpec, DatasetGrantStatus, Decision
from flare_operator.api.conditions import ConditionType, Reason
from flare_operator.config import OperatorConfig, SiteSettings
from flare_operator.handlers.gateway import RequestAnswer, Site, gateway_object
from flare_operator.handlers.grants import grant_conditions, grant_input, resolve, site_data
from flare_operator.policy.evaluate import DATASET_GRANTED, GrantView, evaluate
from flare_operator.policy.grants import GrantInput, SiteData, alternatives, check_grants
from flare_operator.runtime.kube import readable, wire_bytes

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
PROCESS = SiteData(runtime="process", namespace="org-b", data_roots=("/srv/data",))
KUBE = SiteData(runtime="kubernetes", namespace="org-b", data_roots=None)


def spec(dataset: dict | None = None, **extra) -> DatasetGrantSpec:
    return DatasetGrantSpec.model_validate({
        "dataset": {"id": "scl", "path": "/srv/data/scl.csv", **(dataset or {})},
        "consumers": ["modeller"], "models": [{"id": "esm2-finetune"}], **extra})


def pvc(claim: str = "scl-data", sub_path: str = "") -> dict:
    return {"path": None, "persistentVolumeClaim": {"claimName": claim, "subPath": sub_path}}


def one(g: GrantInput, site: SiteData = PROCESS) -> list[tuple[str, str, str]]:
    return [(str(p.reason), p.field, p.message) for p in check_grants([g], site, NOW)[g.name]]


# --- location -------------------------------------------------------------------------------------


def test_a_path_under_a_data_root_is_valid():
    assert one(GrantInput("g", spec(), resolved_path="/srv/data/scl.csv")) == []
    assert one(GrantInput("g", spec({"path": "/srv/data"}), resolved_path="/srv/data")) == []


def test_a_path_outside_the_data_roots_is_refused_with_what_to_do():
    [(reason, field, message)] = one(GrantInput("g", spec({"path": "/etc/shadow"}), resolved_path="/etc/shadow"))
    assert (reason, field) == ("InvalidLocation", "spec.dataset.path")
    assert message == ("path /etc/shadow is outside this site's data roots (/srv/data): move the data under one of "
                       "them, or ask the site's operator admin to add its folder to dataRoots")


def test_a_sibling_folder_with_the_roots_name_as_prefix_is_outside():
    problems = one(GrantInput("g", spec({"path": "/srv/data-other/x.csv"}), resolved_path="/srv/data-other/x.csv"))
    assert [p[0] for p in problems] == ["InvalidLocation"]


def test_a_symlink_leading_out_of_the_root_is_named():
    [(_, _, message)] = one(GrantInput("g", spec({"path": "/srv/data/link.csv"}), resolved_path="/etc/passwd"))
    assert message.startswith("path /srv/data/link.csv (it resolves to /etc/passwd: a symlink leads out) is outside")


def test_no_data_roots_means_no_path_grants():
    site = SiteData(runtime="process", namespace="org-b", data_roots=())
    [(reason, _, message)] = one(GrantInput("g", spec(), resolved_path="/srv/data/scl.csv"), site)
    assert reason == "InvalidLocation" and "dataRoots: []" in message and "persistentVolumeClaim" in message


def test_unset_data_roots_do_not_confine_paths():
    site = SiteData(runtime="process", namespace="org-b", data_roots=None)
    assert one(GrantInput("g", spec({"path": "/anywhere/x.csv"}), resolved_path="/anywhere/x.csv"), site) == []


def test_kubernetes_runtime_needs_an_absolute_node_path():
    [(reason, _, message)] = one(GrantInput("g", spec({"path": "data/x.csv"}), resolved_path="data/x.csv"), KUBE)
    assert reason == "InvalidLocation" and "must be absolute" in message


def test_volume_grants_need_the_kubernetes_runtime_and_an_existing_claim():
    [(reason, field, message)] = one(GrantInput("g", spec(pvc())), PROCESS)
    assert (reason, field) == ("InvalidLocation", "spec.dataset.persistentVolumeClaim")
    assert "runtime: process" in message and "cannot mount" in message
    [(reason, field, message)] = one(GrantInput("g", spec(pvc("nope")), claim_exists=False), KUBE)
    assert (reason, field) == ("InvalidLocation", "spec.dataset.persistentVolumeClaim.claimName")
    assert message.startswith("PersistentVolumeClaim nope does not exist in namespace org-b: create it there")
    assert one(GrantInput("g", spec(pvc()), claim_exists=True), KUBE) == []


def test_resolve_follows_symlinks_on_the_operators_machine(tmp_path: Path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "real.csv").write_text("sequence,label\n")
    os.symlink("/etc/passwd", root / "escape.csv")
    os.symlink(root / "real.csv", root / "inside.csv")
    settings = SiteSettings(org="org-b", site="org-b", namespace="org-b", hub_namespace="org-b",
                            data_roots=[root])
    site = site_data(settings, "process")
    assert site.data_roots == (os.path.realpath(root),)

    def checked(path: str):
        obj = {"metadata": {"name": "g"}, "spec": spec({"path": path}).to_wire()}
        return [p.reason for p in check_grants([grant_input(obj, "process", None)], site, NOW)["g"]]

    assert checked(str(root / "real.csv")) == []
    assert checked(str(root / "inside.csv")) == []
    assert checked(str(root / "escape.csv")) == [Reason.INVALID_LOCATION]
    assert resolve("/a/b/../c", "kubernetes") == "/a/c"  # a node path: lexical only


# --- version constraints, unparseable specs --------------------------------------------------------


def test_a_version_constraint_that_does_not_parse_is_named():
    g = GrantInput("g", spec(models=[{"id": "esm2-finetune", "versions": ">=1.0.0"},
                                     {"id": "other", "versions": "latest please"}]), resolved_path="/srv/data/scl.csv")
    assert one(g) == [("InvalidVersionConstraint", "spec.models[1].versions",
                       "'latest please' (model other) is not a version constraint: use PEP 440, e.g. "
                       "'>=1.0.0,<2.0.0', '1.2.*', '1.0.0' or '*'")]


def test_a_stored_spec_that_no_longer_parses_is_reported():
    obj = {"metadata": {"name": "old"}, "spec": {"dataset": {"id": "scl", "path": "/srv/data/../../etc"},
                                                 "consumers": ["modeller"], "models": [{"id": "m"}]}}
    g = grant_input(obj, "process", None)
    [(reason, field, message)] = one(g)
    assert (reason, field) == ("InvalidSpec", "spec") and "must not contain '..' segments" in message


# --- one dataset id, one set of data --------------------------------------------------------------


def _at(name: str, minutes: int, **kw) -> GrantInput:
    return GrantInput(name, spec(**kw.pop("s", {})), created=NOW - timedelta(minutes=minutes),
                      resolved_path=kw.pop("resolved", "/srv/data/scl.csv"))


def test_grants_of_one_id_with_the_same_data_are_alternatives():
    grants = [_at("a", 10), _at("b", 5, s={"consumers": ["someone-else"]})]
    problems = check_grants(grants, PROCESS, NOW)
    assert problems == {"a": [], "b": []}
    assert alternatives(grants, problems, "a") == ["b"]


def test_a_newer_grant_naming_other_data_for_an_id_is_refused():
    older = _at("z-older", 10)
    newer = _at("a-newer", 5, s={"dataset": {"path": "/srv/data/other.csv"}}, resolved="/srv/data/other.csv")
    problems = check_grants([newer, older], PROCESS, NOW)
    assert problems["z-older"] == []
    [p] = problems["a-newer"]
    assert p.reason == Reason.DUPLICATE_DATASET_ID and p.field == "spec.dataset.id"
    assert p.message == (
        "dataset id scl is already granted by DatasetGrant z-older (older) with other data (path /srv/data/scl.csv, "
        "format csv; this grant: path /srv/data/other.csv, format csv): grants of one dataset id must name the same "
        "data — use z-older's location and format, or another dataset id")


def test_same_time_ties_break_by_name_and_invalid_or_expired_grants_hold_no_id():
    a, b = _at("a", 5), _at("b", 5, s={"dataset": {"format": "parquet"}})
    assert [p.reason for p in check_grants([b, a], PROCESS, NOW)["b"]] == [Reason.DUPLICATE_DATASET_ID]
    bad = _at("old-bad", 60, s={"dataset": {"path": "/etc/x"}}, resolved="/etc/x")
    expired = _at("old-expired", 60, s={"expiresAt": "2020-01-01T00:00:00Z", "dataset": {"path": "/srv/data/y"}},
                  resolved="/srv/data/y")
    problems = check_grants([bad, expired, a], PROCESS, NOW)
    assert problems["a"] == [] and problems["old-expired"] == []
    assert [p.reason for p in problems["old-bad"]] == [Reason.INVALID_LOCATION]


# --- conditions -----------------------------------------------------------------------------------


def _by_type(conditions) -> dict:
    return {c.type: c for c in conditions}


def test_conditions_say_valid_or_why_not_and_keep_transition_times():
    bad = check_grants([_at("g", 1, s={"dataset": {"path": "/etc/x"}}, resolved="/etc/x")], PROCESS, NOW)["g"]
    conds = _by_type(grant_conditions([], problems=bad, site=PROCESS, spec=None, others=[], generation=3, now=NOW))
    valid, ready = conds[ConditionType.VALID], conds[ConditionType.READY]
    assert (valid.status, valid.reason, ready.status, ready.reason) == ("False", "InvalidLocation", "False",
                                                                        "InvalidLocation")
    assert valid.message.startswith("spec.dataset.path: path /etc/x is outside this site's data roots")
    assert valid.message.endswith("The site ignores this grant until then.") and valid.observed_generation == 3
    later = NOW + timedelta(minutes=5)
    again = _by_type(grant_conditions(list(conds.values()), problems=bad, site=PROCESS, spec=None, others=[],
                                      generation=3, now=later))
    assert again[ConditionType.VALID].last_transition_time == NOW

    unconfined = SiteData(runtime="process", namespace="org-b", data_roots=None)
    ok = _by_type(grant_conditions(list(conds.values()), problems=[], site=unconfined, spec=spec(), others=["b"],
                                   generation=4, now=later))
    assert ok[ConditionType.VALID].status == "True" and ok[ConditionType.VALID].reason == "Valid"
    assert "this site's gateway settings set no dataRoots" in ok[ConditionType.VALID].message
    assert "DatasetGrant b grants the same data" in ok[ConditionType.VALID].message
    assert (ok[ConditionType.READY].status, ok[ConditionType.VALID].last_transition_time) == ("True", later)

    expired = _by_type(grant_conditions([], problems=[], site=PROCESS, spec=spec(expiresAt="2026-01-01T00:00:00Z"),
                                        others=[], generation=1, now=NOW))
    assert (expired[ConditionType.VALID].status, expired[ConditionType.READY].reason) == ("True", "GrantExpired")


# --- the evaluation never chooses an invalid grant; the client gets the chosen grant's data ------


def compute_request(datasets=("scl",), consumer: str = "modeller") -> AccessRequestSpec:
    return AccessRequestSpec.model_validate({
        "source": {"kind": "Compute", "namespace": consumer, "name": "esm2", "uid": "u1"}, "org": "org-b",
        "consumerOrg": consumer, "model": {"id": "esm2-finetune", "version": "1.0.0"}, "datasets": list(datasets),
        "client": {"cpu": "1", "memory": "1Gi"}, "participatingOrgs": ["org-a", "org-b"],
        "contentHash": "sha256:" + "c" * 64})


def test_an_invalid_grant_is_never_chosen_and_is_named():
    only_bad = [GrantView("a-bad", spec({"path": "/etc/shadow"}), invalid="InvalidLocation")]
    ev = evaluate(compute_request(), grants=only_bad, policy=None, now=NOW)
    assert ev.decision == Decision.REJECTED and ev.granted_by == {}
    [rule] = [r for r in ev.rules if r.rule == DATASET_GRANTED]
    assert rule.message == ("org-b: the DatasetGrant for dataset scl is not valid at the site: a-bad (InvalidLocation); "
                            "org-b's admin must fix it (its status says how)")
    assert "/etc/shadow" not in json.dumps([r.message for r in ev.rules])  # the hub never learns a path

    good = GrantView("b-good", spec())
    ev = evaluate(compute_request(), grants=[*only_bad, good], policy=None, now=NOW)
    assert ev.decision == Decision.APPROVED and ev.granted_by == {"scl": "b-good"}
    assert ev.charged_grants == ("b-good",)


def test_granted_by_is_the_grant_that_allows_this_consumer():
    grants = [GrantView("a-other-consumer", spec(consumers=["someone-else"])), GrantView("b-mine", spec())]
    ev = evaluate(compute_request(), grants=grants, policy=None, now=NOW)
    assert ev.granted_by == {"scl": "b-mine"}


def _site(tmp_path: Path) -> Site:
    settings = SiteSettings(org="org-b", site="org-b", namespace="org-b", hub_namespace="org-b")
    return Site(config=OperatorConfig(workdir=tmp_path), settings=settings, site_kube=None, hub_kube=None,
                runtime=None)  # type: ignore[arg-type]


def test_the_client_gets_the_data_of_exactly_the_chosen_grant(tmp_path: Path):
    # Before: the workload took the *last* grant of an id by name while the evaluation chose the first
    # that allows the consumer, so a client could be given another grant's data.
    grants = [GrantView("a-mine", spec({"path": "/srv/data/mine.csv"})),
              GrantView("z-other", spec({"path": "/srv/data/other.csv"}, consumers=["someone-else"]))]
    req = compute_request()
    ev = evaluate(req, grants=grants, policy=None, now=NOW)
    body = {"metadata": {"name": "compute-x", "namespace": "org-b", "labels": {"flareop.io/federation": "fed"}},
            "spec": req.to_wire()}
    workload = RequestAnswer(_site(tmp_path), body)._workload(b"kit", ev, grants)
    assert [(d.dataset_id, d.path) for d in workload.datasets] == [("scl", "/srv/data/mine.csv")]


def test_the_gateway_lists_each_dataset_id_once_and_no_invalid_grant(tmp_path: Path):
    grants = [GrantView("a", spec({"description": "first"}, models=[{"id": "m1"}])),
              GrantView("b", spec({"description": "second"}, models=[{"id": "m2"}])),
              GrantView("c", spec({"id": "secret", "path": "/etc/x"}), invalid="InvalidLocation"),
              GrantView("d", spec({"id": "old"}, expiresAt="2020-01-01T00:00:00Z"))]
    datasets = gateway_object(_site(tmp_path), grants)["spec"]["datasets"]
    assert datasets == [{"id": "scl", "description": "first", "format": "csv", "sampleCount": 0,
                         "models": ["m1", "m2"],
                         "offers": [{"consumer": "modeller", "models": ["m1 *"], "dpRequired": False}]}]


def test_each_consumer_is_offered_its_own_terms_with_the_epsilon_left(tmp_path: Path):
    """The Gateway's offers (read by the hub, shown to each consumer only its own: builders/catalog_view.py)."""
    private = {"dpRequired": True, "maxEpsilonPerJob": 8, "epsilonBudget": 20}
    used = DatasetGrantStatus.model_validate({"ledger": [{"job": "m/j", "uid": "u1", "epsilon": 6.5, "spent": True}]})
    grants = [GrantView("a", spec(consumers=["pharma-x"], privacy=private, maxRounds=10,
                                  models=[{"id": "esm2-finetune", "versions": ">=1.0.0"}]), used),
              GrantView("b", spec(consumers=["pharma-x", "pharma-y"]))]
    offers = gateway_object(_site(tmp_path), grants)["spec"]["datasets"][0]["offers"]
    assert offers == [
        {"consumer": "pharma-x", "models": ["esm2-finetune >=1.0.0"], "dpRequired": True, "maxEpsilonPerJob": 8.0,
         "epsilonLeft": 13.5, "maxRounds": 10},
        {"consumer": "pharma-y", "models": ["esm2-finetune *"], "dpRequired": False},
    ]


# --- status writes the API server would refuse ----------------------------------------------------


def test_apply_bodies_carry_astral_characters_as_utf8_not_surrogate_escapes():
    body = wire_bytes({"message": "tiny \U0001F600"})
    assert body == '{"message": "tiny \U0001F600"}'.encode()
    assert b"\\ud83d" not in body


def test_readable_escapes_what_a_message_quotes():
    assert readable("bad \U0001F600 value\x00") == "bad \\U0001f600 value\\x00"
    assert readable("ok: ünïcödé") == "ok: ünïcödé"


@pytest.mark.parametrize("path", ["/data/../etc", "..", "a/../../b"])
def test_the_shape_rule_refuses_climbing_out(path):
    with pytest.raises(ValueError, match=r"must not contain '\.\.' segments"):
        spec({"path": path})


def test_one_grant_whose_status_write_fails_does_not_hold_back_the_others(tmp_path: Path):
    """Found by the fuzz suite: an object the API server stored but cannot apply a status to (500)
    stopped the site's loop, so no other grant of the org was reported on."""
    import asyncio

    from flare_operator.handlers.grants import CheckedGrants, report_grants

    class Sink:
        written: list[str] = []

        async def site(self, method, *args, **_):
            if method == "apply_status":
                if args[2] == "broken":
                    raise RuntimeError("(500) failed to create manager for existing fields")
                self.written.append(args[2])

    data = site_data(SiteSettings(org="org-b", site="org-b", namespace="org-b", hub_namespace="org-b"), "process")
    objects = [{"metadata": {"name": name, "namespace": "org-b", "generation": 1},
                "spec": spec({"path": str(tmp_path)}).to_wire()} for name in ("broken", "fine")]
    inputs = [grant_input(o, "process", None) for o in objects]
    checked = CheckedGrants(data, objects, inputs, check_grants(inputs, data, NOW))
    site = Sink()
    assert asyncio.run(report_grants(site, checked)) == 1  # type: ignore[arg-type]
    assert site.written == ["fine"]


def test_a_request_that_arrives_already_ended_is_answered_not_ignored():
    """Found by the fuzz suite: a request created with spec.outcome set (the job ended before this
    site decided) never got a status, so nobody could tell it had been seen."""
    from flare_operator.handlers.gateway import ended_undecided

    req = AccessRequestSpec.model_validate({**compute_request().to_wire(), "outcome": {"phase": "Aborted"}})
    status = ended_undecided(req, 3, NOW)
    assert status.decision == Decision.REJECTED and status.observed_generation == 3
    assert "already ended (Aborted)" in status.message
    assert {c.type: c.status for c in status.conditions} == {"Decided": "True", "Ready": "False"}
