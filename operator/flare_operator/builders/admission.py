"""Pure: the webhook configurations of a site's JobApproval admission webhook.

Built here rather than left to Kopf's managed mode so that each site's webhook sees only its own
namespace (namespaceSelector): one site's webhook being down never blocks another's approvals.
"""

from __future__ import annotations

import base64

from ..api.kinds import GROUP, VERSION

MUTATE_ID = "record-decider"
VALIDATE_ID = "known-job-current-hash"


def _webhook(name: str, handler_id: str, base_url: str, ca_pem: bytes, namespace: str, operations: list[str]) -> dict:
    return {
        "name": name,
        "clientConfig": {"url": f"{base_url.rstrip('/')}/{handler_id}", "caBundle": base64.b64encode(ca_pem).decode()},
        "rules": [{"apiGroups": [GROUP], "apiVersions": [VERSION], "resources": ["jobapprovals"],
                   "operations": operations, "scope": "Namespaced"}],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "failurePolicy": "Fail",  # no webhook, no approval: who decided must always be recorded
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
        "matchPolicy": "Equivalent",
    }


def webhook_configurations(site: str, namespace: str, base_url: str, ca_pem: bytes) -> list[dict]:
    name = f"{site}.site.flareop.io"
    labels = {"app.kubernetes.io/part-of": "flare-operator", "flareop.io/site": site}
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": name, "labels": labels},
         "webhooks": [_webhook(f"decider.{name}", MUTATE_ID, base_url, ca_pem, namespace, ["CREATE", "UPDATE"])]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": name, "labels": labels},
         "webhooks": [_webhook(f"approval.{name}", VALIDATE_ID, base_url, ca_pem, namespace, ["CREATE"])]},
    ]
