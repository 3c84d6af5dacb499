"""Pure: what a consumer namespace's people may pick from — the ConfigMap `flare-catalog` the
orchestrator keeps in each namespace it serves, read by the SDK (`models list`, `datasets list`).

- ``models``: the catalog apps the orchestrator validates jobs against (id, version, description,
  resource hints, each parameter's JSON schema) — the modeller's laptop has no catalog of its own;
- ``datasets``: every dataset an org's site offers to *this* namespace's org, from the Gateways that
  count for their org (org seats): owner org, id, description, format, samples, and only this
  consumer's terms (models and versions, DP required, epsilon per job and left, max rounds, expiry).
  Other consumers' terms, and every site's paths, never appear.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

CATALOG_CONFIGMAP = "flare-catalog"
CATALOG_KEY = "catalog.json"
DIGEST_ANNOTATION = "flareop.io/catalog-digest"


def consumer_datasets(consumer_org: str, gateways: Iterable[Mapping[str, Any]],
                      seats: Mapping[str, str]) -> list[dict]:
    """The datasets offered to ``consumer_org``; ``seats``: org -> the hub namespace its Gateway counts in."""
    out = []
    for gw in gateways:
        spec, meta = gw.get("spec") or {}, gw["metadata"]
        org = spec.get("org")
        if not org or seats.get(org) != meta["namespace"]:
            continue  # a Gateway that counts for no org offers nothing
        ready = next((c for c in (gw.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
        for ds in spec.get("datasets") or []:
            offer = next((o for o in ds.get("offers") or [] if o.get("consumer") == consumer_org), None)
            if offer is None:
                continue
            out.append({
                "org": org, "id": ds["id"], "description": ds.get("description", ""),
                "format": ds.get("format", "csv"), "sampleCount": ds.get("sampleCount", 0),
                "siteReady": ready.get("status") == "True",
                "terms": {k: v for k, v in offer.items() if k != "consumer"},
            })
    return sorted(out, key=lambda d: (d["org"], d["id"]))


def catalog_configmap(namespace: str, consumer_org: str, models: list[dict], datasets: list[dict]) -> dict:
    body = json.dumps({"consumerOrg": consumer_org, "models": models, "datasets": datasets}, sort_keys=True, indent=1)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CATALOG_CONFIGMAP, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "flare-operator",
                                "app.kubernetes.io/component": "catalog"},
                     "annotations": {DIGEST_ANNOTATION: digest}},
        "data": {CATALOG_KEY: body},
    }
