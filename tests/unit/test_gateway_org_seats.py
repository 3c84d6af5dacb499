"""An org's seat cannot be taken: a Gateway counts for org X only in a namespace the cluster admin
labelled flareop.io/org=X; the hub flags the others, and the site's heartbeat does not unflag them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flare_operator.api.gateway import GatewayStatus
from flare_operator.status.conditions import Conditions, get_condition
from flare_operator.status.gateway import (
    GatewayClaim,
    flag_if_stale,
    org_seats,
    org_seats_of,
    set_ready,
    verify_org,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LABELS = {"org-a-hub": "org-a", "org-b-hub": "org-b", "org-c-hub": "org-c", "plain": None, "modeller": "org-b"}


def gw(namespace: str, org: str, name: str | None = None) -> GatewayClaim:
    return GatewayClaim(namespace, name or org, org)


def test_a_gateway_counts_only_in_a_namespace_labelled_with_its_org():
    seats = org_seats([gw("org-a-hub", "org-a"), gw("org-b-hub", "org-b")], LABELS)
    assert dict(seats.namespaces) == {"org-a": "org-a-hub", "org-b": "org-b-hub"}
    assert not seats.refused
    assert seats.missing_message("org-d") == "org-d has no Gateway on the hub"


def test_another_orgs_namespace_cannot_take_the_seat():
    attack = gw("org-c-hub", "org-b", name="sneaky")
    seats = org_seats([gw("org-c-hub", "org-c"), attack, gw("org-b-hub", "org-b")], LABELS)
    assert seats.get("org-b") == "org-b-hub", "org-b keeps its own namespace"
    assert seats.get("org-c") == "org-c-hub", "org-c's own Gateway still counts"
    refusal = seats.refusal("org-c-hub", "sneaky")
    assert refusal.reason == "OrgMismatch"
    assert refusal.message.startswith("namespace org-c-hub belongs to org org-c (label flareop.io/org); "
                                      "a Gateway there cannot register org org-b")
    assert "kubectl delete gateway sneaky -n org-c-hub" in refusal.message


def test_an_org_whose_only_gateway_is_elsewhere_has_no_seat_and_says_why():
    seats = org_seats([gw("org-c-hub", "org-b"), gw("plain", "org-b", name="b2")], LABELS)
    assert seats.get("org-b") is None
    message = seats.missing_message("org-b")
    assert message.startswith("org-b has no Gateway on the hub: ")
    assert "org-b's Gateway org-b is in namespace org-c-hub, which belongs to org-c" in message
    assert "org-b's Gateway b2 is in namespace plain, which has no flareop.io/org label" in message
    plain = seats.refusal("plain", "b2")
    assert plain.reason == "OrgNamespaceUnlabelled"
    assert "kubectl label namespace plain flareop.io/org=org-b" in plain.message


def test_two_labelled_namespaces_with_gateways_for_one_org_are_refused_both():
    seats = org_seats([gw("org-b-hub", "org-b"), gw("modeller", "org-b")], LABELS)
    assert seats.get("org-b") is None, "the hub refuses to pick"
    for namespace in ("org-b-hub", "modeller"):
        refusal = seats.refusal(namespace, "org-b")
        assert refusal.reason == "OrgAmbiguous"
        assert "namespaces modeller, org-b-hub are all labelled flareop.io/org=org-b" in refusal.message
    assert "several namespaces labelled flareop.io/org=org-b (modeller, org-b-hub)" in seats.missing_message("org-b")


def test_a_consumer_namespace_labelled_with_the_org_but_without_a_gateway_is_no_ambiguity():
    seats = org_seats([gw("org-b-hub", "org-b"), gw("org-b-hub", "org-b", name="second-site")], LABELS)
    assert seats.get("org-b") == "org-b-hub" and not seats.refused


def test_seats_from_the_api_objects():
    gateways = [{"metadata": {"namespace": "org-c-hub", "name": "org-b"}, "spec": {"org": "org-b"}},
                {"metadata": {"namespace": "org-a-hub", "name": "org-a"}, "spec": {"org": "org-a"}}]
    namespaces = [{"metadata": {"name": "org-a-hub", "labels": {"flareop.io/org": "org-a"}}},
                  {"metadata": {"name": "org-c-hub", "labels": {"flareop.io/org": "org-c"}}},
                  {"metadata": {"name": "kube-system"}}]
    seats = org_seats_of(gateways, namespaces)
    assert dict(seats.namespaces) == {"org-a": "org-a-hub"}
    assert seats.refusal("org-c-hub", "org-b").reason == "OrgMismatch"
    assert GatewayClaim("org-a-hub", "org-a", "org-a") in seats.claims


def heartbeat(previous: GatewayStatus, at: datetime) -> GatewayStatus:
    """What the site's heartbeat writes (handlers/gateway.py `heartbeat`)."""
    conds = Conditions(previous.conditions, generation=1, now=at)
    conds.set("Connected", True, "Heartbeat", "org-b reported in")
    set_ready(conds)
    return GatewayStatus(conditions=conds.items, last_heartbeat_time=at)


