"""`make demo-k8s` is a test: the consortium scenario on a cluster with a real node, the orchestrator and
both orgs' gateways installed with `helm install` from charts/, to the trained model fetched from the
store. On the cluster it leaves running, the chart's promises are then checked for real:

- each operator did its whole part under its own ServiceAccount (no request refused in its log) and
  is refused what it must not do (the apiserver's RBAC, asked as that ServiceAccount);
- `helm upgrade` with a changed value rolls the operator and leaves the running federation's Pods
  alone, and the new operator runs the next job on it;
- `helm uninstall` leaves the CRDs and the users' objects;
- the README's "Install with Helm" commands are the ones the demo ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.sample_data import REPO
from tests.support.kube_fixtures import wait_for

pytestmark = [pytest.mark.node, pytest.mark.timeout(2700)]

OPERATORS = {  # release namespace -> release name (the ServiceAccount is <release>-flare-operator)
    "flare-system": "hub",
    "flare-org-a": "org-a",
    "flare-org-b": "org-b",
}


def sa(namespace: str) -> str:
    return f"system:serviceaccount:{namespace}:{OPERATORS[namespace]}-flare-operator"


class Demo:
    def __init__(self, folder: Path, env: dict):
        self.folder = folder
        self.env = env
        self.bin = Path(subprocess.run(["bash", "hack/controlplane/build.sh"], cwd=REPO, capture_output=True,
                                       text=True, check=True).stdout.split()[-1])

    def run(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=REPO, env=self.env, capture_output=True, text=True, input=input,
                              timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(str(self.bin / "kubectl"), *args, **kw)

    def helm(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(str(self.bin / "helm"), *args, **kw)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pod_ids(self, namespace: str, selector: str) -> dict[str, tuple[str, int]]:
        """name -> (uid, restarts) of the Pods ``selector`` picks."""
        return {p["metadata"]["name"]: (p["metadata"]["uid"],
                                        sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []))
                for p in self.get("pods", "-n", namespace, "-l", selector)["items"]}


@pytest.fixture
def demo(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("make demo-k8s needs root (a real node: namespaces, cgroups, iptables)")
    # The client Pods (uid 10001) read the data from the node: the folder must be readable by others,
    # which pytest's own tmp folders are not.
    folder = Path("/var/tmp") / f"flareop-demo-k8s-{uuid.uuid4().hex[:8]}"
    folder.mkdir(mode=0o755)
    env = {**os.environ, "DEMO_DIR": str(folder), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    d = Demo(folder, env)
    d.env.update(KUBECONFIG=str(folder / "cluster" / "kubeconfig"), KUBECACHEDIR=str(folder / "cluster" / "kube-cache"))
    try:
        yield d
    finally:
        subprocess.run(["bash", "hack/demo-k8s.sh", "down"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
        shutil.rmtree(folder, ignore_errors=True)


def approve(demo: Demo, job: str) -> None:
    """alice@org-b approves ``job``'s current content at org-b (as the demo does)."""
    digest = demo.kubectl("get", "federatedjob", job, "-n", "modeller", "-o", "jsonpath={.status.contentHash}").stdout
    approval = {"apiVersion": "flareop.io/v1alpha1", "kind": "JobApproval",
                "metadata": {"name": job, "namespace": "org-b"},
                "spec": {"job": {"namespace": "modeller", "name": job}, "contentHash": digest,
                         "decision": "Approve", "reason": "reviewed"}}
    demo.kubectl("--kubeconfig", str(demo.folder / "alice.kubeconfig"), "apply", "-f", "-", input=json.dumps(approval))


def phase(demo: Demo, kind: str, name: str) -> str:
    return demo.kubectl("get", kind, name, "-n", "modeller", "-o", "jsonpath={.status.phase}", check=False).stdout


