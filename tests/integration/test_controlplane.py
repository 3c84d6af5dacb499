"""The local control plane (hack/controlplane, tests/support) behaves like a real cluster:
CRDs with server-side validation, StatefulSets with volume claims on kwok GPU nodes, garbage
collection, RBAC, several clusters side by side, and clean shutdown."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.controlplane import pid_running
from tests.support.kube_fixtures import strip_finalizers, wait_for

pytestmark = pytest.mark.integration

GROUP = "cptest.flareop.io"
CRD_NAME = f"widgets.{GROUP}"


def widget_crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                        "color": {
                                            "type": "string",
                                            "enum": ["red", "blue"],
                                            "default": "red",
                                        },
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.color != 'blue' || self.size > 2",
                                            "message": "blue widgets need size > 2",
                                        }
                                    ],
                                },
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def widget_crd_installed(kube):
    ext = client.ApiextensionsV1Api(kube)
    try:
        ext.create_custom_resource_definition(widget_crd())
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established():
        crd = ext.read_custom_resource_definition(CRD_NAME)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, timeout=60, message=f"CRD {CRD_NAME} Established")
    yield
    ext.delete_custom_resource_definition(CRD_NAME)


def widget(name: str, **spec) -> dict:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def test_version_reports_v1_36_3(control_plane, kube):
    info = client.VersionApi(kube).get_code()
    assert info.git_version == "v1.36.3"
    assert (info.major, info.minor) == ("1", "36")
    out = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == "v1.36.3"
    assert out["clientVersion"]["gitVersion"] == "v1.36.3"


def test_kwok_nodes_have_gpus_and_no_noschedule_taint(kube):
    nodes = client.CoreV1Api(kube).list_node(label_selector="type=kwok").items
    assert len(nodes) >= 2
    for n in nodes:
        assert n.status.allocatable["nvidia.com/gpu"] == "8"
        assert not [t for t in n.spec.taints or [] if t.effect == "NoSchedule"]
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)


def test_custom_resource_round_trips(kube, namespace, widget_crd_installed):
    co = client.CustomObjectsApi(kube)
    co.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", widget("w1", size=3))
    got = co.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
    assert got["spec"] == {"size": 3, "color": "red"}  # default applied by the server
    co.patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, "widgets", "w1", {"status": {"phase": "Ready"}}
    )
    got = co.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
    assert got["status"] == {"phase": "Ready"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"size": 11}, "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"),
        ({"size": 5, "color": "green"}, 'spec.color: Unsupported value: "green"'),
        ({"color": "red"}, "spec.size: Required value"),
        ({"size": 2, "color": "blue"}, "blue widgets need size > 2"),
    ],
)
def test_invalid_custom_resource_is_rejected_by_the_server(
    kube, namespace, widget_crd_installed, spec, message
):
    co = client.CustomObjectsApi(kube)
    with pytest.raises(ApiException) as err:
        co.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", widget("bad", **spec))
    assert err.value.status == 422
    assert message in json.loads(err.value.body)["message"]


def gpu_statefulset(name: str, replicas: int) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "1", "memory": "1Gi"}},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            ],
        },
    }


def test_statefulset_with_volume_claims_becomes_ready(kube, namespace):
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_stateful_set(namespace, gpu_statefulset("trainer", 2))

    def ready():
        sts = apps.read_namespaced_stateful_set("trainer", namespace)
        return (sts.status.ready_replicas or 0) == 2

    wait_for(ready, timeout=120, message="StatefulSet trainer readyReplicas == 2")
    pvcs = core.list_namespaced_persistent_volume_claim(namespace).items
    assert sorted(p.metadata.name for p in pvcs) == ["data-trainer-0", "data-trainer-1"]
    assert all(p.status.phase == "Bound" and p.spec.storage_class_name == "kwok-volume" for p in pvcs)
    pods = core.list_namespaced_pod(namespace, label_selector="app=trainer").items
    assert all(p.spec.node_name and p.spec.node_name.startswith("kwok-node-") for p in pods)

    # Deleting the StatefulSet garbage-collects its pods (owner references, GC controller).
    apps.delete_namespaced_stateful_set("trainer", namespace, propagation_policy="Background")
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=trainer").items,
        timeout=120,
        message="trainer pods garbage-collected",
    )


def test_a_pod_marked_not_ready_recovers_like_under_a_kubelet(kube, namespace):
    """The node lifecycle controller marks a node's pods NotReady when kwok misses a lease renewal
    (a busy machine); kwok's stages must re-ready them, as a kubelet would, or their StatefulSets
    stay unready for good (this was a CI flake)."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_stateful_set(namespace, gpu_statefulset("steady", 1))
    wait_for(lambda: (apps.read_namespaced_stateful_set("steady", namespace).status.ready_replicas or 0) == 1,
             timeout=120, message="steady ready")
    # What MarkPodsNotReady does to the pod's status.
    core.patch_namespaced_pod_status("steady-0", namespace, {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "NodeNotReady"}]}})
    pod = core.read_namespaced_pod("steady-0", namespace)
    assert pod.status.phase == "Running"
    wait_for(lambda: (apps.read_namespaced_stateful_set("steady", namespace).status.ready_replicas or 0) == 1
             and {c.type: c.status for c in core.read_namespaced_pod("steady-0", namespace).status.conditions}[
                 "Ready"] == "True", timeout=60, message="steady-0 Ready again")


