"""Kubernetes I/O for the operator: server-side apply, get/list/delete, status patches, Events.

A thin layer over the official client's ApiClient with static REST paths (no discovery round
trips), so every request is one HTTP call and `requests_made` counts them (the reconcile
benchmark reports API requests per reconcile). Synchronous: handlers call it via asyncio.to_thread.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..api.kinds import API_VERSION, KINDS
from ..config import FIELD_MANAGER
from .metrics import API_REQUESTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


_CORE = [
    Resource("v1", "Namespace", "namespaces", namespaced=False),
    Resource("v1", "Secret", "secrets"),
    Resource("v1", "ConfigMap", "configmaps"),
    Resource("v1", "Service", "services"),
    Resource("v1", "Pod", "pods"),
    Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    Resource("v1", "ServiceAccount", "serviceaccounts"),
    Resource("apps/v1", "StatefulSet", "statefulsets"),
    Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    Resource("events.k8s.io/v1", "Event", "events"),
    Resource("rbac.authorization.k8s.io/v1", "Role", "roles"),
    Resource("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    Resource("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations",
             namespaced=False),
    Resource("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations",
             namespaced=False),
]
RESOURCES: dict[str, Resource] = {r.kind: r for r in _CORE}
RESOURCES.update({k.kind: Resource(API_VERSION, k.kind, k.plural) for k in KINDS})


class NotFound(Exception):
    pass


class Conflict(Exception):
    """409: a resourceVersion-guarded update lost a race; read again and retry."""


class Kube:
    def __init__(self, api_client: Any, *, field_manager: str = FIELD_MANAGER):
        self.api = api_client
        self.field_manager = field_manager
        self._count = 0
        self._count_lock = threading.Lock()

    @classmethod
    def from_kubeconfig(cls, path: Path | None = None) -> Kube:
        from kubernetes import config

        if path is None:
            try:
                config.load_incluster_config()
                from kubernetes import client

                return cls(client.ApiClient())
            except config.ConfigException:
                return cls(config.new_client_from_config())
        return cls(config.new_client_from_config(config_file=str(path)))

    @property
    def requests_made(self) -> int:
        return self._count

    def _request(self, method: str, path: str, *, body: Any = None, query: list | None = None,
                 content_type: str | None = None) -> Any:
        from kubernetes.client.exceptions import ApiException

        with self._count_lock:
            self._count += 1
        API_REQUESTS.labels(method).inc()
        headers = {"Accept": "application/json"}
        if content_type or body is not None:
            headers["Content-Type"] = content_type or "application/json"
        request = self.api.param_serialize(method=method, resource_path=path, query_params=query or None,
                                           header_params=headers, body=body, auth_settings=["BearerToken"])
        response = self.api.call_api(*request)
        response.read()
        if response.status == 404:
            raise NotFound(path)
        if response.status == 409:
            raise Conflict(path)
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason, http_resp=response)
        return json.loads(response.data) if response.data else None

    # --- reads -----------------------------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self._request("GET", RESOURCES[kind].path(namespace, name))
        except NotFound:
            return None

    def list(self, kind: str, namespace: str | None = None, *, labels: dict[str, str] | None = None) -> list[dict]:
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items()))] if labels else []
        return self._request("GET", RESOURCES[kind].path(namespace), query=query).get("items") or []

    # --- writes ----------------------------------------------------------------------------

    def apply(self, obj: dict, *, force: bool = True) -> dict:
        """Server-side apply under the operator's field manager (idempotent)."""
        meta = obj["metadata"]
        resource = RESOURCES[obj["kind"]]
        query = [("fieldManager", self.field_manager)] + ([("force", "true")] if force else [])
        return self._request("PATCH", resource.path(meta.get("namespace"), meta["name"]), body=obj, query=query,
                             content_type="application/apply-patch+yaml")

    def apply_status(self, kind: str, namespace: str, name: str, status: dict) -> dict:
        """Server-side apply of the status subresource (only the fields given are owned)."""
        body = {"apiVersion": RESOURCES[kind].api_version, "kind": kind,
                "metadata": {"name": name, "namespace": namespace}, "status": status}
        query = [("fieldManager", self.field_manager), ("force", "true")]
        return self._request("PATCH", RESOURCES[kind].path(namespace, name) + "/status", body=body, query=query,
                             content_type="application/apply-patch+yaml")

    def merge_patch(self, kind: str, namespace: str | None, name: str, patch: dict, *, status: bool = False) -> dict:
        path = RESOURCES[kind].path(namespace, name) + ("/status" if status else "")
        return self._request("PATCH", path, body=patch, content_type="application/merge-patch+json")

    def replace_status(self, obj: dict) -> dict:
        """PUT the status with the object's resourceVersion: Conflict if someone wrote in between."""
        meta = obj["metadata"]
        return self._request("PUT", RESOURCES[obj["kind"]].path(meta.get("namespace"), meta["name"]) + "/status",
                             body=obj)

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        try:
            self._request("DELETE", RESOURCES[kind].path(namespace, name),
                          body={"propagationPolicy": "Background"})
            return True
        except NotFound:
            return False

    def delete_labelled(self, kind: str, namespace: str | None, labels: dict[str, str]) -> int:
        deleted = 0
        for item in self.list(kind, namespace, labels=labels):
            deleted += self.delete(kind, item["metadata"].get("namespace"), item["metadata"]["name"])
        return deleted

    def event(self, regarding: dict, *, reason: str, note: str, type_: str = "Normal", action: str = "Reconcile",
              namespace: str | None = None) -> None:
        """An events.k8s.io/v1 Event about `regarding` (failures to record are logged, not raised)."""
        meta = regarding["metadata"]
        ns = namespace or meta.get("namespace") or "default"
        now = datetime.now(UTC)
        body = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name'][:200]}-", "namespace": ns},
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": "flareop.io/flare-operator", "reportingInstance": self.field_manager,
            "action": action, "reason": reason, "note": note[:1024], "type": type_,
            "regarding": {"apiVersion": regarding.get("apiVersion"), "kind": regarding.get("kind"),
                          "name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        }
        try:
            self._request("POST", RESOURCES["Event"].path(ns), body=body)
        except Exception:  # noqa: BLE001 - an Event is best effort
            log.warning("could not record event %s on %s", reason, meta["name"], exc_info=True)
