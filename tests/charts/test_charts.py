"""The Helm charts: lint, every mode rendered and accepted by a real API server (server-side dry
run), the operator's own config model accepting what the chart renders, bad values refused by the
schema naming the value, the CRD chart's upgrade and uninstall, and the generated READMEs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flare_operator.builders.rbac import gateway_hub_role, modeller_cluster_role, org_admin_cluster_role
from flare_operator.config import OperatorConfig
from tests.support.controlplane import bin_dir

pytestmark = pytest.mark.charts

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "charts"
CHART = CHARTS / "flare-operator"
CRDS_CHART = CHARTS / "flare-operator-crds"
NAMESPACE = "flare-system"

# name → --set values: each mode and the main combinations of values.
COMBOS: dict[str, list[str]] = {
    "orchestrator": ["mode=orchestrator"],
    "orchestrator-namespaced-s3": [
        "mode=orchestrator", "orchestrator.namespaces={modeller}", "orchestrator.resultsStore.type=s3",
        "orchestrator.resultsStore.s3.bucket=flare-results", "orchestrator.resultsStore.s3.existingSecret=s3",
        "orchestrator.resultsStore.s3.endpoint=https://s3.example.org"],
    "gateway-remote-hub": ["mode=gateway", "gateway.org=org-b", "gateway.hubCredentials.existingSecret=hub"],
    "gateway-hub-here-no-webhook": [
        "mode=gateway", "gateway.org=org-b", "gateway.namespace=org-b-site", "gateway.webhook.enabled=false",
        "networkPolicy.enabled=false", "metrics.enabled=false"],
    "all": ["mode=all", "gateway.org=org-b"],
}


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory) -> dict:
    """Helm's cache, config and data in a folder of the test's own."""
    home = tmp_path_factory.mktemp("helm")
    return {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data")}


def helm(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(bin_dir() / "helm"), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(env: dict, chart: Path, values: list[str], namespace: str = NAMESPACE) -> list[dict]:
    out = helm(env, "template", "flare", str(chart), "-n", namespace, *(f"--set={v}" for v in values)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def cluster(control_plane_factory):
    """A control plane of this module's own: the CRD chart is installed, upgraded and removed here."""
    cp = control_plane_factory.start("charts")
    for ns in (NAMESPACE, "modeller", "org-b", "org-b-site"):
        cp.kubectl("create", "namespace", ns)
    yield cp
    control_plane_factory.stop("charts")


def test_both_charts_lint_strict(helm_env):
    for values in ([], *COMBOS.values()):
        helm(helm_env, "lint", "--strict", str(CHART), *(f"--set={v}" for v in values))
    helm(helm_env, "lint", "--strict", str(CRDS_CHART))


@pytest.mark.parametrize("combo", COMBOS)
def test_each_mode_renders_a_config_the_operator_accepts(helm_env, combo):
    docs = render(helm_env, CHART, COMBOS[combo])
    (configmap,) = by_kind(docs, "ConfigMap")
    config = OperatorConfig.model_validate(yaml.safe_load(configmap["data"]["config.yaml"]))
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs if "Role" in d["kind"]}
    if config.mode in ("orchestrator", "all"):
        assert ("ClusterRole", None, "flare-flare-operator-orchestrator") in roles
        for ns in config.namespaces:
            assert ("Role", ns, "flare-flare-operator-orchestrator") in roles
        orchestrator = next(d for d in docs if d["metadata"]["name"] == "flare-flare-operator-orchestrator"
                            and d["kind"] == "ClusterRole")
        cluster_wide = {r for rule in orchestrator["rules"] for r in rule["resources"]}
        assert ("computespecs" in cluster_wide) == (not config.namespaces), "namespaced where the values allow"
    if config.mode in ("gateway", "all"):
        (site,) = config.gateways
        assert site.org == "org-b" and ("Role", site.namespace, "flare-flare-operator-gateway") in roles
        hub_role = ("Role", site.hub_namespace, "flare-flare-operator-gateway-hub")
        assert (hub_role in roles) == (site.hub_kubeconfig is None), "hub Role only when the hub is this cluster"
        if site.webhook_port:
            assert site.webhook_service == f"{NAMESPACE}/flare-flare-operator-webhook"
            assert any(d["metadata"]["name"] == "flare-flare-operator-webhook" for d in by_kind(docs, "Service"))
    if config.results_store.type == "s3":
        assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]


@pytest.mark.parametrize("combo", COMBOS)
def test_every_rendered_object_is_accepted_by_the_api_server(helm_env, cluster, combo):
    out = helm(helm_env, "template", "flare", str(CHART), "-n", NAMESPACE,
               *(f"--set={v}" for v in COMBOS[combo])).stdout
    cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=out)


def test_the_service_monitor_renders_when_asked(helm_env):
    docs = render(helm_env, CHART, ["metrics.serviceMonitor.enabled=true"])
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "30s"}]


