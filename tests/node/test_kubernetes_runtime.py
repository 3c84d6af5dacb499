"""The kubernetes runtime end to end on a real node: the orchestrator and two orgs' gateways (one
operator process outside the cluster, as a developer runs it) run a federation as real Pods from
the project's runtime image — the NVFlare server StatefulSet on the hub, a client StatefulSet per
site with the site's dataset mounted read-only — and a FederatedJob through its whole lifecycle.

The operator reaches the server's admin port through its documented route for an operator outside
the cluster (a local relay through the Kubernetes API's port-forward), follows progress through
the FLARE API only, and stores results in the configured results store."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from flare_operator.builders import naming
from tests.e2e.conftest import BASE_PARAMS, DATA_ARGS
from tests.e2e.test_site_enforcement import submit_straight
from tests.operator_harness import (
    OperatorProcess,
    apply,
    create_org_namespace,
    gateway_config,
    get,
    grant,
    install_crds,
    policy,
    remove_namespaces,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = [pytest.mark.node, pytest.mark.timeout(2400)]

REAL_NODE = {"flarecp.io/real-node": "true"}


@pytest.fixture
def shared_data():
    """The sites' generated datasets in a folder every user may read: the client Pods run as uid
    10001 and mount them from the node (hostPath), and pytest's own tmp folders are private."""
    from flare_operator.datagen import GeneratorConfig, write_dataset

    root = Path("/var/tmp") / f"flareop-node-data-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    manifest = write_dataset(GeneratorConfig(**DATA_ARGS), root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield root, manifest
    shutil.rmtree(root, ignore_errors=True)


def pods(cp, namespace: str, selector: str) -> list[dict]:
    out = cp.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    return json.loads(out)["items"]


def names(cp, kind: str, namespace: str, selector: str) -> list[str]:
    out = cp.kubectl("-n", namespace, "get", kind, "-l", selector, "-o", "name").stdout
    return sorted(out.split())


def status(cp, namespace: str, name: str) -> dict:
    return (get(cp, "federatedjob", namespace, name) or {}).get("status") or {}


@contextmanager
def relayed_admin(cp, namespace: str, fed: str, folder: Path):
    """A FLARE API session with the federation's admin kit (from its Secret), through a port-forward
    relay as the operator makes one (runtime/admin_route.py)."""
    from flare_operator.nvflare.admin import FlareAdmin
    from flare_operator.nvflare.provisioning import unpack_kit
    from flare_operator.runtime.admin_route import (
        LocalRelay,
        admin_port,
        dial_port_forward,
        route_kit_through,
    )

    secret = json.loads(cp.kubectl("-n", namespace, "get", "secret", f"{fed}-admin-kit", "-o", "json").stdout)
    (kit,) = secret["data"].values()
    unpack_kit(base64.b64decode(kit), folder)
    api = cp.api_client()
    relay = LocalRelay(dial_port_forward(api, namespace, f"{fed}-server-0", admin_port(folder)), "test")
    route_kit_through(folder, relay)
    admin = FlareAdmin(folder, timeout=10.0)
    try:
        yield admin
    finally:
        admin.close()
        relay.close()
        api.close()


def fetch_results(s3_server, results: dict, dest: Path) -> dict:
    """Download a job's results from the store, every file checked against the sha256 in its status."""
    from flare_operator.api.job import Results

    listed = Results.model_validate(results)
    assert listed.location.startswith(f"s3://{s3_server.bucket}/"), listed.location
    names_listed = {f.name for f in listed.files}
    assert {"metrics.json", "MODEL_CARD.md", "model/model.safetensors", "logs/server-log.txt"} <= names_listed
    assert any(n.startswith("tensorboard/") for n in names_listed), sorted(names_listed)
    downloaded = s3_server.store().get_tree(listed, dest)  # raises on any size or sha256 mismatch
    assert len(downloaded) == len(listed.files)
    return json.loads((dest / "metrics.json").read_text())


