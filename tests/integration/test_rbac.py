"""Who may write what, enforced by the real API server's RBAC with the project's roles."""

from __future__ import annotations

import pytest
import yaml

from flare_operator.builders.rbac import (
    MODELLER_ROLE,
    ORG_ADMIN_ROLE,
    gateway_hub_role,
    modeller_cluster_role,
    org_admin_cluster_role,
    role_binding,
)
from tests.operator_harness import (
    Consortium,
    apply,
    create_org_namespace,
    grant,
    install_crds,
    remove_namespaces,
)

pytestmark = pytest.mark.integration


def _as(cp, kubeconfig, manifest: dict):
    return cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), kubeconfig=kubeconfig, check=False)


def test_roles_keep_each_party_to_its_own_objects(control_plane):
    cp = control_plane
    install_crds(cp)
    c = Consortium()
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    for ns in (a, b, m):
        create_org_namespace(cp, ns, ns)
    apply(cp, modeller_cluster_role(), org_admin_cluster_role(), gateway_hub_role(a))
    apply(cp, role_binding(a, ORG_ADMIN_ROLE, user=f"admin-{a}", cluster_role=True),
          role_binding(b, ORG_ADMIN_ROLE, user=f"admin-{b}", cluster_role=True),
          role_binding(m, MODELLER_ROLE, user=f"scientist-{m}", cluster_role=True),
          role_binding(a, "flare-gateway", user=f"gateway-{a}"))
    admin_a, admin_b = cp.user_kubeconfig(f"admin-{a}"), cp.user_kubeconfig(f"admin-{b}")
    scientist, gateway_a = cp.user_kubeconfig(f"scientist-{m}"), cp.user_kubeconfig(f"gateway-{a}")
    hash_ = "sha256:" + "1" * 64
    approval = {"apiVersion": "flareop.io/v1alpha1", "kind": "JobApproval",
                "spec": {"job": {"namespace": m, "name": "run1"}, "contentHash": hash_, "decision": "Approve"}}

    # An org's admin manages grants and approvals at its own site only.
    assert _as(cp, admin_b, grant(b, "scl-b", m)).returncode == 0
    assert _as(cp, admin_b, {**approval, "metadata": {"name": "run1", "namespace": b}}).returncode == 0
    refused = _as(cp, admin_b, {**approval, "metadata": {"name": "run1", "namespace": a}})
    assert refused.returncode != 0 and "forbidden" in refused.stderr
    assert _as(cp, admin_b, grant(a, "scl-a", m)).returncode != 0
    assert _as(cp, admin_a, grant(a, "scl-a", m)).returncode == 0

    # A modeller runs compute and jobs in its namespace; it cannot grant data or approve jobs.
    compute = {"apiVersion": "flareop.io/v1alpha1", "kind": "ComputeSpec", "metadata": {"name": "c", "namespace": m},
               "spec": {"model": {"id": "esm2-finetune", "version": "1.0.0"}, "datasets": [{"org": a, "id": "x"}]}}
    assert _as(cp, scientist, compute).returncode == 0
    for forbidden in (grant(m, "mine", m), grant(a, "scl-a", m),
                      {**approval, "metadata": {"name": "self-approve", "namespace": a}}):
        result = _as(cp, scientist, forbidden)
        assert result.returncode != 0 and "forbidden" in result.stderr, result.stderr
    edit_grant = cp.kubectl("patch", "datasetgrant", "scl-b", "-n", b, "--type=merge", "-p",
                            '{"spec":{"maxRounds":1000}}', kubeconfig=scientist, check=False)
    assert edit_grant.returncode != 0 and "forbidden" in edit_grant.stderr

    # A site's hub credential reads its own org's requests, not another org's.
    assert cp.kubectl("get", "accessrequests", "-n", a, kubeconfig=gateway_a).returncode == 0
    other = cp.kubectl("get", "accessrequests", "-n", b, kubeconfig=gateway_a, check=False)
    assert other.returncode != 0 and "forbidden" in other.stderr
    grants = cp.kubectl("get", "datasetgrants", "-n", a, kubeconfig=gateway_a, check=False)
    assert grants.returncode != 0, "the hub credential does not reach the site's own objects"
    remove_namespaces(cp, a, b, m)
