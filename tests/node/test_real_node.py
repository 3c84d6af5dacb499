"""Pods on a real node: `flarecp cluster up --real-nodes 1` runs kubelet, containerd (Debian's runc
and CNI plugins), kube-proxy and CoreDNS, and the project's images (`make images`) are loaded
into it. Every pod here runs under the restricted Pod Security Standard, which the namespace
enforces (the apiserver refuses anything less)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.support.controlplane import ControlPlane, flarecp
from tests.support.kube_fixtures import wait_for

pytestmark = [pytest.mark.node, pytest.mark.timeout(1800)]

RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def pod_manifest(name: str, image: str, command: list[str], **extra) -> dict:
    """A restricted pod: the image's own non-root user, read-only root, an emptyDir on /tmp."""
    container = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",  # imported into the node; there is no registry
        "command": command,
        "env": [{"name": "HOME", "value": "/tmp"}, *extra.pop("env", [])],
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *extra.pop("volumeMounts", [])],
    }
    for key in ("resources", "ports", "readinessProbe"):
        if key in extra:
            container[key] = extra.pop(key)
    spec = {
        # kwok nodes may sit beside the real one (side-by-side test): pods here must run for real.
        "nodeSelector": {"flarecp.io/real-node": "true"},
        "restartPolicy": extra.pop("restartPolicy", "Never"),
        "securityContext": RESTRICTED_POD,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *extra.pop("volumes", [])],
        "terminationGracePeriodSeconds": 2,
    }
    labels = extra.pop("labels", {})
    assert not extra, f"unknown pod fields {sorted(extra)}"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


