"""Kubernetes runtime manifests of a federation: the NVFlare server on the hub, a client per site — pure.

``server_manifests`` and ``client_manifests`` return plain manifest dicts (apiVersion, kind,
metadata, spec) in apply order — NetworkPolicy first, so no pod ever runs unfenced — ready for
server-side apply under one field manager. No I/O, no Kubernetes client, no kopf.

Container layout (server and client alike)::

    /workspace               volume claim "workspace" (RWO, site/hub storage class and size), rw:
                             the NVFlare workspace root (``-m /workspace``): run folders, logs.
                             Survives scale-to-zero (persistentVolumeClaimRetentionPolicy
                             whenScaled=Retain) and is deleted with the StatefulSet (whenDeleted=Delete), or kept
                             for inspection (``workspace_retention="Retain"``: the operator's
                             ``workspaceRetention``, a site's own setting for its clients).
    /workspace/startup       the kit Secret, read-only (mode 0440, group = fsGroup): the provisioned
                             startup folder (fed_server.json / fed_client.json, certificates, private
                             key, rootCA.pem, signature.json).
    /workspace/local         the site configuration folder NVFlare requires, read-only: by default the
                             same kit Secret (so the kit also carries local/'s files: resources.json
                             [.default], authorization.json[.default], privacy.json, log_config.json
                             [.default]; the names do not clash with startup/'s); or the ConfigMap
                             named by ``local_config``.
    /tmp                     emptyDir, rw (the root filesystem is read-only; HOME=/tmp).
    /tmp/nvflare             sub-path "nvflare-state" of the workspace claim, rw: where the provisioned
                             resources.json keeps the job store and snapshots by default, so they
                             survive restarts and scale-to-zero.
    client only:
    /etc/flareop/enforcement the site-enforcement ConfigMap (approved job content hashes), read-only,
                             read by the site's NVFlare component (env FLAREOP_ENFORCEMENT_DIR).
    /data/<dataset-id>[/<basename of sub_path>]
                             each granted dataset, read-only (DatasetMount.mount_path, the path the
                             NVFlare job gets as the site's dataset path).

Ports: FL 8002 ("fl"), admin 8003 ("admin") by default; one Service port when they are equal.
Pods: restricted Pod Security (non-root uid/gid/fsGroup 10001, no privilege escalation, drop ALL,
seccomp RuntimeDefault, read-only root filesystem), no service-account token, no service links.

Default commands (``command=None``), NVFlare's own (its docker/compose templates)::

    python3 -u -m nvflare.private.fed.app.server.server_train -m /workspace -s fed_server.json
        --set secure_train=true config_folder=config
    python3 -u -m nvflare.private.fed.app.client.client_train -m /workspace -s fed_client.json
        --set secure_train=true uid=<participant> org=<org> config_folder=config
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api.compute import ComputeSpecSpec
from ..config import SiteSettings
from .federation import nvflare_org
from .naming import (
    COMPONENT_CLIENT,
    COMPONENT_SERVER,
    client_name,
    dns_label,
    external_service_name,
    selector_labels,
    server_name,
    standard_labels,
)

Manifest = dict[str, Any]

# --- layout ----------------------------------------------------------------------------------------

RUN_AS_USER = 10001
RUN_AS_GROUP = 10001
FS_GROUP = 10001

WORKSPACE_VOLUME = "workspace"
KIT_VOLUME = "kit"
LOCAL_VOLUME = "local-config"
TMP_VOLUME = "tmp"
ENFORCEMENT_VOLUME = "enforcement"

WORKSPACE_DIR = "/workspace"
STARTUP_DIR = f"{WORKSPACE_DIR}/startup"
LOCAL_DIR = f"{WORKSPACE_DIR}/local"
TMP_DIR = "/tmp"
STATE_DIR = "/tmp/nvflare"
STATE_SUBPATH = "nvflare-state"
ENFORCEMENT_DIR = "/etc/flareop/enforcement"
DATA_ROOT = "/data"
RESERVED_DIRS = (WORKSPACE_DIR, TMP_DIR, ENFORCEMENT_DIR)

DEFAULT_FL_PORT = 8002
DEFAULT_ADMIN_PORT = 8003
DNS_PORT = 53

SERVER_CONTAINER = "server"
CLIENT_CONTAINER = "client"
SECRET_MODE = 0o440
CONFIGMAP_MODE = 0o444

SERVER_MODULE = "nvflare.private.fed.app.server.server_train"
CLIENT_MODULE = "nvflare.private.fed.app.client.client_train"

ENV_ENFORCEMENT_DIR = "FLAREOP_ENFORCEMENT_DIR"
ENV_FEDERATION = "FLAREOP_FEDERATION"
ENV_SERVER = "FLAREOP_SERVER"
ENV_SITE = "FLAREOP_SITE"
ENV_SITE_CONFIG = "FLAREOP_SITE_CONFIG"  # the site's own config (dataset paths), read by the client's jobs
SITE_CONFIG_FILE = "site.json"  # in the client's local/ folder (the ``local_config`` ConfigMap)


@dataclass(frozen=True)
class DatasetMount:
    """One granted dataset, mounted read-only into a site's client.

    Exactly one of ``claim_name`` (a PersistentVolumeClaim in the site namespace: kubernetes
    runtime, allowed by restricted Pod Security) and ``host_path`` (a node path: NOT allowed in
    a namespace enforcing restricted or baseline Pod Security; for single-node development only).
    ``sub_path``, when set, is the only part of the volume the pod sees (least exposure).
    ``mount_path`` defaults to /data/<dataset_id>[/<basename of sub_path or host_path>], so a
    file stays a file at a predictable path; it is the dataset path to give the NVFlare job.
    """

    dataset_id: str
    claim_name: str | None = None
    host_path: str | None = None
    sub_path: str = ""
    mount_path: str = ""

    def __post_init__(self) -> None:
        if not self.dataset_id:
            raise ValueError("DatasetMount needs a dataset_id")
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError(f"dataset {self.dataset_id}: set exactly one of claim_name and host_path")
        if self.host_path is not None and not posixpath.isabs(self.host_path):
            raise ValueError(f"dataset {self.dataset_id}: host_path must be absolute, got {self.host_path!r}")
        sub = (self.sub_path or "").strip("/")
        if sub and any(part in ("..", ".") for part in sub.split("/")):
            raise ValueError(
                f"dataset {self.dataset_id}: sub_path {self.sub_path!r} must not contain '..' or '.'"
            )
        object.__setattr__(self, "sub_path", sub)
        mount = self.mount_path
        if not mount:
            base = posixpath.basename(sub or (self.host_path or "").rstrip("/"))
            mount = (
                posixpath.join(DATA_ROOT, self.dataset_id, base)
                if base
                else posixpath.join(DATA_ROOT, self.dataset_id)
            )
        mount = posixpath.normpath(mount)
        if not posixpath.isabs(mount):
            raise ValueError(
                f"dataset {self.dataset_id}: mount_path must be absolute, got {self.mount_path!r}"
            )
        for reserved in RESERVED_DIRS:
            if mount == reserved or mount.startswith(reserved + "/") or reserved.startswith(mount + "/"):
                raise ValueError(f"dataset {self.dataset_id}: mount_path {mount} overlaps {reserved}")
        object.__setattr__(self, "mount_path", mount)

    @property
    def path(self) -> str:
        """Where the client sees the data (the NVFlare job's dataset path for this site)."""
        return self.mount_path

    @classmethod
    def from_grant(cls, dataset: Any, mount_path: str = "") -> DatasetMount:
        """From a DatasetGrant's ``spec.dataset`` (api.dataset_grant.DatasetSource): its volume
        claim (+ sub path), or its node path."""
        pvc = getattr(dataset, "persistent_volume_claim", None)
        if pvc is not None:
            return cls(
                dataset.id, claim_name=pvc.claim_name, sub_path=pvc.sub_path or "", mount_path=mount_path
            )
        return cls(dataset.id, host_path=dataset.path, mount_path=mount_path)


# --- building blocks ---------------------------------------------------------------------------


def _metadata(name: str, namespace: str, labels: Mapping[str, str], owner: Mapping[str, Any] | None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner is not None:
        missing = {"apiVersion", "kind", "name", "uid"} - set(owner)
        if missing:
            raise ValueError(f"owner reference lacks {sorted(missing)}")
        meta["ownerReferences"] = [dict(owner)]
    return meta


def pod_security_context() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": FS_GROUP,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _equal_resources(values: Mapping[str, str]) -> dict:
    return {"requests": dict(values), "limits": dict(values)}


def _workspace_claim(labels: Mapping[str, str], storage_class: str | None, size: str) -> dict:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": WORKSPACE_VOLUME, "labels": dict(labels)}, "spec": spec}


def _common_volumes(kit_secret: str, local_config: str | None) -> list[dict]:
    volumes = [
        {"name": TMP_VOLUME, "emptyDir": {}},
        {"name": KIT_VOLUME, "secret": {"secretName": kit_secret, "defaultMode": SECRET_MODE}},
    ]
    if local_config:
        volumes.append(
            {"name": LOCAL_VOLUME, "configMap": {"name": local_config, "defaultMode": CONFIGMAP_MODE}}
        )
    return volumes


def _common_mounts(local_config: str | None) -> list[dict]:
    return [
        {"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE_DIR},
        {"name": KIT_VOLUME, "mountPath": STARTUP_DIR, "readOnly": True},
        {"name": LOCAL_VOLUME if local_config else KIT_VOLUME, "mountPath": LOCAL_DIR, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": TMP_DIR},
        {"name": WORKSPACE_VOLUME, "mountPath": STATE_DIR, "subPath": STATE_SUBPATH},
    ]


def _base_env(fed: str) -> list[dict]:
    return [
        {"name": "HOME", "value": TMP_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": ENV_FEDERATION, "value": fed},
    ]


def _pod_spec(container: dict, volumes: list[dict], **extra: Any) -> dict:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": volumes,
    }
    spec.update({k: v for k, v in extra.items() if v})
    return spec


def _statefulset(
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    selector: Mapping[str, str],
    replicas: int,
    pod_spec: dict,
    claim: dict,
    owner: Mapping[str, Any] | None,
    workspace_retention: str = "Delete",
) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(name, namespace, labels, owner),
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": dict(selector)},
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "revisionHistoryLimit": 3,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": workspace_retention, "whenScaled": "Retain"},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
            "volumeClaimTemplates": [claim],
        },
    }


def _retention(value: str) -> str:
    if value not in ("Delete", "Retain"):
        raise ValueError(f"workspace_retention must be Delete or Retain, got {value!r}")
    return value


def _check_port(port: int, what: str) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what} must be a port number 1..65535, got {port!r}")


def _namespace_selector(namespaces: Sequence[str] | None) -> dict:
    """All namespaces ({}), or exactly these (by the kubernetes.io/metadata.name label)."""
    if namespaces is None:
        return {}
    return {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(set(namespaces))}
        ]
    }


