"""Kubernetes I/O for the operator: server-side apply, get/list/delete, status patches, Events.

A thin layer over the official client's ApiClient with static REST paths (no discovery round
trips), so every request is one HTTP call and `requests_made` counts them (the reconcile
benchmark reports API requests per reconcile). Synchronous: handlers call it via asyncio.to_thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..api.kinds import API_VERSION, KINDS
from ..config import FIELD_MANAGER
from .metrics import API_REQUEST_SECONDS, API_REQUESTS

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


class StatusRefused(Exception):
    """The API server refused a status write (400/422) that retrying cannot fix. `apply_status` has
    recorded Ready=False (reason InvalidSpec) with the server's message on the object instead; the
    writer should stop there (no Events, no retry) until it computes a different status."""


APPLY_PATCH = "application/apply-patch+yaml"
REFUSED = (400, 422)
"""Answers to a write that say the request itself is wrong: the same write fails again."""
MESSAGE_MAX = 2048
"""Length of the message recorded when a status write is refused."""


def wire_bytes(body: Any) -> bytes:
    """A request body as UTF-8 JSON. The official client serialises with json.dumps' default
    ensure_ascii, which writes a character outside the Basic Multilingual Plane (an emoji) as a
    surrogate pair (\\ud83d\\ude00); the API server reads server-side-apply bodies as YAML, whose parser
    refuses surrogate escapes ("found invalid Unicode character escape code", 400). Lone surrogates
    (never valid text) become '?'."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "replace")


def readable(text: str) -> str:
    """Text for a message: characters outside the Basic Multilingual Plane and control characters
    escaped (\\U0001f600), so what the message quotes can always be stored and read."""
    return "".join(c if (c.isprintable() or c == " ") and ord(c) <= 0xFFFF else ascii(c)[1:-1] for c in text)


def server_message(err: Exception) -> str:
    """The API server's own message from an ApiException (it names the field it refused)."""
    body = getattr(err, "body", None)
    try:
        return str(json.loads(body).get("message") or body) if body else str(err)
    except (TypeError, ValueError):
        return str(body)


class Kube:
    def __init__(self, api_client: Any, *, field_manager: str = FIELD_MANAGER):
        self.api = api_client
        self.field_manager = field_manager
        self._count = 0
        self._count_lock = threading.Lock()
        # Status writes the API server refused, by (kind, namespace, name): the digest of the refused
        # status, so the same write is not sent again (see apply_status).
        self._refused: dict[tuple[str, str, str], str] = {}

    @classmethod
    def from_kubeconfig(cls, path: Path | None = None, *, connections: int | None = None) -> Kube:
        """A client from ``path`` (None: in-cluster, else the default kubeconfig) keeping up to
        ``connections`` connections open (None: the client's default, 5 per CPU) — as many as threads
        may call it at once, or the extra connections are opened and dropped on every call."""
        from kubernetes import client, config

        configuration = client.Configuration()
        if connections:
            configuration.connection_pool_maxsize = connections
        if path is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
                return cls(client.ApiClient(configuration))
            except config.ConfigException:
                return cls(config.new_client_from_config(client_configuration=configuration))
        return cls(config.new_client_from_config(config_file=str(path), client_configuration=configuration))

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
        # Apply bodies are read as YAML by the server: send them as UTF-8 (see wire_bytes). JSON ones
        # go through the client's own serialiser (its surrogate escapes are valid JSON).
        payload = wire_bytes(body) if content_type == APPLY_PATCH and isinstance(body, dict) else body
        request = self.api.param_serialize(method=method, resource_path=path, query_params=query or None,
                                           header_params=headers, body=payload, auth_settings=["BearerToken"])
        with API_REQUEST_SECONDS.labels(method).time():
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
                             content_type=APPLY_PATCH)

    def apply_status(self, kind: str, namespace: str, name: str, status: dict) -> dict:
        """Server-side apply of the status subresource (only the fields given are owned).

        When the API server refuses the status itself (400/422: a value outside the schema, text it
        cannot decode), retrying cannot help: the object gets Ready=False, reason InvalidSpec, with the
        server's message (which names the field) instead, the refusal is logged once, and
        StatusRefused is raised. The same status is not sent again (no request at all, StatusRefused
        at once); a different one is tried, and once one is accepted the object's status is whole again.
        """
        from kubernetes.client.exceptions import ApiException

        key = (kind, namespace, name)
        digest = hashlib.sha256(json.dumps(status, sort_keys=True, default=str).encode("utf-8", "replace")).hexdigest()
        if self._refused.get(key) == digest:
            raise StatusRefused(f"{kind} {namespace}/{name}: this status was refused before")
        body = {"apiVersion": RESOURCES[kind].api_version, "kind": kind,
                "metadata": {"name": name, "namespace": namespace}, "status": status}
        query = [("fieldManager", self.field_manager), ("force", "true")]
        try:
            stored = self._request("PATCH", RESOURCES[kind].path(namespace, name) + "/status", body=body,
                                   query=query, content_type=APPLY_PATCH)
        except ApiException as err:
            if err.status not in REFUSED:
                raise
            first = key not in self._refused
            self._refused[key] = digest
            message = readable(server_message(err))
            if first:
                log.warning("the API server refused the status of %s %s/%s (%s): recording Ready=False instead",
                            kind, namespace, name, message)
            try:
                self._record_refusal(kind, namespace, name, status, message)
            except Exception:  # noqa: BLE001 - the refusal stands; nothing more can be recorded
                if first:
                    log.warning("could not record the refusal on %s %s/%s", kind, namespace, name, exc_info=True)
            raise StatusRefused(f"{kind} {namespace}/{name}: {message}") from None
        self._refused.pop(key, None)
        return stored

    def _record_refusal(self, kind: str, namespace: str, name: str, status: dict, message: str) -> None:
        """Ready=False (InvalidSpec) with `message`, merged into the stored conditions: what the status
        recorded before (phase, results, a ledger) stays as it was."""
        from ..api.conditions import ConditionType, Reason

        current = self.get(kind, namespace, name)
        if current is None:
            return
        text = (f"the operator cannot record this {kind}'s status: the API server refused it: {message}. "
                "A value the operator copies from the spec is the usual cause: correct the field named here in "
                "the spec (or report the message to the operator's maintainers); the full status is written "
                "again as soon as the API server accepts it")
        if len(text) > MESSAGE_MAX:
            text = text[: MESSAGE_MAX - 1] + "…"
        conditions = [c for c in ((current.get("status") or {}).get("conditions") or [])
                      if c.get("type") != ConditionType.READY]
        previous = next((c for c in ((current.get("status") or {}).get("conditions") or [])
                         if c.get("type") == ConditionType.READY), None)
        ready = {"type": str(ConditionType.READY), "status": "False", "reason": str(Reason.INVALID_SPEC),
                 "message": text,
                 "lastTransitionTime": previous["lastTransitionTime"]
                 if previous and previous.get("status") == "False" and previous.get("lastTransitionTime")
                 else datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        generation = status.get("observedGeneration")
        if generation is not None:
            ready["observedGeneration"] = generation
        if previous == ready:
            return
        self.merge_patch(kind, namespace, name, {"status": {"conditions": [*conditions, ready]}}, status=True)

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
