"""Shape of the kubernetes-runtime manifests (builders/naming.py, builders/workloads.py)."""

from __future__ import annotations

import copy
import json
import re

import pytest

from flare_operator.api.compute import ComputeSpecSpec
from flare_operator.api.dataset_grant import DatasetSource
from flare_operator.builders import naming
from flare_operator.builders.naming import (
    client_name,
    federation_name,
    kit_secret_name,
    server_name,
    standard_labels,
)
from flare_operator.builders.workloads import (
    ENFORCEMENT_DIR,
    STARTUP_DIR,
    DatasetMount,
    client_manifests,
    server_manifests,
)
from flare_operator.config import LABEL_ORG, SiteSettings, Toleration

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
OPERATOR_LABELS = {"app.kubernetes.io/name": "flare-operator"}
OWNER = {"apiVersion": "flareop.io/v1alpha1", "kind": "ComputeSpec", "name": "esm2", "uid": "u-1",
         "controller": True, "blockOwnerDeletion": True}  # fmt: skip


def spec(**over) -> ComputeSpecSpec:
    data = {
        "model": {"id": "esm2-finetune", "version": "1.0.0"},
        "datasets": [{"org": "org-a", "id": "cells"}],
        "server": {"cpu": "1", "memory": "2Gi"},
        "client": {"cpu": "4", "memory": "16Gi", "gpu": 2},
    }
    data.update(over)
    return ComputeSpecSpec.model_validate(data)


def site(**over) -> SiteSettings:
    data = dict(
        org="org-a", site="org-a", namespace="org-a-site", hub_namespace="org-a",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        gpu_resource_name="nvidia.com/gpu", storage_class="fast-ssd", workspace_size="50Gi",
    )  # fmt: skip
    data.update(over)
    return SiteSettings(**data)


FED = federation_name("team-a", "esm2")


def build_server(**over):
    kw = dict(
        fed=FED, namespace="team-a", spec=spec(), image="img:1", image_pull_policy="IfNotPresent", command=None,
        kit_secret=kit_secret_name(FED, "server"), storage_class="standard", workspace_size="20Gi",
        operator_labels=OPERATOR_LABELS, owner=OWNER,
    )  # fmt: skip
    kw.update(over)
    return {m["kind"]: m for m in server_manifests(**kw)}


def build_client(**over):
    kw = dict(
        fed=FED, site=site(), spec=spec(), image="img:1", image_pull_policy="IfNotPresent", command=None,
        kit_secret=kit_secret_name(FED, "org-a"),
        dataset_mounts=[DatasetMount("cells", claim_name="cells-pvc", sub_path="v1/train.csv")],
        enforcement_configmap="enforcement", server_host="esm2-server.team-a.svc", fl_port=8002, owner=None,
    )  # fmt: skip
    kw.update(over)
    return {m["kind"]: m for m in client_manifests(**kw)}


def pod(manifests) -> dict:
    return manifests["StatefulSet"]["spec"]["template"]["spec"]


def mounts(manifests) -> dict[str, dict]:
    return {m["mountPath"]: m for m in pod(manifests)["containers"][0]["volumeMounts"]}


def volumes(manifests) -> dict[str, dict]:
    return {v["name"]: v for v in pod(manifests)["volumes"]}


# --- naming -------------------------------------------------------------------------------------


def test_federation_name_is_deterministic_short_and_dns_safe():
    assert federation_name("team-a", "esm2") == federation_name("team-a", "esm2")
    assert federation_name("team-a", "esm2").startswith("team-a-esm2-")
    for ns, name in [("team-a", "esm2"), ("x" * 63, "y" * 253), ("0abc", "a.b.c"), ("ns", "UPPER.case")]:
        fed = federation_name(ns, name)
        assert len(fed) <= 40 and DNS1035.match(fed), fed


def test_federation_names_never_collide():
    # Same "-"-joined text, and same truncated prefix: still different.
    assert federation_name("a-b", "c") != federation_name("a", "b-c")
    long = "n" * 60
    assert federation_name("ns", long + "1") != federation_name("ns", long + "2")
    names = {federation_name(f"ns{i % 7}", f"compute-{i}") for i in range(500)}
    assert len(names) == 500


