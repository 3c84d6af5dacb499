"""Who the SDK talks to, as whom, and where: a kubeconfig context (like kubectl) or the Pod's own
service account (in-cluster, e.g. a notebook server on the hub), and the caller's namespace.

Every SDK call takes ``session=``; without it the module's default session is used, made on first use
from $KUBECONFIG / ~/.kube/config (its current context and that context's namespace), else in-cluster.
``connect(...)`` replaces the default (a notebook's first cell).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..api.kinds import GROUP, KINDS_BY_NAME, VERSION
from .errors import FlareError, Forbidden, InvalidSpec, NotFound

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class Session:
    """One identity on one cluster, working in one namespace (the caller's org or consumer namespace)."""

    def __init__(self, kubeconfig: str | os.PathLike | None = None, context: str | None = None,
                 namespace: str | None = None):
        from kubernetes import client, config

        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.context = context
        # Like kubectl: the file given, else $KUBECONFIG as it is now (several files merged), else ~/.kube/config.
        home = Path("~/.kube/config").expanduser()
        config_file = self.kubeconfig or os.environ.get("KUBECONFIG") or (str(home) if home.exists() else None)
        if config_file:
            self.api_client = config.new_client_from_config(config_file=config_file, context=context)
            contexts, active = config.list_kube_config_contexts(config_file=config_file)
            if context:
                active = next((c for c in contexts if c["name"] == context), active)
            default_ns = (active or {}).get("context", {}).get("namespace")
        else:
            config.load_incluster_config()
            self.api_client = client.ApiClient()
            default_ns = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.exists() else None
        self.namespace = namespace or default_ns or "default"
        self._custom = client.CustomObjectsApi(self.api_client)
        self._core = client.CoreV1Api(self.api_client)

    def __repr__(self) -> str:
        return f"Session(context={self.context!r}, namespace={self.namespace!r})"

    # --- flareop.io objects -------------------------------------------------------------------------

    def _call(self, verb: str, kind: str, namespace: str | None, name: str | None, fn, *args, **kwargs) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            raise translate(err, verb, kind, namespace, name) from None

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict:
        ns = namespace or self.namespace
        plural = KINDS_BY_NAME[kind].plural
        return self._call("get", kind, ns, name, self._custom.get_namespaced_custom_object,
                          GROUP, VERSION, ns, plural, name)

    def list(self, kind: str, namespace: str | None = None, *, all_namespaces: bool = False,
             label_selector: str = "") -> list[dict]:
        plural = KINDS_BY_NAME[kind].plural
        if all_namespaces:
            answer = self._call("list", kind, None, None, self._custom.list_cluster_custom_object,
                                GROUP, VERSION, plural, label_selector=label_selector)
        else:
            ns = namespace or self.namespace
            answer = self._call("list", kind, ns, None, self._custom.list_namespaced_custom_object,
                                GROUP, VERSION, ns, plural, label_selector=label_selector)
        return list(answer.get("items") or [])

    def create(self, obj: dict) -> dict:
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta.setdefault("namespace", self.namespace)
        return self._call("create", kind, ns, meta.get("name"), self._custom.create_namespaced_custom_object,
                          GROUP, VERSION, ns, KINDS_BY_NAME[kind].plural, obj)

    def patch(self, kind: str, name: str, patch: dict, namespace: str | None = None) -> dict:
        ns = namespace or self.namespace
        return self._call("patch", kind, ns, name, self._custom.patch_namespaced_custom_object,
                          GROUP, VERSION, ns, KINDS_BY_NAME[kind].plural, name, patch)

    def delete(self, kind: str, name: str, namespace: str | None = None, *, wait: float | None = 120) -> None:
        """Delete; with ``wait`` (seconds), return once the operator has cleaned up after it (its
        finalizer done, the object gone), else raise the SDK's TimeoutError."""
        import time

        from .errors import TimeoutError

        ns = namespace or self.namespace
        self._call("delete", kind, ns, name, self._custom.delete_namespaced_custom_object,
                   GROUP, VERSION, ns, KINDS_BY_NAME[kind].plural, name)
        deadline = time.monotonic() + (wait or 0)
        while wait:
            try:
                self.get(kind, name, ns)
            except NotFound:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {name} in {ns} is still being cleaned up after {wait:g} s",
                                   f"kubectl get {KINDS_BY_NAME[kind].plural} {name} -n {ns} -o yaml")
            time.sleep(0.5)


    def published_catalog(self) -> dict:
        """The models and datasets the orchestrator offers this namespace (ConfigMap flare-catalog)."""
        import json

        from ..builders.catalog_view import CATALOG_CONFIGMAP, CATALOG_KEY

        cm = self._call("get", "ConfigMap", self.namespace, CATALOG_CONFIGMAP, self._core.read_namespaced_config_map,
                        CATALOG_CONFIGMAP, self.namespace)
        return json.loads((cm.data or {}).get(CATALOG_KEY) or "{}")


def translate(err, verb: str, kind: str, namespace: str | None, name: str | None) -> FlareError:
    """An ApiException as the SDK's error, with the kubectl command that shows more."""
    import json

    try:
        message = json.loads(err.body or "{}").get("message") or err.reason
    except (TypeError, ValueError):
        message = err.body or err.reason
    where = f"in namespace {namespace}" if namespace else "in any namespace"
    target = f"{kind} {name}" if name else f"{kind}s"
    ns_flag = f" -n {namespace}" if namespace else " -A"
    resource = KINDS_BY_NAME[kind].plural if kind in KINDS_BY_NAME else kind.lower()
    if err.status == 404 and kind == "ConfigMap":
        return NotFound(f"no catalog in namespace {namespace} yet: the orchestrator publishes {name} in each "
                        f"namespace it serves (labelled flareop.io/org) within a resync", f"kubectl get configmap {name}{ns_flag}")
    if err.status == 404:
        return NotFound(f"{target} not found {where}", f"kubectl get {resource}{ns_flag}")
    if err.status in (401, 403):
        return Forbidden(f"not allowed to {verb} {target} {where}: {message}",
                         f"kubectl auth can-i {verb} {resource}{ns_flag}")
    if err.status in (400, 409, 422):
        return InvalidSpec(f"{verb} {target} {where} refused: {message}",
                           f"kubectl explain {resource}.spec" if err.status != 409 else f"kubectl get {resource}{ns_flag}")
    return FlareError(f"{verb} {target} {where} failed: HTTP {err.status} {message}")


_default: Session | None = None


def connect(kubeconfig: str | os.PathLike | None = None, context: str | None = None,
            namespace: str | None = None) -> Session:
    """Make (and return) the default session every SDK call uses without ``session=``."""
    global _default
    _default = Session(kubeconfig, context, namespace)
    return _default


def current(session: Session | None = None) -> Session:
    """``session``, or the default one (made from the kubeconfig on first use)."""
    global _default
    if session is not None:
        return session
    if _default is None:
        _default = Session()
    return _default