# --- the server (hub) ----------------------------------------------------------------------------


def server_command(fl_config: str = "fed_server.json") -> list[str]:
    return [
        "python3", "-u", "-m", SERVER_MODULE, "-m", WORKSPACE_DIR, "-s", fl_config,
        "--set", "secure_train=true", "config_folder=config",
    ]  # fmt: skip


def server_manifests(
    *,
    fed: str,
    namespace: str,
    spec: ComputeSpecSpec,
    image: str,
    image_pull_policy: str,
    command: list[str] | None,
    kit_secret: str,
    fl_port: int = DEFAULT_FL_PORT,
    admin_port: int = DEFAULT_ADMIN_PORT,
    storage_class: str | None,
    workspace_size: str,
    operator_labels: dict,
    owner: dict | None,
    allow_external_clients: bool = False,
    client_namespaces: Sequence[str] | None = None,
    operator_namespace: str | None = None,
    local_config: str | None = None,
    workspace_retention: str = "Delete",
    external_service_type: str | None = None,
    external_node_port: int | None = None,
) -> list[Manifest]:
    """NetworkPolicy, Service and StatefulSet of federation ``fed``'s NVFlare server, in ``namespace``.

    - StatefulSet ``server_name(fed)``: 1 replica (0 when ``spec.active`` is false), cpu/memory
      requests = limits from ``spec.server``, the workspace claim, the kit read-only.
    - Service ``server_name(fed)`` (ClusterIP): ports "fl" and "admin" (one when equal); the
      clients' target is ``<name>.<namespace>.svc``.
    - NetworkPolicy ``server_name(fed)``: ingress to the FL port from pods labelled as this
      federation's clients (in ``client_namespaces``, or any namespace when None), from anywhere
      when ``allow_external_clients`` (clients on other clusters); the admin port only from pods
      matching ``operator_labels`` (in ``operator_namespace``, or any namespace when None).
    - With ``external_service_type`` (NodePort or LoadBalancer): Service ``external_service_name(fed)``
      of that type with the FL port only (``external_node_port``, or one the API server picks) — for
      sites on other clusters; the admin port is never exposed. TLS is end to end: whatever fronts it
      must pass TCP through, never terminate TLS.
    """
    _check_port(fl_port, "fl_port")
    _check_port(admin_port, "admin_port")
    if not operator_labels:
        raise ValueError(
            "operator_labels must not be empty: an empty selector would open the admin port to every pod"
        )
    name = server_name(fed)
    labels = standard_labels(fed, COMPONENT_SERVER)
    selector = selector_labels(fed, COMPONENT_SERVER)
    replicas = 1 if spec.active else 0

    ports = [{"name": "fl", "containerPort": fl_port, "protocol": "TCP"}]
    if admin_port != fl_port:
        ports.append({"name": "admin", "containerPort": admin_port, "protocol": "TCP"})
    container = {
        "name": SERVER_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": list(command) if command else server_command(),
        "workingDir": WORKSPACE_DIR,
        "env": _base_env(fed),
        "ports": ports,
        "resources": _equal_resources({"cpu": spec.server.cpu, "memory": spec.server.memory}),
        "securityContext": container_security_context(),
        "volumeMounts": _common_mounts(local_config),
        "readinessProbe": {"tcpSocket": {"port": "fl"}, "periodSeconds": 10, "failureThreshold": 3},
    }
    sts = _statefulset(
        name=name,
        namespace=namespace,
        labels=labels,
        selector=selector,
        replicas=replicas,
        pod_spec=_pod_spec(container, _common_volumes(kit_secret, local_config)),
        claim=_workspace_claim(labels, storage_class, workspace_size),
        owner=owner,
        workspace_retention=_retention(workspace_retention),
    )

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [
                {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"], "protocol": "TCP"}
                for p in ports
            ],
        },
    }

    client_peer = {
        "namespaceSelector": _namespace_selector(client_namespaces),
        "podSelector": {"matchLabels": selector_labels(fed, COMPONENT_CLIENT)},
    }
    operator_peer = {
        "namespaceSelector": _namespace_selector([operator_namespace] if operator_namespace else None),
        "podSelector": {"matchLabels": dict(operator_labels)},
    }
    fl = [{"protocol": "TCP", "port": fl_port}]
    ingress: list[dict] = [{"from": [client_peer], "ports": fl}]
    if allow_external_clients:
        ingress.append({"ports": fl})  # no "from": any source, FL port only (mutual TLS still applies)
    ingress.append({"from": [operator_peer], "ports": [{"protocol": "TCP", "port": admin_port}]})
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace, labels, owner),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
    out = [policy, service]
    if external_service_type:
        out.append(external_service(fed=fed, namespace=namespace, fl_port=fl_port, service_type=external_service_type,
                                    node_port=external_node_port, owner=owner))
    return [*out, sts]