def test_make_demo_k8s_installs_with_helm_and_trains_in_pods(demo):
    run = subprocess.run(["bash", "hack/demo-k8s.sh"], cwd=REPO, env=demo.env, capture_output=True, text=True,
                         timeout=1800)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-8000:]
    for expected in ("Ready   True    2/2", "org-b: Pending - waiting for org-b's admin",
                     "recorded by org-b's webhook: alice@org-b", "Succeeded 8/8", "final  global after round 7",
                     "each checked against its sha256", "STATUS: deployed"):
        assert expected in out, f"{expected!r} missing from the demo's output:\n{out[-8000:]}"
    assert (demo.folder / "accuracy.png").stat().st_size > 10_000
    assert json.loads((demo.folder / "results" / "metrics.json").read_text())["history"][-1]["round"] == 7

    # The README's install section is what the demo ran (the demo prints each such command as written).
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install with Helm", 1)[1].split("\n## ", 1)[0]
    commands = [ln.strip() for ln in re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.S)[0].splitlines()
                if ln.strip().startswith(("helm ", "kubectl "))]
    assert len(commands) >= 5, section
    ran = {ln.strip()[2:] for ln in out.splitlines() if ln.strip().startswith("$ ")}
    assert set(commands) <= ran, f"README commands the demo did not run: {set(commands) - ran}"

    # Each operator did its whole part under its own ServiceAccount: nothing it asked for was refused.
    for namespace in OPERATORS:
        log = demo.kubectl("-n", namespace, "logs", "-l", "app.kubernetes.io/name=flare-operator", "--tail=-1").stdout
        assert log.strip(), f"no log from the operator in {namespace}"
        # (not a log line's milliseconds: "05:48:40,403" is no refusal)
        assert not re.search(r"(?<!,)\b403\b|Forbidden|forbidden", log), f"{namespace}: a request was refused:\n{log[-4000:]}"

    # ... and is refused what it must not do: real requests as each ServiceAccount, and RBAC reviews.
    def refused(namespace: str, *args: str) -> None:
        proc = demo.kubectl("--as", sa(namespace), *args, check=False)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (namespace, args, proc.stdout, proc.stderr)

    def can(namespace: str, verb: str, resource: str, where: str) -> bool:
        proc = demo.kubectl("auth", "can-i", "--as", sa(namespace), verb, resource, *where.split(), check=False)
        return proc.stdout.strip() == "yes"

    refused("flare-org-b", "get", "secrets", "-n", "org-a")             # another site's Secrets
    refused("flare-org-b", "get", "secrets", "-n", "modeller")          # the modeller's (server kits)
    refused("flare-org-b", "get", "datasetgrants", "-n", "org-a")       # another site's grants
    refused("flare-org-b", "get", "accessrequests", "-n", "org-a")      # another org's answers on the hub
    refused("flare-org-b", "get", "secrets", "-n", "kube-system")
    refused("flare-org-a", "get", "jobapprovals", "-n", "org-b")
    refused("flare-system", "get", "datasetgrants", "-n", "org-a")      # the hub never reads site data
    refused("flare-system", "get", "statefulsets", "-n", "org-a")       # nor runs anything at a site
    refused("flare-system", "get", "pods", "-n", "kube-system")
    assert not can("flare-org-b", "create", "statefulsets", "-n org-a")
    assert not can("flare-org-b", "create", "pods", "-n kube-system")
    assert not can("flare-org-b", "create", "namespaces", "")
    assert not can("flare-org-b", "patch", "accessrequests/status", "-n org-a")
    assert not can("flare-system", "create", "statefulsets", "-n default")
    assert not can("flare-system", "update", "datasetgrants/status", "-n org-b")
    # (and what they need, so the refusals above are not a broken identity)
    assert can("flare-org-b", "create", "statefulsets", "-n org-b")
    assert can("flare-org-b", "patch", "accessrequests/status", "-n org-b")
    assert can("flare-system", "create", "statefulsets", "-n modeller")

    # Every Pod ran for real: the operators and the federation on the one real node (there are no kwok nodes).
    everywhere = demo.get("pods", "-A")["items"]
    assert len(everywhere) == 6 and {p["spec"].get("nodeName") for p in everywhere} == {"real-node-0"}, \
        [(p["metadata"]["name"], p["spec"].get("nodeName")) for p in everywhere]

    # helm upgrade with a changed value: the operator rolls, the federation's Pods stay as they were.
    federation = {ns: demo.pod_ids(ns, "app.kubernetes.io/part-of=flare-operator") for ns in ("modeller", "org-a", "org-b")}
    assert all(federation.values()), federation
    operator_before = demo.pod_ids("flare-system", "app.kubernetes.io/name=flare-operator")
    demo.helm("upgrade", "hub", "charts/flare-operator", "-n", "flare-system", "--reuse-values",
              "--set", "resyncSeconds=4", "--wait")
    operator_after = demo.pod_ids("flare-system", "app.kubernetes.io/name=flare-operator")
    assert len(operator_after) == 1 and set(operator_after) != set(operator_before), (operator_before, operator_after)
    config = demo.get("configmap", "-n", "flare-system", "hub-flare-operator")["data"]["config.yaml"]
    assert "resyncSeconds: 4" in config
    # The new operator runs the next job on the same federation (org-b approves it again, by its hash).
    job = demo.get("federatedjob", "esm2-scl-run1", "-n", "modeller")
    run2 = {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob",
            "metadata": {"name": "esm2-scl-run2", "namespace": "modeller"}, "spec": {**job["spec"], "rounds": 2}}
    demo.kubectl("apply", "-f", "-", input=json.dumps(run2))
    wait_for(lambda: phase(demo, "federatedjob", "esm2-scl-run2") == "AwaitingApproval", timeout=120,
             message="run2 waits for org-b")
    approve(demo, "esm2-scl-run2")
    wait_for(lambda: phase(demo, "federatedjob", "esm2-scl-run2") in ("Succeeded", "Failed"), timeout=900,
             interval=2, message="run2 finished")
    status2 = demo.get("federatedjob", "esm2-scl-run2", "-n", "modeller")["status"]
    assert status2["phase"] == "Succeeded" and status2["progress"] == "2/2", status2
    assert {ns: demo.pod_ids(ns, "app.kubernetes.io/part-of=flare-operator") for ns in federation} == federation, \
        "the federation's Pods were replaced or restarted by the operator's upgrade"
    assert phase(demo, "computespec", "esm2-scl") == "Ready"

    # helm uninstall: the operators and their RBAC go; the CRDs and every user object stay.
    for namespace, release in OPERATORS.items():
        demo.helm("uninstall", release, "-n", namespace, "--wait")
    demo.helm("uninstall", "flare-operator-crds", "--wait")
    crds = demo.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=flare-operator", "-o", "name").stdout.split()
    assert len(crds) == 7, crds
    assert demo.kubectl("get", "computespec", "esm2-scl", "-n", "modeller", "-o", "name").stdout.strip()
    assert demo.kubectl("get", "federatedjobs", "-n", "modeller", "-o", "name").stdout.split() == [
        "federatedjob.flareop.io/esm2-scl-run1", "federatedjob.flareop.io/esm2-scl-run2"]
    assert demo.kubectl("get", "datasetgrant", "scl-org-b", "-n", "org-b", "-o", "name").stdout.strip()
    assert not demo.kubectl("get", "deploy", "-A", "-l", "app.kubernetes.io/name=flare-operator", "-o", "name").stdout.strip()
