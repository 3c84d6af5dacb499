"""Pure: is a site's answer to an AccessRequest settled — one that only an event can change?

A gateway answers each request on its create and spec changes, at once when the site's grants,
policy or approvals change (every grant, including its ledger and its expiry, is such an event: the
site's grant checks write the expiry into the grant's status), and on a resync timer for what no
event announces: a client that started or died, a Pod that became ready. A settled answer has none
of those pending, so the timer re-answers it at `settledResyncSeconds` instead of every
`resyncSeconds` (docs/operator.md; docs/benchmarks.md §7: at 100 orgs the 5 s re-answers were two
thirds of the operator's API requests).
"""

from __future__ import annotations

import json

from ..api.access_request import ANNOTATION_KIT, RequestKind
from ..api.common import Decision


def answer_settled(body: dict, *, client_events: bool = False) -> bool:
    """The site answered this generation and content, with a final decision, and (a Compute request
    it approved while active) reported its client running — or has no client kit yet: the hub's kit
    annotation (ANNOTATION_KIT) is an event that answers it, so waiting for provisioning needs no
    resync. ``client_events``: the site also answers on its client's events (the kubernetes runtime:
    its StatefulSet and Pod), so a client that is starting, with no problem reported, is waited for
    without a resync too; a reported problem (a Pod that cannot run, a server name that does not
    resolve) is looked at again each resync."""
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return False
    if status.get("decidedHash") != spec.get("contentHash"):
        return False
    decision = status.get("decision")
    if decision == Decision.REJECTED:
        return True
    if decision != Decision.APPROVED:
        return False
    compute = (spec.get("source") or {}).get("kind") == RequestKind.COMPUTE
    kit = ANNOTATION_KIT in (meta.get("annotations") or {})
    starting = client_events and not status.get("clientMessage")
    return not (compute and spec.get("active", True) and spec.get("outcome") is None and kit
                and not status.get("clientReady") and not starting)


def grant_inputs(grant: dict) -> tuple:
    """What of a DatasetGrant, other than its ledger, a site's answers read: spec, labels and its
    conditions (validity). Two events of a grant with the same inputs differ in the ledger (or in
    metadata no answer reads)."""
    meta, status = grant.get("metadata") or {}, grant.get("status") or {}
    conditions = sorted((c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", ""))
                        for c in status.get("conditions") or [])
    return (meta.get("generation"), json.dumps(grant.get("spec") or {}, sort_keys=True),
            json.dumps(meta.get("labels") or {}, sort_keys=True), tuple(conditions))


def moved_by_ledger(request: dict, grant: dict) -> bool:
    """Whether a change of this grant's ledger alone can change the site's answer to ``request``: a
    job request on the grant's dataset that is not over and either not approved (budget freed or
    taken decides it) or approved holding epsilon but with no reservation left on this grant (an
    older job wounded it). An approved job that holds its reservation here decides the same whatever
    else the ledger holds (its own entry is excluded from the budget it is checked against; the
    'epsilon left' in its rule message is refreshed at the settled resync); a Compute request never
    reads the ledger."""
    spec, status = request.get("spec") or {}, request.get("status") or {}
    if (spec.get("source") or {}).get("kind") != RequestKind.JOB or spec.get("outcome") is not None:
        return False
    dataset = ((grant.get("spec") or {}).get("dataset") or {}).get("id")
    if dataset not in (spec.get("datasets") or []):
        return False
    if status.get("decision") != Decision.APPROVED:
        return True
    if not status.get("epsilonReserved"):
        return False
    uid = (spec.get("source") or {}).get("uid")
    ledger = (grant.get("status") or {}).get("ledger") or []
    return not any(e.get("uid") == uid and not e.get("spent") for e in ledger)
