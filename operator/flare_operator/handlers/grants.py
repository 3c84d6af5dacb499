"""Site: is each DatasetGrant usable here? Reported in the grant's status (Valid, Ready).

The checks are pure (policy/grants.py); this module gathers their inputs — each grant's path
resolved the way the site's runtime will read it, whether its PersistentVolumeClaim exists — and
writes the conditions. The same checks decide which grants the site's decisions may use
(handlers/gateway.py `read_grants`), so a grant reported invalid is never chosen nor mounted.

Only the conditions are written, by server-side apply of `status.conditions` (a list-map keyed by
type: other writers' conditions stay) and `status.observedGeneration`; the epsilon ledger in the
same status is written by the gateway (resourceVersion-guarded replace) and never touched here.

Level-based, without a Kopf timer on the owner's objects (a Kopf timer adds the operator's
finalizer to every DatasetGrant, so a grant could not be deleted while the gateway is down): one
loop per site checks every grant each resync interval, and any DatasetGrant event wakes it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ..api.common import Condition
from ..api.conditions import ConditionType, Reason
from ..api.dataset_grant import DatasetGrantSpec, DatasetGrantStatus
from ..config import SiteSettings
from ..policy.grants import KUBERNETES, GrantInput, GrantProblem, SiteData, alternatives, check_grants
from ..runtime.kube import StatusRefused, readable
from ..runtime.metrics import STATUS_WRITES
from ..status.conditions import Conditions

if TYPE_CHECKING:
    from .gateway import Site

log = logging.getLogger(__name__)

OWN_CONDITIONS = (ConditionType.VALID.value, ConditionType.READY.value)
"""The condition types this module writes on a DatasetGrant."""
MESSAGE_MAX = 4096
"""A condition message stays readable in `kubectl describe` (the field allows 32768)."""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def resolve(path: str, runtime: str) -> str:
    """A path as the site's clients will read it. Process runtime: absolute on the operator's machine,
    every symlink followed (relative paths start at the operator's working directory, as the client's
    site config does). Kubernetes runtime: a node path, normalised lexically (the node's symlinks are
    not visible from here)."""
    if runtime == KUBERNETES:
        return posixpath.normpath(path)
    return os.path.realpath(path)


def site_data(settings: SiteSettings, runtime: str) -> SiteData:
    """What the site allows. `runtime`: the runtime that actually runs (mounts) the site's clients —
    the operator's (`OperatorConfig.runtime`, main.py `make_runtime`)."""
    roots = settings.data_roots
    return SiteData(
        runtime=runtime, namespace=settings.namespace,
        data_roots=None if roots is None else tuple(resolve(str(r), runtime) for r in roots),
    )


def _created(obj: dict) -> datetime | None:
    text = obj["metadata"].get("creationTimestamp")
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _errors(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors())


def grant_input(obj: dict, runtime: str, claims: set[str] | None) -> GrantInput:
    name = obj["metadata"]["name"]
    try:
        spec = DatasetGrantSpec.model_validate(obj.get("spec") or {})
    except ValidationError as err:
        return GrantInput(name, None, _created(obj), spec_error=_errors(err))
    source = spec.dataset
    pvc = source.persistent_volume_claim
    return GrantInput(
        name, spec, _created(obj),
        resolved_path=resolve(source.path, runtime) if source.path is not None else None,
        claim_exists=(pvc.claim_name in claims) if pvc is not None and claims is not None else None,
    )


@dataclass(frozen=True)
class CheckedGrants:
    """The site's DatasetGrants as stored, what the checks saw, and each grant's problems."""

    site: SiteData
    objects: list[dict]
    inputs: list[GrantInput]
    problems: dict[str, list[GrantProblem]]

    def invalid(self, name: str) -> str | None:
        """The reason of the grant's first problem; None when the site can use it."""
        found = self.problems.get(name)
        return str(found[0].reason) if found else None


async def checked_grants(site: Site) -> CheckedGrants:
    """Read the site's grants (and, for volume grants under the kubernetes runtime, its claims) and check them."""
    settings = site.settings
    data = site_data(settings, str(site.config.runtime))
    objects = await site.listings.list("DatasetGrant")
    claims: set[str] | None = None
    if data.runtime == KUBERNETES and any(((o.get("spec") or {}).get("dataset") or {}).get("persistentVolumeClaim")
                                          for o in objects):
        claims = {c["metadata"]["name"] for c in await site.site("list", "PersistentVolumeClaim", settings.namespace)}
    inputs = await asyncio.to_thread(lambda: [grant_input(o, data.runtime, claims) for o in objects])
    return CheckedGrants(data, objects, inputs, check_grants(inputs, data, _now()))


