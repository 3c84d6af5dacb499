"""Orchestrator: keep the ConfigMap `flare-catalog` current in every consumer namespace it serves
(builders/catalog_view.py says what is in it): the catalog's models and the datasets offered to that
namespace's org, so the SDK on a modeller's laptop lists them without reading other orgs' objects.

One pass every `max(resyncSeconds, 5)` seconds: two API lists (Namespaces and Gateways, from which the
org seats are computed too) plus one apply per namespace whose content changed (its digest annotation differs).
"""

from __future__ import annotations

import asyncio
import logging

from .. import catalog
from ..builders.catalog_view import DIGEST_ANNOTATION, catalog_configmap, consumer_datasets
from ..config import LABEL_ORG
from ..status.gateway import org_seats_of
from .compute import Hub

log = logging.getLogger(__name__)


def _models() -> list[dict]:
    try:
        return [app.summary() for app in catalog.list_apps()]
    except catalog.CatalogError as err:
        log.warning("the catalog cannot be listed for modellers: %s", err)
        return []


async def publish_catalogs(hub: Hub, published: dict[str, str]) -> int:
    """One pass; ``published``: namespace -> digest last written (kept between passes). Returns writes."""
    served = set(hub.config.namespaces)
    every_namespace = await hub.k("list", "Namespace")
    namespaces = [ns for ns in every_namespace
                  if (ns["metadata"].get("labels") or {}).get(LABEL_ORG)
                  and (not served or ns["metadata"]["name"] in served)
                  and not ns["metadata"].get("deletionTimestamp")]
    if not namespaces:
        return 0
    gateways = await hub.k("list", "Gateway")
    seats = org_seats_of(gateways, every_namespace)  # the same two lists org_hub_namespaces reads
    models = await asyncio.to_thread(_models)
    writes = 0
    for ns in namespaces:
        name, org = ns["metadata"]["name"], ns["metadata"]["labels"][LABEL_ORG]
        obj = catalog_configmap(name, org, models, consumer_datasets(org, gateways, dict(seats.namespaces)))
        digest = obj["metadata"]["annotations"][DIGEST_ANNOTATION]
        if published.get(name) == digest:
            continue
        await hub.k("apply", obj)
        published[name] = digest
        writes += 1
    return writes


REFRESH_PASSES = 60
"""Every this many passes each ConfigMap is written again even if unchanged (one deleted by hand comes back)."""


async def catalog_loop(hub: Hub) -> None:
    published: dict[str, str] = {}
    passes = 0
    while True:
        passes += 1
        if passes % REFRESH_PASSES == 0:
            published.clear()
        try:
            await publish_catalogs(hub, published)
        except Exception:  # noqa: BLE001 - keep publishing; the API server may be briefly unreachable
            log.warning("publishing the modellers' catalogs failed", exc_info=True)
        await asyncio.sleep(max(hub.config.resync_seconds, 5.0))
