"""DatasetGrants cannot point anywhere, and every object gets a status it can show — on a real API
server with the real operator (issue 12, properties 8 and 9).

- A path climbing out with '..' is refused by the API server (CEL); a path outside the site's
  dataRoots, a symlink leading out of them, an unparseable version constraint, a volume claim that
  does not exist, and a second grant naming other data for a dataset id are each reported in the
  grant's status (Valid=False, with the field and what to do), allow nothing and are never mounted.
- The Gateway lists each dataset id once (a duplicate no longer breaks the heartbeat), and the
  client gets the data of exactly the grant the evaluation chose.
- Text outside the Basic Multilingual Plane (emoji) in a job's parameters or a grant's description
  is carried through every write; a status the API server refuses is recorded as Ready=False with
  the server's message, once, and not sent again.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from flare_operator.runtime.kube import Kube, StatusRefused
from tests.operator_harness import (
    Consortium,
    apply,
    compute,
    create_org_namespace,
    gateway_config,
    get,
    install_crds,
    operator_config,
    policy,
    processes_under,
    remove_namespaces,
    running_operator,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


def dataset_grant(namespace: str, name: str, consumer: str, dataset: dict, **spec) -> dict:
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "DatasetGrant",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"dataset": {"sampleCount": 10, **dataset}, "consumers": [consumer],
                     "models": [{"id": "esm2-finetune"}], **spec}}


def condition(cp, namespace: str, name: str, type_: str = "Valid") -> dict | None:
    obj = get(cp, "datasetgrant", namespace, name) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def wait_valid(cp, namespace: str, name: str, status: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (c := condition(cp, namespace, name)) and c["status"] == status and c,
                    timeout=timeout, message=f"DatasetGrant {namespace}/{name} Valid={status}")


@pytest.fixture
def orgs(control_plane):
    install_crds(control_plane)
    c = Consortium()
    for name in ("org-a", "modeller"):
        create_org_namespace(control_plane, c.org(name), c.org(name))
    yield c
    remove_namespaces(control_plane, c.org("org-a"), c.modeller)


def test_grants_cannot_point_anywhere(control_plane, orgs, tmp_path):
    cp, a, m = control_plane, orgs.org("org-a"), orgs.modeller
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "scl.csv").write_text("sequence,label\nMKV,Nucleus\n")
    (root / "other.csv").write_text("sequence,label\nMAL,Cytoplasm\n")
    (outside / "secret.csv").write_text("not for anyone\n")
    os.symlink(outside / "secret.csv", root / "escape.csv")

    # The attack the API server refuses outright: a path that climbs out of its folder.
    climbing = dataset_grant(a, "climb", m, {"id": "climb", "path": f"{root}/../outside/secret.csv"})
    refused = cp.kubectl("apply", "-f", "-", input=json.dumps(climbing), check=False)
    assert refused.returncode != 0
    assert ("dataset.path must not contain '..' segments: name the data's own file or folder (the site accepts "
            "only paths under its dataRoots)") in refused.stderr

    apply(cp, dataset_grant(a, "scl-a", m, {"id": "scl-a", "path": str(root / "scl.csv")}), policy(a, "Automatic"))
    apply(cp, dataset_grant(a, "escape", m, {"id": "escape", "path": str(root / "escape.csv")}),
          dataset_grant(a, "outside", m, {"id": "outside", "path": str(outside / "secret.csv")}),
          dataset_grant(a, "badver", m, {"id": "badver", "path": str(root / "scl.csv")},
                        models=[{"id": "esm2-finetune", "versions": "the latest one"}]))
    site = dict(gateway_config(a, a), dataRoots=[str(root)])
    config = operator_config(tmp_path, [site], namespaces=[m])
    with running_operator(cp, tmp_path, config) as op:
        assert wait_valid(cp, a, "scl-a", "True")["reason"] == "Valid"

        escape = wait_valid(cp, a, "escape", "False")
        assert escape["reason"] == "InvalidLocation"
        assert (f"spec.dataset.path: path {root}/escape.csv (it resolves to {outside}/secret.csv: a symlink leads "
                f"out) is outside this site's data roots ({root}): move the data under one of them, or ask the "
                "site's operator admin to add its folder to dataRoots") in escape["message"]
        outside_cond = wait_valid(cp, a, "outside", "False")
        assert outside_cond["reason"] == "InvalidLocation"
        assert f"path {outside}/secret.csv is outside this site's data roots" in outside_cond["message"]
        badver = wait_valid(cp, a, "badver", "False")
        assert badver["reason"] == "InvalidVersionConstraint"
        assert ("spec.models[0].versions: 'the latest one' (model esm2-finetune) is not a version constraint: use "
                "PEP 440") in badver["message"]
        assert condition(cp, a, "escape", "Ready")["reason"] == "InvalidLocation"

        def warning_event():
            events = json.loads(cp.kubectl("get", "events.events.k8s.io", "-n", a, "-o", "json").stdout)["items"]
            return any(e["regarding"]["name"] == "escape" and e["reason"] == "InvalidLocation"
                       and e["type"] == "Warning" for e in events)

        wait_for(warning_event, timeout=30, message="a Warning Event on the grant says why")

        # A second grant naming other data for the same dataset id: refused in its status, and the
        # Gateway (spec.datasets is a list-map keyed by id) keeps one entry: the heartbeat goes on.
        apply(cp, dataset_grant(a, "scl-dup", m, {"id": "scl-a", "path": str(root / "other.csv")}))
        dup = wait_valid(cp, a, "scl-dup", "False")
        assert dup["reason"] == "DuplicateDatasetId"
        assert "dataset id scl-a is already granted by DatasetGrant scl-a (older) with other data" in dup["message"]
        first_beat = get(cp, "gateway", a, a)["status"]["lastHeartbeatTime"]

        def beat_again():
            gw = get(cp, "gateway", a, a)
            connected = next(c for c in gw["status"]["conditions"] if c["type"] == "Connected")
            return gw if gw["status"]["lastHeartbeatTime"] != first_beat and connected["status"] == "True" else None

        gateway = wait_for(beat_again, timeout=30, message="a heartbeat after the duplicate")
        assert [d["id"] for d in gateway["spec"]["datasets"]] == ["scl-a"]
        assert "path" not in json.dumps(gateway["spec"])

        # A ComputeSpec asking for the dataset whose only grant leads out: refused, naming the grant
        # (not its path: the answer goes to the hub); nothing runs.
        apply(cp, compute(m, "sneaky", [(a, "escape")]))
        request = wait_for(lambda: (get(cp, "accessrequest", a, f"compute-{m}-sneaky") or {}).get("status"),
                           timeout=60, message="org-a answered the request for escape")
        assert request["decision"] == "Rejected"
        assert (f"{a}: the DatasetGrant for dataset escape is not valid at the site: escape (InvalidLocation); "
                f"{a}'s admin must fix it (its status says how)") in request["message"]
        assert str(outside) not in json.dumps(request)

        # The dataset with a valid grant and a refused duplicate: the client gets the valid grant's data.
        apply(cp, compute(m, "esm2", [(a, "scl-a")]))
        site_json = wait_for(lambda: next((tmp_path / "flare").glob(f"site-{a}/**/site.json"), None), timeout=180,
                             message="org-a's client configured")
        datasets = json.loads(site_json.read_text())["datasets"]
        assert datasets == {"scl-a": os.path.realpath(root / "scl.csv")}
        assert not any("secret" in p or "other" in p for p in json.dumps(datasets).split(","))
        assert op.proc.poll() is None
    wait_for(lambda: not processes_under(tmp_path / "flare"), timeout=60, message="no participant left")


def test_a_volume_grant_needs_its_claim_and_a_node_path_must_be_absolute(control_plane, orgs, tmp_path):
    cp, a, m = control_plane, orgs.org("org-a"), orgs.modeller
    apply(cp, dataset_grant(a, "on-volume", m, {"id": "on-volume", "persistentVolumeClaim": {"claimName": "scl-data"}}),
          dataset_grant(a, "relative", m, {"id": "relative", "path": "data/scl.csv"}))
    site = dict(gateway_config(a, a), runtime="kubernetes")
    config = {"mode": "all", "runtime": "kubernetes", "adminRoute": "none", "resyncSeconds": 2, "heartbeatSeconds": 5, "gateways": [site],
              "namespaces": [m], "workdir": str(tmp_path / "work")}
    with running_operator(cp, tmp_path, config):
        missing = wait_valid(cp, a, "on-volume", "False")
        assert missing["reason"] == "InvalidLocation"
        assert (f"spec.dataset.persistentVolumeClaim.claimName: PersistentVolumeClaim scl-data does not exist in "
                f"namespace {a}: create it there (a client can mount only claims of its own namespace) or correct "
                "claimName") in missing["message"]
        relative = wait_valid(cp, a, "relative", "False")
        assert "path 'data/scl.csv' is relative" in relative["message"] and "must be absolute" in relative["message"]

        apply(cp, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "scl-data", "namespace": a},
                   "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})
        valid = wait_valid(cp, a, "on-volume", "True")
        assert valid["reason"] == "Valid"
        assert condition(cp, a, "on-volume", "Ready")["status"] == "True"


def test_astral_characters_are_carried_and_never_loop(control_plane, orgs, tmp_path):
    cp, a, m = control_plane, orgs.org("org-a"), orgs.modeller
    data = tmp_path / "scl.csv"
    data.write_text("sequence,label\nMKV,Nucleus\n")
    apply(cp, dataset_grant(a, "scl-a", m, {"id": "scl-a", "path": str(data), "description": "\U0001F9EC assays"}),
          policy(a, "Automatic"), compute(m, "esm2", [(a, "scl-a")], active=False))
    config = operator_config(tmp_path, [gateway_config(a, a)], namespaces=[m])
    with running_operator(cp, tmp_path, config) as op:
        gateway = wait_for(lambda: get(cp, "gateway", a, a), timeout=60, message="org-a registered")
        assert gateway["spec"]["datasets"][0]["description"] == "\U0001F9EC assays"

        def job(name: str, parameters: dict) -> dict:
            return {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob",
                    "metadata": {"name": name, "namespace": m},
                    "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 1, "parameters": parameters}}

        # A mistake: the job says what is wrong, quoting the value as written.
        apply(cp, job("typo", {"preset": "tiny \U0001F600"}))
        failed = wait_phase(cp, "federatedjob", m, "typo", "Failed", timeout=60)
        ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "InvalidSpec"
        assert "$.preset: 'tiny \U0001F600' is not one of ['tiny', '8M', '35M', '150M', '650M']" in ready["message"]

        # A valid value with an emoji travels into the org's AccessRequest, and the org answers it.
        apply(cp, job("ok", {"preset": "tiny", "pretrainedPath": "/models/esm2-\U0001F600"}))
        request = wait_for(lambda: (r := get(cp, "accessrequest", a, f"job-{m}-ok")) and (r.get("status") or {})
                           .get("decision") and r, timeout=60, message="org-a answered job ok")
        assert request["spec"]["job"]["parameters"]["pretrainedPath"] == "/models/esm2-\U0001F600"
        log = op.log_path.read_text(errors="replace")
        assert "invalid Unicode character escape" not in log
        assert "refused the status" not in log


def test_a_refused_status_write_is_recorded_once_and_not_retried(control_plane, orgs):
    cp, m = control_plane, orgs.modeller
    apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": "j", "namespace": m},
               "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 1}})
    api = cp.api_client()
    try:
        kube = Kube(api)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        good = {"observedGeneration": 1, "phase": "Pending", "conditions": [
            {"type": "Ready", "status": "False", "reason": "Progressing", "message": "waiting \U0001F600",
             "lastTransitionTime": now}]}
        kube.apply_status("FederatedJob", m, "j", good)
        assert get(cp, "federatedjob", m, "j")["status"]["conditions"][0]["message"] == "waiting \U0001F600"

        bad = {**good, "phase": "Exploded"}  # what an operator bug, or a value the schema bounds, looks like
        with pytest.raises(StatusRefused):
            kube.apply_status("FederatedJob", m, "j", bad)
        status = get(cp, "federatedjob", m, "j")["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert ready["message"].startswith("the operator cannot record this FederatedJob's status: the API server "
                                           "refused it: ")
        assert 'status.phase: Unsupported value: "Exploded"' in ready["message"]
        assert "correct the field named here in the spec" in ready["message"]
        assert status["phase"] == "Pending", "what was recorded before stays"

        before = kube.requests_made
        with pytest.raises(StatusRefused):
            kube.apply_status("FederatedJob", m, "j", bad)
        assert kube.requests_made == before, "the same refused status is not sent again"

        kube.apply_status("FederatedJob", m, "j", {**good, "phase": "AwaitingApproval"})
        status = get(cp, "federatedjob", m, "j")["status"]
        assert status["phase"] == "AwaitingApproval"
        assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "Progressing"
    finally:
        api.close()
