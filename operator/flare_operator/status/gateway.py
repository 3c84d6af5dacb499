"""Pure: the hub's view of the Gateways — is a site still reporting in, and which hub namespace is
each org's (its seat)?

Org seats. An org's hub namespace is where the orchestrator writes the org's AccessRequests and
client kits, and whatever is read back from there is trusted as that org's answer. A Gateway, which
any site credential can write in its own namespace, therefore counts for org X only when its
namespace carries ``flareop.io/org: X`` — a label only the cluster admin sets. A Gateway in an
unlabelled namespace, or in one labelled with another org, counts for no org; when Gateways for X
sit in several namespaces labelled X, X gets no seat at all (the hub refuses to pick). Each Gateway
that does not count is flagged on its own status (OrgVerified=False, Ready=False) with what to do.

Two writers share a Gateway's status conditions:
- the site's heartbeat (handlers/gateway.py) owns Connected;
- the hub (handlers/liveness.py) owns OrgVerified, and sets Connected=False when heartbeats stop.
Ready is derived from both by `set_ready`, which each writer calls after changing its own
condition, keeping the other's as it read it: a Gateway the hub refused stays Ready=False through
every heartbeat instead of flapping back to True.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..api.conditions import ConditionType as T
from ..api.conditions import Reason as R
from ..api.gateway import GatewayStatus
from ..config import LABEL_ORG
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
    set_ready(conds)
    return status.model_copy(update={"conditions": conds.items})


def set_ready(conds: Conditions) -> None:
    """Ready from the two writers' conditions: False with the hub's reason while the hub refuses the
    Gateway (OrgVerified=False), else False while it is not Connected, True once it is. Left as it
    is while the site never reported (no Connected yet) and the hub has nothing against it."""
    verified = get_condition(conds.items, T.ORG_VERIFIED)
    connected = get_condition(conds.items, T.CONNECTED)
    if verified is not None and verified.status == "False":
        conds.set(T.READY, False, verified.reason, verified.message)
    elif connected is not None and connected.status != "True":
        conds.set(T.READY, False, connected.reason, connected.message)
    elif connected is not None:
        conds.set(T.READY, True, R.HEARTBEAT, "gateway connected")


# --- org seats ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayClaim:
    """A Gateway as the seat computation sees it: where it is and which org it says it registers."""

    namespace: str
    name: str
    org: str  # spec.org


@dataclass(frozen=True)
class Refusal:
    """Why a Gateway does not count for the org it names."""

    reason: str  # a Reason (OrgMismatch, OrgNamespaceUnlabelled, OrgAmbiguous)
    message: str  # on the Gateway: what is wrong and what to do
    why: str  # for a ComputeSpec or FederatedJob that needs the org: why the org has no Gateway


@dataclass(frozen=True)
class OrgSeats:
    """org -> its hub namespace, and the Gateways that count for no org (with why)."""

    namespaces: Mapping[str, str] = field(default_factory=dict)
    refused: Mapping[GatewayClaim, Refusal] = field(default_factory=dict)
    claims: frozenset[GatewayClaim] = frozenset()  # every Gateway this was computed from
    remote: frozenset[str] = frozenset()  # orgs whose counted Gateway says it is on another cluster

    def get(self, org: str) -> str | None:
        return self.namespaces.get(org)

    def why_missing(self, org: str) -> str:
        """Why ``org`` has no seat though Gateways name it ("" when none does)."""
        return "; ".join(sorted({r.why for c, r in self.refused.items() if c.org == org}))

    def missing_message(self, org: str) -> str:
        """'<org> has no Gateway on the hub', with why when Gateways for it exist but do not count."""
        why = self.why_missing(org)
        return f"{org} has no Gateway on the hub" + (f": {why}" if why else "")

    def refusal(self, namespace: str, name: str) -> Refusal | None:
        return next((r for c, r in self.refused.items() if (c.namespace, c.name) == (namespace, name)), None)


def org_seats(claims: Iterable[GatewayClaim], namespace_orgs: Mapping[str, str | None]) -> OrgSeats:
    """Each org's hub namespace from the Gateways (``claims``) and the namespaces' org labels
    (``namespace_orgs``: namespace -> its flareop.io/org label, absent or None when unlabelled).

    A Gateway counts for org X only in a namespace labelled X; X's seat is that namespace when exactly
    one such namespace holds Gateways for X, and none when several do (ambiguous: refused, flagged).
    """
    claims = sorted(set(claims), key=lambda c: (c.namespace, c.name))
    candidates: dict[str, list[GatewayClaim]] = {}
    refused: dict[GatewayClaim, Refusal] = {}
    for claim in claims:
        owner = namespace_orgs.get(claim.namespace)
        if owner == claim.org:
            candidates.setdefault(claim.org, []).append(claim)
        elif not owner:
            refused[claim] = _unlabelled(claim)
        else:
            refused[claim] = _mismatch(claim, owner)
    seats: dict[str, str] = {}
    for org, found in candidates.items():
        namespaces = sorted({c.namespace for c in found})
        if len(namespaces) == 1:
            seats[org] = namespaces[0]
        else:
            for claim in found:
                refused[claim] = _ambiguous(claim, namespaces)
    return OrgSeats(namespaces=seats, refused=refused, claims=frozenset(claims))


def _mismatch(c: GatewayClaim, owner: str) -> Refusal:
    return Refusal(
        R.ORG_MISMATCH,
        f"namespace {c.namespace} belongs to org {owner} (label {LABEL_ORG}); a Gateway there cannot register "
        f"org {c.org}: the hub ignores it and sends none of {c.org}'s AccessRequests or client kits here. If this "
        f"site is {owner}'s, set its gateway's org to {owner} (Gateway spec.org); if it is {c.org}'s, give it "
        f"{c.org}'s hub namespace (hubNamespace, labelled {LABEL_ORG}={c.org}) and delete this Gateway "
        f"(kubectl delete gateway {c.name} -n {c.namespace})",
        f"{c.org}'s Gateway {c.name} is in namespace {c.namespace}, which belongs to {owner}")


def _unlabelled(c: GatewayClaim) -> Refusal:
    return Refusal(
        R.ORG_NAMESPACE_UNLABELLED,
        f"namespace {c.namespace} has no {LABEL_ORG} label, so it belongs to no org; a Gateway there cannot "
        f"register org {c.org}: the hub ignores it. If {c.namespace} is {c.org}'s hub namespace, the hub's "
        f"cluster admin labels it: kubectl label namespace {c.namespace} {LABEL_ORG}={c.org}",
        f"{c.org}'s Gateway {c.name} is in namespace {c.namespace}, which has no {LABEL_ORG} label")


def _ambiguous(c: GatewayClaim, namespaces: list[str]) -> Refusal:
    listed = ", ".join(namespaces)
    return Refusal(
        R.ORG_AMBIGUOUS,
        f"namespaces {listed} are all labelled {LABEL_ORG}={c.org} and each holds a Gateway for {c.org}: the hub "
        f"cannot tell which is {c.org}'s hub namespace and uses none, so {c.org} gets no AccessRequests. The "
        f"hub's cluster admin keeps the label on {c.org}'s one hub namespace only (kubectl label namespace "
        f"<namespace> {LABEL_ORG}-) or deletes the extra Gateways",
        f"{c.org} has Gateways in several namespaces labelled {LABEL_ORG}={c.org} ({listed})")


def verify_org(status: GatewayStatus, refusal: Refusal | None, *, org: str, namespace: str,
               generation: int | None, now: datetime) -> GatewayStatus | None:
    """The status with the hub's OrgVerified condition (and Ready) for this Gateway: False with the
    refusal when it does not count, True when it does; None when nothing changes."""
    if refusal is None:
        ok, reason, message = True, R.ORG_MATCH, f"namespace {namespace} belongs to org {org} (label {LABEL_ORG})"
    else:
        ok, reason, message = False, refusal.reason, refusal.message
    conds = Conditions(status.conditions, generation=generation, now=now)
    conds.set(T.ORG_VERIFIED, ok, reason, message)
    set_ready(conds)
    if conds.items == list(status.conditions):
        return None
    return status.model_copy(update={"conditions": conds.items})


def org_seats_of(gateways: Iterable[dict], namespaces: Iterable[dict]) -> OrgSeats:
    """`org_seats` over the API's Gateway and Namespace objects as listed."""
    claims = [GatewayClaim(gw["metadata"]["namespace"], gw["metadata"]["name"], (gw.get("spec") or {}).get("org") or "")
              for gw in gateways]
    labels = {ns["metadata"]["name"]: (ns["metadata"].get("labels") or {}).get(LABEL_ORG) for ns in namespaces}
    seats = org_seats(claims, labels)
    remote = {claim.org for claim, gw in zip(claims, gateways, strict=True)
              if seats.get(claim.org) == claim.namespace and (gw.get("spec") or {}).get("sameClusterAsHub") is False}
    return replace(seats, remote=frozenset(remote))
