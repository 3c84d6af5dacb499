"""The kubernetes-runtime manifests (builders/workloads.py) on a real API server with kwok GPU nodes:
server-side applied under the operator's field manager into a namespace enforcing the
``restricted`` Pod Security Standard, admitted, scheduled (GPU clients onto GPU nodes), volume
claims bound, ready; scaled to zero (GPUs released, workspaces kept) and back; re-applying is a
no-op."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from flare_operator.api.compute import ComputeSpecSpec
from flare_operator.builders.naming import (
    client_name,
    federation_name,
    kit_secret_name,
    selector_labels,
    server_host,
    server_name,
)
from flare_operator.builders.workloads import DatasetMount, client_manifests, server_manifests
from flare_operator.config import FIELD_MANAGER, SiteSettings, Toleration
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration

IMAGE = "example.invalid/flare-runtime:test"
OPERATOR_LABELS = {"app.kubernetes.io/name": "flare-operator"}
GPU = "nvidia.com/gpu"


def ssa(cp, manifest: dict, *, dry_run: bool = False) -> dict:
    """Server-side apply ``manifest`` as the operator does (one field manager, conflicts forced),
    with kubectl; strict field validation, so an unknown or misspelt field fails the test."""
    args = ["apply", "--server-side", "--field-manager", FIELD_MANAGER, "--force-conflicts",
            "--validate=strict", "-o", "json", "-f", "-"]  # fmt: skip
    if dry_run:
        args.insert(1, "--dry-run=server")
    proc = cp.kubectl(*args, input=json.dumps(manifest), check=False)
    if proc.returncode != 0:
        meta = manifest["metadata"]
        pytest.fail(f"{manifest['kind']} {meta['namespace']}/{meta['name']} refused: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def restrict(kube, ns: str) -> None:
    client.CoreV1Api(kube).patch_namespace(
        ns,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "flareop.io/org": "org-a",
                }
            }
        },
    )


def compute_spec(*, gpu: int = 1, active: bool = True) -> ComputeSpecSpec:
    return ComputeSpecSpec.model_validate(
        {
            "model": {"id": "esm2-finetune", "version": "1.0.0"},
            "datasets": [{"org": "org-a", "id": "cells"}],
            "server": {"cpu": "500m", "memory": "1Gi"},
            "client": {"cpu": "2", "memory": "4Gi", "gpu": gpu},
            "active": active,
        }
    )


def prerequisites(control_plane, ns: str, fed: str, participants: list[str], dataset_claim: str) -> None:
    """What other parts of the operator create before the workloads: kit Secrets, the
    enforcement ConfigMap, the data owner's dataset claim."""
    for p in participants:
        ssa(control_plane, {"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": kit_secret_name(fed, p), "namespace": ns},
                   "stringData": {"fed_client.json": "{}", "rootCA.pem": "x"}})  # fmt: skip
    ssa(control_plane, {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": f"{fed}-enforcement", "namespace": ns},
               "data": {"approved.json": "[]"}})  # fmt: skip
    ssa(control_plane, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": dataset_claim, "namespace": ns},
               "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})  # fmt: skip


def build_all(ns: str, fed: str, spec: ComputeSpecSpec, sites: list[SiteSettings], owner=None) -> list[dict]:
    objs = server_manifests(
        fed=fed, namespace=ns, spec=spec, image=IMAGE, image_pull_policy="IfNotPresent", command=None,
        kit_secret=kit_secret_name(fed, "server"), storage_class=None, workspace_size="1Gi",
        operator_labels=OPERATOR_LABELS, owner=owner, client_namespaces=[s.namespace for s in sites],
    )  # fmt: skip
    for site in sites:
        objs += client_manifests(
            fed=fed, site=site, spec=spec, image=IMAGE, image_pull_policy="IfNotPresent", command=None,
            kit_secret=kit_secret_name(fed, site.site),
            dataset_mounts=[DatasetMount("cells", claim_name="cells-data", sub_path="v1/train.csv")],
            enforcement_configmap=f"{fed}-enforcement", server_host=server_host(fed, ns),
            fl_port=8002, owner=owner, server_namespace=ns,
        )  # fmt: skip
    return objs


def ready_replicas(apps: client.AppsV1Api, ns: str, name: str) -> int:
    sts = apps.read_namespaced_stateful_set(name, ns)
    return sts.status.ready_replicas or 0


def pods_of(core: client.CoreV1Api, ns: str, selector: dict) -> list:
    sel = ",".join(f"{k}={v}" for k, v in selector.items())
    return core.list_namespaced_pod(ns, label_selector=sel).items


@pytest.fixture
def sites(namespace) -> list[SiteSettings]:
    gpu_nodes = {"nvidia.com/gpu.present": "true"}
    tolerate = [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    return [
        SiteSettings(org="org-a", site="org-a", namespace=namespace, hub_namespace=namespace,
                     runtime="kubernetes", node_selector=gpu_nodes, tolerations=tolerate,
                     storage_class="kwok-volume", workspace_size="2Gi"),
        SiteSettings(org="org-b", site="org-b", namespace=namespace, hub_namespace=namespace,
                     runtime="kubernetes", node_selector={"topology.kubernetes.io/zone": "zone-1"}),
    ]  # fmt: skip


def test_manifests_are_admitted_under_restricted_pod_security_and_become_ready(
    control_plane, kube, namespace, sites
):
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    restrict(kube, namespace)
    fed = federation_name(namespace, "esm2")
    prerequisites(control_plane, namespace, fed, ["server", *(s.site for s in sites)], "cells-data")
    # An owner in the same namespace, as the ComputeSpec would be (a ConfigMap stands in for it).
    owner_obj = core.create_namespaced_config_map(namespace, {"metadata": {"name": "compute-owner"}})
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "compute-owner",
             "uid": owner_obj.metadata.uid, "controller": True, "blockOwnerDeletion": True}  # fmt: skip

    spec = compute_spec(gpu=2)
    for obj in build_all(namespace, fed, spec, sites, owner):
        ssa(control_plane, obj)

    names = [server_name(fed), *(client_name(fed, s.site) for s in sites)]
    for name in names:
        wait_for(lambda n=name: ready_replicas(apps, namespace, n) == 1, timeout=120,
                 message=f"StatefulSet {name} readyReplicas == 1")  # fmt: skip

    # Pods: admitted as restricted, GPU clients on GPU nodes, the site's scheduling applied.
    server_pod = core.read_namespaced_pod(f"{server_name(fed)}-0", namespace)
    assert server_pod.spec.security_context.run_as_non_root is True
    assert server_pod.spec.containers[0].resources.limits == {"cpu": "500m", "memory": "1Gi"}
    a_pod = core.read_namespaced_pod(f"{client_name(fed, 'org-a')}-0", namespace)
    assert a_pod.spec.containers[0].resources.limits[GPU] == "2"
    node = core.read_node(a_pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
    b_pod = core.read_namespaced_pod(f"{client_name(fed, 'org-b')}-0", namespace)
    assert b_pod.spec.node_name == "kwok-node-1"  # zone-1
    assert a_pod.spec.automount_service_account_token is False
    ro = {m.mount_path: m.read_only for m in a_pod.spec.containers[0].volume_mounts}
    assert ro["/workspace/startup"] and ro["/etc/flareop/enforcement"] and ro["/data/cells/train.csv"]

    # Volume claims bound: a workspace per participant, of the site's class and size.
    for name in names:
        claim = f"workspace-{name}-0"
        wait_for(lambda c=claim: core.read_namespaced_persistent_volume_claim(c, namespace).status.phase == "Bound",
                 timeout=60, message=f"{claim} Bound")  # fmt: skip
    pvcs = {p.metadata.name: p for p in core.list_namespaced_persistent_volume_claim(namespace).items}
    a_claim = pvcs[f"workspace-{client_name(fed, 'org-a')}-0"]
    assert a_claim.spec.resources.requests["storage"] == "2Gi"
    assert a_claim.spec.storage_class_name == "kwok-volume"
    # Defaulted by the API server when the site names no class.
    assert pvcs[f"workspace-{server_name(fed)}-0"].spec.storage_class_name == "kwok-volume"

    # Service and NetworkPolicies exist as built, owned by the ComputeSpec stand-in.
    svc = core.read_namespaced_service(server_name(fed), namespace)
    assert sorted((p.name, p.port) for p in svc.spec.ports) == [("admin", 8003), ("fl", 8002)]
    net = client.NetworkingV1Api(kube)
    pols = {p.metadata.name: p for p in net.list_namespaced_network_policy(namespace).items}
    assert set(pols) == set(names)
    assert all(p.metadata.owner_references[0].uid == owner_obj.metadata.uid for p in pols.values())

    # Re-applying the same manifests changes nothing (idempotent reconcile): the spec's generation and
    # the operator's own managed-fields entry (a no-op apply writes neither). Not the resourceVersion:
    # the StatefulSet controller may still be writing status (seen under load: availableReplicas after
    # readyReplicas).
    def applied() -> dict:
        out = {}
        for n in names:
            meta = apps.read_namespaced_stateful_set(n, namespace).metadata
            mine = [(m.operation, m.time, json.dumps(m.fields_v1, sort_keys=True)) for m in meta.managed_fields
                    if m.manager == FIELD_MANAGER]
            out[n] = (meta.generation, mine)
        return out

    before = applied()
    for obj in build_all(namespace, fed, spec, sites, owner):
        ssa(control_plane, obj)
    assert before == applied()


def test_scale_to_zero_releases_pods_and_keeps_workspaces(control_plane, kube, namespace, sites):
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    restrict(kube, namespace)
    fed = federation_name(namespace, "esm2")
    prerequisites(control_plane, namespace, fed, ["server", *(s.site for s in sites)], "cells-data")
    names = [server_name(fed), *(client_name(fed, s.site) for s in sites)]

    for obj in build_all(namespace, fed, compute_spec(active=True), sites):
        ssa(control_plane, obj)
    for name in names:
        wait_for(lambda n=name: ready_replicas(apps, namespace, n) == 1, timeout=120,
                 message=f"{name} readyReplicas == 1")  # fmt: skip
    claims_before = {
        p.metadata.name: p.metadata.uid for p in core.list_namespaced_persistent_volume_claim(namespace).items
    }
    uids_before = {n: core.read_namespaced_pod(f"{n}-0", namespace).metadata.uid for n in names}

    # active: false -> replicas 0 everywhere, no pods left (GPUs released), claims kept.
    for obj in build_all(namespace, fed, compute_spec(active=False), sites):
        ssa(control_plane, obj)
    for name in names:
        assert apps.read_namespaced_stateful_set(name, namespace).spec.replicas == 0
    wait_for(lambda: not pods_of(core, namespace, {"flareop.io/federation": fed}), timeout=120,
             message="all federation pods gone")  # fmt: skip
    wait_for(lambda: all((apps.read_namespaced_stateful_set(n, namespace).status.replicas or 0) == 0 for n in names),
             timeout=60, message="status.replicas == 0")  # fmt: skip
    claims_off = {
        p.metadata.name: p.metadata.uid for p in core.list_namespaced_persistent_volume_claim(namespace).items
    }
    assert claims_off == claims_before

    # active: true -> back, new pods, the same workspace claims.
    for obj in build_all(namespace, fed, compute_spec(active=True), sites):
        ssa(control_plane, obj)
    for name in names:
        wait_for(lambda n=name: ready_replicas(apps, namespace, n) == 1, timeout=120,
                 message=f"{name} back to readyReplicas == 1")  # fmt: skip
        pod = core.read_namespaced_pod(f"{name}-0", namespace)
        assert pod.metadata.uid != uids_before[name]
        assert any(
            v.persistent_volume_claim and v.persistent_volume_claim.claim_name == f"workspace-{name}-0"
            for v in pod.spec.volumes
        )
    claims_after = {
        p.metadata.name: p.metadata.uid for p in core.list_namespaced_persistent_volume_claim(namespace).items
    }
    assert claims_after == claims_before
    assert pods_of(core, namespace, selector_labels(fed, "client", "org-a"))


@pytest.fixture
def site_namespace(kube, namespace):
    """A second namespace: the data owner's site, next to the hub's ``namespace``."""
    core = client.CoreV1Api(kube)
    name = f"{namespace[:50]}-site"
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout=60,
             message=f"ServiceAccount default in {name}")  # fmt: skip
    yield name
    core.delete_namespace(name)


def test_client_in_its_site_namespace_reaches_ready_next_to_the_hub(
    control_plane, kube, namespace, site_namespace
):
    """Hub and site namespaces on one cluster: server objects owned in the hub namespace, the
    client in the site's (no owner reference across namespaces), each policy naming the other."""
    apps, net = client.AppsV1Api(kube), client.NetworkingV1Api(kube)
    restrict(kube, namespace)
    restrict(kube, site_namespace)
    fed = federation_name(namespace, "cross")
    prerequisites(control_plane, namespace, fed, ["server"], "unused")
    prerequisites(control_plane, site_namespace, fed, ["org-a"], "cells-data")
    site = SiteSettings(org="org-a", site="org-a", namespace=site_namespace, hub_namespace=namespace,
                        runtime="kubernetes", node_selector={"nvidia.com/gpu.present": "true"})  # fmt: skip
    sites = [site]
    objs = build_all(namespace, fed, compute_spec(gpu=1), sites)
    assert {
        o["metadata"]["namespace"]
        for o in objs
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "client"
    } == {site_namespace}
    for obj in objs:
        ssa(control_plane, obj)
    wait_for(
        lambda: ready_replicas(apps, namespace, server_name(fed)) == 1, timeout=120, message="server ready"
    )
    wait_for(lambda: ready_replicas(apps, site_namespace, client_name(fed, "org-a")) == 1, timeout=120,
             message="client ready")  # fmt: skip
    server_pol = net.read_namespaced_network_policy(server_name(fed), namespace)
    peer = server_pol.spec.ingress[0]._from[0]
    assert peer.namespace_selector.match_expressions[0].values == [site_namespace]
    client_pol = net.read_namespaced_network_policy(client_name(fed, "org-a"), site_namespace)
    to = client_pol.spec.egress[0].to[0]
    assert to.namespace_selector.match_expressions[0].values == [namespace]
    assert client_pol.spec.egress[0].ports[0].port == 8002


def test_restricted_namespace_refuses_a_hostpath_dataset(control_plane, kube, namespace, sites):
    """The builder's pods are admitted; a hostPath dataset (development only) is not, and the
    API server says why — documented on DatasetMount."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    restrict(kube, namespace)
    fed = federation_name(namespace, "hostpath")
    prerequisites(control_plane, namespace, fed, ["org-a"], "cells-data")
    objs = client_manifests(
        fed=fed, site=sites[0], spec=compute_spec(gpu=0), image=IMAGE, image_pull_policy="IfNotPresent",
        command=None, kit_secret=kit_secret_name(fed, "org-a"),
        dataset_mounts=[DatasetMount("cells", host_path="/srv/cells.csv")],
        enforcement_configmap=f"{fed}-enforcement", server_host="server.example", owner=None,
    )  # fmt: skip
    for obj in objs:
        ssa(control_plane, obj)
    name = client_name(fed, "org-a")

    def refused():
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return [e.message for e in events if e.reason == "FailedCreate" and "hostPath" in (e.message or "")]

    messages = wait_for(refused, timeout=60, message="FailedCreate event for the hostPath pod")
    assert 'violates PodSecurity "restricted:latest"' in messages[0]
    assert ready_replicas(apps, namespace, name) == 0


def test_same_manifests_are_valid_server_side_for_every_option(control_plane, namespace):
    """Dry-run the less common shapes: external clients, equal FL/admin ports, a local ConfigMap,
    no GPU, a server-less namespace for the client (egress to any address)."""
    fed = federation_name(namespace, "options")
    site = SiteSettings(org="org-c", site="org-c", namespace=namespace, hub_namespace=namespace)
    objs = server_manifests(
        fed=fed, namespace=namespace, spec=compute_spec(gpu=0), image=IMAGE, image_pull_policy="Always",
        command=["sleep", "infinity"], kit_secret="kit", fl_port=8443, admin_port=8443, storage_class="kwok-volume",
        workspace_size="1Gi", operator_labels=OPERATOR_LABELS, owner=None, allow_external_clients=True,
        operator_namespace="flare-system", local_config="local-cfg",
    ) + client_manifests(
        fed=fed, site=site, spec=compute_spec(gpu=0), image=IMAGE, image_pull_policy="Always", command=None,
        kit_secret="kit", dataset_mounts=[], enforcement_configmap="enf", server_host="hub.example.com",
        fl_port=443, owner=None,
    )  # fmt: skip
    for obj in objs:
        ssa(control_plane, obj, dry_run=True)
