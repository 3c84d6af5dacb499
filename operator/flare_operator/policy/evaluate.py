"""One org's decision on one AccessRequest, from its own DatasetGrants, OrgPolicy and JobApprovals.

Pure: the site's gateway controller gathers the inputs (from Kopf indexes), calls :func:`evaluate`
and writes the result into the AccessRequest's status. Same inputs, same answer, so it can be
called again whenever any input changes.

How it decides
--------------
1. Every rule is evaluated and every outcome reported (failed ones *and* passed ones), each with a
   stable machine name (the constants below), a one-line message a person can act on, and the
   object the rule came from (``DatasetGrant/<name>``, ``OrgPolicy/default``, ``JobApproval/<name>``).
   A rule with nothing configured (no round limit, no ceiling, no DP terms) is not listed.
2. Any failed rule -> **Rejected** (reason ``Rejected``); the message joins all failures.
3. Compute requests (a ComputeSpec wants a client here) -> **Approved** when every rule passes.
   Manual approval is per *job*, never per compute: a compute request only starts a client at the
   site, and that client refuses any job whose content hash the org has not approved (site
   enforcement), so approving compute automatically gives nothing away.
4. Job requests: the OrgPolicy's approval mode decides. No OrgPolicy -> treated as **Manual** (the
   safe default: nothing runs on the data without an admin's word). Automatic -> **Approved**.
   Manual -> the newest JobApproval for this job (``spec.job`` == the request's source namespace/name)
   *and this content hash* decides: Approve -> Approved, Reject -> Rejected with the admin's reason
   (rule ``ManualApproval``); none -> **Pending** (reason ``AwaitingApproval``) with a message telling
   the admin exactly which JobApproval to create. JobApprovals for another hash are ignored (the job
   changed since) and mentioned. A manual Approve never overrides a failed rule: rules come first.

Decisions of note
-----------------
- Several grants for the same dataset are alternatives (grants add permissions): the dataset is
  allowed when one of them allows everything. The first such grant (by name) is the one the job is
  charged on (``Evaluation.charged_grants``) and whose data the site's client gets
  (``Evaluation.granted_by``); when none does, every candidate's failures are reported. Grants the site
  found invalid (``GrantView.invalid``, policy/grants.py: location, version constraints, a dataset id
  claimed by other data) are never candidates; when only invalid ones exist the dataset is refused,
  naming them (without their location: the message goes to the hub).
- Differential privacy: a grant's or the policy's ``maxEpsilon*`` and the grant's epsilon budget
  constrain jobs that use DP; whether DP is mandatory is ``dpRequired`` (grant or policy floor).
- The org asked is always counted as a participating org (it contributes the data in question).
- The epsilon budget counts every ledger entry except this job's own (matched by uid), so
  re-evaluating an admitted job neither double-counts nor rejects it for its own reservation.
- ``now`` without a timezone is taken as UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ..api.access_request import AccessRequestSpec, RequestKind, RuleResult
from ..api.common import Decision, parse_quantity
from ..api.conditions import Reason
from ..api.dataset_grant import DatasetGrantSpec, DatasetGrantStatus
from ..api.job_approval import ApprovalDecision, JobApprovalSpec
from ..api.org_policy import ORG_POLICY_NAME, ApprovalMode, OrgPolicySpec
from . import ledger
from .content_check import CONTENT_VERIFIED

# --- rule names (public API: they appear in AccessRequest status.rules[].rule) -------------------

DATASET_GRANTED = "DatasetGranted"
"""Every dataset the request uses has a DatasetGrant at this org."""
CONSUMER_ALLOWED = "ConsumerAllowed"
"""The consumer org is in the grant's consumers, not blocked by the OrgPolicy, and in its allowed list if any."""
MODEL_ALLOWED = "ModelAllowed"
"""The grant lists the model (catalog app) id and the requested version satisfies its constraint."""
GRANT_NOT_EXPIRED = "GrantNotExpired"
"""The grant's expiresAt is in the future."""
MIN_PARTICIPATING_ORGS = "MinParticipatingOrgs"
"""At least the grant's minParticipatingOrgs orgs contribute data to the federation."""
CLIENT_RESOURCES = "ClientResources"
"""The site's client asks no more cpu, memory or gpu than the OrgPolicy's clientLimits."""
MAX_ROUNDS = "MaxRounds"
"""Job only: the job runs no more rounds than the grant's maxRounds."""
JOB_DURATION = "JobDuration"
"""Job only: the job sets activeDeadlineSeconds, at most the OrgPolicy's maxJobDurationSeconds."""
DIFFERENTIAL_PRIVACY = "DifferentialPrivacy"
"""Job only: DP enabled where the grant or the policy floor requires it; epsilon within their maxima."""
EPSILON_BUDGET = "EpsilonBudget"
"""Job only: the grant's remaining epsilon budget covers the job's epsilon."""
MANUAL_APPROVAL = "ManualApproval"
"""Job only, Manual mode (or no OrgPolicy): the org's admin approved this content hash."""