def test_deleting_an_owner_garbage_collects_its_dependents(kube, namespace):
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"a": "1"})
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid, block_owner_deletion=True
    )
    for i in range(3):
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"dep-{i}", owner_references=[ref])),
        )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Foreground")

    def deps_gone():
        names = {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
        return not ({"owner", "dep-0", "dep-1", "dep-2"} & names)

    wait_for(deps_gone, timeout=120, message="dependents garbage-collected")


def test_rbac_confines_a_user_to_its_namespace(control_plane, kube):
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    suffix = uuid.uuid4().hex[:6]
    org_a, org_b = f"org-a-{suffix}", f"org-b-{suffix}"
    try:
        for ns in (org_a, org_b):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        rbac.create_namespaced_role(
            org_a,
            {
                "metadata": {"name": "configmap-editor"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            org_a,
            {
                "metadata": {"name": "org-a-admins"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "configmap-editor",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "org-a-admins"}
                ],
            },
        )
        alice = control_plane.user_kubeconfig("alice", ["org-a-admins"])
        whoami = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=alice).stdout)
        assert whoami["status"]["userInfo"]["username"] == "alice"
        assert "org-a-admins" in whoami["status"]["userInfo"]["groups"]

        control_plane.kubectl(
            "-n", org_a, "create", "configmap", "allowed", "--from-literal=k=v", kubeconfig=alice
        )
        denied = control_plane.kubectl(
            "-n", org_b, "create", "configmap", "denied", "--from-literal=k=v", kubeconfig=alice, check=False
        )
        assert denied.returncode != 0
        assert 'User "alice" cannot create resource "configmaps"' in denied.stderr
        assert f'in the namespace "{org_b}"' in denied.stderr
        # The admin sees exactly what alice could and could not write.
        assert core.read_namespaced_config_map("allowed", org_a).data == {"k": "v"}
        with pytest.raises(ApiException) as err:
            core.read_namespaced_config_map("denied", org_b)
        assert err.value.status == 404
        # And alice cannot read cluster-scoped objects either.
        nodes = control_plane.kubectl("get", "nodes", kubeconfig=alice, check=False)
        assert nodes.returncode != 0 and "forbidden" in nodes.stderr
    finally:
        for ns in (org_a, org_b):
            core.delete_namespace(ns)


def test_two_clusters_serve_independently_and_stop_cleanly(control_plane_factory):
    hub = control_plane_factory.start("hub", nodes=1)
    site = control_plane_factory.start("site-a", nodes=1)
    assert hub.server != site.server
    hub_core = client.CoreV1Api(hub.api_client())
    site_core = client.CoreV1Api(site.api_client())

    hub_core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="only-on-hub"), data={"x": "1"})
    )
    assert hub_core.read_namespaced_config_map("only-on-hub", "default").data == {"x": "1"}
    with pytest.raises(ApiException) as err:
        site_core.read_namespaced_config_map("only-on-hub", "default")
    assert err.value.status == 404
    # Each has its own CA: the hub's admin credentials are not valid on the site.
    cross = site.kubectl("get", "ns", "--server", hub.server, check=False)
    assert cross.returncode != 0

    # Stopping the site leaves no process behind and the hub serving.
    site_pids = set(site.pids)
    assert len(site_pids) >= 6, site_pids  # launcher + etcd, apiserver, kcm, scheduler, kwok
    control_plane_factory.stop("site-a")
    assert not [p for p in site_pids if pid_running(p)]
    assert site.running_pids() == []
    assert not site.kubeconfig.exists()
    assert hub_core.read_namespaced_config_map("only-on-hub", "default").data == {"x": "1"}
    control_plane_factory.stop("hub")
    assert hub.running_pids() == []


def test_strip_finalizers_releases_a_stuck_object(kube, namespace):
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="held", finalizers=["example.com/hold"])),
    )
    core.delete_namespaced_config_map("held", namespace)
    assert core.read_namespaced_config_map("held", namespace).metadata.deletion_timestamp is not None
    assert strip_finalizers(kube, namespace) == 1

    def gone():
        try:
            core.read_namespaced_config_map("held", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=30, message="ConfigMap held deleted once its finalizer is stripped")
