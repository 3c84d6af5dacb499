"""ComputeSpec -> NVFlare workloads with the kubernetes runtime, on a real API server with kwok nodes:
the objects the operator creates (server StatefulSet, Service, NetworkPolicies, a client StatefulSet
per site with GPUs, the dataset read-only, restricted pods), scale to zero and back, an operator
restart that duplicates nothing, and deletion that leaves no orphans on the hub or at the sites."""

from __future__ import annotations

import json
import time

import pytest

from flare_operator.api.access_request import ANNOTATION_KIT
from flare_operator.builders.requests import kit_secret_name
from tests.operator_harness import (
    Consortium,
    OperatorProcess,
    apply,
    compute,
    create_org_namespace,
    free_port,
    gateway_config,
    get,
    grant,
    install_crds,
    job,
    policy,
    reconciles,
    remove_namespaces,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


def _list(cp, kind: str, namespace: str, selector: str = "flareop.io/federation") -> list[dict]:
    return json.loads(cp.kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]


def generations(cp, *namespaces: str) -> dict[str, int]:
    return {f"{ns}/{s['metadata']['name']}": s["metadata"]["generation"]
            for ns in namespaces for s in _list(cp, "statefulsets", ns)}


def _dataset_claim(namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "scl-data", "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


def _kube_grant(namespace: str, dataset: str, consumer: str) -> dict:
    g = grant(namespace, dataset, consumer)
    g["spec"]["dataset"] = {"id": dataset, "persistentVolumeClaim": {"claimName": "scl-data", "subPath": "scl.csv"},
                            "sampleCount": 100}
    return g


@pytest.fixture
def consortium(control_plane):
    install_crds(control_plane)
    c = Consortium()
    for name in ("org-a", "org-b", "modeller"):
        create_org_namespace(control_plane, c.org(name), c.org(name))
        control_plane.kubectl("label", "namespace", c.org(name), "pod-security.kubernetes.io/enforce=restricted")
    yield c
    remove_namespaces(control_plane, *(c.org(name) for name in ("org-a", "org-b", "modeller")))


def test_kubernetes_runtime_objects_scale_restart_and_delete(control_plane, consortium, tmp_path):
    cp, c = control_plane, consortium
    org_a, org_b, modeller = c.org("org-a"), c.org("org-b"), c.modeller
    sites = []
    for org in (org_a, org_b):
        apply(cp, _dataset_claim(org), _kube_grant(org, f"scl-{org}", modeller))
        site = gateway_config(org, org)
        site.update(runtime="kubernetes", nodeSelector={"flareop.io/gpu": "true"} if org == org_b else {},
                    storageClass=None, workspaceSize="2Gi")
        sites.append(site)
    config = {"mode": "all", "runtime": "kubernetes", "adminRoute": "none", "image": "registry.example/flare-runtime:test",
              "resyncSeconds": 2, "settledResyncSeconds": 10, "heartbeatSeconds": 5, "workspaceSize": "3Gi",
              "gateways": sites, "metricsPort": free_port(), "namespaces": [modeller]}
    # kwok's nodes carry no custom label: give one GPU node the label org-b's site schedules onto.
    nodes = json.loads(cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    cp.kubectl("label", "node", nodes[-1]["metadata"]["name"], "flareop.io/gpu=true", "--overwrite")

    op = OperatorProcess(cp, tmp_path, config).start()
    try:
        apply(cp, compute(modeller, "esm2", [(org_a, f"scl-{org_a}"), (org_b, f"scl-{org_b}")]))
        cp.kubectl("patch", "computespec", "esm2", "-n", modeller, "--type=merge",
                   "-p", '{"spec":{"client":{"gpu":2}}}')
        ready = wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=180)
        fed = ready["status"]["project"]
        assert ready["status"]["serverEndpoint"] == f"{fed}-server.{modeller}.svc:8002"

        server = get(cp, "statefulset", modeller, f"{fed}-server")
        pod = server["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert server["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "3Gi"
        assert server["metadata"]["ownerReferences"][0]["kind"] == "ComputeSpec"
        service = get(cp, "service", modeller, f"{fed}-server")
        assert sorted(p["port"] for p in service["spec"]["ports"]) == [8002, 8003]
        assert get(cp, "networkpolicy", modeller, f"{fed}-server") is not None

        for org in (org_a, org_b):
            client = get(cp, "statefulset", org, f"{fed}-{org}")
            spec = client["spec"]["template"]["spec"]
            limits = spec["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == "2" and limits["cpu"] == "1"
            data = next(v for v in spec["volumes"] if v.get("persistentVolumeClaim"))
            assert data["persistentVolumeClaim"] == {"claimName": "scl-data", "readOnly": True}
            mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == data["name"])
            assert mount["readOnly"] is True and mount["subPath"] == "scl.csv"
            assert spec["automountServiceAccountToken"] is False
            assert client["status"]["readyReplicas"] == 1
            assert get(cp, "networkpolicy", org, f"{fed}-{org}") is not None
        assert get(cp, "statefulset", org_b, f"{fed}-{org_b}")["spec"]["template"]["spec"]["nodeSelector"] == {
            "flareop.io/gpu": "true"}

        # An operator restart re-applies everything and changes nothing.
        versions = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
                    for ns in (modeller, org_a, org_b) for kind in ("statefulsets", "services", "secrets",
                                                                    "networkpolicies", "configmaps")
                    for o in _list(cp, kind, ns)}
        sts_generations = generations(cp, modeller, org_a, org_b)
        op.stop()
        op = OperatorProcess(cp, tmp_path, config, name="operator-restarted").start()
        # Let the restarted operator go over everything: the ComputeSpec a few times (resume + timers),
        # each AccessRequest at least once (a settled answer is then left for settledResyncSeconds).
        wait_for(lambda: reconciles(config["metricsPort"], "ComputeSpec") >= 3
                 and reconciles(config["metricsPort"], "AccessRequest") >= 2, timeout=60, message="reconciled")
        wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=120)
        after = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
                 for ns in (modeller, org_a, org_b) for kind in ("statefulsets", "services", "secrets",
                                                                 "networkpolicies", "configmaps")
                 for o in _list(cp, kind, ns)}
        assert after.keys() == versions.keys(), "a restart neither adds nor removes objects"
        changed = [k for k in versions if after[k] != versions[k] and k[0] != "StatefulSet"]
        assert not changed, f"a restart re-keyed or rewrote {changed}"
        # StatefulSets' status moves on its own; their spec (generation) must not.
        assert {k: v for k, v in generations(cp, modeller, org_a, org_b).items()} == sts_generations

        # Scale to zero: GPUs released, workspaces kept; and back.
        cp.kubectl("patch", "computespec", "esm2", "-n", modeller, "--type=merge", "-p", '{"spec":{"active":false}}')
        wait_phase(cp, "computespec", modeller, "esm2", "Deactivated", timeout=120)
        for ns, name in ((modeller, f"{fed}-server"), (org_a, f"{fed}-{org_a}"), (org_b, f"{fed}-{org_b}")):
            wait_for(lambda ns=ns, name=name: get(cp, "statefulset", ns, name)["spec"]["replicas"] == 0,
                     timeout=60, message=f"{name} scaled to zero")
        wait_for(lambda: not _list(cp, "pods", org_a, "app.kubernetes.io/component=client"), timeout=60,
                 message="client pods gone")
        assert _list(cp, "persistentvolumeclaims", modeller), "the server's workspace survives scale to zero"
        cp.kubectl("patch", "computespec", "esm2", "-n", modeller, "--type=merge", "-p", '{"spec":{"active":true}}')
        wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=180)

        # A workload deleted behind the operator's back comes back, though each side applies an
        # unchanged workload only every settledResyncSeconds: the pass that finds it gone applies it.
        gone = {modeller: f"{fed}-server", org_a: f"{fed}-{org_a}"}
        uids = {ns: get(cp, "statefulset", ns, name)["metadata"]["uid"] for ns, name in gone.items()}
        for ns, name in gone.items():
            cp.kubectl("delete", "statefulset", name, "-n", ns, "--wait=true")
        for ns, name in gone.items():
            wait_for(lambda ns=ns, name=name: (get(cp, "statefulset", ns, name) or {}).get("metadata", {}).get("uid")
                     not in (None, uids[ns]), timeout=90, message=f"{name} applied again")
        wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=120)

        # A kit the hub never handed over (no kit annotation on its request: a pass that failed or was
        # killed between the CA state and the kits) is handed over on the next pass.
        request = f"compute-{modeller}-esm2"
        cp.kubectl("annotate", "accessrequest", request, "-n", org_a, f"{ANNOTATION_KIT}-")
        cp.kubectl("delete", "secret", kit_secret_name(request), "-n", org_a)
        wait_for(lambda: get(cp, "secret", org_a, kit_secret_name(request)) is not None
                 and (get(cp, "accessrequest", org_a, request)["metadata"].get("annotations") or {}).get(ANNOTATION_KIT),
                 timeout=60, message="the kit handed over again")
        wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=120)

        # Delete: nothing the ComputeSpec created is left anywhere.
        cp.kubectl("delete", "computespec", "esm2", "-n", modeller, "--timeout=120s")
        for ns in (modeller, org_a, org_b):
            for kind in ("statefulsets", "services", "secrets", "networkpolicies", "configmaps", "accessrequests"):
                wait_for(lambda ns=ns, kind=kind: not _list(cp, kind, ns), timeout=60,
                         message=f"no {kind} left in {ns}")
    except BaseException:
        print(op.tail(150))
        raise
    finally:
        op.stop()


