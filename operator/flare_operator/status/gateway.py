"""Pure: is a site's gateway still reporting in? The hub's view of a Gateway's heartbeat."""

from __future__ import annotations

from datetime import datetime

from ..api.conditions import ConditionType as T
from ..api.conditions import Reason as R
from ..api.gateway import GatewayStatus
from .conditions import Conditions, get_condition


def flag_if_stale(status: GatewayStatus, *, generation: int | None, now: datetime,
                  stale_after: float) -> GatewayStatus | None:
    """The status with Connected=False and Ready=False when the site stopped reporting for longer
    than ``stale_after`` seconds; None when there is nothing to change (fresh, never reported, or
    already flagged). The site's next heartbeat sets Connected=True again."""
    last = status.last_heartbeat_time
    if last is None:
        return None
    age = (now - last).total_seconds()
    if age <= stale_after:
        return None
    current = get_condition(status.conditions, T.CONNECTED)
    if current is not None and current.status == "False" and current.reason == R.HEARTBEAT_MISSED:
        return None
    message = (f"no heartbeat for {age:.0f}s (last {last.isoformat()}, expected within {stale_after:.0f}s): the "
               "site's gateway controller is down or cut off from the hub; its decisions stand, new requests "
               "wait, and its NVFlare clients may still run")
    conds = Conditions(status.conditions, generation=generation, now=now)
    conds.set(T.CONNECTED, False, R.HEARTBEAT_MISSED, message)
    conds.set(T.READY, False, R.HEARTBEAT_MISSED, message)
    return status.model_copy(update={"conditions": conds.items})