def external_service(*, fed: str, namespace: str, fl_port: int = DEFAULT_FL_PORT, service_type: str,
                     node_port: int | None, owner: dict | None) -> Manifest:
    """Service ``external_service_name(fed)``: the server's FL port only, as a NodePort or LoadBalancer."""
    if service_type not in ("NodePort", "LoadBalancer"):
        raise ValueError(f"external_service_type must be NodePort or LoadBalancer, got {service_type!r}")
    port: dict[str, Any] = {"name": "fl", "port": fl_port, "targetPort": "fl", "protocol": "TCP"}
    if node_port is not None:
        if not 30000 <= node_port <= 32767:
            raise ValueError(f"external_node_port must be in the NodePort range 30000-32767, got {node_port}")
        port["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(external_service_name(fed), namespace, standard_labels(fed, COMPONENT_SERVER), owner),
        "spec": {"type": service_type, "selector": selector_labels(fed, COMPONENT_SERVER), "ports": [port]},
    }


# --- a client (site) ---------------------------------------------------------------------------------


def client_command(participant: str, org: str, fl_config: str = "fed_client.json") -> list[str]:
    return [
        "python3", "-u", "-m", CLIENT_MODULE, "-m", WORKSPACE_DIR, "-s", fl_config,
        "--set", "secure_train=true", f"uid={participant}", f"org={org}", "config_folder=config",
    ]  # fmt: skip


