"""pytest plugin: local Kubernetes control planes as fixtures.

Register with ``pytest_plugins = ["tests.support.kube_fixtures"]`` in tests/conftest.py.

Fixtures
  control_plane_factory  session  ``factory.start(name, *, nodes=2, gpus=8) -> ControlPlane``;
                                  extra clusters (a hub and sites), all stopped at session end
  control_plane          session  the session's shared cluster, started on first request
  kube                   session  kubernetes.client.ApiClient (admin) for ``control_plane``
  namespace              function a fresh namespace in ``control_plane`` (its default
                                  ServiceAccount exists); at teardown every object's finalizers
                                  are stripped and the namespace deleted (not awaited)
  real_node_cluster      session  a cluster with a real node (kubelet, containerd, kube-proxy,
                                  CoreDNS; no kwok nodes) and the project's images loaded
                                  (tests/support/images.py); needs root
  real_node_namespace    function a fresh namespace in ``real_node_cluster`` that enforces the
                                  restricted Pod Security Standard

Nothing starts unless a test asks for one of these. At session end every cluster is stopped
and the factory fails the session's last teardown if any launcher/component process is left.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.controlplane import ControlPlane, bin_dir
from tests.support.images import ProjectImages, project_images

__all__ = [
    "ControlPlaneFactory",
    "control_plane",
    "control_plane_factory",
    "kube",
    "namespace",
    "real_node_cluster",
    "real_node_namespace",
    "real_node_images",
    "wait_for",
    "strip_finalizers",
    "raw_request",
]


class WaitedInVain(AssertionError):
    """Raised by a ``wait_for`` predicate that knows the state it waits for can no longer come."""


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, message: str = ""):
    """Poll ``predicate`` until it returns a truthy value (returned) or raise TimeoutError.
    Exceptions from the predicate count as "not yet" and the last one is reported, except
    ``WaitedInVain``, which ends the wait at once."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except WaitedInVain:
            raise
        except Exception as exc:  # noqa: BLE001 - polling
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f": last error {last_exc!r}" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {message or predicate}{detail}")
        time.sleep(interval)