def claim_uids(cp, namespace: str, selector: str) -> dict[str, str]:
    out = json.loads(cp.kubectl("-n", namespace, "get", "pvc", "-l", selector, "-o", "json").stdout)
    return {c["metadata"]["name"]: c["metadata"]["uid"] for c in out["items"]}


def secret_data(cp, namespace: str, name: str) -> dict:
    return json.loads(cp.kubectl("-n", namespace, "get", "secret", name, "-o", "json").stdout)["data"]


def compute_spec(namespace: str, name: str, datasets: list[tuple[str, str]], *, server_cpu: str, client_cpu: str,
                 memory: str) -> dict:
    """ComputeSpec ``name`` over ``datasets`` ([(org, dataset id)]), sized to share the real node's 2 cores."""
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "ComputeSpec", "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"id": "esm2-finetune", "version": "1.0.0"},
                     "datasets": [{"org": o, "id": d} for o, d in datasets],
                     "server": {"cpu": server_cpu, "memory": memory}, "client": {"cpu": client_cpu, "memory": memory}}}


def ready_condition(cp, namespace: str, name: str) -> dict:
    """The Ready condition of ComputeSpec ``namespace/name`` ({} if none yet)."""
    obj = get(cp, "computespec", namespace, name) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {})


def warning_events(cp, namespace: str, name: str) -> str:
    """'<reason>: <note>' of each Warning Event recorded on ComputeSpec ``namespace/name``, a line each."""
    return cp.kubectl("-n", namespace, "get", "events", "--field-selector",
                      f"involvedObject.kind=ComputeSpec,involvedObject.name={name},type=Warning",
                      "-o", "jsonpath={range .items[*]}{.reason}: {.note}{.message}{'\\n'}{end}").stdout


@contextmanager
def hub_and_remote_site(hub, site, tmp_path: Path, hub_cfg: dict, site_cfg: dict, org: str):
    """The orchestrator on ``hub`` and ``org``'s gateway on ``site`` (workdirs under tmp_path/hub and
    tmp_path/site), once the hub sees org's Gateway say it is on another cluster (a scoped hub
    credential is what makes it so); both operators' logs are printed when the body fails."""
    for d in ("hub", "site"):
        (tmp_path / d).mkdir()
    orchestrator = OperatorProcess(hub, tmp_path / "hub", hub_cfg, name="orchestrator").start()
    gateway = OperatorProcess(site, tmp_path / "site", site_cfg, name="gateway").start()
    try:
        wait_for(lambda: (get(hub, "gateway", org, org) or {}).get("spec", {}).get("sameClusterAsHub") is False,
                 timeout=60, message=f"{org} registered on the hub as a site on another cluster")
        yield
    except BaseException:
        for op in (orchestrator, gateway):
            print(f"--- {op.log_path}\n{op.tail(120)}")
        raise
    finally:
        orchestrator.stop()
        gateway.stop()


def runtime_config(images) -> dict:
    """Operator settings every operator process of these tests shares: the kubernetes runtime with the
    project's runtime image, imported into the node (no registry)."""
    return {"runtime": "kubernetes", "image": images.runtime_ref, "imagePullPolicy": "Never",
            "workspaceSize": "1Gi", "resyncSeconds": 2, "heartbeatSeconds": 5}


def job(namespace: str, name: str, rounds: int) -> dict:
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": rounds,
                     "parameters": {**BASE_PARAMS, "localSteps": 8},
                     "privacy": {"differentialPrivacy": {"enabled": False}}}}


def consortium(cp, shared_data, *extra: dict) -> tuple[str, str, str, list[dict]]:
    """org-a, org-b (Automatic policies, each granting its generated dataset) and a modeller, in fresh
    namespaces of ``cp``; with the two sites' gateway settings for the real node."""
    data_root, data = shared_data
    install_crds(cp)
    suffix = uuid.uuid4().hex[:5]
    a, b, m = f"org-a-{suffix}", f"org-b-{suffix}", f"modeller-{suffix}"
    for ns in (a, b, m):
        create_org_namespace(cp, ns, ns)
    paths = [s["path"] for s in data["sites"].values()]
    apply(cp, grant(a, "scl-a", m, path=paths[0]), grant(b, "scl-b", m, path=paths[1]), *extra,
          policy(a, "Automatic"), policy(b, "Automatic"))
    sites = [{**gateway_config(org, org), "runtime": "kubernetes", "dataRoots": [str(data_root)],
              "nodeSelector": REAL_NODE, "workspaceSize": "1Gi"} for org in (a, b)]
    return a, b, m, sites