def apply(cp: ControlPlane, ns: str, *objects: dict) -> None:
    cp.kubectl(
        "-n",
        ns,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def pod(cp: ControlPlane, ns: str, name: str) -> dict:
    return json.loads(cp.kubectl("-n", ns, "get", "pod", name, "-o", "json").stdout)


NEVER_STARTS = {"ErrImageNeverPull", "InvalidImageName"}
"""Waiting reasons that no wait clears on an offline node: fail at once, not after the timeout."""


def wait_phase(cp: ControlPlane, ns: str, name: str, phases: set[str], timeout: float = 300) -> dict:
    def done():
        p = pod(cp, ns, name)
        phase = p["status"].get("phase")
        if phase in {"Succeeded", "Failed"} - phases:
            raise AssertionError(f"pod {name} ended {phase}:\n{logs(cp, ns, name)}\n{describe(cp, ns, name)}")
        for cs in p["status"].get("containerStatuses") or []:
            if (cs.get("state") or {}).get("waiting", {}).get("reason") in NEVER_STARTS:
                raise AssertionError(f"pod {name} can never start:\n{describe(cp, ns, name)}\n{cp.diagnostics(15)}")
        return p if phase in phases else None

    try:
        return wait_for(done, timeout=timeout, interval=0.5, message=f"pod {ns}/{name} in {phases}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{describe(cp, ns, name)}\n{cp.diagnostics(15)}") from None


def logs(cp: ControlPlane, ns: str, name: str) -> str:
    return cp.kubectl("-n", ns, "logs", name, check=False).stdout


def describe(cp: ControlPlane, ns: str, name: str) -> str:
    return cp.kubectl("-n", ns, "describe", "pod", name, check=False).stdout


def run_to_completion(cp: ControlPlane, ns: str, manifest: dict, timeout: float = 300) -> str:
    """Create the pod, wait until it Succeeded, return its log (through kubectl logs)."""
    apply(cp, ns, manifest)
    name = manifest["metadata"]["name"]
    p = wait_phase(cp, ns, name, {"Succeeded"}, timeout)
    assert p["spec"]["nodeName"] == "real-node-0"
    return logs(cp, ns, name)


# -- the images ------------------------------------------------------------------------------


def test_operator_image_runs_restricted_as_its_non_root_user(
    real_node_cluster, real_node_namespace, real_node_images
):
    script = textwrap.dedent(
        """
        import importlib.util, json, os
        import kopf, kubernetes, nvflare, flare_operator.cli
        from nvflare.lighter import provision
        try:
            open("/probe", "w")
            rootfs = "writable"
        except OSError as exc:
            rootfs = type(exc).__name__
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "rootfs": rootfs,
                          "torch": importlib.util.find_spec("torch") is not None,
                          "caps": open("/proc/self/status").read().split("CapEff:")[1].split()[0]}))
        """
    )
    out = run_to_completion(
        real_node_cluster,
        real_node_namespace,
        pod_manifest("operator", real_node_images.operator_ref, ["python3", "-c", script]),
    )
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts == {
        "uid": 10001,
        "gid": 10001,
        "rootfs": "OSError",
        "torch": False,
        "caps": "0000000000000000",
    }
    # The image's entrypoint is the operator's CLI.
    help_out = run_to_completion(
        real_node_cluster,
        real_node_namespace,
        pod_manifest("operator-cli", real_node_images.operator_ref, ["flare-operator", "--help"]),
    )
    assert "run" in help_out and "crds" in help_out


def test_runtime_image_trains_one_step_of_the_tiny_esm2_model(
    real_node_cluster, real_node_namespace, real_node_images
):
    # The same path the NVFlare client takes: the esm2-finetune catalog app from FLARE_APPS_DIR,
    # its SiteTrainer on generated data, one optimizer step of the tiny preset on the CPU.
    script = textwrap.dedent(
        """
        import json, os, sys
        apps = os.environ["FLARE_APPS_DIR"]
        sys.path[:0] = [apps + "/esm2-finetune/custom", apps + "/_shared"]
        import numpy as np, nvflare, torch, transformers, peft, dp_accounting
        from esm2_app.site import SiteTrainer
        from flare_operator.catalog import load_app, validate_params
        from flare_operator.datagen import GeneratorConfig, write_dataset

        data = write_dataset(GeneratorConfig(sites=1, samples_per_site=40, min_len=30, max_len=40, seed=0), "/tmp/data")
        p = validate_params(load_app("esm2-finetune"),
                            {"maxSeqLength": 48, "batchSize": 8, "localSteps": 1, "torchThreads": 1})
        t = SiteTrainer(p, data["sites"]["site-1"]["path"], "site-1")
        before = t.get_params()
        stats = t.train_round(0, 1)
        after = t.get_params()
        changed = sum(int(not np.array_equal(before[k], after[k])) for k in before)
        print(json.dumps({"uid": os.getuid(), "nvflare": nvflare.__version__, "torch": torch.__version__,
                          "cuda": torch.cuda.is_available(), "steps": stats["steps"],
                          "loss": stats["train_loss"], "changed": changed, "tensors": len(before)}))
        """
    )
    out = run_to_completion(
        real_node_cluster,
        real_node_namespace,
        pod_manifest(
            "runtime",
            real_node_images.runtime_ref,
            ["python3", "-c", script],
            resources={"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "3Gi"}},
        ),
        timeout=600,
    )
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts["uid"] == 10001 and facts["nvflare"].startswith("2.") and facts["steps"] == 1
    assert facts["loss"] > 0 and facts["changed"] > 0, facts
    assert facts["cuda"] is False  # no GPU behind this node: the same image falls back to the CPU


# -- networking --------------------------------------------------------------------------------

WEB = textwrap.dedent(
    """
    import http.server, os
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ("hello from " + os.environ["POD_NAME"]).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
    """
)


def test_service_reaches_a_pod_by_cluster_ip_and_by_dns_name(
    real_node_cluster, real_node_namespace, real_node_images
):
    cp, ns, image = real_node_cluster, real_node_namespace, real_node_images.operator_ref
    web = pod_manifest(
        "web",
        image,
        ["python3", "-c", WEB],
        env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        labels={"app": "web"},
        restartPolicy="Always",
        ports=[{"containerPort": 8080}],
        readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    )
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    apply(cp, ns, web, svc)
    wait_for(
        lambda: (
            pod(cp, ns, "web")["status"].get("conditions")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod(cp, ns, "web")["status"]["conditions"]
            )
        ),
        timeout=180,
        message="pod web Ready",
    )
    cluster_ip = json.loads(cp.kubectl("-n", ns, "get", "svc", "web", "-o", "json").stdout)["spec"][
        "clusterIP"
    ]
    fetch = textwrap.dedent(
        f"""
        import socket, time, urllib.request
        # kube-proxy programs a new Service's rules after the endpoint is ready (its own sync, slower on a
        # loaded node): keep asking for a while; a Service that never works still fails the test.
        deadline = time.monotonic() + 120
        for url in ["http://{cluster_ip}/", "http://web.{ns}.svc.cluster.local/", "http://web/"]:
            while True:
                try:
                    print(url, urllib.request.urlopen(url, timeout=10).read().decode(), flush=True)
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise
                    print(url, "not yet:", e, flush=True)
                    time.sleep(2)
        print("resolved", socket.gethostbyname("web.{ns}.svc.cluster.local"))
        print("resolved", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
        """
    )
    out = run_to_completion(cp, ns, pod_manifest("client", image, ["python3", "-c", fetch]))
    assert f"http://{cluster_ip}/ hello from web" in out
    assert f"http://web.{ns}.svc.cluster.local/ hello from web" in out
    assert "http://web/ hello from web" in out  # the pod's search path
    assert f"resolved {cluster_ip}" in out and "resolved 10.96.0.1" in out
    # CoreDNS reads what it serves and nothing else (its own identity, not the admin's).
    coredns = real_node_cluster.dir / "node" / "coredns.kubeconfig"
    can = [
        cp.kubectl("auth", "can-i", *q, kubeconfig=coredns, check=False).stdout.strip()
        for q in (
            ["watch", "endpointslices.discovery.k8s.io", "-A"],
            ["list", "services", "-A"],
            ["get", "secrets", "-A"],
        )
    ]
    assert can == ["yes", "yes", "no"]
    # kubectl exec through the apiserver and the kubelet's streaming server.
    exec_out = cp.kubectl(
        "-n", ns, "exec", "web", "--", "python3", "-c", "import os; print('exec as', os.getuid())"
    )
    assert exec_out.stdout.strip() == "exec as 10001"


def test_pods_reach_the_apiserver_through_the_kubernetes_service(
    real_node_cluster, real_node_namespace, real_node_images
):
    # In-cluster config, the way the operator's pod talks to the apiserver: the `kubernetes`
    # Service, the ServiceAccount token and the cluster CA mounted by kubelet.
    script = textwrap.dedent(
        """
        from kubernetes import client, config
        config.load_incluster_config()
        try:
            client.CoreV1Api().list_namespaced_pod("kube-system")
        except client.ApiException as exc:
            print("status", exc.status)
        """
    )
    out = run_to_completion(
        real_node_cluster,
        real_node_namespace,
        pod_manifest("incluster", real_node_images.operator_ref, ["python3", "-c", script]),
    )
    # Authenticated as the namespace's default ServiceAccount, which RBAC does not let list pods.
    assert "status 403" in out, out


# -- storage ----------------------------------------------------------------------------------


def test_a_volume_written_by_one_pod_is_read_back_by_the_next(
    real_node_cluster, real_node_namespace, real_node_images
):
    cp, ns, image = real_node_cluster, real_node_namespace, real_node_images.operator_ref
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "work"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Mi"}}},
    }
    apply(cp, ns, claim)
    token = uuid.uuid4().hex
    volume = {"volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "work"}}]}
    mount = {"volumeMounts": [{"name": "work", "mountPath": "/work"}]}
    write = f"import os; open('/work/token', 'w').write('{token}'); print('wrote as', os.getuid())"
    out = run_to_completion(
        cp, ns, pod_manifest("writer", image, ["python3", "-c", write], **volume, **mount)
    )
    assert "wrote as 10001" in out
    cp.kubectl("-n", ns, "delete", "pod", "writer", "--wait=true")
    read = "print('read', open('/work/token').read())"
    out = run_to_completion(cp, ns, pod_manifest("reader", image, ["python3", "-c", read], **volume, **mount))
    assert f"read {token}" in out
    pvc = json.loads(cp.kubectl("-n", ns, "get", "pvc", "work", "-o", "json").stdout)
    assert pvc["spec"]["storageClassName"] == "flarecp-local"  # the default class with a real node
    pv = json.loads(cp.kubectl("get", "pv", pvc["spec"]["volumeName"], "-o", "json").stdout)
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["real-node-0"]
    # Deleting the claim deletes the volume and its directory (reclaim policy Delete).
    path = Path(pv["spec"]["hostPath"]["path"])
    assert (path / "token").read_text() == token
    cp.kubectl("-n", ns, "delete", "pod", "reader", "--wait=true")
    cp.kubectl("-n", ns, "delete", "pvc", "work", "--wait=true")
    wait_for(lambda: not path.exists() and not cp.kubectl("get", "pv", pv["metadata"]["name"], check=False).stdout,
             timeout=60, message="the released volume deleted")  # fmt: skip


# -- GPUs ---------------------------------------------------------------------------------------


def test_a_gpu_request_is_scheduled_on_the_real_node(
    real_node_cluster, real_node_namespace, real_node_images
):
    cp, ns, image = real_node_cluster, real_node_namespace, real_node_images.operator_ref
    node = json.loads(cp.kubectl("get", "node", "real-node-0", "-o", "json").stdout)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    gpu = {"limits": {"nvidia.com/gpu": "1"}}
    out = run_to_completion(
        cp, ns, pod_manifest("one-gpu", image, ["python3", "-c", "print('ran')"], resources=gpu)
    )
    assert out.strip() == "ran"
    # More than the node has: the scheduler keeps it Pending and says why.
    apply(cp, ns, pod_manifest("three-gpus", image, ["true"], resources={"limits": {"nvidia.com/gpu": "3"}}))

    def unschedulable():
        conds = pod(cp, ns, "three-gpus")["status"].get("conditions") or []
        return (
            any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conds) and conds
        )

    conds = wait_for(unschedulable, timeout=60, message="three-gpus Unschedulable")
    assert "Insufficient nvidia.com/gpu" in json.dumps(conds)


