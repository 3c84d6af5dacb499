"""Pure: a ComputeSpec's federation as an NVFlare project (participants, ports, names).

One NVFlare project per ComputeSpec: its own root CA, so federations are isolated from each other.
The participants are the server, one client per org whose datasets the ComputeSpec uses, and the
operator's admin identity (which submits and signs jobs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ADMIN_IDENTITY = "admin@flareop.io"
HUB_ORG = "hub"


def nvflare_org(org: str) -> str:
    """NVFlare org names allow only [A-Za-z0-9_]; Kubernetes org names are DNS labels."""
    return re.sub(r"[^A-Za-z0-9_]", "_", org)


@dataclass(frozen=True)
class FederationPlan:
    project: str
    server_host: str
    fl_port: int
    admin_port: int
    clients: tuple[tuple[str, str], ...]  # (client name, org), sorted
    extra_host_names: tuple[str, ...] = field(default=())
    # (client name, host, port) for clients that dial the server elsewhere than at server_host:fl_port
    # (sites on other clusters: the external endpoint); sorted
    connect_to: tuple[tuple[str, str, int], ...] = field(default=())

    @property
    def participants(self) -> list[str]:
        return [self.server_host, *(name for name, _ in self.clients), ADMIN_IDENTITY]

    def with_clients(self, clients: dict[str, str], connect_to: dict[str, tuple[str, int]] | None = None
                     ) -> FederationPlan:
        return FederationPlan(self.project, self.server_host, self.fl_port, self.admin_port,
                              tuple(sorted(clients.items())), self.extra_host_names,
                              tuple(sorted((c, h, p) for c, (h, p) in (connect_to or {}).items() if c in clients)))


def client_name(org: str) -> str:
    """The NVFlare client name of an org in a federation (one client per org)."""
    return org


def project_dict(plan: FederationPlan) -> dict[str, Any]:
    """The `project.yml` content NVFlare's provisioner takes (api_version 3)."""
    server: dict[str, Any] = {
        "name": plan.server_host,
        "type": "server",
        "org": HUB_ORG,
        "fed_learn_port": plan.fl_port,
        "admin_port": plan.admin_port,
    }
    if plan.extra_host_names:
        server["host_names"] = list(plan.extra_host_names)
    targets = {name: (host, port) for name, host, port in plan.connect_to}

    def client(name: str, org: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "type": "client", "org": nvflare_org(org)}
        if name in targets:
            entry["connect_to"] = {"host": targets[name][0], "port": targets[name][1]}
        return entry

    return {
        "api_version": 3,
        "name": plan.project,
        "description": f"flare-operator federation {plan.project}",
        "participants": [
            server,
            *(client(name, org) for name, org in plan.clients),
            {"name": ADMIN_IDENTITY, "type": "admin", "org": HUB_ORG, "role": "project_admin"},
        ],
    }


# --- site enforcement inside each NVFlare client ---------------------------------------------------

ENFORCEMENT_COMPONENT = "flare_operator.nvflare.enforcement.ApprovedJobsOnly"
ENFORCEMENT_RESOURCES_FILE = "flareop_enforcement__p_resources.json"
"""In a client's local/ folder: NVFlare loads ``local/*__p_resources.json`` into the client's parent
process only (nvflare/apis/workspace.py get_config_files_for_startup), where jobs are scheduled and
deployed; job processes never see it and no job can replace it."""


ENFORCEMENT_COMPONENT_ID = "app_deployer"
"""NVFlare's SystemComponents.APP_DEPLOYER: under this id the client's engine hands the component every
app the server deploys (ClientEngine.deploy_app), so it checks the app's digest before it is unpacked."""


def enforcement_resources(approved_file: str, org: str) -> dict[str, Any]:
    """The site configuration that adds the enforcement component to a client (ENFORCEMENT_RESOURCES_FILE)."""
    return {
        "format_version": 2,
        "components": [
            {"id": ENFORCEMENT_COMPONENT_ID, "path": ENFORCEMENT_COMPONENT,
             "args": {"approved_file": approved_file, "org": org}},
        ],
    }