SLOW_RESYNC = 600


def _slow_resync_operator(cp, c: Consortium, tmp_path) -> OperatorProcess:
    """org-a and org-b with a dataset each (Automatic policies) and one operator (mode all, kubernetes
    runtime) whose passes run on events only within a test's timeouts: resyncSeconds 600."""
    org_a, org_b, modeller = c.org("org-a"), c.org("org-b"), c.org("modeller")
    sites = []
    for org in (org_a, org_b):
        apply(cp, _dataset_claim(org), _kube_grant(org, f"scl-{org}", modeller), policy(org, "Automatic"))
        sites.append(dict(gateway_config(org, org), runtime="kubernetes", storageClass=None, workspaceSize="1Gi"))
    config = {"mode": "all", "runtime": "kubernetes", "adminRoute": "none", "image": "registry.example/flare-runtime:test",
              "resyncSeconds": SLOW_RESYNC, "heartbeatSeconds": 5, "gateways": sites, "namespaces": [modeller]}
    op = OperatorProcess(cp, tmp_path, config).start()
    wait_for(lambda: "orchestrator (AccessRequest answers)" in op.log_path.read_text(), timeout=60,
             message="the operator is up")
    return op


def test_the_sites_start_their_clients_when_their_kits_are_written_not_at_a_resync(control_plane, consortium, tmp_path):
    """Every step from a ComputeSpec to its client StatefulSets is event-driven: the sites answer
    their requests on create, the hub reconciles on their answers (AnswerWatch), provisions, and
    marks each request with its kit's digest (builders/requests.py ANNOTATION_KIT), on which each
    site converges its client; its client's StatefulSet and Pod events report it running. With a
    600 s resync, a site that waited for its timer to find its kit or its client's readiness would
    not get there within this test's timeouts. Not timed: the resync is what it tells apart."""
    cp, c = control_plane, consortium
    org_a, org_b, modeller = c.org("org-a"), c.org("org-b"), c.org("modeller")
    op = _slow_resync_operator(cp, c, tmp_path)
    try:
        apply(cp, compute(modeller, "esm2", [(org_a, f"scl-{org_a}"), (org_b, f"scl-{org_b}")]))
        project = wait_for(lambda: ((get(cp, "computespec", modeller, "esm2") or {}).get("status") or {}).get("project"),
                           timeout=60, message="provisioned")
        for org in (org_a, org_b):
            wait_for(lambda org=org: get(cp, "statefulset", org, f"{project}-{org}"), timeout=120,
                     message=f"{org}'s client StatefulSet (resync 600 s)")
            request = get(cp, "accessrequest", org, f"compute-{modeller}-esm2")
            assert request["metadata"]["annotations"].get("flareop.io/kit"), request["metadata"]
        # Each client's StatefulSet and Pod becoming ready are events at its site, which reports the
        # client running at once; the hub sees every client running and the ComputeSpec is Ready.
        wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=120)
        for org in (org_a, org_b):
            assert get(cp, "accessrequest", org, f"compute-{modeller}-esm2")["status"]["clientReady"] is True
    except BaseException:
        print(op.tail(80))
        raise
    finally:
        op.stop()


