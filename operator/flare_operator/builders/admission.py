"""Pure: the webhook configurations of a site's JobApproval admission webhook.

Built here rather than left to Kopf's managed mode so that each site's webhook sees only its own
namespace (namespaceSelector): one site's webhook being down never blocks another's approvals.
"""

from __future__ import annotations

import base64

from ..api.kinds import GROUP, VERSION

MUTATE_ID = "record-decider"
VALIDATE_ID = "known-job-current-hash"


def _service_ref(service: str) -> tuple[str, str]:
    """("namespace", "name") of a webhook Service given as "namespace/name"."""
    namespace, name = service.split("/", 1)
    return namespace, name


def service_names(service: str) -> tuple[str, ...]:
    """The DNS names the API server dials a webhook Service by ("namespace/name")."""
    namespace, name = _service_ref(service)
    return f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"


def _client_config(handler_id: str, base_url: str, service: str | None, port: int) -> dict:
    if service is None:
        return {"url": f"{base_url.rstrip('/')}/{handler_id}"}
    namespace, name = _service_ref(service)
    return {"service": {"namespace": namespace, "name": name, "port": port, "path": f"/{handler_id}"}}


def _webhook(name: str, handler_id: str, client: dict, ca_pem: bytes, namespace: str, operations: list[str]) -> dict:
    return {
        "name": name,
        "clientConfig": {**client, "caBundle": base64.b64encode(ca_pem).decode()},
        "rules": [{"apiGroups": [GROUP], "apiVersions": [VERSION], "resources": ["jobapprovals"],
                   "operations": operations, "scope": "Namespaced"}],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "failurePolicy": "Fail",  # no webhook, no approval: who decided must always be recorded
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
        "matchPolicy": "Equivalent",
    }


def webhook_configurations(site: str, namespace: str, base_url: str, ca_pem: bytes, *,
                           service: str | None = None, port: int = 443) -> list[dict]:
    """The site's two webhook configurations, reached at `base_url`, or through `service`
    ("namespace/name", port `port`) when the gateway runs in the cluster."""
    name = f"{site}.site.flareop.io"

    def client(handler_id: str) -> dict:
        return _client_config(handler_id, base_url, service, port)

    labels = {"app.kubernetes.io/part-of": "flare-operator", "flareop.io/site": site}
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": name, "labels": labels},
         "webhooks": [_webhook(f"decider.{name}", MUTATE_ID, client(MUTATE_ID), ca_pem, namespace, ["CREATE", "UPDATE"])]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": name, "labels": labels},
         "webhooks": [_webhook(f"approval.{name}", VALIDATE_ID, client(VALIDATE_ID), ca_pem, namespace, ["CREATE"])]},
    ]
