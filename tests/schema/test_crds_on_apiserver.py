"""The CRDs on a real kube-apiserver: valid samples accepted, invalid ones refused with the message
a user should see (schema and CEL), transition rules, defaults, printer columns, kubectl explain."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from tests.sample_data import CRD_DIR, expected_error, invalid_samples, valid_samples
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.schema


@pytest.fixture(scope="module")
def crds(control_plane):
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
    for path in CRD_DIR.glob("*.flareop.io.yaml"):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    # Discovery catches up a moment after Established; kubectl needs it for short names.
    wait_for(lambda: control_plane.kubectl("get", "flare", "-A", check=False).returncode == 0,
             timeout=60, message="category flare in discovery")
    return control_plane


def _in(namespace: str, obj: dict) -> str:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    return yaml.safe_dump(obj)


def _apply(cp, namespace, obj, check=True):
    return cp.kubectl("apply", "-f", "-", input=_in(namespace, obj), check=check)


def _get(cp, namespace, kind, name) -> dict:
    return json.loads(cp.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


@pytest.mark.parametrize(("name", "obj"), valid_samples(), ids=[n for n, _ in valid_samples()])
def test_valid_sample_is_accepted_and_stored(crds, namespace, name, obj):
    _apply(crds, namespace, obj)
    stored = _get(crds, namespace, obj["kind"], obj["metadata"]["name"])
    assert stored["spec"] == _defaults_added(stored["spec"], obj["spec"])


@pytest.mark.parametrize(("name", "obj"), invalid_samples(), ids=[n for n, _ in invalid_samples()])
def test_invalid_sample_is_refused_with_its_message(crds, namespace, name, obj):
    result = _apply(crds, namespace, obj, check=False)
    assert result.returncode != 0, f"{name} was accepted"
    assert expected_error(obj, "server") in result.stderr, result.stderr
    assert crds.kubectl("get", obj["kind"], obj["metadata"]["name"], "-n", namespace, check=False).returncode != 0


def _sample(kind: str) -> dict:
    return next(copy.deepcopy(o) for _, o in valid_samples() if o["kind"] == kind)


def _patch(cp, namespace, kind, name, patch, subresource=None, check=False):
    args = ["patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)]
    if subresource:
        args.append(f"--subresource={subresource}")
    return cp.kubectl(*args, check=check)


def test_defaults_are_applied_by_the_server(crds, namespace):
    obj = _sample("ComputeSpec")
    del obj["spec"]["server"], obj["spec"]["active"]
    _apply(crds, namespace, obj)
    spec = _get(crds, namespace, "ComputeSpec", obj["metadata"]["name"])["spec"]
    assert spec["server"] == {"cpu": "1", "memory": "2Gi"}
    assert spec["active"] is True


@pytest.mark.parametrize(
    ("kind", "patch", "message"),
    [
        ("JobApproval", {"spec": {"decision": "Reject", "reason": "changed my mind"}},
         "decision is immutable: delete this JobApproval and create a new one"),
        ("JobApproval", {"spec": {"job": {"name": "another-job"}}},
         "job is immutable: create a new JobApproval for another job"),
        ("JobApproval", {"spec": {"contentHash": "sha256:" + "0" * 64}},
         "contentHash is immutable: create a new JobApproval for the new hash"),
        ("DatasetGrant", {"spec": {"dataset": {"id": "another-dataset"}}},
         "dataset.id is immutable: create a new DatasetGrant for another dataset"),
    ],
)
def test_immutable_fields(crds, namespace, kind, patch, message):
    obj = _sample(kind)
    _apply(crds, namespace, obj)
    result = _patch(crds, namespace, kind, obj["metadata"]["name"], patch)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_job_spec_is_frozen_once_submitted_except_suspend(crds, namespace):
    obj = _sample("FederatedJob")
    name = obj["metadata"]["name"]
    _apply(crds, namespace, obj)
    # Before submission the modeller may still edit (approvals bound to the old hash lapse).
    _patch(crds, namespace, "FederatedJob", name, {"spec": {"rounds": 6}}, check=True)
    _patch(crds, namespace, "FederatedJob", name, {"spec": {"parameters": {"batchSize": 8}}}, check=True)
    _patch(crds, namespace, "FederatedJob", name, {"status": {"submittedAt": "2026-11-25T10:00:00Z"}},
           subresource="status", check=True)
    frozen = "spec is immutable once the job was submitted"
    for patch in ({"spec": {"rounds": 7}}, {"spec": {"parameters": {"batchSize": 4}}},
                  {"spec": {"parameters": {"newKnob": 1}}}, {"spec": {"activeDeadlineSeconds": 60}},
                  {"spec": {"privacy": {"differentialPrivacy": {"epsilon": 2}}}}):
        result = _patch(crds, namespace, "FederatedJob", name, patch)
        assert result.returncode != 0 and frozen in result.stderr, (patch, result.stderr)
    _patch(crds, namespace, "FederatedJob", name, {"spec": {"suspend": True}}, check=True)
    spec = _get(crds, namespace, "FederatedJob", name)["spec"]
    assert spec["suspend"] is True and spec["rounds"] == 6 and spec["parameters"]["batchSize"] == 8


def test_status_subresource_and_conditions_list_map(crds, namespace):
    obj = _sample("ComputeSpec")
    name = obj["metadata"]["name"]
    _apply(crds, namespace, obj)
    condition = {"type": "Ready", "status": "False", "reason": "AwaitingSites", "message": "org-b has not answered",
                 "lastTransitionTime": "2026-11-25T10:00:00Z", "observedGeneration": 1}
    status = {"phase": "Pending", "observedGeneration": 1, "conditions": [condition, dict(condition)]}
    duplicate = _patch(crds, namespace, "ComputeSpec", name, {"status": status}, subresource="status")
    assert duplicate.returncode != 0 and "Duplicate value" in duplicate.stderr, duplicate.stderr
    status["conditions"] = [condition]
    _patch(crds, namespace, "ComputeSpec", name, {"status": status}, subresource="status", check=True)
    # A spec write cannot change status, and a status write cannot change spec.
    _patch(crds, namespace, "ComputeSpec", name, {"status": {"phase": "Ready"}}, check=True)
    stored = _get(crds, namespace, "ComputeSpec", name)
    assert stored["status"]["phase"] == "Pending"
    table = crds.kubectl("get", "computespecs", "-n", namespace).stdout
    assert table.split()[:7] == ["NAME", "MODEL", "PHASE", "READY", "CLIENTS", "ACTIVE", "AGE"]
    assert "esm2-finetune" in table and "Pending" in table and "False" in table


def test_category_and_short_names(crds, namespace):
    for _, obj in valid_samples():
        _apply(crds, namespace, obj)
    listed = crds.kubectl("get", "flare", "-n", namespace, "-o", "name").stdout.split()
    assert len(listed) == len(valid_samples())
    assert crds.kubectl("get", "fedjobs", "-n", namespace).stdout.startswith("NAME")
    explained = crds.kubectl("explain", "federatedjob.spec.privacy.differentialPrivacy.epsilon").stdout
    assert "Target epsilon for the whole job" in explained


def _defaults_added(stored, written):
    """`stored` must equal `written` where written says something; return stored for a clear diff."""
    if isinstance(written, dict):
        assert isinstance(stored, dict)
        for key, value in written.items():
            assert key in stored, f"server dropped {key}"
            _defaults_added(stored[key], value)
        return stored
    if isinstance(written, int | float) and not isinstance(written, bool) and isinstance(stored, int | float):
        assert float(stored) == float(written)
        return stored
    assert stored == written
    return stored
