"""A FederatedJob runs for real: ComputeSpec + grants + policies + job on a real API server, the
operator (process runtime) submits it to the real NVFlare federation it provisioned, the clients
train tiny ESM on each org's own generated data, and the results land with their sha256."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import BASE_PARAMS
from tests.operator_harness import apply, automatic_federation, get, wait_phase
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e


def test_an_approved_job_trains_on_the_federation_and_stores_results(control_plane, e2e_data, tmp_path):
    cp = control_plane
    paths = [s["path"] for s in e2e_data["sites"].values()]
    with automatic_federation(cp, e2e_data, tmp_path) as fed:
        (a, b), m = fed.orgs, fed.modeller
        job = {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": "run1", "namespace": m},
               "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 2,
                        "parameters": {**BASE_PARAMS, "localSteps": 5},
                        "privacy": {"differentialPrivacy": {"enabled": True, "epsilon": 20}},
                        "activeDeadlineSeconds": 900}}
        apply(cp, job)
        done = wait_phase(cp, "federatedjob", m, "run1", "Succeeded", timeout=420)
        status = done["status"]
        assert status["attempts"] == 1 and status["nvflareJobId"]
        assert status["progress"] == "2/2" and status["currentRound"] == 2
        assert {s["site"] for s in status["siteMetrics"]} == {a, b}
        for site in status["siteMetrics"]:
            assert 0 < site["epsilonSpent"] <= 20, "each site's epsilon is reported, within the target"
            assert 0.0 <= site["metrics"]["val_accuracy"] <= 1.0
        assert "val_accuracy" in status["globalMetrics"]
        conditions = {x["type"]: x["status"] for x in status["conditions"]}
        assert conditions["Complete"] == "True" and conditions["Ready"] == "True"

        results = status["results"]
        names = {f["name"] for f in results["files"]}
        assert {"metrics.json", "MODEL_CARD.md", "logs/server-log.txt", f"logs/{a}-log.txt", f"logs/{b}-log.txt"} <= names
        assert any(n.startswith("model/") and n.endswith(".safetensors") for n in names)
        for f in results["files"]:
            data = (Path(results["location"]) / f["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"], f["name"]
        metrics = json.loads((Path(results["location"]) / "metrics.json").read_text())
        assert metrics["status"] == "completed" and len(metrics["history"]) == 2
        assert metrics["job"]["metadata"]["uid"] == done["metadata"]["uid"]
        assert metrics["job"]["metadata"]["contentHash"] == status["contentHash"]
        # Each site turns its reservation into the epsilon its client's accountant reported.
        for org, grant_name in ((a, "scl-a"), (b, "scl-b")):
            reported = next(s["epsilonSpent"] for s in status["siteMetrics"] if s["site"] == org)
            ledger = wait_for(lambda org=org, g=grant_name: (get(cp, "datasetgrant", org, g).get("status") or {})
                              if (get(cp, "datasetgrant", org, g).get("status") or {}).get("epsilonSpent") else None,
                              timeout=60, message=f"{org}'s ledger records the spend")
            assert ledger["epsilonSpent"] == pytest.approx(reported) and ledger["epsilonReserved"] == 0
            assert ledger["ledger"][0]["spent"] is True
            # ... from its own client's record (DP-SGD, the default level): the events it composes with
            # later jobs (one job alone: what it used is what it spent)
            entry = ledger["ledger"][0]
            assert entry["delta"] == 1e-5 and [e["mechanism"] for e in entry["events"]] == ["PoissonGaussian"]
            assert entry["events"][0]["count"] == 2 * 5 and ledger["epsilonUsed"] == pytest.approx(reported)
        # The hub never learnt where the data is: the job named it by reference.
        request = get(cp, "accessrequest", a, f"job-{m}-run1")
        assert str(paths[0]) not in json.dumps(request) and str(paths[0]) not in json.dumps(done)


def test_a_site_with_two_datasets_in_the_compute_spec_trains_on_both(control_plane, e2e_data, tmp_path):
    """org-b grants its data as two datasets and the ComputeSpec names both: its client reads both
    (each by reference, resolved at the site) and trains on their union."""
    with open(e2e_data["sites"]["site-2"]["path"], newline="") as f:
        rows = list(csv.DictReader(f))
    halves = {"scl-b1": rows[: len(rows) // 2], "scl-b2": rows[len(rows) // 2 :]}
    files = {}
    for dataset, part in halves.items():
        files[dataset] = tmp_path / f"{dataset}.csv"
        with open(files[dataset], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(part)
    (tmp_path / "fed").mkdir()
    with automatic_federation(control_plane, e2e_data, tmp_path / "fed", org_b_datasets=files) as fed:
        b, m = fed.orgs[1], fed.modeller
        apply(control_plane, {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob",
                              "metadata": {"name": "both", "namespace": m},
                              "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 1,
                                       "parameters": {**BASE_PARAMS, "localSteps": 2}}})
        done = wait_phase(control_plane, "federatedjob", m, "both", "Succeeded", timeout=300)
        metrics = json.loads((Path(done["status"]["results"]["location"]) / "metrics.json").read_text())
        trained = metrics["history"][0]["sites"][b]
        assert trained["train_samples"] == sum(r["split"] == "train" for r in rows), trained
        assert trained["val_samples"] == sum(r["split"] == "val" for r in rows), trained
        request = get(control_plane, "accessrequest", b, f"job-{m}-both")
        assert sorted(request["spec"]["datasets"]) == ["scl-b1", "scl-b2"], request["spec"]
