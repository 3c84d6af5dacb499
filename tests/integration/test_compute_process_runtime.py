"""ComputeSpec -> a running NVFlare federation with the process runtime, on a real API server:
the orchestrator and two gateways (one operator process, single-cluster), real provisioning, a real
NVFlare server and two real clients connected per the FLARE API."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.operator_harness import (
    Consortium,
    apply,
    compute,
    create_org_namespace,
    gateway_config,
    get,
    grant,
    install_crds,
    operator_config,
    processes_under,
    remove_namespaces,
    running_operator,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def consortium(control_plane):
    install_crds(control_plane)
    c = Consortium()
    for name in ("org-a", "org-b", "modeller"):
        create_org_namespace(control_plane, c.org(name), c.org(name))
    yield c
    remove_namespaces(control_plane, *(c.org(name) for name in ("org-a", "org-b", "modeller")))


def test_compute_spec_runs_a_federation_and_cleans_up(control_plane, consortium, tmp_path):
    cp, c = control_plane, consortium
    org_a, org_b, modeller = c.org("org-a"), c.org("org-b"), c.modeller
    apply(cp, grant(org_a, "scl-a", modeller), grant(org_b, "scl-b", modeller))
    config = operator_config(tmp_path, [gateway_config(org_a, org_a), gateway_config(org_b, org_b)],
                             namespaces=[modeller])
    workdir = tmp_path / "flare"
    with running_operator(cp, tmp_path, config) as op:
        wait_for(lambda: get(cp, "gateway", org_b, org_b), timeout=60, message="gateways registered")
        gw = get(cp, "gateway", org_a, org_a)
        assert [d["id"] for d in gw["spec"]["datasets"]] == ["scl-a"]
        assert "path" not in json.dumps(gw["spec"]), "a Gateway publishes no dataset path"

        apply(cp, compute(modeller, "esm2", [(org_a, "scl-a"), (org_b, "scl-b")]))
        try:
            ready = wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=180)
        except AssertionError:
            print(op.tail())
            raise
        status = ready["status"]
        assert status["readyClients"] == "2/2"
        assert {s["org"]: (s["decision"], s["clientReady"]) for s in status["sites"]} == {
            org_a: ("Approved", True), org_b: ("Approved", True)}
        assert {cond["type"]: cond["status"] for cond in status["conditions"]} == {
            "DatasetsGranted": "True", "Provisioned": "True", "ServerReady": "True", "ClientsReady": "True",
            "Ready": "True"}
        assert status["serverEndpoint"].startswith("localhost:")
        # Each org's request sits in its own hub namespace, answered by its own gateway.
        for org in (org_a, org_b):
            req = get(cp, "accessrequest", org, f"compute-{modeller}-esm2")
            assert req["status"]["decision"] == "Approved" and req["spec"]["consumerOrg"] == modeller
        assert len(processes_under(workdir)) >= 3, "server and two clients run as processes"
        ca_before = get(cp, "secret", modeller, f"{status['project']}-ca")["data"]["cert.json"]

        # A client that crashes is restarted by the site's supervisor and reconnects.
        def client_pids():
            return {int(p.split(":")[0]) for p in processes_under(workdir)
                    if "client_train" in p and f"uid={org_a}" in p}

        (crashed,) = client_pids()
        os.kill(crashed, signal.SIGKILL)
        wait_for(lambda: client_pids() - {crashed}, timeout=60, message="org-a's client restarted")
        wait_for(lambda: get(cp, "accessrequest", org_a, f"compute-{modeller}-esm2")["status"].get("clientReady"),
                 timeout=60, message="org-a reports its client running again")
        wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=120)

        # Deactivate: everything stops, identities stay.
        cp.kubectl("patch", "computespec", "esm2", "-n", modeller, "--type=merge", "-p", '{"spec":{"active":false}}')
        wait_phase(cp, "computespec", modeller, "esm2", "Deactivated", timeout=120)
        wait_for(lambda: not processes_under(workdir), timeout=60, message="participants stopped")

        # Reactivate: same CA, same kits, the federation comes back.
        cp.kubectl("patch", "computespec", "esm2", "-n", modeller, "--type=merge", "-p", '{"spec":{"active":true}}')
        wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=180)
        assert get(cp, "secret", modeller, f"{status['project']}-ca")["data"]["cert.json"] == ca_before

        # Delete: finalizers clean up the hub and both sites; nothing is left running.
        cp.kubectl("delete", "computespec", "esm2", "-n", modeller, "--timeout=120s")
        for org in (org_a, org_b):
            assert get(cp, "accessrequest", org, f"compute-{modeller}-esm2") is None
            assert not json.loads(cp.kubectl("get", "secrets", "-n", org, "-l", "flareop.io/federation",
                                             "-o", "json").stdout)["items"]
        wait_for(lambda: not processes_under(workdir), timeout=60, message="no participant left running")


def test_a_site_that_does_not_grant_runs_nothing(control_plane, consortium, tmp_path):
    cp, c = control_plane, consortium
    org_a, org_b, modeller = c.org("org-a"), c.org("org-b"), c.modeller
    apply(cp, grant(org_a, "scl-a", modeller), grant(org_b, "scl-b", "someone-else"))
    config = operator_config(tmp_path, [gateway_config(org_a, org_a), gateway_config(org_b, org_b)],
                             namespaces=[modeller])
    with running_operator(cp, tmp_path, config):
        wait_for(lambda: get(cp, "gateway", org_b, org_b), timeout=60, message="gateways registered")
        apply(cp, compute(modeller, "esm2", [(org_a, "scl-a"), (org_b, "scl-b")]))
        failed = wait_phase(cp, "computespec", modeller, "esm2", "Failed", timeout=120)
        granted = next(x for x in failed["status"]["conditions"] if x["type"] == "DatasetsGranted")
        assert granted["reason"] == "DatasetDenied"
        assert f"{org_b} refused scl-b" in granted["message"] and modeller in granted["message"]
        assert not processes_under(tmp_path / "flare"), "nothing runs while an org refuses"
        assert not json.loads(cp.kubectl("get", "secrets", "-n", modeller, "-l", "flareop.io/federation",
                                         "-o", "json").stdout)["items"], "nothing is provisioned"
        cp.kubectl("delete", "computespec", "esm2", "-n", modeller, "--timeout=60s")
