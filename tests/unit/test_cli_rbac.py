"""`flare-operator rbac`: the people's ClusterRoles, or a site's scoped hub credential (Role + RoleBinding)."""

from __future__ import annotations

import pytest
import yaml

from flare_operator.builders.rbac import (
    gateway_hub_role,
    modeller_cluster_role,
    org_admin_cluster_role,
    role_binding,
)
from flare_operator.cli import main


def test_rbac_prints_the_cluster_roles(capsys):
    assert main(["rbac"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == [modeller_cluster_role(), org_admin_cluster_role()]


def test_rbac_gateway_hub_prints_the_scoped_role_bound_to_the_site(capsys):
    assert main(["rbac", "--gateway-hub", "org-b", "--user", "gateway-org-b"]) == 0
    role, binding = yaml.safe_load_all(capsys.readouterr().out)
    assert role == gateway_hub_role("org-b")
    assert binding == role_binding("org-b", "flare-gateway", user="gateway-org-b")
    assert binding["metadata"]["namespace"] == "org-b" and binding["roleRef"]["kind"] == "Role"


def test_rbac_gateway_hub_needs_a_user():
    with pytest.raises(SystemExit):
        main(["rbac", "--gateway-hub", "org-b"])