def _tolerations(site: SiteSettings) -> list[dict]:
    out = []
    for t in site.tolerations:
        d = {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}
        out.append({k: v for k, v in d.items() if v})
    return out


def _dataset_volumes(mounts: Sequence[DatasetMount]) -> tuple[list[dict], list[dict]]:
    volumes, volume_mounts, seen = [], [], {}
    for m in mounts:
        if m.mount_path in seen:
            raise ValueError(f"datasets {seen[m.mount_path]} and {m.dataset_id} both mount at {m.mount_path}")
        seen[m.mount_path] = m.dataset_id
        vol_name = dns_label(f"data-{m.dataset_id}")
        if any(v["name"] == vol_name for v in volumes):
            vol_name = dns_label(f"data-{m.dataset_id}-{len(volumes)}")
        if m.claim_name is not None:
            source = {"persistentVolumeClaim": {"claimName": m.claim_name, "readOnly": True}}
        else:
            source = {"hostPath": {"path": m.host_path}}
        volumes.append({"name": vol_name, **source})
        mount = {"name": vol_name, "mountPath": m.mount_path, "readOnly": True}
        if m.sub_path:
            mount["subPath"] = m.sub_path
        volume_mounts.append(mount)
    return volumes, volume_mounts


def client_manifests(
    *,
    fed: str,
    site: SiteSettings,
    spec: ComputeSpecSpec,
    image: str,
    image_pull_policy: str,
    command: list[str] | None,
    kit_secret: str,
    dataset_mounts: list[DatasetMount],
    enforcement_configmap: str,
    server_host: str,
    fl_port: int = DEFAULT_FL_PORT,
    owner: dict | None,
    participant: str | None = None,
    server_namespace: str | None = None,
    local_config: str | None = None,
    workspace_retention: str = "Delete",
) -> list[Manifest]:
    """NetworkPolicy and StatefulSet of ``site``'s NVFlare client of federation ``fed``, in ``site.namespace``.

    - StatefulSet ``client_name(fed, site.site)``: 1 replica (0 when ``spec.active`` is false),
      cpu/memory (and ``site.gpu_resource_name`` when ``spec.client.gpu`` > 0) requests = limits,
      the site's nodeSelector and tolerations, the datasets / kit / enforcement ConfigMap
      read-only, a workspace claim of ``site.storage_class`` / ``site.workspace_size``.
    - NetworkPolicy ``client_name(fed, site.site)``: no ingress; egress only to the server's FL
      port — the server pods in ``server_namespace`` when the server is on this cluster, any
      address when None (server on the hub cluster) — and DNS (53 UDP/TCP).

    ``participant`` is the NVFlare client name in the kit (default ``site.site``); ``server_host``
    is exported as FLAREOP_SERVER=<host>:<fl_port> (the kit's fed_client.json holds the target).
    """
    _check_port(fl_port, "fl_port")
    if not server_host:
        raise ValueError("server_host must not be empty")
    participant = participant or site.site
    name = client_name(fed, site.site)
    namespace = site.namespace
    labels = standard_labels(fed, COMPONENT_CLIENT, site.org)
    selector = selector_labels(fed, COMPONENT_CLIENT, site.org)
    replicas = 1 if spec.active else 0

    limits = {"cpu": spec.client.cpu, "memory": spec.client.memory}
    if spec.client.gpu > 0:
        limits[site.gpu_resource_name] = str(spec.client.gpu)
    data_volumes, data_mounts = _dataset_volumes(dataset_mounts)
    volumes = [
        *_common_volumes(kit_secret, local_config),
        {
            "name": ENFORCEMENT_VOLUME,
            "configMap": {"name": enforcement_configmap, "defaultMode": CONFIGMAP_MODE},
        },
        *data_volumes,
    ]
    mounts = [
        *_common_mounts(local_config),
        {"name": ENFORCEMENT_VOLUME, "mountPath": ENFORCEMENT_DIR, "readOnly": True},
        *data_mounts,
    ]
    env = [
        *_base_env(fed),
        {"name": ENV_SITE, "value": participant},
        {"name": ENV_SERVER, "value": f"{server_host}:{fl_port}"},
        {"name": ENV_ENFORCEMENT_DIR, "value": ENFORCEMENT_DIR},
    ]
    if local_config:
        env.append({"name": ENV_SITE_CONFIG, "value": f"{LOCAL_DIR}/{SITE_CONFIG_FILE}"})
    container = {
        "name": CLIENT_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": list(command) if command else client_command(participant, nvflare_org(site.org)),
        "workingDir": WORKSPACE_DIR,
        "env": env,
        "resources": _equal_resources(limits),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    pod_spec = _pod_spec(
        container,
        volumes,
        nodeSelector=dict(site.node_selector),
        tolerations=_tolerations(site),
    )
    sts = _statefulset(
        name=name,
        namespace=namespace,
        labels=labels,
        selector=selector,
        replicas=replicas,
        pod_spec=pod_spec,
        claim=_workspace_claim(labels, site.storage_class, site.workspace_size),
        owner=owner,
        workspace_retention=_retention(workspace_retention),
    )

    if server_namespace:
        server_peers: list[dict] = [
            {
                "namespaceSelector": _namespace_selector([server_namespace]),
                "podSelector": {"matchLabels": selector_labels(fed, COMPONENT_SERVER)},
            }
        ]
    else:
        server_peers = [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace, labels, owner),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [
                {"to": server_peers, "ports": [{"protocol": "TCP", "port": fl_port}]},
                {"ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}]},
            ],
        },
    }
    return [policy, sts]
