"""Orchestrator: flag Gateways whose site stopped reporting in (heartbeat older than
config.gatewayStaleSeconds) — Connected=False on the Gateway and a Warning Event, so the hub's
people see a silent site instead of requests that never get answered."""

from __future__ import annotations

import logging

from ..api.gateway import GatewayStatus
from ..status.gateway import flag_if_stale
from .compute import Hub, _now

log = logging.getLogger(__name__)


async def flag_stale_gateway(hub: Hub, body: dict) -> None:
    meta = body["metadata"]
    status = GatewayStatus.model_validate(GatewayStatus.own_fields(body.get("status")))
    flagged = flag_if_stale(status, generation=meta.get("generation"), now=_now(),
                            stale_after=hub.config.gateway_stale_seconds)
    if flagged is None:
        return
    message = next(c.message for c in flagged.conditions if c.type == "Connected")
    log.warning("Gateway %s/%s: %s", meta["namespace"], meta["name"], message)
    await hub.k("apply_status", "Gateway", meta["namespace"], meta["name"], flagged.to_wire())
    await hub.k("event", body, reason="HeartbeatMissed", note=message, type_="Warning")
