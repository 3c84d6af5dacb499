"""AccessRequests are named and labelled after their source, and carry only the org's datasets."""

import yaml

from flare_operator.api import ComputeSpecSpec, FederatedJobSpec
from flare_operator.api.access_request import AppCode
from flare_operator.builders.requests import compute_access_request, job_access_request
from tests.sample_data import VALID_DIR

COMPUTE = ComputeSpecSpec.model_validate(yaml.safe_load((VALID_DIR / "computespec.yaml").read_text())["spec"])
JOB = FederatedJobSpec.model_validate(yaml.safe_load((VALID_DIR / "federatedjob.yaml").read_text())["spec"])
HASH = "sha256:" + "2" * 64
APP = AppCode(id="esm2-finetune", version="1.0.0", code_digest="sha256:" + "3" * 64)


def test_compute_and_job_requests_for_one_org():
    common = dict(org="org-b", hub_namespace="org-b", source_namespace="modeller", source_uid="u-1",
                  consumer_org="modeller", federation="fed-1", content_hash=HASH)
    compute = compute_access_request(source_name="esm2-scl", spec=COMPUTE, **common)
    job = job_access_request(source_name="esm2-scl-run1", job=JOB, compute=COMPUTE, app=APP, **common)
    assert compute["metadata"]["name"] == "compute-modeller-esm2-scl"
    assert job["metadata"]["name"] == "job-modeller-esm2-scl-run1"
    assert compute["metadata"]["labels"]["flareop.io/request-kind"] == "Compute"
    assert job["metadata"]["labels"] == {"flareop.io/federation": "fed-1", "flareop.io/source-namespace": "modeller",
                                         "flareop.io/source-name": "esm2-scl-run1", "flareop.io/request-kind": "Job"}
    assert compute["spec"]["datasets"] == job["spec"]["datasets"] == ["scl-org-b"]
    assert compute["spec"]["participatingOrgs"] == ["org-a", "org-b"]
    assert job["spec"]["rounds"] == 5 and job["spec"]["differentialPrivacy"]["epsilon"] == 8
    assert "rounds" not in compute["spec"]
    assert "job" not in compute["spec"] and "app" not in compute["spec"]


def test_a_job_request_carries_everything_its_hash_binds():
    """The org's admin reviews, and the site recomputes the hash from, the specs themselves."""
    paused = JOB.model_copy(update={"suspend": True, "ttl_seconds_after_finished": 60})
    inactive = COMPUTE.model_copy(update={"active": False})
    spec = job_access_request(org="org-b", hub_namespace="org-b", source_namespace="modeller", source_name="run1",
                              source_uid="u-1", consumer_org="modeller", job=paused, compute=inactive,
                              federation="fed-1", content_hash=HASH, app=APP, reserve=False)["spec"]
    assert spec["job"]["parameters"] == JOB.parameters and spec["job"]["privacy"] == JOB.privacy.to_wire()
    assert spec["job"]["suspend"] is False and "ttlSecondsAfterFinished" not in spec["job"]  # not bound
    assert spec["compute"]["datasets"] == [{"org": "org-a", "id": "scl-org-a"}, {"org": "org-b", "id": "scl-org-b"}]
    assert spec["compute"]["active"] is True
    assert spec["app"] == {"id": "esm2-finetune", "version": "1.0.0", "codeDigest": APP.code_digest}
    assert spec["reserve"] is False


def test_long_names_stay_valid_and_distinct():
    common = dict(org="org-b", hub_namespace="org-b", source_namespace="modeller", source_uid="u",
                  consumer_org="modeller", federation="f", content_hash=HASH, spec=COMPUTE)
    a = compute_access_request(source_name="x" * 60 + "a", **common)["metadata"]["name"]
    b = compute_access_request(source_name="x" * 60 + "b", **common)["metadata"]["name"]
    assert a != b and len(a) <= 63 and len(b) <= 63
