"""`make demo-multicluster` is a test too: the hub, org-a and org-b on three control planes, each
site's gateway on its own cluster reaching the hub only with its scoped credential, to a trained model."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.operator_harness import processes_under
from tests.sample_data import REPO

pytestmark = pytest.mark.e2e

DEMO = REPO / ".demo-mc"  # the demo's fixed folder (its example configs name paths under it)
MC = REPO / "examples" / "esm2-scl" / "multicluster"


def _server(kubeconfig: Path) -> str:
    return yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]


def _user(kubeconfig: Path) -> str:
    from cryptography import x509

    cert = base64.b64decode(yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["client-certificate-data"])
    return x509.load_pem_x509_certificate(cert).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


def _cmdline(pid_file: Path) -> list[str]:
    return Path(f"/proc/{pid_file.read_text().strip()}/cmdline").read_bytes().decode().split("\0")


def _operator_logs(lines: int = 30) -> str:
    return "".join(f"\n--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                   for log in sorted(DEMO.glob("*/operator.log")))


def _check_credentials(clusters: Path, env: dict) -> None:
    """Each gateway runs against its own cluster and holds, for the hub, only its scoped credential."""
    kubectl = Path(subprocess.run(["bash", "hack/controlplane/build.sh"], cwd=REPO, env=env, capture_output=True,
                                  text=True, check=True).stdout.splitlines()[-1]) / "kubectl"
    hub = _server(clusters / "hub" / "kubeconfig")

    def can(kubeconfig: Path, *args: str) -> str:
        return subprocess.run([str(kubectl), "--kubeconfig", str(kubeconfig), "--cache-dir",
                               str(clusters / "hub" / "kube-cache"), "auth", "can-i", *args],
                              capture_output=True, text=True).stdout.strip()

    for org, other in (("org-a", "org-b"), ("org-b", "org-a")):
        config = yaml.safe_load((MC / f"{org}-gateway.yaml").read_text())
        assert config["mode"] == "gateway"
        scoped = REPO / config["gateways"][0]["hubKubeconfig"]
        assert scoped == DEMO / org / "hub.kubeconfig"
        assert _server(scoped) == hub and _user(scoped) == f"gateway-{org}"
        args = _cmdline(DEMO / org / "operator.pid")
        site_kubeconfig = Path(args[args.index("--kubeconfig") + 1])
        assert site_kubeconfig == clusters / org / "kubeconfig" and _server(site_kubeconfig) != hub, args
        assert str(MC.relative_to(REPO) / f"{org}-gateway.yaml") in args
        # Not cluster-admin on the hub: only what a gateway does, only in its own org's namespace.
        assert can(scoped, "patch", "accessrequests/status", "-n", org) == "yes"
        assert can(scoped, "get", "secrets", "-n", org) == "yes"
        for refused in (("*", "*", "-A"), ("list", "accessrequests", "-n", other), ("get", "secrets", "-n", "modeller"),
                        ("list", "computespecs", "-n", "modeller"), ("create", "namespaces"),
                        ("list", "gateways", "-A")):
            assert can(scoped, *refused) == "no", (org, refused)
    hub_args = _cmdline(DEMO / "hub" / "operator.pid")
    assert Path(hub_args[hub_args.index("--kubeconfig") + 1]) == clusters / "hub" / "kubeconfig"


def test_make_demo_multicluster_runs_the_scenario_across_three_control_planes(tmp_path):
    clusters = tmp_path / "clusters"
    env = {**os.environ, "CLUSTERS_DIR": str(clusters), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        run = subprocess.run(["bash", "hack/demo-multicluster.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=900)
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-6000:] + _operator_logs()
        for expected in ("answer AccessRequests in org-b: yes; read org-a's: no",
                         "reaches the hub only as gateway-org-b", "Ready   True    2/2",
                         "org-b: Pending - waiting for org-b's admin", "recorded by org-b's webhook: alice@org-b",
                         "Succeeded 8/8", "final  global after round 7", "plot: .demo-mc/accuracy.png",
                         "results (sizes and sha256 in the job's status.results): .demo-mc/hub/flare/results/",
                         "-- org-b", "kubectl --kubeconfig", "make demo-multicluster-down"):
            assert expected in out, f"{expected!r} missing from the demo's output:\n{out[-6000:]}"
        assert (DEMO / "accuracy.png").stat().st_size > 10_000
        results = DEMO / "hub" / "flare" / "results" / "modeller" / "esm2-scl-run1"
        assert (results / "metrics.json").stat().st_size > 0
        # Each client ran under its own site's operator, on its own site's data.
        for org in ("org-a", "org-b"):
            site_json = next((DEMO / org / "flare").glob(f"site-{org}/*/{org}/site.json"))
            paths = json.loads(site_json.read_text())["datasets"].values()
            assert paths and all(p.startswith(str(DEMO / org / "data")) for p in paths), paths
        _check_credentials(clusters, env)
    finally:
        down = subprocess.run(["make", "--no-print-directory", "demo-multicluster-down"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not processes_under(DEMO), processes_under(DEMO)
    assert not processes_under(clusters), processes_under(clusters)