def test_a_federation_runs_as_real_pods(real_node_cluster, real_node_images, shared_data, s3_server, tmp_path):
    cp = real_node_cluster
    a, b, m, sites = consortium(cp, shared_data)
    suffix = m.rsplit("-", 1)[1]
    config = {**runtime_config(real_node_images), "mode": "all", "workdir": str(tmp_path / "work"),
              "namespaces": [m], "gateways": sites,
              "resultsStore": {"type": "s3", "s3": {"endpoint": s3_server.endpoint_url, "bucket": s3_server.bucket,
                                                    "prefix": f"t-{suffix}/"}}}
    operator = OperatorProcess(cp, tmp_path, config, env=s3_server.env()).start()
    fed = naming.federation_name(m, "esm2")
    owned = f"flareop.io/federation={fed}"
    try:
        apply(cp, compute_spec(m, "esm2", [(a, "scl-a"), (b, "scl-b")], server_cpu="400m", client_cpu="700m",
                               memory="2Gi"))
        ready = wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=600)["status"]
        assert all(s["clientReady"] for s in ready["sites"]), ready["sites"]
        (server_pod,) = pods(cp, m, "app.kubernetes.io/component=server")
        assert server_pod["status"]["phase"] == "Running"
        assert server_pod["spec"]["nodeName"] == "real-node-0"
        for org in (a, b):
            (client_pod,) = pods(cp, org, "app.kubernetes.io/component=client")
            assert client_pod["status"]["phase"] == "Running", client_pod["status"]

        # The bypass: a job straight through the FLARE API with the operator's own admin kit and no
        # approval. Each client Pod's enforcement (the site's approved-jobs ConfigMap, mounted) refuses it.
        with relayed_admin(cp, m, fed, tmp_path / "bypass-kit") as admin:
            made_up = submit_straight(admin, tmp_path / "bypass", "made-up", {a: "scl-a", b: "scl-b"},
                                      {"uid": "00000000-forged", "contentHash": "sha256:" + "0" * 64,
                                       "job": f"{m}/evil"})

            def history() -> str:
                return "\n".join(admin.job_meta(made_up).get("schedule_history") or [])

            wait_for(lambda: f"{a} has not approved job {m}/evil" in history()
                     and f"{b} has not approved job {m}/evil" in history(), timeout=120,
                     message="both client pods refuse the job no org approved")
            admin.abort(made_up)
        for org in (a, b):
            (client_pod,) = pods(cp, org, "app.kubernetes.io/component=client")
            log = cp.kubectl("-n", org, "logs", client_pod["metadata"]["name"]).stdout
            assert f"REFUSED check_resources of NVFlare job {made_up}" in log, log[-3000:]

        # A job: 3 rounds on real pods, followed through the FLARE API.
        apply(cp, job(m, "run1", 3))
        done = wait_phase(cp, "federatedjob", m, "run1", "Succeeded", timeout=900)["status"]
        assert done["progress"] == "3/3"
        assert done["globalMetrics"] and {s["site"] for s in done["siteMetrics"]} == {a, b}, done
        metrics = fetch_results(s3_server, done["results"], tmp_path / "download-run1")
        assert [h["round"] for h in metrics["history"]] == [0, 1, 2]
        assert set(metrics["history"][-1]["sites"]) == {a, b}

        # The server Pod dies mid-job (its StatefulSet starts another, same workspace volume): NVFlare's
        # new server forgot the job, the operator resubmits it from the last checkpoint it fetched.
        rounds = 12
        apply(cp, job(m, "run2", rounds))
        first = wait_for(lambda: (st := status(cp, m, "run2")).get("currentRound", 0) >= 2 and st.get("checkpoint")
                         and st, timeout=600, message="run2: two rounds done, a checkpoint kept")
        cp.kubectl("-n", m, "delete", "pod", f"{fed}-server-0", "--wait=false")
        resumed = wait_for(lambda: (st := status(cp, m, "run2")).get("attempts") == 2 and st.get("nvflareJobId")
                           and st, timeout=600, message="run2 resubmitted after the server Pod was lost")
        assert resumed["serverFailures"] == 1 and resumed["nvflareJobId"] != first["nvflareJobId"]
        checkpoint = resumed["checkpoint"]
        assert checkpoint["fromJobId"] == first["nvflareJobId"] and checkpoint["completedRounds"] >= 2
        done2 = wait_phase(cp, "federatedjob", m, "run2", "Succeeded", timeout=900)["status"]
        assert done2["progress"] == f"{rounds}/{rounds}" and done2["attempts"] == 2
        metrics2 = fetch_results(s3_server, done2["results"], tmp_path / "download-run2")
        start = min(checkpoint["completedRounds"], rounds - 1)  # a finished training redoes its last round
        assert metrics2["resumed_from"]["round"] == start
        assert [h["round"] for h in metrics2["history"]] == list(range(start, rounds))
        assert f"attempts/metrics-{first['nvflareJobId']}.json" in {f["name"] for f in done2["results"]["files"]}

        # active: false -> no server or client pods (the volumes and kits stay); true -> back as before.
        claims = {ns: claim_uids(cp, ns, owned) for ns in (m, a, b)}
        kits = secret_data(cp, m, f"{fed}-server-kit")
        cp.kubectl("-n", m, "patch", "computespec", "esm2", "--type=merge", "-p", '{"spec":{"active":false}}')
        for ns in (m, a, b):
            wait_for(lambda ns=ns: not pods(cp, ns, owned), timeout=180, message=f"no federation pods in {ns}")
        cp.kubectl("-n", m, "patch", "computespec", "esm2", "--type=merge", "-p", '{"spec":{"active":true}}')
        ready = wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=600)["status"]
        assert all(s["clientReady"] for s in ready["sites"]), ready["sites"]
        assert {ns: claim_uids(cp, ns, owned) for ns in (m, a, b)} == claims, "the same workspace volumes"
        assert secret_data(cp, m, f"{fed}-server-kit") == kits, "the same server identity (kit, certificate)"

        # Deleting the ComputeSpec removes its pods, volumes and Secrets on the hub and at every site.
        cp.kubectl("-n", m, "delete", "computespec", "esm2", "--wait=false")
        for ns in (m, a, b):
            wait_for(lambda ns=ns: not any(names(cp, kind, ns, owned) for kind in ("pods", "pvc", "secrets", "sts",
                                                                                    "svc", "configmaps")),
                     timeout=240, message=f"nothing of {fed} left in {ns}")
    except BaseException:
        print(f"--- operator log\n{operator.tail(200)}")
        for ns in (m, a, b):
            print(cp.kubectl("-n", ns, "get", "pods,pvc,svc,sts", "-o", "wide", check=False).stdout)
            for p in pods(cp, ns, "app.kubernetes.io/part-of=flare-operator"):
                name = p["metadata"]["name"]
                print(f"--- logs {ns}/{name}\n" + cp.kubectl("-n", ns, "logs", name, "--tail=80", check=False).stdout)
        raise
    finally:
        operator.stop()
        remove_namespaces(cp, a, b, m)
    wait_for(lambda: not names(cp, "pods", m, "app.kubernetes.io/part-of=flare-operator"), timeout=120,
             message="no pods left")


