"""Hub and site on separate control planes: the site's gateway connects outbound to the hub with a
credential scoped to its org's namespace there, answers the request from its own cluster's grants,
and runs its NVFlare client; the credential is refused anywhere else on the hub."""

from __future__ import annotations

import pytest
import yaml

from flare_operator.builders.rbac import gateway_hub_role, role_binding
from tests.operator_harness import (
    OperatorProcess,
    apply,
    compute,
    create_org_namespace,
    get,
    grant,
    install_crds,
    operator_config,
    processes_under,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


def test_hub_and_site_on_separate_control_planes(control_plane_factory, tmp_path):
    hub = control_plane_factory.start("mc-hub")
    site = control_plane_factory.start("mc-site-b")
    for cp in (hub, site):
        install_crds(cp)
    for ns in ("modeller", "org-a", "org-b"):
        create_org_namespace(hub, ns, ns)
    create_org_namespace(site, "flare-site", "org-b")

    # The hub admin gives org-b's site a credential for namespace org-b only.
    user = "gateway-org-b"  # (no colons: kubeconfig paths are split on them)
    apply(hub, gateway_hub_role("org-b"), role_binding("org-b", "flare-gateway", user=user))
    scoped = hub.user_kubeconfig(user)

    # org-b's own objects live on its own cluster.
    apply(site, grant("flare-site", "scl-b", "modeller"))

    gateway_cfg = operator_config(tmp_path / "site", [{
        "org": "org-b", "site": "org-b", "namespace": "flare-site", "hubNamespace": "org-b",
        "hubKubeconfig": str(scoped), "runtime": "process", "dataRoots": ["/"]}], mode="gateway")
    hub_cfg = operator_config(tmp_path / "hub", [], mode="orchestrator")
    (tmp_path / "site").mkdir()
    (tmp_path / "hub").mkdir()
    orchestrator = OperatorProcess(hub, tmp_path / "hub", hub_cfg, name="orchestrator").start()
    gateway = OperatorProcess(site, tmp_path / "site", gateway_cfg, name="gateway").start()
    try:
        wait_for(lambda: get(hub, "gateway", "org-b", "org-b"), timeout=60, message="org-b registered on the hub")
        apply(hub, compute("modeller", "esm2", [("org-b", "scl-b")]))
        ready = wait_phase(hub, "computespec", "modeller", "esm2", "Ready", timeout=180)
        assert ready["status"]["sites"][0]["clientReady"] is True
        request = get(hub, "accessrequest", "org-b", "compute-modeller-esm2")
        assert request["status"]["decision"] == "Approved"
        assert any(r["source"] == "DatasetGrant/scl-b" for r in request["status"]["rules"])
        assert processes_under(tmp_path / "site" / "flare"), "org-b's client runs at org-b's site"

        # The site's hub credential works only in its own namespace, only for what a gateway does.
        for args in (("get", "accessrequests", "-n", "org-a"), ("get", "computespecs", "-n", "modeller"),
                     ("get", "secrets", "-n", "modeller"), ("get", "gateways", "-A"),
                     ("delete", "accessrequest", "compute-modeller-esm2", "-n", "org-b"),
                     ("create", "namespace", "sneaky")):
            refused = hub.kubectl(*args, kubeconfig=scoped, check=False)
            assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), (args, refused.stderr)
        assert hub.kubectl("get", "accessrequests", "-n", "org-b", kubeconfig=scoped).returncode == 0

        # Nothing of the hub's spec can change what the site decided: revoke the grant at the site.
        site.kubectl("delete", "datasetgrant", "scl-b", "-n", "flare-site")
        failed = wait_phase(hub, "computespec", "modeller", "esm2", "Failed", timeout=120)
        assert "org-b refused scl-b" in yaml.safe_dump(failed["status"]["conditions"])
        wait_for(lambda: not processes_under(tmp_path / "site" / "flare"), timeout=60, message="org-b's client stopped")
        hub.kubectl("delete", "computespec", "esm2", "-n", "modeller", "--timeout=120s")
    except BaseException:
        print("--- orchestrator\n" + orchestrator.tail(80) + "\n--- gateway\n" + gateway.tail(80))
        raise
    finally:
        orchestrator.stop()
        gateway.stop()
