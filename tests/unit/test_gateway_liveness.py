"""The hub's view of a site's heartbeat: flagged once when silent too long, never when fresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flare_operator.api.gateway import GatewayStatus
from flare_operator.status.conditions import get_condition, is_true
from flare_operator.status.gateway import flag_if_stale

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def reported(seconds_ago: float | None) -> GatewayStatus:
    from flare_operator.status.conditions import Conditions

    conds = Conditions([], generation=1, now=NOW)
    conds.set("Connected", True, "Heartbeat", "org-b reported in")
    conds.set("Ready", True, "Heartbeat", "gateway connected")
    last = None if seconds_ago is None else NOW - timedelta(seconds=seconds_ago)
    return GatewayStatus(conditions=conds.items, last_heartbeat_time=last)


def test_a_fresh_or_never_reporting_gateway_is_left_alone():
    assert flag_if_stale(reported(30), generation=1, now=NOW, stale_after=60) is None
    assert flag_if_stale(reported(60), generation=1, now=NOW, stale_after=60) is None
    assert flag_if_stale(reported(None), generation=1, now=NOW, stale_after=60) is None


def test_a_silent_gateway_is_flagged_once_with_an_actionable_message():
    flagged = flag_if_stale(reported(95), generation=1, now=NOW, stale_after=60)
    assert flagged is not None
    connected = get_condition(flagged.conditions, "Connected")
    assert connected.status == "False" and connected.reason == "HeartbeatMissed"
    assert "no heartbeat for 95s" in connected.message and "expected within 60s" in connected.message
    assert not is_true(flagged.conditions, "Ready")
    assert flagged.last_heartbeat_time == NOW - timedelta(seconds=95), "the site's own fields are kept"
    later = NOW + timedelta(seconds=30)
    assert flag_if_stale(flagged, generation=1, now=later, stale_after=60) is None, "not rewritten every pass"
