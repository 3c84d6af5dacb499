"""The SDK's pure parts: manifests checked locally, statuses read, API errors turned into errors a
person can act on, and `flareop validate` offline (the SDK against a real API server: tests/e2e/test_sdk.py)."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from flare_operator.sdk import compute, job
from flare_operator.sdk.cli import app
from flare_operator.sdk.errors import Forbidden, InvalidSpec, NotFound
from flare_operator.sdk.session import translate
from tests.sample_data import REPO

MODEL = {"id": "esm2-finetune", "version": "1.0.0"}


def test_a_compute_spec_is_the_crd_object():
    spec = compute.ComputeSpec(name="fed", model=MODEL, dataset_ids=["org-a/scl-a", "org-b/scl-b"], client_n_cpu=2,
                               client_n_gpu=1, client_memory="4Gi", server_n_cpu="500m")
    obj = spec.manifest("modeller")
    assert obj["spec"]["datasets"] == [{"org": "org-a", "id": "scl-a"}, {"org": "org-b", "id": "scl-b"}]
    assert obj["spec"]["client"] == {"cpu": "2", "memory": "4Gi", "gpu": 1}
    assert obj["metadata"] == {"name": "fed", "namespace": "modeller"}


@pytest.mark.parametrize(("fields", "words"), [
    ({"dataset_ids": ["org-a/scl-a", "org-a/scl-a"]}, "lists the same {org, id} twice"),
    ({"client_n_gpu": 9}, "gpu must be between 0 and 8"),
    ({"model": {"id": "esm2-finetune", "version": "latest"}}, "version"),
])
def test_a_bad_compute_spec_is_refused_before_sending(fields, words):
    spec = compute.ComputeSpec(**{"name": "fed", "model": MODEL, "dataset_ids": ["org-a/scl-a"], **fields})
    with pytest.raises(InvalidSpec, match=words.replace("{", r"\{").replace("}", r"\}")) as err:
        spec.manifest("modeller")
    assert err.value.hint == "kubectl explain computespecs.spec"


def test_dataset_ids_name_their_org():
    with pytest.raises(ValueError, match="org/id"):
        compute.ComputeSpec(name="fed", model=MODEL, dataset_ids=["scl-a"])


def test_a_job_manifest_turns_dp_on_with_epsilon_and_checks_rounds():
    obj = job.manifest("fed", {"localSteps": 2}, namespace="m", rounds=3, epsilon=8)
    assert obj["spec"]["privacy"] == {"differentialPrivacy": {"enabled": True, "level": "Sample", "epsilon": 8}}
    assert obj["metadata"]["name"].startswith("fed-") and obj["spec"]["parameters"] == {"localSteps": 2}
    assert "privacy" not in job.manifest("fed", None, namespace="m", rounds=3)["spec"]
    with pytest.raises(InvalidSpec, match="rounds must be greater than 0"):
        job.manifest("fed", None, namespace="m", rounds=0)


def test_a_job_status_reads_progress_metrics_and_who_decided():
    st = job.JobStatus.of({
        "metadata": {"name": "run1", "namespace": "m"}, "spec": {"rounds": 4},
        "status": {"phase": "AwaitingApproval", "currentRound": 0,
                   "approvals": [{"org": "org-a", "decision": "Approved", "message": "ok"},
                                 {"org": "org-b", "decision": "Pending", "message": "awaits a person"}],
                   "globalMetrics": {"val_accuracy": 0.41},
                   "siteMetrics": [{"site": "org-a-1", "metrics": {"val_accuracy": 0.4}, "epsilonSpent": 2.5}],
                   "conditions": [{"type": "Ready", "status": "False", "message": "waiting for org-b"}]}})
    assert st.pending_orgs == ["org-b"] and st.accuracy == 0.41 and st.message == "waiting for org-b"
    assert st.site_metrics == {"org-a-1": {"val_accuracy": 0.4, "epsilon_spent": 2.5}} and not st.finished


@pytest.mark.parametrize(("code", "error", "hint"), [
    (404, NotFound, "kubectl get federatedjobs -n m"),
    (403, Forbidden, "kubectl auth can-i get federatedjobs -n m"),
    (422, InvalidSpec, "kubectl explain federatedjobs.spec"),
])
def test_api_errors_become_errors_with_the_command_that_shows_more(code, error, hint):
    exc = ApiException(status=code, reason="x")
    exc.body = json.dumps({"message": "the server's words"})
    err = translate(exc, "get", "FederatedJob", "m", "run1")
    assert isinstance(err, error) and err.hint == hint
    assert "FederatedJob run1" in str(err) and hint in str(err)


def test_flareop_validate_checks_manifests_offline(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["-o", "json", "validate", "-f", str(REPO / "examples/esm2-scl/30-modeller.yaml")])
    assert ok.exit_code == 0, ok.output
    assert {r["object"] for r in json.loads(ok.output)} == {"ComputeSpec/esm2-scl", "FederatedJob/esm2-scl-run1"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: flareop.io/v1alpha1\nkind: FederatedJob\nmetadata: {name: j}\n"
                   "spec: {computeSpecRef: {name: c}, rounds: 0}\n")
    refused = runner.invoke(app, ["validate", "-f", str(bad)])
    assert refused.exit_code == 2 and "rounds must be greater than 0" in refused.output


def test_a_session_works_in_the_contexts_namespace_like_kubectl(tmp_path, monkeypatch):
    from flare_operator.sdk.session import Session

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "hub",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "hub", "context": {"cluster": "c", "user": "u", "namespace": "modeller"}},
                     {"name": "site", "context": {"cluster": "c", "user": "u", "namespace": "org-b"}},
                     {"name": "bare", "context": {"cluster": "c", "user": "u"}}]}))
    assert Session(kubeconfig).namespace == "modeller"
    assert Session(kubeconfig, context="site").namespace == "org-b"
    assert Session(kubeconfig, context="bare").namespace == "default"
    assert Session(kubeconfig, namespace="other").namespace == "other"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert Session(context="site").namespace == "org-b"  # $KUBECONFIG, like kubectl