@pytest.mark.parametrize("values, named", [
    (["mode=hub"], "/mode"),
    (["mode=gateway"], "/gateway/org"),
    (["resyncSeconds=0"], "/resyncSeconds"),
    (["orchestrator.namespaces={Not_A_Namespace}"], "/orchestrator/namespaces/0"),
    (["orchestrator.resultsStore.type=s3"], "/orchestrator/resultsStore/s3/bucket"),
    (["orchestrator.adminRoute=none"], "/orchestrator/adminRoute"),
    (["mode=gateway", "gateway.org=org-b", "gateway.webhook.port=70000"], "/gateway/webhook/port"),
    (["gateway.workspaceSize=lots"], "/gateway/workspaceSize"),
    (["unknownValue=1"], "unknownValue"),
])
def test_bad_values_are_refused_naming_the_value(helm_env, values, named):
    proc = helm(helm_env, "template", "flare", str(CHART), *(f"--set={v}" for v in values), check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert named in proc.stderr, proc.stderr


def test_the_crd_chart_ships_the_generated_crds_kept_on_uninstall(helm_env):
    docs = render(helm_env, CRDS_CHART, [])
    rendered = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    generated = {d["metadata"]["name"]: d for d in (yaml.safe_load(p.read_text()) for p in (REPO / "crds").glob("*.yaml"))}
    assert rendered.keys() == generated.keys() and len(generated) == 7
    for name, crd in rendered.items():
        assert crd["spec"] == generated[name]["spec"], f"{name}: the chart changed the CRD's spec"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_the_user_roles_are_the_ones_the_operator_defines(helm_env):
    docs = {d["metadata"]["name"]: d for d in by_kind(render(helm_env, CRDS_CHART, []), "ClusterRole")}
    for role in (modeller_cluster_role(), org_admin_cluster_role()):
        name = role["metadata"]["name"]
        assert docs[name]["aggregationRule"]["clusterRoleSelectors"] == [
            {"matchLabels": {f"flareop.io/aggregate-to-{name}": "true"}}]
        assert docs[f"{name}-rules"]["rules"] == role["rules"], f"{name}: chart and builders/rbac.py differ"
        assert docs[f"{name}-rules"]["metadata"]["labels"][f"flareop.io/aggregate-to-{name}"] == "true"


def test_the_gateways_hub_role_is_the_one_the_operator_defines(helm_env):
    """A gateway on the hub's own cluster gets what a site's hub credential gets (builders/rbac.py)."""
    docs = render(helm_env, CHART, ["mode=gateway", "gateway.org=org-b"])
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "flare-flare-operator-gateway-hub"]
    assert role["metadata"]["namespace"] == "org-b"
    assert role["rules"] == gateway_hub_role("org-b")["rules"], "chart and builders/rbac.py differ"


def test_chart_readmes_are_generated_from_the_values_comments(tmp_path):
    """helm-docs over a copy: the committed READMEs must be what it writes (`make charts-docs`)."""
    helm_docs = subprocess.run(["bash", str(REPO / "hack" / "charts" / "helm-docs.sh")], capture_output=True,
                               text=True, check=True).stdout.splitlines()[-1]
    copy = tmp_path / "charts"
    shutil.copytree(CHARTS, copy, symlinks=True)
    subprocess.run([helm_docs, "--chart-search-root", str(copy), "--skip-version-footer", "-l", "warning"],
                   check=True, capture_output=True, text=True)
    for chart in ("flare-operator", "flare-operator-crds"):
        assert (copy / chart / "README.md").read_text() == (CHARTS / chart / "README.md").read_text(), (
            f"charts/{chart}/README.md is out of date: run make charts-docs")


def test_helm_upgrade_applies_a_changed_crd_and_uninstall_keeps_crds_and_objects(helm_env, cluster, tmp_path):
    env = {**helm_env, "KUBECONFIG": str(cluster.kubeconfig)}
    helm(env, "install", "flare-crds", str(CRDS_CHART), "--wait")
    crd = "computespecs.flareop.io"
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    sample = REPO / "crds" / "samples" / "computespec.yaml"
    cluster.kubectl("apply", "-n", "modeller", "-f", str(sample))

    # The next version's chart: a CRD with one more printer column.
    changed = tmp_path / "flare-operator-crds"
    shutil.copytree(CRDS_CHART, changed, symlinks=False)
    path = changed / "crd-files" / f"{crd}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["versions"][0].setdefault("additionalPrinterColumns", []).append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.name"})
    path.write_text(yaml.safe_dump(doc))
    helm(env, "upgrade", "flare-crds", str(changed), "--wait")
    served = yaml.safe_load(cluster.kubectl("get", "crd", crd, "-o", "yaml").stdout)
    assert "Upgraded" in [c["name"] for c in served["spec"]["versions"][0]["additionalPrinterColumns"]]

    helm(env, "uninstall", "flare-crds", "--wait")
    assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0, "helm uninstall left the CRD"
    name = yaml.safe_load(sample.read_text())["metadata"]["name"]
    assert cluster.kubectl("get", "computespec", name, "-n", "modeller", check=False).returncode == 0
    assert cluster.kubectl("get", "clusterrole", "flare-modeller", check=False).returncode != 0, (
        "the user roles go with the release (only CRDs are kept)")