def test_bad_input_ends_in_a_condition_and_an_event_that_name_the_cause(real_node_cluster, real_node_images,
                                                                         shared_data, tmp_path):
    """An image that does not exist, a dataset claim that does not exist: each is named in the
    ComputeSpec's status and a Warning Event within a bounded time, and a job on it waits in Pending
    with that reason — never silently in Submitted."""
    cp = real_node_cluster
    missing_claim = {"apiVersion": "flareop.io/v1alpha1", "kind": "DatasetGrant",
                     "metadata": {"name": "cells"},
                     "spec": {"dataset": {"id": "cells", "persistentVolumeClaim": {"claimName": "no-such-claim"},
                                          "sampleCount": 100},
                              "models": [{"id": "esm2-finetune"}]}}
    a, b, m, sites = consortium(cp, shared_data)
    missing_claim["metadata"]["namespace"], missing_claim["spec"]["consumers"] = b, [m]
    apply(cp, missing_claim)
    config = {**runtime_config(real_node_images), "image": "localhost/flare-operator/runtime:does-not-exist",
              "mode": "all", "workdir": str(tmp_path / "work"), "namespaces": [m], "gateways": sites}

    def compute_obj(name: str, datasets: list[tuple[str, str]]) -> dict:
        return compute_spec(m, name, datasets, server_cpu="200m", client_cpu="200m", memory="1Gi")

    operator = OperatorProcess(cp, tmp_path, config).start()
    try:
        # The dataset claim does not exist at org-b: refused at the site, named on the hub.
        apply(cp, compute_obj("claims", [(a, "scl-a"), (b, "cells")]))
        failed = wait_phase(cp, "computespec", m, "claims", "Failed", timeout=120)["status"]
        # The hub learns which grant and why in general; the details stay in the grant's status at the site.
        assert "cells (InvalidLocation)" in ready_condition(cp, m, "claims")["message"], failed
        valid = next(c for c in get(cp, "datasetgrant", b, "cells")["status"]["conditions"] if c["type"] == "Valid")
        assert valid["status"] == "False" and "PersistentVolumeClaim no-such-claim does not exist" in valid["message"]

        # The image does not exist: the server's and both clients' Pods cannot start; the status and a
        # Warning Event say so, and a job waits in Pending with that reason.
        apply(cp, compute_obj("esm2", [(a, "scl-a"), (b, "scl-b")]))
        # Wait for all three Pods' failures: each side reports its own as it finds it, and a Pod's first
        # problem may pass (its workspace claim not bound yet).
        cond = wait_for(lambda: (c := ready_condition(cp, m, "esm2")).get("reason") == "WorkloadFailing"
                        and "server: " in c["message"] and a in c["message"] and b in c["message"]
                        and c["message"].count("ErrImageNeverPull") == 3 and c,
                        timeout=240, message="the ComputeSpec names the failing server and clients")
        assert "runtime:does-not-exist" in cond["message"]
        wait_for(lambda: "WorkloadFailing: " in warning_events(cp, m, "esm2") and "ErrImageNeverPull" in warning_events(cp, m, "esm2"),
                 timeout=60, message="a Warning Event on the ComputeSpec names the cause")
        apply(cp, job(m, "run1", 2))
        pending = wait_phase(cp, "federatedjob", m, "run1", "Pending", timeout=120)["status"]
        ready = next(c for c in pending["conditions"] if c["type"] == "Ready")
        assert "ErrImageNeverPull" in ready["message"], pending
        assert not pending.get("nvflareJobId")
    except BaseException:
        print(f"--- operator log\n{operator.tail(150)}")
        raise
    finally:
        operator.stop()
        remove_namespaces(cp, a, b, m)


