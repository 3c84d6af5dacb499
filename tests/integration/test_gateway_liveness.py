"""The hub notices a site that stopped reporting in: its Gateway turns Connected=False with a Warning
Event, and the site's next heartbeat turns it back — on a real API server with the real operator."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.operator_harness import (
    Consortium,
    apply,
    create_org_namespace,
    get,
    install_crds,
    operator_config,
    remove_namespaces,
    running_operator,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


def _heartbeat(cp, namespace: str, seconds_ago: float) -> None:
    at = (datetime.now(UTC) - timedelta(seconds=seconds_ago)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    status = {"lastHeartbeatTime": at, "conditions": [
        {"type": t, "status": "True", "reason": "Heartbeat", "message": "org-b reported in", "lastTransitionTime": at}
        for t in ("Connected", "Ready")]}
    cp.kubectl("patch", "gateway", "org-b", "-n", namespace, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


def _connected(cp, namespace: str) -> dict:
    conditions = (get(cp, "gateway", namespace, "org-b").get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Connected"), {})


def test_a_silent_site_is_flagged_and_recovers_on_its_next_heartbeat(control_plane, tmp_path):
    cp = control_plane
    install_crds(cp)
    org = Consortium().org("org-b")
    create_org_namespace(cp, org, org)
    try:
        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "Gateway", "metadata": {"name": "org-b", "namespace": org},
                   "spec": {"org": org, "site": "org-b", "runtime": "process"}})
        _heartbeat(cp, org, seconds_ago=1)
        config = operator_config(tmp_path, [], mode="orchestrator", namespaces=[org], resyncSeconds=1,
                                 gatewayStaleSeconds=8)
        with running_operator(cp, tmp_path, config):
            flagged = wait_for(lambda: (c := _connected(cp, org)) and c["status"] == "False" and c, timeout=60,
                               message="the silent gateway flagged")
            assert flagged["reason"] == "HeartbeatMissed" and "expected within 8s" in flagged["message"]
            events = json.loads(cp.kubectl("get", "events", "-n", org, "-o", "json").stdout)["items"]
            assert any(e["reason"] == "HeartbeatMissed" and e["type"] == "Warning" for e in events)

            _heartbeat(cp, org, seconds_ago=0)  # the site is back
            wait_for(lambda: _connected(cp, org)["status"] == "True", timeout=10, message="reported in again")
            # Fresh heartbeats keep it connected through several of the hub's passes (every 5 s).
            for _ in range(3):
                _heartbeat(cp, org, seconds_ago=0)
                time.sleep(2.5)
                assert _connected(cp, org)["status"] == "True"
    finally:
        remove_namespaces(cp, org)