def test_a_job_applied_before_its_computespec_is_reconciled_when_the_computespec_changes_phase(
        control_plane, consortium, tmp_path):
    """An apply of a whole folder may create the FederatedJob before its ComputeSpec: the job's first
    pass finds no ComputeSpec, asks nobody and waits in Pending (it used to fail). Each phase change of the ComputeSpec reconciles the jobs
    that run on it (handlers/registry.py jobs_of_compute_changed): the job's AccessRequests are written
    as soon as the ComputeSpec exists, and the job reaches its submission pass once the federation is
    Ready (adminRoute none: Queued, ServerUnreachable — the FLARE API session is the only step left).
    With a 600 s resync nothing else would reconcile the job within this test. Not timed."""
    cp, c = control_plane, consortium
    org_a, org_b, modeller = c.org("org-a"), c.org("org-b"), c.org("modeller")
    op = _slow_resync_operator(cp, c, tmp_path)
    try:
        apply(cp, job(modeller, "run1", epsilon=None))
        waiting = wait_phase(cp, "federatedjob", modeller, "run1", "Pending", timeout=60)  # not Failed
        assert "does not exist" in _ready_message(waiting), waiting["status"]
        time.sleep(3)  # past the job's first timer pass (initial delay 1 s): the next one is SLOW_RESYNC away
        apply(cp, compute(modeller, "esm2", [(org_a, f"scl-{org_a}"), (org_b, f"scl-{org_b}")]))
        for org in (org_a, org_b):
            wait_for(lambda org=org: get(cp, "accessrequest", org, f"job-{modeller}-run1"), timeout=60,
                     message=f"the job's AccessRequest to {org}, written when the ComputeSpec changed phase")
        wait_phase(cp, "computespec", modeller, "esm2", "Ready", timeout=120)
        queued = wait_phase(cp, "federatedjob", modeller, "run1", "Queued", timeout=60)
        assert {a["org"]: a["decision"] for a in queued["status"]["approvals"]} == {org_a: "Approved", org_b: "Approved"}
        assert "ServerUnreachable" in str(queued["status"]["conditions"]), queued["status"]
    except BaseException:
        print(op.tail(80))
        for kind, name in (("federatedjob", "run1"), ("computespec", "esm2")):
            print(kind, json.dumps((get(cp, kind, modeller, name) or {}).get("status"), indent=1))
        raise
    finally:
        op.stop()


def _ready_message(obj: dict | None) -> str:
    return next((c.get("message") or "" for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c.get("type") == "Ready"), "")
