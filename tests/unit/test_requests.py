"""AccessRequests are named and labelled after their source, and carry only the org's datasets."""

import yaml

from flare_operator.api import ComputeSpecSpec, FederatedJobSpec
from flare_operator.builders.requests import compute_access_request, job_access_request
from tests.sample_data import VALID_DIR

COMPUTE = ComputeSpecSpec.model_validate(yaml.safe_load((VALID_DIR / "computespec.yaml").read_text())["spec"])
JOB = FederatedJobSpec.model_validate(yaml.safe_load((VALID_DIR / "federatedjob.yaml").read_text())["spec"])
HASH = "sha256:" + "2" * 64


def test_compute_and_job_requests_for_one_org():
    common = dict(org="org-b", hub_namespace="org-b", source_namespace="modeller", source_uid="u-1",
                  consumer_org="modeller", federation="fed-1", content_hash=HASH)
    compute = compute_access_request(source_name="esm2-scl", spec=COMPUTE, **common)
    job = job_access_request(source_name="esm2-scl-run1", job=JOB, compute=COMPUTE, **common)
    assert compute["metadata"]["name"] == "compute-modeller-esm2-scl"
    assert job["metadata"]["name"] == "job-modeller-esm2-scl-run1"
    assert compute["metadata"]["labels"]["flareop.io/request-kind"] == "Compute"
    assert job["metadata"]["labels"] == {"flareop.io/federation": "fed-1", "flareop.io/source-namespace": "modeller",
                                         "flareop.io/source-name": "esm2-scl-run1", "flareop.io/request-kind": "Job"}
    assert compute["spec"]["datasets"] == job["spec"]["datasets"] == ["scl-org-b"]
    assert compute["spec"]["participatingOrgs"] == ["org-a", "org-b"]
    assert job["spec"]["rounds"] == 5 and job["spec"]["differentialPrivacy"]["epsilon"] == 8
    assert "rounds" not in compute["spec"]


def test_long_names_stay_valid_and_distinct():
    common = dict(org="org-b", hub_namespace="org-b", source_namespace="modeller", source_uid="u",
                  consumer_org="modeller", federation="f", content_hash=HASH, spec=COMPUTE)
    a = compute_access_request(source_name="x" * 60 + "a", **common)["metadata"]["name"]
    b = compute_access_request(source_name="x" * 60 + "b", **common)["metadata"]["name"]
    assert a != b and len(a) <= 63 and len(b) <= 63