class ControlPlaneFactory:
    """Starts clusters under one base directory and stops them all at the end."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.clusters: dict[str, ControlPlane] = {}
        self.tracked_pids: set[int] = set()

    def start(self, name: str, **kwargs) -> ControlPlane:
        if name in self.clusters and self.clusters[name].running:
            raise ValueError(f"cluster {name!r} is already running")
        cp = ControlPlane.start(self.base / name, name, **kwargs)
        self.clusters[name] = cp
        self.tracked_pids.update(cp.pids)
        return cp

    def stop(self, name: str) -> None:
        cp = self.clusters[name]
        cp.stop()
        self.tracked_pids.update(cp.pids)

    def stop_all(self) -> None:
        for cp in list(self.clusters.values()):
            cp.stop()
            self.tracked_pids.update(cp.pids)

    def leaked(self) -> list[str]:
        out = []
        for cp in self.clusters.values():
            for pid in cp.running_pids():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    cmd = "?"
                out.append(f"{pid}: {cmd[:200]}")
        return out


@pytest.fixture(scope="session")
def control_plane_factory(tmp_path_factory) -> Iterator[ControlPlaneFactory]:
    bin_dir()  # build (or reuse) before any cluster starts, outside any per-test timeout
    factory = ControlPlaneFactory(tmp_path_factory.mktemp("clusters", numbered=True))
    try:
        yield factory
    finally:
        factory.stop_all()
        leaked = factory.leaked()
        assert not leaked, "control-plane processes left after stop:\n" + "\n".join(leaked)


@pytest.fixture(scope="session")
def control_plane(control_plane_factory) -> ControlPlane:
    return control_plane_factory.start("session")


@pytest.fixture(scope="session")
def kube(control_plane):
    client = control_plane.api_client()
    yield client
    client.close()


def raw_request(api, method: str, path: str, body=None, content_type: str = "application/json"):
    """A JSON request through a kubernetes.client.ApiClient (its auth/TLS), for paths the typed
    APIs do not cover. Returns the decoded body; raises ApiException on HTTP errors."""
    from kubernetes.client.exceptions import ApiException

    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    params = api.param_serialize(
        method=method, resource_path=path, header_params=headers, body=body,
        auth_settings=["BearerToken"],
    )  # fmt: skip
    resp = api.call_api(*params)
    resp.read()
    if not 200 <= resp.status < 300:
        raise ApiException(status=resp.status, reason=resp.reason, http_resp=resp)
    return json.loads(resp.data) if resp.data else None


def _namespaced_list_paths(api) -> list[str]:
    """Collection URL templates (``.../namespaces/{ns}/<resource>``) of every listable,
    patchable namespaced resource, from discovery."""
    paths = []

    def add(prefix: str, resources: list[dict]) -> None:
        for r in resources:
            if "/" in r["name"] or not r.get("namespaced"):
                continue
            verbs = set(r.get("verbs", []))
            if {"list", "patch"} <= verbs:
                paths.append(f"{prefix}/namespaces/{{ns}}/{r['name']}")

    core = raw_request(api, "GET", "/api/v1")
    add("/api/v1", core["resources"])
    groups = raw_request(api, "GET", "/apis")
    for g in groups["groups"]:
        gv = g["preferredVersion"]["groupVersion"]
        try:
            res = raw_request(api, "GET", f"/apis/{gv}")
        except Exception:  # noqa: BLE001 - an aggregated API may be down
            continue
        add(f"/apis/{gv}", res["resources"])
    return paths


def strip_finalizers(api, ns: str) -> int:
    """Remove metadata.finalizers from every object in namespace ns; returns how many."""
    stripped = 0
    for template in _namespaced_list_paths(api):
        base = template.format(ns=ns)
        try:
            items = raw_request(api, "GET", base)
        except Exception:  # noqa: BLE001 - e.g. resource gone with its CRD
            continue
        for obj in items.get("items") or []:
            if not obj.get("metadata", {}).get("finalizers"):
                continue
            name = obj["metadata"]["name"]
            try:
                raw_request(
                    api,
                    "PATCH",
                    f"{base}/{name}",
                    {"metadata": {"finalizers": None}},
                    "application/merge-patch+json",
                )
                stripped += 1
            except Exception:  # noqa: BLE001 - already gone
                pass
    return stripped


def _ns_name(request) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def real_node_images() -> ProjectImages:
    return project_images()


@pytest.fixture(scope="session")
def real_node_cluster(control_plane_factory, real_node_images) -> ControlPlane:
    import os

    attach = os.environ.get("FLARE_REAL_NODE_CLUSTER")
    if attach:  # developing: a cluster already up (`REAL_NODE=1 make cluster-up CLUSTER_DIR=DIR`)
        cp = ControlPlane(attach)
        if not cp.kubeconfig.exists():
            raise RuntimeError(f"FLARE_REAL_NODE_CLUSTER={attach}: no kubeconfig there (is the cluster up?)")
        return cp
    if os.geteuid() != 0:
        raise RuntimeError("a cluster with a real node needs root (namespaces, cgroups, iptables)")
    # Importing the runtime image (~6.5 GB unpacked) is most of the start-up.
    return control_plane_factory.start(
        "real-node", nodes=0, real_nodes=1, imports=real_node_images.archives(), timeout=900
    )


@pytest.fixture
def real_node_namespace(real_node_cluster, request) -> Iterator[str]:
    api = real_node_cluster.api_client()
    try:
        yield from _fresh_namespace(api, request, {"pod-security.kubernetes.io/enforce": "restricted"})
    finally:
        api.close()


@pytest.fixture
def namespace(kube, request) -> Iterator[str]:
    yield from _fresh_namespace(kube, request)


def _fresh_namespace(kube, request, labels: dict[str, str] | None = None) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(kube)
    name = _ns_name(request)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    # Pods are refused until the controller-manager created the default ServiceAccount.
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=60,
        message=f"ServiceAccount default in {name}",
    )
    yield name
    strip_finalizers(kube, name)
    try:
        core.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    # The namespace controller empties and removes it in the background (a few seconds);
    # names are unique, so the next test does not wait for that.
