"""A site recomputes what a job's AccessRequest binds from its specs and its own catalog (issue 12, 4-5)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from flare_operator.api import AccessRequestSpec, ComputeSpecSpec, FederatedJobSpec
from flare_operator.api.access_request import AppCode
from flare_operator.builders.nvflare_job import app_code_digest, build_from_api, job_name_for, site_app_files
from flare_operator.builders.requests import job_access_request
from flare_operator.catalog import ENV_VAR, catalog_root, load_app
from flare_operator.handlers.gateway import site_content
from flare_operator.policy.content_check import verify_job_content
from flare_operator.policy.content_hash import job_hash
from flare_operator.policy.site_enforcement import app_digest
from tests.sample_data import VALID_DIR

SAMPLE = AccessRequestSpec.model_validate(yaml.safe_load((VALID_DIR / "accessrequest.yaml").read_text())["spec"])
LOCAL = SAMPLE.app.code_digest  # the sample's app digest, as if this site's catalog had the same code


def check(request=SAMPLE, local=LOCAL, rebuilt="same", **kw):
    return verify_job_content(request, local_code_digest=local, rebuilt=request if rebuilt == "same" else rebuilt, **kw)


def test_the_sample_request_verifies():
    rule = check()
    assert rule.passed and rule.rule == "ContentVerified"
    assert rule.message == "org-b: content hash recomputed from the job's spec and org-b's own copy of esm2-finetune " \
                           "1.0.0 (code digest sha256:5e5e5e5e5e5e…)"


def test_other_code_under_the_same_version_is_refused():
    rule = check(local="sha256:" + "7" * 64)
    assert not rule.passed
    assert rule.message.startswith("org-b: the hub's esm2-finetune 1.0.0 is not the code this site has (hub digest "
                                   "sha256:5e5e5e5e5e5e…, org-b's sha256:777777777777…)")


def test_an_unknown_app_version_names_the_version_to_install():
    rule = check(local=None, catalog_problem="app esm2-finetune is at version 1.0.0, not 1.1.0")
    assert not rule.passed
    assert "installs a flare-operator release whose catalog has esm2-finetune 1.0.0" in rule.message


def test_a_hash_that_is_not_the_specs_hash_is_refused():
    other = SAMPLE.model_copy(update={"job": SAMPLE.job.model_copy(update={"rounds": 50})})
    rule = check(other)
    assert not rule.passed and "is not the hash of the job and compute specs in this request" in rule.message


def test_a_summary_that_differs_from_the_specs_is_refused():
    """The rules read the summary: a hub that shows 5 rounds but binds 50 is caught."""
    rebuilt = SAMPLE.model_copy(update={"rounds": 50})
    rule = check(rebuilt=rebuilt)
    assert not rule.passed and rule.message.startswith("org-b: the request's rounds do not match")


def test_a_request_without_specs_comes_from_an_older_hub():
    rule = check(SAMPLE.model_copy(update={"job": None}))
    assert not rule.passed and "upgrade it" in rule.message


def _real_request() -> AccessRequestSpec:
    job = FederatedJobSpec.model_validate(yaml.safe_load((VALID_DIR / "federatedjob.yaml").read_text())["spec"])
    compute = ComputeSpecSpec.model_validate(yaml.safe_load((VALID_DIR / "computespec.yaml").read_text())["spec"])
    app = load_app("esm2-finetune", "1.0.0")
    code = AppCode(id=app.id, version=app.version, code_digest=app_code_digest(app))
    obj = job_access_request(org="org-b", hub_namespace="org-b", source_namespace="modeller", source_name="run1",
                             source_uid="u-1", consumer_org="modeller", job=job, compute=compute, federation="f",
                             content_hash=job_hash(job, compute, code), app=code)
    return AccessRequestSpec.model_validate(obj["spec"])


def test_the_site_builds_the_app_folder_it_approves_from_its_own_catalog():
    request = _real_request()
    rule, digest = site_content(request, "org-b", "org-b")
    assert rule.passed, rule.message
    # exactly what the orchestrator submits for org-b (whatever the job's metadata and resume say)
    name = job_name_for("modeller", "run1")
    submitted = build_from_api(load_app("esm2-finetune", "1.0.0"), request.job, request.compute, job_name=name,
                               metadata={"uid": "u-1", "attempt": 2},
                               resume={"checkpoint": "/x.safetensors", "startRound": 1, "priorReleases": 2})
    assert digest == app_digest(site_app_files(submitted, name, "org-b"))
    assert digest != app_digest(site_app_files(submitted, name, "org-a"))  # another site's folder


def test_a_site_whose_catalog_differs_refuses(tmp_path, monkeypatch):
    request = _real_request()
    copy = tmp_path / "flare_apps"
    shutil.copytree(catalog_root(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    client = next((copy / "esm2-finetune" / "custom").rglob("*.py"))
    client.write_text(client.read_text() + "\n# one more line\n")
    monkeypatch.setenv(ENV_VAR, str(copy))
    rule, digest = site_content(request, "org-b", "org-b")
    assert not rule.passed and digest is None
    assert "is not the code this site has" in rule.message


@pytest.mark.parametrize("change", [{"version": "9.9.9"}])
def test_a_site_without_the_version_names_it(change):
    request = _real_request()
    request = request.model_copy(update={"app": request.app.model_copy(update=change),
                                         "compute": request.compute.model_copy(update={
                                             "model": request.compute.model.model_copy(update=change)})})
    rule, digest = site_content(request, "org-b", "org-b")
    assert not rule.passed and digest is None
    assert "this site's catalog has no esm2-finetune 9.9.9" in rule.message