def test_the_flag_stands_through_heartbeats_and_clears_only_when_the_hub_says_so():
    status = heartbeat(GatewayStatus(), NOW)
    assert get_condition(status.conditions, "Ready").status == "True"
    refusal = org_seats([gw("org-c-hub", "org-b")], LABELS).refusal("org-c-hub", "org-b")

    flagged = verify_org(status, refusal, org="org-b", namespace="org-c-hub", generation=1, now=NOW)
    verified = get_condition(flagged.conditions, "OrgVerified")
    ready = get_condition(flagged.conditions, "Ready")
    assert (verified.status, verified.reason) == ("False", "OrgMismatch")
    assert (ready.status, ready.reason, ready.message) == ("False", "OrgMismatch", refusal.message)
    assert get_condition(flagged.conditions, "Connected").status == "True", "the site's condition is kept"
    assert verify_org(flagged, refusal, org="org-b", namespace="org-c-hub", generation=1, now=NOW) is None, \
        "written once, not every pass"

    for beat in range(1, 4):  # the site keeps reporting in: Ready stays False, transition time kept
        at = NOW + timedelta(seconds=10 * beat)
        flagged = heartbeat(flagged, at)
        assert get_condition(flagged.conditions, "Ready").status == "False"
        assert get_condition(flagged.conditions, "Ready").last_transition_time == NOW
        assert get_condition(flagged.conditions, "OrgVerified").reason == "OrgMismatch"

    # The cluster admin fixed the labels: the hub clears its flag and Ready follows Connected.
    cleared = verify_org(flagged, None, org="org-b", namespace="org-b-hub", generation=1, now=NOW)
    assert get_condition(cleared.conditions, "OrgVerified").status == "True"
    assert get_condition(cleared.conditions, "OrgVerified").reason == "OrgMatch"
    assert get_condition(cleared.conditions, "Ready").status == "True"


def test_a_gateway_that_counts_is_marked_once_and_a_stale_one_keeps_the_org_reason():
    status = heartbeat(GatewayStatus(), NOW)
    ok = verify_org(status, None, org="org-b", namespace="org-b-hub", generation=1, now=NOW)
    assert get_condition(ok.conditions, "OrgVerified").message == "namespace org-b-hub belongs to org org-b (label flareop.io/org)"
    assert verify_org(ok, None, org="org-b", namespace="org-b-hub", generation=1, now=NOW) is None

    refusal = org_seats([gw("org-c-hub", "org-b")], LABELS).refusal("org-c-hub", "org-b")
    flagged = verify_org(status, refusal, org="org-b", namespace="org-c-hub", generation=1, now=NOW)
    silent = flag_if_stale(flagged, generation=1, now=NOW + timedelta(seconds=120), stale_after=60)
    assert get_condition(silent.conditions, "Connected").reason == "HeartbeatMissed"
    assert get_condition(silent.conditions, "Ready").reason == "OrgMismatch", "what the person must fix first"


def test_never_reported_and_not_refused_leaves_ready_alone():
    conds = Conditions([], generation=1, now=NOW)
    set_ready(conds)
    assert conds.items == []