def host_address() -> str:
    """This machine's primary IPv4 address: a site node's Pods reach it through their node's route."""
    out = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True, check=True).stdout
    return out.split(" src ")[1].split()[0]


def test_a_site_on_its_own_cluster_dials_the_hub_through_the_external_endpoint(
        real_node_cluster, control_plane_factory, real_node_images, shared_data, tmp_path):
    """The hub (server + org-a's client) and org-b's site each on their own cluster with a real node.
    org-b's gateway reaches the hub with a credential scoped to its namespace; its client dials the
    hub's server through the external endpoint: a TCP passthrough on this machine (as an L4 load
    balancer would be) in front of the server's NodePort Service — TLS end to end."""
    from flare_operator.builders.rbac import gateway_hub_role, role_binding
    from flare_operator.runtime.admin_route import LocalRelay, dial_direct

    hub = real_node_cluster
    site = control_plane_factory.start("real-node-site", nodes=0, real_nodes=1,
                                       imports=real_node_images.archives("runtime"), timeout=900)
    data_root, data = shared_data
    for cp in (hub, site):
        install_crds(cp)
    suffix = uuid.uuid4().hex[:5]
    a, b, m = f"org-a-{suffix}", f"org-b-{suffix}", f"modeller-{suffix}"
    for ns in (a, b, m):
        create_org_namespace(hub, ns, ns)
    create_org_namespace(site, "flare-site", b)
    user = f"gateway-{b}"
    apply(hub, gateway_hub_role(b), role_binding(b, "flare-gateway", user=user))
    scoped = hub.user_kubeconfig(user)
    paths = [s["path"] for s in data["sites"].values()]
    apply(hub, grant(a, "scl-a", m, path=paths[0]), policy(a, "Automatic"))
    apply(site, grant("flare-site", "scl-b", m, path=paths[1]), policy("flare-site", "Automatic"))

    fed = naming.federation_name(m, "esm2")
    hub_node = json.loads(hub.kubectl("get", "node", "real-node-0", "-o", "json").stdout)
    hub_node_ip = next(x["address"] for x in hub_node["status"]["addresses"] if x["type"] == "InternalIP")

    def node_port() -> int:
        svc = json.loads(hub.kubectl("-n", m, "get", "service", naming.external_service_name(fed), "-o", "json").stdout)
        return svc["spec"]["ports"][0]["nodePort"]

    address = host_address()
    # the NodePort is looked up per connection: it exists once the orchestrator created the Service
    passthrough = LocalRelay(lambda: dial_direct(lambda: hub_node_ip, node_port())(), "passthrough",
                             bind=(address, 0))
    common = runtime_config(real_node_images)
    site_settings = {"runtime": "kubernetes", "dataRoots": [str(data_root)], "nodeSelector": REAL_NODE,
                     "workspaceSize": "1Gi"}
    hub_cfg = {**common, "mode": "all", "workdir": str(tmp_path / "hub" / "work"), "namespaces": [m],
               "externalServer": {"host": address, "port": passthrough.port, "serviceType": "NodePort"},
               "gateways": [{**gateway_config(a, a), **site_settings}]}
    site_cfg = {**common, "mode": "gateway", "workdir": str(tmp_path / "site" / "work"),
                "gateways": [{"org": b, "site": b, "namespace": "flare-site", "hubNamespace": b,
                              "hubKubeconfig": str(scoped), **site_settings}]}
    try:
        with hub_and_remote_site(hub, site, tmp_path, hub_cfg, site_cfg, b):
            run_two_cluster_scenario(hub, site, passthrough, address, fed, a, b, m)
    except BaseException:
        for cp, ns in ((hub, m), (hub, a), (site, "flare-site")):
            for p in pods(cp, ns, "app.kubernetes.io/part-of=flare-operator"):
                name = p["metadata"]["name"]
                print(f"--- logs {ns}/{name}\n" + cp.kubectl("-n", ns, "logs", name, "--tail=60", check=False).stdout)
        raise
    finally:
        passthrough.close()
        remove_namespaces(hub, a, b, m)
        control_plane_factory.stop("real-node-site")


