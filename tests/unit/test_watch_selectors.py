"""handlers/registry.py operator_settings: the API server sends the hub only its servers' StatefulSets
and Pods, and a site only its clients' (Kopf filters handlers' labels on its own side only)."""

from __future__ import annotations

from kopf._cogs.structs.references import Resource

from flare_operator.config import OperatorConfig
from flare_operator.handlers.registry import operator_settings

STATEFULSETS = Resource(group="apps", version="v1", plural="statefulsets", kind="StatefulSet", namespaced=True)
PODS = Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
REQUESTS = Resource(group="flareop.io", version="v1alpha1", plural="accessrequests", kind="AccessRequest",
                    namespaced=True)


def selectors(settings, resource: Resource) -> list[str]:
    return list(settings.watching.label_selectors.collect(resource))


def test_each_side_watches_only_its_own_workloads():
    config = OperatorConfig.model_validate({"mode": "all"})
    hub, site = operator_settings(config, workloads="server"), operator_settings(config, workloads="client")
    for resource in (STATEFULSETS, PODS):
        assert selectors(hub, resource) == ["app.kubernetes.io/component=server,flareop.io/federation"]
        assert selectors(site, resource) == ["app.kubernetes.io/component=client,flareop.io/federation"]
    assert selectors(hub, REQUESTS) == [] and selectors(site, REQUESTS) == []
    assert selectors(operator_settings(config), PODS) == []  # the answer watch and the hub side watch no Pods
