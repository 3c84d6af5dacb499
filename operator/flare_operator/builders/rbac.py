"""Pure: the RBAC that keeps each party to its own objects.

- A site's hub credential (`gateway_hub_role`): only its org's namespace on the hub, only what a
  gateway does there (its Gateway, answering AccessRequests, reading its client kits, Events).
- `flare-modeller` (ClusterRole, bound per consumer namespace): ComputeSpecs and FederatedJobs.
- `flare-org-admin` (ClusterRole, bound per site namespace): DatasetGrants, OrgPolicy, JobApprovals.
"""

from __future__ import annotations

from ..api.kinds import GROUP
from .catalog_view import CATALOG_CONFIGMAP

MODELLER_ROLE = "flare-modeller"
ORG_ADMIN_ROLE = "flare-org-admin"
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def gateway_hub_role(namespace: str, name: str = "flare-gateway") -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": [
            _rule([GROUP], ["gateways"], [*READ, "create", "update", "patch"]),
            _rule([GROUP], ["gateways/status", "accessrequests/status"], ["get", "update", "patch"]),
            _rule([GROUP], ["accessrequests"], [*READ, "update", "patch"]),  # finalizers, Kopf's annotations
            _rule([""], ["secrets"], ["get"]),  # the client kits the orchestrator delivers here
            _rule(["", "events.k8s.io"], ["events"], ["create", "patch"]),
        ],
    }


def role_binding(namespace: str, role: str, *, user: str | None = None, service_account: tuple[str, str] | None = None,
                 cluster_role: bool = False, name: str | None = None) -> dict:
    subject = ({"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"} if user else
               {"kind": "ServiceAccount", "namespace": service_account[0], "name": service_account[1]})
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name or f"{role}-{(user or service_account[1]).replace(':', '-')}"[:253],
                     "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole" if cluster_role else "Role",
                    "name": role},
        "subjects": [subject],
    }


def modeller_cluster_role() -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": MODELLER_ROLE, "labels": {"app.kubernetes.io/part-of": "flare-operator"}},
        "rules": [
            _rule([GROUP], ["computespecs", "federatedjobs"], [*READ, *WRITE]),
            _rule([GROUP], ["computespecs/status", "federatedjobs/status"], READ),
            _rule(["", "events.k8s.io"], ["events"], READ),
            # The models and datasets offered to the namespace's org (handlers/catalog.py), for the SDK.
            {**_rule([""], ["configmaps"], ["get"]), "resourceNames": [CATALOG_CONFIGMAP]},
        ],
    }


def org_admin_cluster_role() -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": ORG_ADMIN_ROLE, "labels": {"app.kubernetes.io/part-of": "flare-operator"}},
        "rules": [
            _rule([GROUP], ["datasetgrants", "orgpolicies", "jobapprovals"], [*READ, *WRITE]),
            _rule([GROUP], ["datasetgrants/status", "jobapprovals/status"], READ),
            _rule([GROUP], ["accessrequests", "gateways"], READ),
            _rule(["", "events.k8s.io"], ["events"], READ),
        ],
    }