def run_two_cluster_scenario(hub, site, passthrough, address: str, fed: str, a: str, b: str, m: str) -> None:
    """Both sites' clients connected (org-b's through the external endpoint), then a job to the end."""
    apply(hub, compute_spec(m, "esm2", [(a, "scl-a"), (b, "scl-b")], server_cpu="400m", client_cpu="600m",
                            memory="2Gi"))
    ready = wait_phase(hub, "computespec", m, "esm2", "Ready", timeout=600)["status"]
    assert all(s["clientReady"] for s in ready["sites"]), ready["sites"]  # per the FLARE API
    assert passthrough.connections >= 1, "org-b's client came in through the external endpoint"
    (client_pod,) = pods(site, "flare-site", "app.kubernetes.io/component=client")
    env = {e["name"]: e.get("value") for e in client_pod["spec"]["containers"][0]["env"]}
    assert env["FLAREOP_SERVER"] == f"{address}:{passthrough.port}"
    (local_client,) = pods(hub, a, "app.kubernetes.io/component=client")
    env_a = {e["name"]: e.get("value") for e in local_client["spec"]["containers"][0]["env"]}
    assert env_a["FLAREOP_SERVER"] == f"{fed}-server.{m}.svc:8002", "org-a dials the in-cluster Service"

    apply(hub, job(m, "run1", 2))
    done = wait_phase(hub, "federatedjob", m, "run1", "Succeeded", timeout=900)["status"]
    assert {s["site"] for s in done["siteMetrics"]} == {a, b}
    metrics = json.loads((Path(done["results"]["location"]) / "metrics.json").read_text())
    assert set(metrics["history"][-1]["sites"]) == {a, b}


