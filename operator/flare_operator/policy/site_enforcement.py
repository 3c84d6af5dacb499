"""Site enforcement — pure: may this site's NVFlare client take this NVFlare job?

Defence in depth behind the AccessRequest decisions. A site's gateway writes the jobs its org
approved into a small JSON document, ``approved.json``, next to its NVFlare client (a file in the
client's folder with the process runtime, the ConfigMap ``<federation>-approved-jobs`` mounted
at /etc/flareop/enforcement with the kubernetes runtime). An NVFlare component in the client
(``nvflare/enforcement.py``) reads it on every scheduling check and every deployment, and refuses
any job this function does not allow. The document is derived only from the gateway's own
decisions (its DatasetGrants, OrgPolicy and JobApprovals), never from anything the hub wrote in a
status, so a compromised hub cannot add to it.

The document (``FORMAT_VERSION`` 2)::

    {"formatVersion": 2, "org": "org-b",
     "approved": [{"uid": "<FederatedJob uid>", "contentHash": "sha256:…", "job": "modeller/esm2-run",
                   "appDigest": "sha256:…"}]}

A job is allowed when its NVFlare job meta carries, under ``flareop`` (what
``builders/nvflare_job.build_job`` writes from the orchestrator's metadata), the ``uid`` and
``contentHash`` of one approved entry. Both must match: the hash binds the content the org saw,
the uid binds it to the one FederatedJob the org decided on (two jobs with equal specs are two
decisions). At deployment the app folder the job brings to this site must also digest
(:func:`app_digest`) to the entry's ``appDigest``, which the site computed itself by building
that app folder from its own copy of the catalog: the code that runs is the code approved.
Everything else is refused with a reason a person can act on, and so is every job when the
document is missing or unreadable (fail closed).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

FORMAT_VERSION = 2
APPROVED_FILE = "approved.json"
"""The document's file name (the ConfigMap key; the file in the process runtime's client folder)."""

META_KEY = "flareop"
"""Where the orchestrator's metadata sits in an NVFlare job's meta (meta.json)."""

SHORT_HASH = 19  # "sha256:" + 12 hex digits


def short_hash(content_hash: str) -> str:
    return content_hash if len(content_hash) <= SHORT_HASH else content_hash[:SHORT_HASH] + "…"


@dataclass(frozen=True, order=True)
class ApprovedJob:
    """One FederatedJob the org approved, bound to the content hash it saw."""

    uid: str
    content_hash: str
    job: str  # "<namespace>/<name>" of the FederatedJob (for people; the uid is the identity)
    app_digest: str  # app_digest() of the app folder this site computed for the job from its own catalog

    def to_wire(self) -> dict[str, str]:
        return {"uid": self.uid, "contentHash": self.content_hash, "job": self.job, "appDigest": self.app_digest}


@dataclass(frozen=True)
class ApprovedJobs:
    """The org's approved jobs in one federation: what its NVFlare client may take."""

    org: str
    jobs: tuple[ApprovedJob, ...] = field(default=())

    def with_job(self, job: ApprovedJob) -> ApprovedJobs:
        """Approve ``job`` (replacing what was approved before under the same uid)."""
        rest = [j for j in self.jobs if j.uid != job.uid]
        return ApprovedJobs(self.org, tuple(sorted([*rest, job])))

    def without(self, uid: str) -> ApprovedJobs:
        """Withdraw the approval of the FederatedJob ``uid`` (rejected, revoked, finished, deleted)."""
        return ApprovedJobs(self.org, tuple(j for j in self.jobs if j.uid != uid))

    def by_uid(self, uid: str) -> ApprovedJob | None:
        return next((j for j in self.jobs if j.uid == uid), None)

    def to_wire(self) -> dict[str, Any]:
        return {"formatVersion": FORMAT_VERSION, "org": self.org, "approved": [j.to_wire() for j in self.jobs]}


