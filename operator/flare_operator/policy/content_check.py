"""Pure: does a job's AccessRequest say what its content hash binds, by this site's own reckoning?

The hub computes the content hash a decision binds to; a site does not take it on trust. The
AccessRequest carries the job's and the compute's specs and the app (id, version, the hub's code
digest). The site's gateway recomputes, from those specs and the digest of its *own* copy of the
app (``builders.nvflare_job.app_code_digest`` over the site's catalog), the hash and the request's
summary fields, and this module compares them into one rule, ``ContentVerified``, which comes
first in the site's evaluation: when it fails, the request is rejected whatever the grants say.

What it catches: a hub that sends a summary (rounds, privacy, datasets…) other than the job it
submits, a hash that is not the hash of the specs shown, an app whose code differs from the
release the site runs under the same version, and an app version the site does not have (with
the version to install).
"""

from __future__ import annotations

from ..api.access_request import AccessRequestSpec, AppCode, RuleResult
from .content_hash import job_hash

CONTENT_VERIFIED = "ContentVerified"
"""Job only: the site recomputed the content hash and the request's summary from the job's and the
compute's specs and its own copy of the app's code, and they match what the request says."""

SHORT = 19  # "sha256:" + 12 hex digits

# Summary fields the site rebuilds from the specs and compares; the rest is the request's bookkeeping.
SUMMARY_FIELDS = ("source", "org", "consumer_org", "model", "datasets", "client", "participating_orgs", "rounds",
                  "duration_seconds", "differential_privacy", "aggregation")


def _short(digest: str) -> str:
    return digest[:SHORT] + "…" if len(digest) > SHORT else digest


def _rule(passed: bool, message: str) -> RuleResult:
    return RuleResult(rule=CONTENT_VERIFIED, passed=passed, message=message[:1024], source="")


def verify_job_content(request: AccessRequestSpec, *, local_code_digest: str | None, catalog_problem: str = "",
                       rebuilt: AccessRequestSpec | None = None, build_problem: str = "") -> RuleResult:
    """The ContentVerified rule for a Job AccessRequest.

    local_code_digest: the site's digest of its own copy of ``request.app`` (None: it has no such app
        version; ``catalog_problem`` says why).
    rebuilt: the request the site builds itself from ``request.job`` / ``request.compute``
        (``builders.requests.job_access_request``); None when it could not (``build_problem`` says why).
    """
    org = request.org
    job, compute, app = request.job, request.compute, request.app
    if job is None or compute is None or app is None:
        return _rule(False, f"{org}: the request carries no job spec, compute spec or app digest, so {org} cannot "
                            "check what its content hash binds: the hub runs an older flare-operator; upgrade it")
    if (app.id, app.version) != (compute.model.id, compute.model.version):
        return _rule(False, f"{org}: the request names app {app.id} {app.version} but its ComputeSpec trains "
                            f"{compute.model.id} {compute.model.version}")
    if local_code_digest is None:
        return _rule(False, f"{org}: this site's catalog has no {app.id} {app.version} ({catalog_problem}); to run "
                            f"it, {org} installs a flare-operator release whose catalog has {app.id} {app.version}, "
                            f"or the modeller uses a version {org} has")
    if app.code_digest != local_code_digest:
        return _rule(False, f"{org}: the hub's {app.id} {app.version} is not the code this site has (hub digest "
                            f"{_short(app.code_digest)}, {org}'s {_short(local_code_digest)}): the hub would run other "
                            f"code under this version; {org} refuses until both run the same release")
    expected = job_hash(job, compute, AppCode(id=app.id, version=app.version, code_digest=local_code_digest))
    if expected != request.content_hash:
        return _rule(False, f"{org}: contentHash {_short(request.content_hash)} is not the hash of the job and compute "
                            f"specs in this request ({_short(expected)} by {org}'s reckoning): the request does not "
                            "bind what it shows")
    if rebuilt is None:
        return _rule(False, f"{org}: the job cannot be built from its spec with {org}'s catalog: {build_problem}")
    differ = [f for f in SUMMARY_FIELDS if getattr(rebuilt, f) != getattr(request, f)]
    if differ:
        return _rule(False, f"{org}: the request's {', '.join(differ)} do not match its job and compute specs: the "
                            "summary the site decides on must be the job that runs")
    return _rule(True, f"{org}: content hash recomputed from the job's spec and {org}'s own copy of {app.id} "
                       f"{app.version} (code digest {_short(local_code_digest)})")
