"""Can this site use a DatasetGrant? Pure: the site's grants + what the site allows -> problems.

The site's gateway gathers the inputs (each grant's spec, its path with symlinks resolved, whether
its PersistentVolumeClaim exists), calls :func:`check_grants`, writes the outcome into each grant's
status (``Valid`` and ``Ready`` conditions, handlers/grants.py), and leaves every grant with a
problem out of every decision (``GrantView.invalid``): an invalid grant allows nothing and is never
mounted.

What a grant must satisfy
-------------------------
- Location (reason ``InvalidLocation``):
  - a path grant's path, symlinks resolved, is one of the site's ``dataRoots`` or lies under one
    (``dataRoots: []``: no path grants at all; not set: any path, and the Valid message says so);
    with the kubernetes runtime the path is a node path (hostPath) and must be absolute;
  - a PersistentVolumeClaim grant needs the kubernetes runtime, and its claim must exist in the
    site namespace (the claim name cannot name another namespace: a pod mounts claims of its own).
  The shape (no ``..`` segments, no NUL) is refused earlier, by CEL (api/dataset_grant.py).
- Version constraints (reason ``InvalidVersionConstraint``): every ``models[].versions`` parses
  ('*', PEP 440 specifiers, '1.2.*', '1.0.0').
- One dataset id, one set of data (reason ``DuplicateDatasetId``): several grants may name the same
  dataset id — they are alternatives (e.g. other consumers, other terms) over the *same* data, and a
  consumer gets the one the evaluation chose (policy/evaluate.py ``Evaluation.granted_by``). Grants
  that name one id with different data (location or format) conflict: the oldest valid, unexpired
  grant (creation time, then name) keeps the id, every other one is invalid until it names the same
  data or another id. So a consumer is never given another grant's data, and the Gateway published to
  the hub has one entry per id.
- A stored spec that does not parse (e.g. written before a rule existed): reason ``InvalidSpec``.
Expiry is not a problem of validity: an expired grant is Valid, Ready=False (``GrantExpired``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from packaging.specifiers import InvalidSpecifier

from ..api.conditions import Reason
from ..api.dataset_grant import DatasetGrantSpec
from .evaluate import version_allowed

PROCESS = "process"
KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class GrantProblem:
    """Why the site cannot use a grant: the reason constant, the field, and what to do."""

    reason: Reason
    field: str
    message: str


@dataclass(frozen=True)
class SiteData:
    """What the site allows. ``data_roots``: the site's dataRoots, resolved the way paths are
    (``None``: not configured, paths are not confined; ``()``: no path grants)."""

    runtime: str
    namespace: str
    data_roots: tuple[str, ...] | None = None


@dataclass(frozen=True)
class GrantInput:
    """One stored DatasetGrant as the site read it.

    spec: None when the stored spec does not parse (``spec_error`` says why).
    resolved_path: spec.dataset.path as the site resolves it (process runtime: absolute, symlinks
        followed; kubernetes runtime: normalised lexically); None for volume grants.
    claim_exists: volume grants: whether the PersistentVolumeClaim exists (None: not checked).
    """

    name: str
    spec: DatasetGrantSpec | None
    created: datetime | None = None
    resolved_path: str | None = None
    claim_exists: bool | None = None
    spec_error: str = ""


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies under it (both absolute and normalised)."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def location_problems(g: GrantInput, site: SiteData) -> list[GrantProblem]:
    spec = g.spec
    assert spec is not None
    source = spec.dataset
    out: list[GrantProblem] = []
    if source.persistent_volume_claim is not None:
        claim = source.persistent_volume_claim.claim_name
        if site.runtime != KUBERNETES:
            out.append(GrantProblem(
                Reason.INVALID_LOCATION, "spec.dataset.persistentVolumeClaim",
                f"this site runs its clients as local processes (runtime: {site.runtime}), which cannot mount "
                f"PersistentVolumeClaim {claim}: grant a path under the site's dataRoots instead, or run the "
                "site with runtime: kubernetes",
            ))
        elif g.claim_exists is False:
            out.append(GrantProblem(
                Reason.INVALID_LOCATION, "spec.dataset.persistentVolumeClaim.claimName",
                f"PersistentVolumeClaim {claim} does not exist in namespace {site.namespace}: create it there "
                "(a client can mount only claims of its own namespace) or correct claimName",
            ))
        return out
    path = source.path or ""
    if site.runtime == KUBERNETES and not posixpath.isabs(path):
        out.append(GrantProblem(
            Reason.INVALID_LOCATION, "spec.dataset.path",
            f"path {path!r} is relative, but this site's clients mount a node path (hostPath, kubernetes "
            "runtime), which must be absolute: give the absolute path on the node, or use persistentVolumeClaim",
        ))
        return out
    if site.data_roots is None:
        return out
    resolved = g.resolved_path or path
    if not site.data_roots:
        out.append(GrantProblem(
            Reason.INVALID_LOCATION, "spec.dataset.path",
            "this site accepts no path grants (its gateway settings set dataRoots: []): put the data on a "
            "PersistentVolumeClaim in the site namespace and grant spec.dataset.persistentVolumeClaim",
        ))
    elif not any(within(resolved, root) for root in site.data_roots):
        via = f" (it resolves to {resolved}: a symlink leads out)" if resolved != posixpath.normpath(path) else ""
        out.append(GrantProblem(
            Reason.INVALID_LOCATION, "spec.dataset.path",
            f"path {path}{via} is outside this site's data roots ({', '.join(site.data_roots)}): move the data "
            "under one of them, or ask the site's operator admin to add its folder to dataRoots",
        ))
    return out


def version_problems(g: GrantInput) -> list[GrantProblem]:
    assert g.spec is not None
    out = []
    for i, model in enumerate(g.spec.models):
        if model.versions.strip() == "*":
            continue
        try:
            version_allowed(model.versions, "0.0.0")  # parses the constraint
        except InvalidSpecifier:
            out.append(GrantProblem(
                Reason.INVALID_VERSION_CONSTRAINT, f"spec.models[{i}].versions",
                f"{model.versions!r} (model {model.id}) is not a version constraint: use PEP 440, e.g. "
                "'>=1.0.0,<2.0.0', '1.2.*', '1.0.0' or '*'",
            ))
    return out


def data_key(spec: DatasetGrantSpec) -> tuple:
    """What makes two grants of one dataset id the same data: where it is and how it is read."""
    d = spec.dataset
    pvc = d.persistent_volume_claim
    location = ("pvc", pvc.claim_name, pvc.sub_path.strip("/")) if pvc else ("path", posixpath.normpath(d.path or ""))
    return (*location, str(d.format))


def _describe(spec: DatasetGrantSpec) -> str:
    d = spec.dataset
    pvc = d.persistent_volume_claim
    where = f"claim {pvc.claim_name}{'/' + pvc.sub_path if pvc.sub_path else ''}" if pvc else f"path {d.path}"
    return f"{where}, format {d.format}"


def check_grants(grants: Sequence[GrantInput], site: SiteData, now: datetime) -> dict[str, list[GrantProblem]]:
    """Every grant's problems, by grant name (an empty list: the site can use it)."""
    out: dict[str, list[GrantProblem]] = {}
    for g in grants:
        if g.spec is None:
            out[g.name] = [GrantProblem(Reason.INVALID_SPEC, "spec", f"the stored spec is not valid: {g.spec_error}; "
                                        "correct it (kubectl edit) or create the grant again")]
        else:
            out[g.name] = location_problems(g, site) + version_problems(g)

    contenders: dict[str, list[GrantInput]] = {}
    for g in grants:
        if g.spec is None or out[g.name]:
            continue
        if g.spec.expires_at is not None and _aware(g.spec.expires_at) <= _aware(now):
            continue  # an expired grant allows nothing: it holds no dataset id against a new one
        contenders.setdefault(g.spec.dataset.id, []).append(g)
    far_future = datetime.max.replace(tzinfo=UTC)
    for dataset_id, same_id in contenders.items():
        ordered = sorted(same_id, key=lambda g: (_aware(g.created) if g.created else far_future, g.name))
        keeper = ordered[0]
        assert keeper.spec is not None
        for g in ordered[1:]:
            assert g.spec is not None
            if data_key(g.spec) != data_key(keeper.spec):
                out[g.name].append(GrantProblem(
                    Reason.DUPLICATE_DATASET_ID, "spec.dataset.id",
                    f"dataset id {dataset_id} is already granted by DatasetGrant {keeper.name} (older) with other "
                    f"data ({_describe(keeper.spec)}; this grant: {_describe(g.spec)}): grants of one dataset id "
                    f"must name the same data — use {keeper.name}'s location and format, or another dataset id",
                ))
    return out


def alternatives(grants: Sequence[GrantInput], problems: dict[str, list[GrantProblem]], name: str) -> list[str]:
    """Other valid grants of the same dataset id as ``name`` (the same data, other terms)."""
    mine = next((g for g in grants if g.name == name), None)
    if mine is None or mine.spec is None:
        return []
    return sorted(g.name for g in grants if g.name != name and g.spec is not None and not problems.get(g.name)
                  and g.spec.dataset.id == mine.spec.dataset.id)
