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

from ..api.access_request import RequestKind
from ..api.common import Decision


def answer_settled(body: dict) -> bool:
    """The site answered this generation and content, with a final decision, and (a Compute request
    it approved while active) reported its client running."""
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
    return not (compute and spec.get("active", True) and spec.get("outcome") is None and not status.get("clientReady"))