def grant_conditions(previous: list[Condition], *, problems: list[GrantProblem], site: SiteData,
                     spec: DatasetGrantSpec | None, others: list[str], generation: int | None,
                     now: datetime) -> list[Condition]:
    """The grant's conditions: Valid and Ready set from the checks, any other as it was."""
    conds = Conditions(previous, generation=generation, now=now)
    if problems:
        message = "; ".join(f"{p.field}: {p.message}" for p in problems) + ". The site ignores this grant until then."
        if len(message) > MESSAGE_MAX:
            message = message[: MESSAGE_MAX - 1] + "…"
        conds.set(ConditionType.VALID, False, problems[0].reason, message)
        conds.set(ConditionType.READY, False, problems[0].reason, message)
        return conds.items
    notes = []
    if spec is not None and spec.dataset.path is not None and site.data_roots is None:
        notes.append("its path is not confined to a folder: this site's gateway settings set no dataRoots")
    if others:
        notes.append(f"DatasetGrant {', '.join(others)} grants the same data under other terms")
    conds.set(ConditionType.VALID, True, Reason.VALID,
              "the site can use this grant" + (f" ({'; '.join(notes)})" if notes else ""))
    expires = spec.expires_at if spec is not None else None
    if expires is not None:
        expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
    if expires is not None and expires <= now:
        conds.set(ConditionType.READY, False, Reason.GRANT_EXPIRED,
                  f"expired at {expires.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}: it allows nothing more; "
                  "move spec.expiresAt to grant again")
    else:
        conds.set(ConditionType.READY, True, Reason.RECONCILED, "valid: the consumers it names may use the dataset")
    return conds.items


def _own(conditions: list[Condition]) -> list[dict]:
    return [c.to_wire() for c in conditions if c.type in OWN_CONDITIONS]


async def report_grants(site: Site, checked: CheckedGrants | None = None) -> int:
    """Write each grant's Valid/Ready conditions where they changed; returns how many were written."""
    checked = checked or await checked_grants(site)
    now = _now()
    written = 0
    for obj, grant in zip(checked.objects, checked.inputs, strict=True):
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        try:
            previous = DatasetGrantStatus.model_validate(DatasetGrantStatus.own_fields(obj.get("status"))).conditions
        except ValidationError:
            previous = []
        problems = checked.problems.get(grant.name, [])
        generation = meta.get("generation")
        conditions = grant_conditions(previous, problems=problems, site=checked.site, spec=grant.spec,
                                      others=alternatives(checked.inputs, checked.problems, grant.name),
                                      generation=generation, now=now)
        stored_generation = (obj.get("status") or {}).get("observedGeneration")
        if _own(conditions) == _own(previous) and stored_generation == generation:
            continue
        try:
            await site.site("apply_status", "DatasetGrant", meta["namespace"], meta["name"],
                            {"observedGeneration": generation, "conditions": _own(conditions)})
        except StatusRefused:
            continue  # recorded as Ready=False (InvalidSpec) with the server's message; logged once
        except Exception as err:  # noqa: BLE001 - one grant's failed write must not hold back the others' reports
            log.warning("could not write the status of DatasetGrant %s/%s: %s", meta["namespace"], meta["name"],
                        readable(str(err))[:400])
            continue
        STATUS_WRITES.labels("DatasetGrant").inc()
        written += 1
        was_valid = next((c.status for c in previous if c.type == ConditionType.VALID), None)
        now_valid = next(c for c in conditions if c.type == ConditionType.VALID)
        if now_valid.status != was_valid:
            await site.site("event", obj, reason=now_valid.reason, note=now_valid.message,
                            type_="Normal" if now_valid.status == "True" else "Warning")
    return written


class GrantWatch:
    """One loop per site: check every grant each interval, or at once when woken (a grant changed)."""

    def __init__(self, site: Site):
        self.site = site
        self.wake = asyncio.Event()

    def nudge(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        interval = self.site.config.resync_seconds
        while True:
            self.wake.clear()
            try:
                await report_grants(self.site)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep checking; the API server may be briefly unreachable
                log.warning("checking the DatasetGrants of %s failed", self.site.settings.site, exc_info=True)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=interval)
            except TimeoutError:
                pass
