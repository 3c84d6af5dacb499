"""Operator configuration models: what they refuse, with a message naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flare_operator.config import OperatorConfig


def test_external_server_needs_a_port_unless_it_is_each_federations_node_port():
    cfg = OperatorConfig.model_validate({"runtime": "kubernetes", "externalServer": {"host": "10.0.0.5"}})
    assert cfg.external_server.port is None and cfg.external_server.service_type == "NodePort"
    with pytest.raises(ValidationError, match="externalServer.port is required with serviceType LoadBalancer"):
        OperatorConfig.model_validate({"externalServer": {"host": "lb.example.org", "serviceType": "LoadBalancer"}})
    with pytest.raises(ValidationError, match="nodePort"):
        OperatorConfig.model_validate({"externalServer": {"host": "h", "nodePort": 8002}})


def test_admin_route_and_retention_are_closed_sets():
    assert OperatorConfig().admin_route == "auto" and OperatorConfig().workspace_retention == "Delete"
    with pytest.raises(ValidationError, match="adminRoute"):
        OperatorConfig.model_validate({"adminRoute": "ssh"})
    with pytest.raises(ValidationError, match="workspaceRetention"):
        OperatorConfig.model_validate({"workspaceRetention": "Keep"})