RULES: tuple[str, ...] = (
    CONTENT_VERIFIED, DATASET_GRANTED, CONSUMER_ALLOWED, MODEL_ALLOWED, GRANT_NOT_EXPIRED, MIN_PARTICIPATING_ORGS,
    CLIENT_RESOURCES, MAX_ROUNDS, JOB_DURATION, DIFFERENTIAL_PRIVACY, EPSILON_BUDGET, MANUAL_APPROVAL,
)
"""Every rule name, in the order rules are reported."""

MESSAGE_MAX = 1024
"""AccessRequest status.message and status.rules[].message hold at most this many characters."""
SOURCE_MAX = 253
"""status.rules[].source holds at most this many characters."""
RULES_MAX = 64
"""status.rules holds at most this many entries (see Evaluation.status_rules)."""
MESSAGE_SEPARATOR = " | "
"""Joins the messages of several failed rules into one line (rule messages themselves use ';')."""


# --- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantView:
    """One DatasetGrant at the site, as the controller read it."""

    name: str
    spec: DatasetGrantSpec
    status: DatasetGrantStatus | None = None
    invalid: str | None = None
    """Why the site cannot use this grant (the reason of its Valid condition, policy/grants.py);
    None: valid. An invalid grant allows nothing: the evaluation names it, and never chooses it."""


@dataclass(frozen=True)
class ApprovalView:
    """One JobApproval at the site. `decided_by`: who decided, as the site's admission webhook recorded
    it — only when its signature verified (handlers/admission.py); None: the approval does not count."""

    name: str
    spec: JobApprovalSpec
    created: datetime
    decided_by: str | None = None


# --- output ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """The org's answer: what goes into the AccessRequest's status, and what to reserve."""

    decision: Decision
    reason: Reason
    message: str
    rules: list[RuleResult] = field(default_factory=list)
    epsilon_to_reserve: float = 0.0
    """Epsilon to reserve on each grant in `charged_grants` (0 unless Approved with DP)."""
    charged_grants: tuple[str, ...] = ()
    granted_by: dict[str, str] = field(default_factory=dict)
    """Dataset id -> name of the grant chosen for it (datasets some grant allows, in request order):
    the grant whose data the site's client gets, and `charged_grants` in the same order."""
    """Names of the grants the decision relies on, one per dataset (where the epsilon is reserved)."""
    approval: str | None = None
    """Name of the JobApproval that decided, if one did."""

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    def status_rules(self, limit: int = RULES_MAX) -> list[RuleResult]:
        """The rules for status.rules: all of them if they fit, else failed ones first, then passed."""
        if len(self.rules) <= limit:
            return list(self.rules)
        return (self.failed + [r for r in self.rules if r.passed])[:limit]


# --- helpers --------------------------------------------------------------------------------------


def _num(value: float | int) -> str:
    """Epsilon and similar: 2.0, 0.5, 30.0 (no float noise)."""
    return str(round(float(value), 6))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rule(rule: str, passed: bool, message: str, source: str = "") -> RuleResult:
    return RuleResult(rule=rule, passed=passed, message=_clip(message, MESSAGE_MAX), source=_clip(source, SOURCE_MAX))