# -- side by side, and nothing left behind ------------------------------------------------------


def _host_state() -> dict:
    """What a real node could leave on the host: links, routes, iptables rules, mounts, network
    namespaces held by any process, cgroups and index locks."""
    netns = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                netns.add(os.readlink(d / "ns" / "net"))
            except OSError:
                pass
    iptables = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/flarecp-node-*"))
    return {
        "links": sorted(
            subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.split("\n")
        ),
        "routes": subprocess.run(["ip", "route"], capture_output=True, text=True).stdout,
        "iptables": re.sub(r"^#.*$|\[\d+:\d+\]", "", iptables, flags=re.M),
        "mounts": sorted(Path("/proc/self/mounts").read_text().splitlines()),
        "netns": netns,
        "cgroups": cgroups,
        "locks": sorted(str(p) for p in Path("/run/flarecp").glob("*.lock"))
        if Path("/run/flarecp").exists()
        else [],
    }


def _normalise_links(links: list[str]) -> list[str]:
    # Link lines carry counters-free state; keep only index and name.
    return sorted(" ".join(ln.split()[:2]) for ln in links if ln.strip())


def test_two_clusters_with_real_nodes_side_by_side_and_down_leaves_nothing(
    control_plane_factory, real_node_images, tmp_path
):
    before = _host_state()
    clusters = [
        control_plane_factory.start(
            name, nodes=1, real_nodes=1, imports=real_node_images.archives("operator"), timeout=600
        )
        for name in ("side-a", "side-b")
    ]
    try:
        ips = []
        for cp in clusters:
            ns = f"side-{uuid.uuid4().hex[:6]}"
            cp.kubectl("create", "namespace", ns)
            cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
            wait_for(lambda cp=cp, ns=ns: cp.kubectl("-n", ns, "get", "sa", "default", check=False).returncode == 0,
                     timeout=60, message="default ServiceAccount")  # fmt: skip
            web = pod_manifest(
                "web", real_node_images.operator_ref, ["python3", "-c", WEB], restartPolicy="Always",
                env=[{"name": "POD_NAME", "value": cp.name}], labels={"app": "web"},
            )  # fmt: skip
            svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}  # fmt: skip
            apply(cp, ns, web, svc)
            p = wait_phase(cp, ns, "web", {"Running"})
            assert p["spec"]["nodeName"] == "real-node-0"
            ips.append(p["status"]["podIP"])
            # Each cluster's DNS and Services answer with its own pod.
            out = run_to_completion(cp, ns, pod_manifest(
                "client", real_node_images.operator_ref,
                ["python3", "-c", f"import urllib.request as u; print(u.urlopen('http://web.{ns}.svc.cluster.local/').read().decode())"],
            ))  # fmt: skip
            assert out.strip() == f"hello from {cp.name}"
        assert ips[0].rsplit(".", 1)[0] != ips[1].rsplit(".", 1)[0]  # separate pod subnets
        during = _host_state()
        assert (
            len(during["cgroups"]) > len(before["cgroups"])
            and len(during["locks"]) == len(before["locks"]) + 2
        )
    finally:
        for cp in clusters:
            control_plane_factory.stop(cp.name)
    after = _host_state()
    for cp in clusters:
        assert not cp.running_pids(), cp.diagnostics()
        assert not [m for m in after["mounts"] if str(cp.dir) in m]
    assert _normalise_links(after["links"]) == _normalise_links(before["links"])
    assert after["routes"] == before["routes"]
    assert after["iptables"] == before["iptables"]
    assert after["netns"] <= before["netns"] | during["netns"] and not (after["netns"] - before["netns"])
    assert after["cgroups"] == before["cgroups"] and after["locks"] == before["locks"]
    assert after["mounts"] == before["mounts"]


