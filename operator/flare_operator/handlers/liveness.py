"""Orchestrator: the hub's pass over each Gateway — flag what the hub's people must act on.

- A site that stopped reporting in (heartbeat older than config.gatewayStaleSeconds):
  Connected=False and a Warning Event `HeartbeatMissed`, so a silent site shows instead of
  requests that never get answered.
- A Gateway that counts for no org (its namespace is not labelled flareop.io/org with the org it
  names, or several namespaces labelled with that org hold Gateways for it: status/gateway.py
  `org_seats`): OrgVerified=False, Ready=False and a Warning Event with the reason (OrgMismatch,
  OrgNamespaceUnlabelled, OrgAmbiguous) and what to do. The refusal itself does not depend on this
  flag: handlers/compute.py `org_hub_namespaces` computes the same seats on every reconcile and
  never writes an org's requests or kits anywhere else. A Gateway that counts gets OrgVerified=True.

How the hub and the site share the Gateway's status: the site's heartbeat owns Connected, the hub
owns OrgVerified (and flips Connected to False when heartbeats stop); each recomputes Ready from
both (status/gateway.py `set_ready`) and keeps the other's conditions as it read them. The hub
writes only `status.conditions`, as a merge patch guarded by the resourceVersion it read: a
heartbeat in between makes the patch conflict and the next pass decides again from the fresh
object, so the hub never rolls a heartbeat back.
"""

from __future__ import annotations

import logging

from ..api.conditions import ConditionType as T
from ..api.gateway import GatewayStatus
from ..runtime.kube import Conflict, NotFound
from ..status.conditions import get_condition
from ..status.gateway import GatewayClaim, flag_if_stale, verify_org
from .compute import Hub, _now, org_hub_namespaces

log = logging.getLogger(__name__)


async def check_gateway(hub: Hub, body: dict) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    org = (body.get("spec") or {}).get("org") or ""
    generation, now = meta.get("generation"), _now()
    status = GatewayStatus.model_validate(GatewayStatus.own_fields(body.get("status")))
    warnings: list[tuple[str, str]] = []

    stale = flag_if_stale(status, generation=generation, now=now, stale_after=hub.config.gateway_stale_seconds)
    if stale is not None:
        status = stale
        warnings.append(("HeartbeatMissed", get_condition(status.conditions, T.CONNECTED).message))

    claim = GatewayClaim(namespace, name, org)
    current = await org_hub_namespaces(hub)
    if claim not in current.claims:  # judged on a picture with it: list again if the seat watch lags
        hub.listings.changed("Gateway")
        current = await org_hub_namespaces(hub)
    refusal = current.refusal(namespace, name)
    verified = verify_org(status, refusal, org=org, namespace=namespace, generation=generation, now=now)
    if verified is not None:
        before = get_condition(status.conditions, T.ORG_VERIFIED)
        if refusal is not None and (before is None or before.status != "False" or before.reason != refusal.reason
                                    or before.message != refusal.message):
            warnings.append((refusal.reason, refusal.message))
        status = verified

    if stale is None and verified is None:
        return
    patch: dict = {"status": {"conditions": status.to_wire().get("conditions", [])}}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}  # 409 if a heartbeat came in between
    try:
        await hub.k("merge_patch", "Gateway", namespace, name, patch, status=True)
    except (Conflict, NotFound):
        log.info("Gateway %s/%s changed or went away while the hub checked it: checking again next pass",
                 namespace, name)
        return
    for reason, message in warnings:
        log.warning("Gateway %s/%s: %s", namespace, name, message)
        await hub.k("event", body, reason=reason, note=message, type_="Warning")