def _join(messages: Sequence[str], limit: int = MESSAGE_MAX) -> str:
    """All messages on one line; if they do not fit, as many whole ones as fit and a count of the rest."""
    joined = MESSAGE_SEPARATOR.join(messages)
    if len(joined) <= limit:
        return joined
    for kept in range(len(messages) - 1, 0, -1):
        text = MESSAGE_SEPARATOR.join([*messages[:kept], f"… and {len(messages) - kept} more (see status.rules)"])
        if len(text) <= limit:
            return text
    suffix = f"{MESSAGE_SEPARATOR}… and {len(messages) - 1} more (see status.rules)"
    return _clip(messages[0], limit - len(suffix)) + suffix


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return _aware(moment).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _and(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _version_constraint(text: str) -> SpecifierSet:
    """PEP 440 specifiers, plus the forms people write: '1.2.*' and '1.0.0' mean '==1.2.*' / '==1.0.0'."""
    clauses = [c.strip() for c in text.split(",")]
    if not text.strip() or any(not c for c in clauses):
        raise InvalidSpecifier(text)
    fixed = [c if c[0] in "<>=!~" else "==" + c for c in clauses]
    return SpecifierSet(",".join(fixed))


def version_allowed(constraint: str, version: str) -> bool:
    """Whether `version` (semver, read as PEP 440) satisfies `constraint`; '*' allows any version.

    Pre-releases (1.1.0-rc.1) are allowed only by '*' or a constraint that names a pre-release,
    as PEP 440 says. Raises InvalidSpecifier / InvalidVersion for strings that do not parse.
    """
    if constraint.strip() == "*":
        return True
    spec = _version_constraint(constraint)
    parsed = Version(version)
    return spec.contains(parsed, prereleases=bool(spec.prereleases))


# --- the rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    request: AccessRequestSpec
    policy: OrgPolicySpec | None
    now: datetime

    @property
    def org(self) -> str:
        return self.request.org

    @property
    def is_job(self) -> bool:
        return self.request.source.kind == RequestKind.JOB

    @property
    def asker(self) -> str:
        return "job" if self.is_job else "ComputeSpec"

    @property
    def job_ref(self) -> str:
        return f"{self.request.source.namespace}/{self.request.source.name}"

    @property
    def dp_epsilon(self) -> float | None:
        """The job's DP epsilon when DP is enabled, else None."""
        dp = self.request.differential_privacy
        if dp is None or not dp.enabled:
            return None
        return dp.epsilon


POLICY_SOURCE = f"OrgPolicy/{ORG_POLICY_NAME}"


def _grant_rules(ctx: _Ctx, grant: GrantView) -> list[RuleResult]:
    """Every rule one grant imposes on the request."""
    req, org, g, src = ctx.request, ctx.org, grant.spec, f"DatasetGrant/{grant.name}"
    out: list[RuleResult] = []

    # ConsumerAllowed (grant)
    if req.consumer_org in g.consumers:
        out.append(_rule(CONSUMER_ALLOWED, True, f"{org}: grant {grant.name} allows consumer org {req.consumer_org}", src))
    else:
        out.append(_rule(
            CONSUMER_ALLOWED, False,
            f"{org}: grant {grant.name} does not allow consumer org {req.consumer_org} (not in its spec.consumers)",
            src,
        ))

    # ModelAllowed
    model = req.model
    entries = [m for m in g.models if m.id == model.id]
    if not entries:
        allowed = ", ".join(sorted({m.id for m in g.models}))
        out.append(_rule(
            MODEL_ALLOWED, False,
            f"{org}: grant {grant.name} does not allow model {model.id} (it allows: {allowed})", src,
        ))
    else:
        out.append(_model_version_rule(ctx, grant.name, [m.versions for m in entries], src))

    # GrantNotExpired
    if g.expires_at is not None:
        if _aware(g.expires_at) <= _aware(ctx.now):
            out.append(_rule(
                GRANT_NOT_EXPIRED, False,
                f"{org}: grant {grant.name} expired at {_iso(g.expires_at)}", src,
            ))
        else:
            out.append(_rule(
                GRANT_NOT_EXPIRED, True, f"{org}: grant {grant.name} is valid until {_iso(g.expires_at)}", src,
            ))

    # MinParticipatingOrgs
    orgs = sorted(set(req.participating_orgs) | {org})
    if len(orgs) >= g.min_participating_orgs:
        out.append(_rule(
            MIN_PARTICIPATING_ORGS, True,
            f"{org}: grant {grant.name} needs at least {g.min_participating_orgs} participating orgs; "
            f"the federation has {len(orgs)}", src,
        ))
    else:
        out.append(_rule(
            MIN_PARTICIPATING_ORGS, False,
            f"{org}: grant {grant.name} needs at least {g.min_participating_orgs} participating orgs; "
            f"the federation has {len(orgs)} ({', '.join(orgs)})", src,
        ))

    if not ctx.is_job:
        return out

    # MaxRounds
    if g.max_rounds is not None:
        if req.rounds is None:
            out.append(_rule(
                MAX_ROUNDS, False,
                f"{org}: grant {grant.name} allows at most {g.max_rounds} rounds; the job states no rounds", src,
            ))
        elif req.rounds > g.max_rounds:
            out.append(_rule(
                MAX_ROUNDS, False, f"{org}: grant {grant.name} allows at most {g.max_rounds} rounds; job asks {req.rounds}",
                src,
            ))
        else:
            out.append(_rule(
                MAX_ROUNDS, True, f"{org}: grant {grant.name} allows at most {g.max_rounds} rounds; job asks {req.rounds}",
                src,
            ))

    # DifferentialPrivacy (grant)
    p = g.privacy
    eps = ctx.dp_epsilon
    if p.dp_required or p.max_epsilon_per_job is not None:
        out.append(_dp_rule(ctx, f"grant {grant.name}", src, p.dp_required, p.max_epsilon_per_job))

    # EpsilonBudget
    if p.epsilon_budget is not None and eps is not None:
        left = ledger.remaining(g, grant.status, exclude_uid=req.source.uid) or 0.0
        passed = eps <= left + 1e-9
        out.append(_rule(
            EPSILON_BUDGET, passed,
            f"{org}: grant {grant.name} has {_num(left)} of {_num(p.epsilon_budget)} epsilon left; job asks {_num(eps)}",
            src,
        ))
    return out


def _dp_rule(ctx: _Ctx, who: str, src: str, required: bool, max_epsilon: float | None) -> RuleResult:
    org, eps = ctx.org, ctx.dp_epsilon
    within = f" with epsilon at most {_num(max_epsilon)}" if max_epsilon is not None else ""
    if eps is None:
        if required:
            return _rule(
                DIFFERENTIAL_PRIVACY, False,
                f"{org}: {who} requires differential privacy; enable spec.privacy.differentialPrivacy{within}", src,
            )
        return _rule(DIFFERENTIAL_PRIVACY, True, f"{org}: {who} does not require differential privacy", src)
    if max_epsilon is not None and eps > max_epsilon:
        return _rule(
            DIFFERENTIAL_PRIVACY, False,
            f"{org}: {who} allows epsilon at most {_num(max_epsilon)} per job; job asks {_num(eps)}", src,
        )
    within_max = f", within {who}'s maximum {_num(max_epsilon)}" if max_epsilon is not None else ""
    return _rule(
        DIFFERENTIAL_PRIVACY, True, f"{org}: job uses differential privacy with epsilon {_num(eps)}{within_max}", src
    )


def _model_version_rule(ctx: _Ctx, grant: str, constraints: list[str], src: str) -> RuleResult:
    """ModelAllowed for a grant that lists the model id: does the version satisfy one of its constraints?"""
    org, model = ctx.org, ctx.request.model
    try:
        version = Version(model.version)
    except InvalidVersion:
        return _rule(
            MODEL_ALLOWED, False,
            f"{org}: model version {model.version} cannot be compared with grant {grant}'s version constraint "
            f"(use MAJOR.MINOR.PATCH[-alpha.N|-beta.N|-rc.N], e.g. 1.0.0)", src,
        )
    invalid: list[str] = []
    for constraint in constraints:
        if constraint.strip() == "*":
            return _rule(MODEL_ALLOWED, True, f"{org}: grant {grant} allows model {model.id} in any version", src)
        try:
            spec = _version_constraint(constraint)
        except InvalidSpecifier:
            invalid.append(constraint)
            continue
        if spec.contains(version, prereleases=bool(spec.prereleases)):
            return _rule(
                MODEL_ALLOWED, True,
                f"{org}: grant {grant} allows model {model.id} {model.version} (versions {constraint})", src,
            )
    if invalid:
        return _rule(
            MODEL_ALLOWED, False,
            f"{org}: grant {grant} has an invalid version constraint {invalid[0]!r} for model {model.id}; "
            f"{org}'s admin must fix it (PEP 440, e.g. '>=1.0.0,<2.0.0', '1.2.*' or '*')", src,
        )
    return _rule(
        MODEL_ALLOWED, False,
        f"{org}: grant {grant} allows model {model.id} only in versions {' or '.join(constraints)}; "
        f"{ctx.asker} asks {model.version}", src,
    )


def _policy_rules(ctx: _Ctx) -> list[RuleResult]:
    """Every rule the OrgPolicy imposes (none when the org has no OrgPolicy)."""
    pol, req, org, src = ctx.policy, ctx.request, ctx.org, POLICY_SOURCE
    if pol is None:
        return []
    out: list[RuleResult] = []

    # ConsumerAllowed (policy)
    consumer = req.consumer_org
    if consumer in pol.consumers.blocked:
        out.append(_rule(CONSUMER_ALLOWED, False, f"{org}: OrgPolicy blocks consumer org {consumer}", src))
    elif pol.consumers.allowed and consumer not in pol.consumers.allowed:
        out.append(_rule(
            CONSUMER_ALLOWED, False,
            f"{org}: OrgPolicy serves only the consumer orgs in spec.consumers.allowed, and {consumer} is not one", src,
        ))
    elif pol.consumers.allowed or pol.consumers.blocked:
        out.append(_rule(CONSUMER_ALLOWED, True, f"{org}: OrgPolicy allows consumer org {consumer}", src))

    # ClientResources
    limits, client = pol.client_limits, req.client
    checks: list[tuple[str, str, str, bool]] = []  # resource, limit, asked, within
    if limits.cpu is not None:
        checks.append(("cpu", limits.cpu, client.cpu, parse_quantity(client.cpu) <= parse_quantity(limits.cpu)))
    if limits.memory is not None:
        checks.append(("memory", limits.memory, client.memory,
                       parse_quantity(client.memory) <= parse_quantity(limits.memory)))
    if limits.gpu is not None:
        checks.append(("gpu", str(limits.gpu), str(client.gpu), client.gpu <= limits.gpu))
    if checks:
        over = [c for c in checks if not c[3]]
        shown = over or checks
        message = (
            f"{org}: OrgPolicy allows a client at most {_and(f'{r} {lim}' for r, lim, _, _ in shown)}; "
            f"{ctx.asker} asks {_and(f'{r} {asked}' for r, _, asked, _ in shown)}"
        )
        out.append(_rule(CLIENT_RESOURCES, not over, message, src))

    if not ctx.is_job:
        return out

    # JobDuration
    ceiling = pol.max_job_duration_seconds
    if ceiling is not None:
        if req.duration_seconds is None:
            out.append(_rule(
                JOB_DURATION, False,
                f"{org}: OrgPolicy requires jobs to set spec.activeDeadlineSeconds (at most {ceiling}); the job sets none",
                src,
            ))
        else:
            out.append(_rule(
                JOB_DURATION, req.duration_seconds <= ceiling,
                f"{org}: OrgPolicy allows jobs at most {ceiling} s (activeDeadlineSeconds); job asks "
                f"{req.duration_seconds}", src,
            ))

    # DifferentialPrivacy (policy floor)
    floor = pol.privacy_floor
    if floor.dp_required or floor.max_epsilon is not None:
        out.append(_dp_rule(ctx, "OrgPolicy", src, floor.dp_required, floor.max_epsilon))
    return out


def _dataset_rules(ctx: _Ctx, grants: Sequence[GrantView]) -> tuple[list[RuleResult], dict[str, str]]:
    """DatasetGranted per dataset, then the rules of the grant used for it (or of every candidate).
    Grants the site found invalid are never candidates. Returns the rules and dataset -> chosen grant."""
    out: list[RuleResult] = []
    charged: dict[str, str] = {}
    org = ctx.org
    for dataset in dict.fromkeys(ctx.request.datasets):
        for_dataset = sorted((g for g in grants if g.spec.dataset.id == dataset), key=lambda g: g.name)
        candidates = [g for g in for_dataset if g.invalid is None]
        invalid = [g for g in for_dataset if g.invalid is not None]
        if not candidates and invalid:
            names = ", ".join(f"{g.name} ({g.invalid})" for g in invalid)
            out.append(_rule(
                DATASET_GRANTED, False,
                f"{org}: the DatasetGrant for dataset {dataset} is not valid at the site: {names}; {org}'s admin "
                f"must fix it (its status says how)", f"DatasetGrant/{invalid[0].name}",
            ))
            continue
        if not candidates:
            out.append(_rule(DATASET_GRANTED, False, f"{org} has no DatasetGrant for dataset {dataset}"))
            continue
        evaluated = [(g, _grant_rules(ctx, g)) for g in candidates]
        chosen = next(((g, rules) for g, rules in evaluated if all(r.passed for r in rules)), None)
        if chosen is not None:
            g, rules = chosen
            out.append(_rule(DATASET_GRANTED, True, f"{org}: dataset {dataset} is granted by {g.name}",
                             f"DatasetGrant/{g.name}"))
            out.extend(rules)
            charged[dataset] = g.name
        else:
            names = ", ".join(g.name for g, _ in evaluated)
            out.append(_rule(
                DATASET_GRANTED, True, f"{org}: dataset {dataset} has DatasetGrant(s) {names}",
                f"DatasetGrant/{evaluated[0][0].name}",
            ))
            for _, rules in evaluated:
                out.extend(rules)
    return out, charged


def _newest(approvals: Iterable[ApprovalView]) -> ApprovalView | None:
    # Newest wins; at the same instant a Reject wins over an Approve (the safe side); then by name.
    ranked = sorted(approvals, key=lambda a: (_aware(a.created), a.spec.decision == ApprovalDecision.REJECT, a.name))
    return ranked[-1] if ranked else None


def _manual(ctx: _Ctx, approvals: Sequence[ApprovalView], limits_ok: bool) -> RuleResult | None:
    """The ManualApproval rule for a job in Manual mode; None when nothing is worth saying."""
    req, org = ctx.request, ctx.org
    for_job = [a for a in approvals
               if a.spec.job.namespace == req.source.namespace and a.spec.job.name == req.source.name]
    # Only decisions the site's webhook recorded (who decided, signed) and made for this very job count.
    unrecorded = sorted(a.name for a in for_job if not a.decided_by)
    earlier_job = sorted(a.name for a in for_job if a.decided_by and a.spec.job.uid != req.source.uid)
    counted = [a for a in for_job if a.decided_by and a.spec.job.uid == req.source.uid]
    current = _newest(a for a in counted if a.spec.content_hash == req.content_hash)
    stale = [a for a in counted if a.spec.content_hash != req.content_hash]
    no_policy = (f" ({org} has no OrgPolicy '{ORG_POLICY_NAME}', so jobs need manual approval)"
                 if ctx.policy is None else "")
    if current is not None:
        src = f"JobApproval/{current.name}"
        who = current.decided_by
        if current.spec.decision == ApprovalDecision.REJECT:
            reason = current.spec.reason or "no reason given"
            return _rule(MANUAL_APPROVAL, False, f"{org}: rejected by {who} (JobApproval {current.name}): {reason}", src)
        if limits_ok:
            return _rule(MANUAL_APPROVAL, True, f"{org}: approved by {who} (JobApproval {current.name})", src)
        return _rule(
            MANUAL_APPROVAL, True,
            f"{org}: approved by {who} (JobApproval {current.name}), but an approval never overrides "
            f"{org}'s limits", src,
        )
    if not limits_ok:
        return None
    message = (
        f"waiting for {org}'s admin: create a JobApproval for job {ctx.job_ref} with contentHash "
        f"{req.content_hash}{no_policy}"
    )
    if stale:
        names = ", ".join(sorted(a.name for a in stale))
        message += f"; a JobApproval ({names}) exists for an older content hash; the job changed since: decide again"
    if earlier_job:
        message += (f"; JobApproval {', '.join(earlier_job)} was for an earlier job of that name (another uid): "
                    f"this job (uid {req.source.uid}) needs a decision of its own")
    if unrecorded:
        message += (f"; JobApproval {', '.join(unrecorded)} does not count: {org}'s admission webhook did not record "
                    "who decided (created while the webhook was bypassed, or its record was altered): delete it and "
                    "create it again")
    return _rule(MANUAL_APPROVAL, False, message, POLICY_SOURCE if ctx.policy is not None else "")


# --- the decision -------------------------------------------------------------------------------


def evaluate(
    request: AccessRequestSpec,
    *,
    grants: Sequence[GrantView],
    policy: OrgPolicySpec | None,
    approvals: Sequence[ApprovalView] = (),
    now: datetime,
    content: RuleResult | None = None,
) -> Evaluation:
    """This org's decision on `request` (see the module docstring for how it decides).

    grants: the org's DatasetGrants (any; the ones for the request's datasets are picked).
    policy: the org's OrgPolicy 'default', None if it has none.
    approvals: the org's JobApprovals (any; the ones for this job are picked).
    content: job requests: the site's ContentVerified rule (policy/content_check.py), reported first;
        when it fails the request is rejected whatever the grants say.
    """
    ctx = _Ctx(request=request, policy=policy, now=now)
    dataset_rules, charged = _dataset_rules(ctx, grants)
    rules = ([content] if content is not None else []) + dataset_rules + _policy_rules(ctx)
    limits_ok = all(r.passed for r in rules)

    manual: RuleResult | None = None
    if ctx.is_job:
        mode = policy.approval_mode if policy is not None else ApprovalMode.MANUAL
        if mode == ApprovalMode.MANUAL:
            manual = _manual(ctx, approvals, limits_ok)
            if manual is not None:
                rules.append(manual)
    approval_name = (manual.source.removeprefix("JobApproval/")
                     if manual is not None and manual.source.startswith("JobApproval/") else None)
    org = request.org
    failed = [r for r in rules if not r.passed]

    if not limits_ok or (manual is not None and not manual.passed and approval_name is not None):
        # A failed rule, or the admin's Reject (checked after the rules, so an Approve overrides nothing).
        return Evaluation(
            decision=Decision.REJECTED, reason=Reason.REJECTED, message=_join([r.message for r in failed]),
            rules=rules, charged_grants=tuple(charged.values()), granted_by=charged, approval=approval_name,
        )
    if manual is not None and not manual.passed:  # no JobApproval for this hash yet
        return Evaluation(
            decision=Decision.PENDING, reason=Reason.AWAITING_APPROVAL, message=manual.message,
            rules=rules, charged_grants=tuple(charged.values()), granted_by=charged,
        )
    if ctx.is_job:
        how = manual.message if manual is not None else f"{org}: approved automatically"
        message = f"{how}; all {len(rules)} rules passed"
    else:
        message = (f"{org}: approved: consumer {request.consumer_org} may run a client for {request.model.id} "
                   f"{request.model.version}; its jobs are decided one by one")
    eps = ctx.dp_epsilon if ctx.is_job else None
    return Evaluation(
        decision=Decision.APPROVED, reason=Reason.APPROVED, message=_clip(message, MESSAGE_MAX), rules=rules,
        epsilon_to_reserve=float(eps) if eps is not None else 0.0, charged_grants=tuple(charged.values()),
        granted_by=charged, approval=approval_name,
    )