def test_imported_images_are_pinned_against_the_kubelets_image_collection(real_node_cluster, real_node_images):
    """The kubelet deletes unused images once the disk is nearly full (eviction) or past its
    garbage-collection threshold, unless they are pinned. Imported archives cannot be pulled again
    offline: a CI run whose disk filled once lost them, and every Pod after that ended
    ErrImageNeverPull. (Checked by hand with the disk filled to 0.6% free: unpinned, the operator
    image was gone 2 minutes later — the kubelet's minimum image age; pinned, it stayed.)"""
    ctr = [str(flarecp().parent / "ctr"), "--address", str(real_node_cluster.dir / "node" / "containerd.sock"),
           "--namespace", "k8s.io"]
    out = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True, check=True, timeout=60).stdout
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:] if ln.strip()}
    for ref in (real_node_images.operator_ref, real_node_images.runtime_ref, real_node_images.pause_ref):
        assert ref in rows, out
        assert "io.cri-containerd.pinned=pinned" in rows[ref], rows[ref]


# -- bad prerequisites ---------------------------------------------------------------------------


def _cluster_up_fails(tmp_path: Path, *args: str) -> str:
    before = _host_state()
    d = tmp_path / "bad"
    proc = subprocess.run(
        [str(flarecp()), "cluster", "up", "--dir", str(d), "--nodes", "0", "--real-nodes", "1", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc
    after = _host_state()
    assert not ControlPlane(d).running_pids()
    assert _normalise_links(after["links"]) == _normalise_links(before["links"])
    assert after["cgroups"] == before["cgroups"] and after["locks"] == before["locks"]
    assert not (d / "kubeconfig").exists() and not (d / "flarecp.pid").exists()
    return proc.stderr


def test_cluster_up_without_runc_says_what_to_install(tmp_path, real_node_images):
    err = _cluster_up_fails(tmp_path, "--runc", "/nonexistent/runc", "--import", str(real_node_images.pause))
    assert "runc not found at /nonexistent/runc" in err and "apt-get install runc" in err, err


def test_cluster_up_without_cni_plugins_says_what_to_install(tmp_path, real_node_images):
    err = _cluster_up_fails(tmp_path, "--cni-bin-dir", str(tmp_path), "--import", str(real_node_images.pause))
    assert "CNI plugin bridge not found" in err and "apt-get install containernetworking-plugins" in err, err


def test_cluster_up_with_its_port_in_use_says_what_to_free(tmp_path, real_node_images):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        err = _cluster_up_fails(
            tmp_path, "--apiserver-port", str(port), "--import", str(real_node_images.pause)
        )
    assert f"--apiserver-port {port} is in use" in err and "free it" in err, err


def test_cluster_up_without_the_disk_for_its_images_says_how_much_is_missing(tmp_path, real_node_images):
    huge = tmp_path / "huge.tar"  # sparse: as large as a disk, occupying nothing
    with open(huge, "wb") as f:
        f.truncate(shutil.disk_usage(tmp_path).total)
    err = _cluster_up_fails(tmp_path, "--import", str(real_node_images.pause), "--import", str(huge))
    assert "not enough free disk for a real node" in err and "GB free" in err and "unpacked" in err, err


def test_cluster_up_without_the_pause_image_says_how_to_build_it(tmp_path):
    err = _cluster_up_fails(tmp_path, "--import", str(tmp_path / "pause.tar"))
    assert "pause.tar" in err and "make images" in err, err