def test_a_server_endpoint_that_does_not_resolve_is_named(real_node_cluster, real_node_images, shared_data,
                                                          tmp_path):
    """org-b's gateway reaches the hub through a scoped credential (a site on 'another cluster'), and
    the hub's externalServer.host does not resolve: org-b's client Pod runs but cannot reach the
    server; its site names the cause, the hub shows it in the ComputeSpec and a Warning Event, and a
    job waits in Pending with it."""
    from flare_operator.builders.rbac import gateway_hub_role, role_binding

    cp = real_node_cluster
    a, b, m, sites = consortium(cp, shared_data)
    user = f"gateway-{b}"
    apply(cp, gateway_hub_role(b), role_binding(b, "flare-gateway", user=user))
    common = runtime_config(real_node_images)
    hub_cfg = {**common, "mode": "all", "workdir": str(tmp_path / "hub"), "namespaces": [m], "gateways": [sites[0]],
               "externalServer": {"host": "flare-hub.invalid", "port": 30999}}
    site_cfg = {**common, "mode": "gateway", "workdir": str(tmp_path / "site"),
                "gateways": [{**sites[1], "hubKubeconfig": str(cp.user_kubeconfig(user))}]}
    try:
        with hub_and_remote_site(cp, cp, tmp_path, hub_cfg, site_cfg, b):
            apply(cp, compute_spec(m, "esm2", [(a, "scl-a"), (b, "scl-b")], server_cpu="300m", client_cpu="300m",
                                   memory="1Gi"))

            cond = wait_for(lambda: (c := ready_condition(cp, m, "esm2")).get("reason") == "WorkloadFailing"
                            and "flare-hub.invalid:30999" in c["message"] and c,
                            timeout=300, message="the ComputeSpec names the endpoint org-b cannot resolve")
            # (other parts may precede it while the Pods start, e.g. the server waiting for CPU that the
            # previous test's Pods still hold)
            assert f"{b}: the NVFlare server endpoint flare-hub.invalid:30999 in this site's client kit does not " \
                   "resolve" in cond["message"], cond
            events = warning_events(cp, m, "esm2")
            assert "flare-hub.invalid:30999" in events, events
            wait_for(lambda: [p["status"]["phase"] for p in pods(cp, b, "app.kubernetes.io/component=client")] == ["Running"],
                     timeout=120, message="org-b's client Pod runs (it cannot reach the server)")
            apply(cp, job(m, "run1", 2))
            pending = wait_phase(cp, "federatedjob", m, "run1", "Pending", timeout=120)["status"]
            assert "flare-hub.invalid" in next(c for c in pending["conditions"] if c["type"] == "Ready")["message"]
    finally:
        remove_namespaces(cp, a, b, m)
