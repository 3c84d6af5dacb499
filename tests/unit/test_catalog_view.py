"""The catalog a consumer namespace sees (ConfigMap flare-catalog): its own terms only, from Gateways
that count for their org, never a site's paths."""

from __future__ import annotations

import json

from flare_operator.builders.catalog_view import (
    CATALOG_KEY,
    DIGEST_ANNOTATION,
    catalog_configmap,
    consumer_datasets,
)


def _gateway(ns: str, org: str, offers: list[dict], ready: str = "True") -> dict:
    return {"metadata": {"namespace": ns, "name": org},
            "spec": {"org": org, "datasets": [{"id": f"scl-{org}", "sampleCount": 100, "format": "csv",
                                               "description": "assays", "offers": offers}]},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def test_a_consumer_sees_only_its_own_terms_from_gateways_that_count():
    gateways = [
        _gateway("org-a", "org-a", [{"consumer": "pharma-x", "dpRequired": True, "epsilonLeft": 3.0},
                                    {"consumer": "pharma-y", "dpRequired": False}]),
        _gateway("org-b", "org-b", [{"consumer": "pharma-y"}]),  # nothing for pharma-x
        _gateway("elsewhere", "org-c", [{"consumer": "pharma-x"}]),  # counts for no org: not its seat
    ]
    seats = {"org-a": "org-a", "org-b": "org-b", "org-c": "org-c"}
    assert consumer_datasets("pharma-x", gateways, seats) == [
        {"org": "org-a", "id": "scl-org-a", "description": "assays", "format": "csv", "sampleCount": 100,
         "siteReady": True, "terms": {"dpRequired": True, "epsilonLeft": 3.0}}]
    assert [d["org"] for d in consumer_datasets("pharma-y", gateways, seats)] == ["org-a", "org-b"]


def test_the_configmap_carries_a_digest_of_its_content():
    one = catalog_configmap("m", "pharma-x", [{"id": "app", "version": "1.0.0"}], [])
    two = catalog_configmap("m", "pharma-x", [{"id": "app", "version": "1.0.1"}], [])
    assert json.loads(one["data"][CATALOG_KEY])["consumerOrg"] == "pharma-x"
    assert one["metadata"]["annotations"][DIGEST_ANNOTATION] != two["metadata"]["annotations"][DIGEST_ANNOTATION]