def render(approved: ApprovedJobs) -> str:
    """The document's text (stable: equal content gives equal text, so unchanged means no write)."""
    return json.dumps(approved.to_wire(), indent=1, sort_keys=True) + "\n"


def parse(text: str | bytes) -> ApprovedJobs:
    """The document from its text; ValueError (with what is wrong) for anything malformed."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(data, Mapping):
        raise ValueError("not a JSON object")
    if data.get("formatVersion") != FORMAT_VERSION:
        raise ValueError(f"formatVersion {data.get('formatVersion')!r} is not {FORMAT_VERSION}")
    org, entries = data.get("org"), data.get("approved")
    if not isinstance(org, str) or not isinstance(entries, list):
        raise ValueError("'org' must be a string and 'approved' a list")
    jobs = []
    for i, entry in enumerate(entries):
        values = [entry.get(k) if isinstance(entry, Mapping) else None
                  for k in ("uid", "contentHash", "job", "appDigest")]
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"approved[{i}] needs non-empty strings uid, contentHash, job and appDigest")
        jobs.append(ApprovedJob(*values))
    return ApprovedJobs(org, tuple(sorted(jobs)))


def readable_or_empty(text: str | None, org: str) -> str | None:
    """For a client being started: None (keep it) when ``text`` is a valid document, else the text of
    an empty one for ``org`` (a document that is missing or left by an older format approves nothing)."""
    if text is not None:
        try:
            parse(text)
            return None
        except ValueError:
            pass
    return render(ApprovedJobs(org))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str


def _job_label(meta: Mapping, flareop: Mapping) -> str:
    job = flareop.get("job")
    return job if isinstance(job, str) and job else str(meta.get("name") or "?")


def check_job(meta: Mapping | None, approved: ApprovedJobs | None, *, org: str, job_id: str = "",
              unavailable: str = "", deployed_digest: str | None = None) -> Verdict:
    """May the site of ``org`` take the NVFlare job with this meta, given its approved jobs?

    ``approved`` is None when the site's document could not be read (``unavailable`` says why):
    then nothing is allowed. ``job_id`` names the NVFlare job when the meta does not.
    ``deployed_digest``: at deployment, :func:`app_digest` of the app folder the job brings to this
    site; it must equal the approved entry's ``appDigest``.
    """
    meta_id = meta.get("job_id") if isinstance(meta, Mapping) else None
    nvflare_job = f"NVFlare job {meta_id or job_id or '(no id)'}"
    if approved is None:
        return Verdict(False, f"{org} refuses {nvflare_job}: the site's list of approved jobs is unavailable "
                              f"({unavailable or 'not readable'}); nothing runs at {org}'s site until its gateway "
                              "writes the list again — check the gateway at that site")
    if not isinstance(meta, Mapping) or not meta:
        return Verdict(False, f"{org} refuses {nvflare_job}: the request carries no job meta, so the site cannot "
                              f"tell which job it is; only FederatedJobs approved at {org}'s site run there")
    flareop = meta.get(META_KEY)
    flareop = flareop if isinstance(flareop, Mapping) else {}
    uid, content_hash = flareop.get("uid"), flareop.get("contentHash")
    if not (isinstance(uid, str) and uid and isinstance(content_hash, str) and content_hash):
        return Verdict(False, f"{org} refuses {nvflare_job} ({meta.get('name') or 'unnamed'}): it carries no "
                              "FederatedJob uid and content hash (submitted outside flare-operator?); run it as a "
                              f"FederatedJob and approve it with a JobApproval at {org}'s site")
    label = _job_label(meta, flareop)
    entry = approved.by_uid(uid)
    if entry is None:
        return Verdict(False, f"{org} has not approved job {label} (content hash {short_hash(content_hash)}, "
                              f"{nvflare_job}); approve it with a JobApproval at {org}'s site")
    if entry.content_hash != content_hash:
        return Verdict(False, f"{org} approved job {entry.job} for content hash {short_hash(entry.content_hash)}, "
                              f"but {nvflare_job} carries {short_hash(content_hash)}; approve the new content "
                              f"with a JobApproval at {org}'s site")
    if deployed_digest is not None and deployed_digest != entry.app_digest:
        return Verdict(False, f"{org} refuses {nvflare_job} for job {entry.job}: the app it deploys here digests to "
                              f"{short_hash(deployed_digest)}, not to {short_hash(entry.app_digest)}, the app "
                              f"{org}'s site built from its own catalog for what it approved; the hub sent other "
                              "code under this job's identity")
    return Verdict(True, f"{org} approved job {entry.job} (content hash {short_hash(content_hash)})")


# --- what runs: the digest of one deployed app folder ----------------------------------------------

REPORTING_ONLY_ARGS = frozenset({"prior_releases"})
"""Component args left out of :func:`app_digest`. ``prior_releases`` (the DP filter's count of
updates this site released in earlier attempts of the same job, set on a resubmission) only makes
the site's accountant report more epsilon; it changes neither the code, the clipping nor the noise."""