def test_derived_names_fit_their_kinds():
    fed = federation_name("n" * 63, "c" * 253)
    assert len(server_name(fed)) <= 52 and DNS1035.match(server_name(fed))
    long_site = "s" * 63
    assert len(client_name(fed, long_site)) <= 52 and DNS1035.match(client_name(fed, long_site))
    assert client_name(fed, long_site) != client_name(fed, long_site[:-1] + "t")
    secret = kit_secret_name(fed, "admin@flareop.io")
    assert len(secret) <= 63 and DNS1035.match(secret)
    assert secret != kit_secret_name(fed, "admin-flareop-io")  # sanitising does not merge names
    assert kit_secret_name(FED, "org-a") == f"{FED}-kit-org-a"
    assert client_name(FED, "org-a") == f"{FED}-org-a"
    assert server_name(FED) == f"{FED}-server"
    assert naming.server_host(FED, "team-a") == f"{FED}-server.team-a.svc"


def test_standard_labels():
    labels = standard_labels(FED, "client", org="org-a")
    assert labels == {
        "app.kubernetes.io/name": "nvflare",
        "app.kubernetes.io/instance": FED,
        "app.kubernetes.io/component": "client",
        "app.kubernetes.io/part-of": "flare-operator",
        "app.kubernetes.io/managed-by": "flare-operator",
        "flareop.io/federation": FED,
        LABEL_ORG: "org-a",
    }
    assert LABEL_ORG not in standard_labels(FED, "server")
    assert all(len(v) <= 63 for v in labels.values())


# --- server ------------------------------------------------------------------------------------


def test_server_objects_names_namespace_labels_and_owner():
    objs = server_manifests(
        fed=FED, namespace="team-a", spec=spec(), image="img:1", image_pull_policy="IfNotPresent", command=None,
        kit_secret="kit", storage_class=None, workspace_size="1Gi", operator_labels=OPERATOR_LABELS, owner=OWNER,
    )  # fmt: skip
    assert [o["kind"] for o in objs] == ["NetworkPolicy", "Service", "StatefulSet"]  # fence first
    for o in objs:
        assert o["metadata"]["name"] == server_name(FED)
        assert o["metadata"]["namespace"] == "team-a"
        assert o["metadata"]["labels"] == standard_labels(FED, "server")
        assert o["metadata"]["ownerReferences"] == [OWNER]
    json.dumps(objs)  # plain data, ready to send


def test_server_statefulset_resources_workspace_and_kit():
    m = build_server()
    sts = m["StatefulSet"]["spec"]
    assert sts["replicas"] == 1
    assert sts["serviceName"] == server_name(FED)
    c = pod(m)["containers"][0]
    assert c["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    assert c["image"] == "img:1" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"][:4] == ["python3", "-u", "-m", "nvflare.private.fed.app.server.server_train"]
    assert ["-m", "/workspace", "-s", "fed_server.json"] == c["command"][4:8]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"fl": 8002, "admin": 8003}
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "workspace"
    assert claim["spec"]["storageClassName"] == "standard"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    mm = mounts(m)
    assert mm["/workspace"]["name"] == "workspace" and not mm["/workspace"].get("readOnly")
    assert mm[STARTUP_DIR] == {"name": "kit", "mountPath": STARTUP_DIR, "readOnly": True}
    assert mm["/workspace/local"]["readOnly"] is True
    assert volumes(m)["kit"]["secret"]["secretName"] == kit_secret_name(FED, "server")
    assert sts["selector"]["matchLabels"].items() <= sts["template"]["metadata"]["labels"].items()


def test_server_command_override_and_default_storage_class():
    m = build_server(command=["/bin/run-server", "--x"], storage_class=None)
    assert pod(m)["containers"][0]["command"] == ["/bin/run-server", "--x"]
    assert "storageClassName" not in m["StatefulSet"]["spec"]["volumeClaimTemplates"][0]["spec"]