NVFLARE_ADDED_FILES = frozenset({".__nvfl_sig.json", ".__nvfl_submitter.crt"})
"""What NVFlare itself adds to every folder of a job it signs (``nvflare.lighter.utils.sign_folders``,
run by the FLARE API's submit_job): the signatures and the submitter's certificate. Left out of
:func:`app_digest`; NVFlare verifies them itself before it deploys the app."""


def _skipped(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return not parts or parts[-1] in NVFLARE_ADDED_FILES


def _without_reporting_args(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: (_without_reporting_args(v) if k != "args" or not isinstance(v, Mapping)
                    else {ak: _without_reporting_args(av) for ak, av in v.items() if ak not in REPORTING_ONLY_ARGS})
                for k, v in node.items()}
    if isinstance(node, list):
        return [_without_reporting_args(v) for v in node]
    return node


def _canonical(path: str, data: bytes) -> bytes:
    """JSON files as canonical JSON (formatting and key order do not count); other files as they are."""
    if not path.endswith(".json"):
        return data
    try:
        document = json.loads(data)
    except ValueError:
        return data
    return json.dumps(_without_reporting_args(document), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def app_digest(files: Mapping[str, bytes]) -> str:
    """'sha256:<hex>' of one NVFlare app folder (``config/…``, ``custom/…``), files keyed by their path
    relative to the app folder: what runs at a site.

    Canonical: sorted paths; only the files NVFlare adds when it signs a job
    (:data:`NVFLARE_ADDED_FILES`, in any folder) are left out; JSON is compared as canonical JSON
    without :data:`REPORTING_ONLY_ARGS`. Every other file counts, hidden files, ``__pycache__`` and
    compiled Python included: the site's own build (``builders/nvflare_job.build_job``) never
    contains them, and Python would run a ``custom/__pycache__/*.pyc`` shipped next to the approved
    source (an unchecked hash-based .pyc is never compared with its source), so a deployed app that
    brings one must not digest like the approved app. The site computes it from the app folder it
    builds itself from its own catalog; the client computes it from the app the server deploys
    (:func:`zip_app_files`) and from the folder it unpacked before the job starts.
    """
    h = hashlib.sha256()
    for path in sorted(p for p in files if not _skipped(p)):
        data = _canonical(path, files[path])
        h.update(path.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return "sha256:" + h.hexdigest()


def zip_app_files(data: bytes) -> dict[str, bytes]:
    """The files of an app as NVFlare deploys it to a client (the zip of the job's app folder,
    entries relative to that folder), keyed by path for :func:`app_digest`.

    ValueError when it is not a readable zip or names a file twice (unpacking would keep only one
    of them, so the digest could not tell which).
    """
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                if info.filename in files:
                    raise ValueError(f"the app names {info.filename!r} twice")
                files[info.filename] = archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError, OSError,
            TypeError, zlib.error) as err:
        raise ValueError(f"the app is not a readable zip: {err}") from None
    return files