def test_server_service_ports():
    svc = build_server()["Service"]["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["selector"] == {"flareop.io/federation": FED, "app.kubernetes.io/component": "server"}
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["ports"]} == {
        ("fl", 8002, "fl"),
        ("admin", 8003, "admin"),
    }
    single = build_server(fl_port=8443, admin_port=8443)["Service"]["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in single] == [("fl", 8443)]


def test_server_network_policy():
    pol = build_server(client_namespaces=["org-b-site", "org-a-site"], operator_namespace="flare-system")[
        "NetworkPolicy"
    ]["spec"]
    assert pol["policyTypes"] == ["Ingress"]
    assert pol["podSelector"]["matchLabels"] == {
        "flareop.io/federation": FED,
        "app.kubernetes.io/component": "server",
    }
    clients, admin = pol["ingress"]
    assert clients["ports"] == [{"protocol": "TCP", "port": 8002}]
    (peer,) = clients["from"]
    assert peer["podSelector"]["matchLabels"] == {
        "flareop.io/federation": FED,
        "app.kubernetes.io/component": "client",
    }
    assert peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["org-a-site", "org-b-site"]
    assert admin["ports"] == [{"protocol": "TCP", "port": 8003}]
    assert admin["from"][0]["podSelector"] == {"matchLabels": OPERATOR_LABELS}
    assert admin["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["flare-system"]
    # Clients on other clusters: the FL port (only) from anywhere.
    ext = build_server(allow_external_clients=True)["NetworkPolicy"]["spec"]["ingress"]
    assert {"ports": [{"protocol": "TCP", "port": 8002}]} in ext
    assert all("from" in rule or rule["ports"] == [{"protocol": "TCP", "port": 8002}] for rule in ext)
    # Without namespaces: any namespace, still only pods with the right labels.
    default = build_server()["NetworkPolicy"]["spec"]["ingress"][0]["from"][0]
    assert default["namespaceSelector"] == {}


def test_server_refuses_an_empty_operator_selector_and_bad_ports():
    with pytest.raises(ValueError, match="operator_labels"):
        build_server(operator_labels={})
    with pytest.raises(ValueError, match="fl_port"):
        build_server(fl_port=0)


# --- client --------------------------------------------------------------------------------------


def test_client_objects_in_the_site_namespace():
    objs = client_manifests(
        fed=FED, site=site(), spec=spec(), image="img:1", image_pull_policy="Always", command=None, kit_secret="kit",
        dataset_mounts=[], enforcement_configmap="enf", server_host="h", fl_port=8002, owner=OWNER,
    )  # fmt: skip
    assert [o["kind"] for o in objs] == ["NetworkPolicy", "StatefulSet"]
    for o in objs:
        assert o["metadata"]["name"] == client_name(FED, "org-a")
        assert o["metadata"]["namespace"] == "org-a-site"
        assert o["metadata"]["labels"] == standard_labels(FED, "client", "org-a")
        assert o["metadata"]["ownerReferences"] == [OWNER]
    assert "ownerReferences" not in build_client(owner=None)["StatefulSet"]["metadata"]


def test_client_gpu_cpu_memory_requests_equal_limits():
    c = pod(build_client())["containers"][0]
    expected = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert c["resources"] == {"requests": expected, "limits": expected}
    amd = pod(build_client(site=site(gpu_resource_name="amd.com/gpu")))["containers"][0]["resources"]
    assert amd["limits"]["amd.com/gpu"] == "2" and "nvidia.com/gpu" not in amd["limits"]
    cpu_only = pod(build_client(spec=spec(client={"cpu": "2", "memory": "4Gi", "gpu": 0})))["containers"][0]
    assert cpu_only["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert cpu_only["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}


def test_client_scheduling_from_site_settings():
    p = pod(build_client())
    assert p["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert p["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    plain = pod(build_client(site=site(node_selector={}, tolerations=[])))
    assert "nodeSelector" not in plain and "tolerations" not in plain


def test_client_volumes_read_only_and_workspace_claim():
    m = build_client(
        dataset_mounts=[
            DatasetMount("cells", claim_name="cells-pvc", sub_path="v1/train.csv"),
            DatasetMount("structs", claim_name="structs-pvc"),
        ]
    )
    mm = mounts(m)
    assert mm["/data/cells/train.csv"] == {
        "name": "data-cells", "mountPath": "/data/cells/train.csv", "readOnly": True, "subPath": "v1/train.csv",
    }  # fmt: skip
    assert mm["/data/structs"]["readOnly"] is True and "subPath" not in mm["/data/structs"]
    vols = volumes(m)
    assert vols["data-cells"]["persistentVolumeClaim"] == {"claimName": "cells-pvc", "readOnly": True}
    assert mm[STARTUP_DIR]["readOnly"] is True
    assert mm[ENFORCEMENT_DIR]["readOnly"] is True
    assert vols["enforcement"]["configMap"]["name"] == "enforcement"
    assert vols["kit"]["secret"]["secretName"] == kit_secret_name(FED, "org-a")
    # Everything read-only except the workspace, its state sub-path and /tmp.
    writable = sorted(p for p, x in mm.items() if not x.get("readOnly"))
    assert writable == ["/tmp", "/tmp/nvflare", "/workspace"]
    (claim,) = m["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    env = {e["name"]: e["value"] for e in pod(m)["containers"][0]["env"]}
    assert env["FLAREOP_ENFORCEMENT_DIR"] == ENFORCEMENT_DIR
    assert env["FLAREOP_SERVER"] == "esm2-server.team-a.svc:8002"


def test_client_default_command_uses_the_participant_and_org():
    cmd = pod(build_client(participant="org-a-client"))["containers"][0]["command"]
    assert "nvflare.private.fed.app.client.client_train" in cmd
    assert "uid=org-a-client" in cmd and "org=org_a" in cmd and "fed_client.json" in cmd  # NVFlare org names: [A-Za-z0-9_]
    assert "uid=org-a" in pod(build_client())["containers"][0]["command"]


def test_local_config_replaces_the_kit_as_local_folder():
    m = build_client(local_config="org-a-local")
    assert mounts(m)["/workspace/local"]["name"] == "local-config"
    assert volumes(m)["local-config"]["configMap"]["name"] == "org-a-local"


def test_dataset_mount_rules():
    assert DatasetMount("d", claim_name="c").mount_path == "/data/d"
    assert DatasetMount("d", host_path="/srv/x.parquet").mount_path == "/data/d/x.parquet"
    assert DatasetMount("d", claim_name="c", mount_path="/mnt/d/").path == "/mnt/d"
    with pytest.raises(ValueError, match="exactly one"):
        DatasetMount("d")
    with pytest.raises(ValueError, match="exactly one"):
        DatasetMount("d", claim_name="c", host_path="/x")
    with pytest.raises(ValueError, match=r"\.\."):
        DatasetMount("d", claim_name="c", sub_path="../other")
    with pytest.raises(ValueError, match="overlaps"):
        DatasetMount("d", claim_name="c", mount_path="/workspace/data")
    with pytest.raises(ValueError, match="both mount"):
        build_client(dataset_mounts=[DatasetMount("a", claim_name="c", mount_path="/d"),
                                     DatasetMount("b", claim_name="c", mount_path="/d")])  # fmt: skip
    src = DatasetSource.model_validate(
        {"id": "cells", "persistentVolumeClaim": {"claimName": "pvc", "subPath": "a/b.csv"}}
    )
    assert DatasetMount.from_grant(src) == DatasetMount("cells", claim_name="pvc", sub_path="a/b.csv")
    host = DatasetSource.model_validate({"id": "cells", "path": "/srv/cells.csv"})
    assert DatasetMount.from_grant(host).host_path == "/srv/cells.csv"


def test_host_path_dataset_is_a_read_only_host_path_volume():
    m = build_client(dataset_mounts=[DatasetMount("cells", host_path="/srv/cells")])
    assert volumes(m)["data-cells"]["hostPath"] == {"path": "/srv/cells"}
    assert mounts(m)["/data/cells/cells"]["readOnly"] is True


def test_client_network_policy():
    pol = build_client(server_namespace="team-a")["NetworkPolicy"]["spec"]
    assert pol["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in pol  # no ingress at all
    assert pol["podSelector"]["matchLabels"] == {
        "flareop.io/federation": FED, "app.kubernetes.io/component": "client", LABEL_ORG: "org-a",
    }  # fmt: skip
    server, dns = pol["egress"]
    assert server["ports"] == [{"protocol": "TCP", "port": 8002}]
    (peer,) = server["to"]
    assert peer["podSelector"]["matchLabels"] == {
        "flareop.io/federation": FED,
        "app.kubernetes.io/component": "server",
    }
    assert peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["team-a"]
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    # Server on another cluster: any address, but still only the FL port.
    remote = build_client(fl_port=443)["NetworkPolicy"]["spec"]["egress"][0]
    assert remote["ports"] == [{"protocol": "TCP", "port": 443}]
    assert {"ipBlock": {"cidr": "0.0.0.0/0"}} in remote["to"]


# --- both --------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [build_server, build_client])
def test_restricted_pod_security(build):
    p = pod(build())
    sc = p["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] > 0 and sc["runAsGroup"] > 0 and sc["fsGroup"] > 0
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert p["automountServiceAccountToken"] is False
    (c,) = p["containers"]
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["runAsNonRoot"] is True
    assert volumes({"StatefulSet": {"spec": {"template": {"spec": p}}}})["tmp"] == {
        "name": "tmp",
        "emptyDir": {},
    }
    # Only volume types the restricted profile allows.
    allowed = {
        "emptyDir",
        "secret",
        "configMap",
        "persistentVolumeClaim",
        "projected",
        "downwardAPI",
        "csi",
        "ephemeral",
    }
    for v in p["volumes"]:
        assert set(v) - {"name"} <= allowed, v


@pytest.mark.parametrize("build", [build_server, build_client])
def test_scale_to_zero_keeps_everything_else(build):
    on = build()
    off = build(spec=spec(active=False))
    assert on["StatefulSet"]["spec"]["replicas"] == 1
    assert off["StatefulSet"]["spec"]["replicas"] == 0
    on_rest = copy.deepcopy(on)
    on_rest["StatefulSet"]["spec"]["replicas"] = 0
    assert on_rest == off  # same identity, workspace claim, everything


def test_builders_are_deterministic():
    assert build_server() == build_server()
    assert build_client() == build_client()
    assert naming.selector_labels(FED, "server").items() <= standard_labels(FED, "server").items()


def test_workspace_retention_is_the_statefulsets_claim_policy():
    policy = "persistentVolumeClaimRetentionPolicy"
    assert build_server()["StatefulSet"]["spec"][policy] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    assert build_client(workspace_retention="Retain")["StatefulSet"]["spec"][policy]["whenDeleted"] == "Retain"
    with pytest.raises(ValueError, match="workspace_retention"):
        build_server(workspace_retention="Keep")


def test_the_client_finds_the_sites_own_config_in_its_local_folder():
    env = {e["name"]: e.get("value") for e in pod(build_client(local_config="kit-local"))["containers"][0]["env"]}
    assert env["FLAREOP_SITE_CONFIG"] == "/workspace/local/site.json"
    assert "FLAREOP_SITE_CONFIG" not in {e["name"] for e in pod(build_client())["containers"][0]["env"]}


def test_sites_on_other_clusters_get_the_fl_port_only_on_an_external_service():
    manifests = server_manifests(
        fed=FED, namespace="team-a", spec=spec(), image="img:1", image_pull_policy="IfNotPresent", command=None,
        kit_secret="kit", storage_class=None, workspace_size="1Gi", operator_labels=OPERATOR_LABELS, owner=OWNER,
        external_service_type="NodePort", external_node_port=30802)
    services = [m for m in manifests if m["kind"] == "Service"]
    assert [s["spec"]["type"] for s in services] == ["ClusterIP", "NodePort"]
    assert services[1]["spec"]["ports"] == [{"name": "fl", "port": 8002, "targetPort": "fl", "protocol": "TCP",
                                             "nodePort": 30802}], "never the admin port"
    assert manifests[-1]["kind"] == "StatefulSet"
    with pytest.raises(ValueError, match="NodePort range"):
        server_manifests(fed=FED, namespace="team-a", spec=spec(), image="i", image_pull_policy="Never", command=None,
                         kit_secret="kit", storage_class=None, workspace_size="1Gi", operator_labels=OPERATOR_LABELS,
                         owner=OWNER, external_service_type="NodePort", external_node_port=8002)
