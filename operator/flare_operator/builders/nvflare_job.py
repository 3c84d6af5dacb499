"""Build an NVFlare 2.9 job folder from a catalog app — pure, no torch, no nvflare import.

The job's config JSON is generated directly (the same format NVFlare's FedJob exports):

    <job>/meta.json                                   name, min_clients, deploy_map, flareop metadata
    <job>/app_server/config/config_fed_server.json    the app's server controller (FedAvg-style ModelController)
    <job>/app_server/custom/...                       app code + flare_apps/_shared
    <job>/app_<site>/config/config_fed_client.json    ClientAPIExecutor running the app's Client API script,
                                                      DP filter + NVFlare filters on the train result
    <job>/app_<site>/custom/site_config.json          validated params + this site's dataset path(s)
    <job>/app_<site>/custom/...                       app code + flare_apps/_shared

One client app per site, so a site's dataset path is only deployed to that site. ``build_job``
returns ``{relative_path: bytes}``; ``write_job`` writes it; ``job_content_hash`` hashes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..api.compute import ComputeSpecSpec
from ..api.job import FederatedJobSpec
from ..catalog import App, shared_dir, validate_aggregation, validate_params, validate_privacy
from .federation import client_name
from .requests import datasets_by_org

SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESUME_CHECKPOINT = "resume/global_trainable.safetensors"
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}

NVFLARE_FILTERS = {
    "ExcludeVars": "nvflare.app_common.filters.exclude_vars.ExcludeVars",
    "PercentilePrivacy": "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy",
    "SVTPrivacy": "nvflare.app_common.filters.svt_privacy.SVTPrivacy",
}
DP_FILTER = "flare_app_common.filters.GaussianDPFilter"
SAMPLE_DP = "flare_app_common.sample_dp.SampleDP"
CLIENT_EXECUTOR = "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor"


class JobBuildError(ValueError):
    """The job cannot be built from these inputs."""


@dataclass(frozen=True)
class SiteSpec:
    """One participating site: its NVFlare client name and the dataset path as seen by that client
    (a tuple of paths when the site trains on several datasets: their rows are concatenated)."""

    name: str
    dataset_path: str | tuple[str, ...]

    def paths(self) -> tuple[str, ...]:
        return (self.dataset_path,) if isinstance(self.dataset_path, str) else tuple(self.dataset_path)

    def wire_path(self) -> str | list[str]:
        """``datasetPath`` in site_config.json: one path as a string, several as a list."""
        paths = self.paths()
        return paths[0] if len(paths) == 1 else list(paths)

    @classmethod
    def coerce(cls, s: SiteSpec | Mapping) -> SiteSpec:
        if isinstance(s, SiteSpec):
            return s
        if isinstance(s, Mapping):
            name = s.get("name")
            path = s.get("datasetPath", s.get("dataset_path"))
            return cls(name=name, dataset_path=tuple(path) if isinstance(path, list | tuple) else path)
        raise JobBuildError(f"site must be a SiteSpec or a mapping, got {type(s).__name__}")


# Each client streams its job log to the server while the job runs, so the job's logs from every
# site can be fetched through the FLARE API (get_job_logs) — a site opts out with
# allow_log_streaming=false in its resources.json. To the server's parent process (its site-level
# JobLogReceiver keeps them in the job store): the server's job process may end before the
# clients' last log lines arrive.
LOG_STREAMER = {"id": "log_streamer", "path": "nvflare.app_common.logging.job_log_streamer.JobLogStreamer",
                "args": {"log_file_name": "log.txt", "target_parent_server": True}}


def sites_for(datasets_by_org: Mapping[str, Sequence[str]], client_name) -> list[SiteSpec]:
    """One site per org, naming its datasets by reference (``dataset:<id>``): only the site knows
    where its data is. An org with several datasets in the ComputeSpec trains on all of them."""
    return [SiteSpec(client_name(org), tuple(f"dataset:{d}" for d in ids)) for org, ids in datasets_by_org.items()]


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _read_tree(src: Path, dest_prefix: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if not src.is_dir():
        return out
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_PARTS and not d.startswith("."))
        for fn in sorted(files):
            if fn.endswith((".pyc", ".pyo")) or fn.startswith("."):
                continue
            fp = Path(root) / fn
            rel = fp.relative_to(src).as_posix()
            out[f"{dest_prefix}/{rel}"] = fp.read_bytes()
    return out


def _custom_files(app: App, prefix: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for d in app.nvflare.get("custom", ["custom"]):
        files.update(_read_tree(app.path / d, prefix))
    shared = shared_dir(app.path.parent)
    if shared.is_dir():
        for sub in sorted(shared.iterdir()):
            if sub.is_dir() and sub.name not in SKIP_PARTS:
                files.update(_read_tree(sub, f"{prefix}/{sub.name}"))
    return files


def _result_filters(privacy: Mapping, prior_releases: int = 0) -> list[dict]:
    filters = []
    dp = privacy.get("differentialPrivacy") or {}
    if dp.get("enabled") and not _sample_level(dp):
        filters.append(
            {
                "path": DP_FILTER,
                "args": {
                    "clip_norm": dp["clipNorm"],
                    "noise_multiplier": dp["noiseMultiplier"],
                    "delta": dp["delta"],
                    "accountant": dp["accountant"],
                    **({"prior_releases": prior_releases} if prior_releases else {}),
                },
            }
        )
    for f in privacy.get("filters") or []:
        filters.append({"path": NVFLARE_FILTERS[f["type"]], "args": dict(f.get("args") or {})})
    return filters


def _sample_level(dp: Mapping) -> bool:
    """Sample-level DP enabled, in the API's shape (``Sample``) or the built one (``sample``)."""
    return bool(dp.get("enabled")) and str(dp.get("level", "client")).lower() == "sample"


def privacy_settings_problem(params: Mapping, privacy: Mapping) -> str | None:
    """What in the app parameters cannot run under the job's privacy settings (API or built shape), or None."""
    if _sample_level(privacy.get("differentialPrivacy") or {}) and float(params.get("proxMu", 0.0) or 0.0) > 0:
        return ("parameters.proxMu > 0 cannot be combined with sample-level differential privacy (the proximal "
                "term's gradient is not clipped per record): set proxMu to 0 or use level Client")
    return None


def _sample_dp(privacy: Mapping, rounds: int, prior_releases: int = 0) -> dict | None:
    """site_config.json's ``sampleDP`` (flare_app_common/sample_dp.py SampleDP's arguments) for
    sample-level DP; None otherwise. ``prior_releases`` is reporting only, as for the client-level filter."""
    dp = privacy.get("differentialPrivacy") or {}
    if not _sample_level(dp):
        return None
    if dp.get("epsilon") is None:
        raise JobBuildError("privacy.differentialPrivacy.epsilon is required for sample-level differential privacy")
    return {
        "path": SAMPLE_DP,
        "args": {
            "epsilon": dp["epsilon"],
            "delta": dp["delta"],
            "clip_norm": dp["clipNorm"],
            "accountant": dp["accountant"],
            "rounds": int(rounds),
            **({"prior_releases": prior_releases} if prior_releases else {}),
        },
    }


def build_job(
    app: App,
    params: Mapping | None,
    sites: Sequence[SiteSpec | Mapping],
    *,
    job_name: str,
    privacy: Mapping | None = None,
    aggregation: Mapping | None = None,
    metadata: Mapping | None = None,
    min_clients: int | None = None,
    task_timeout: int = 0,
    resume: Mapping | None = None,
) -> dict[str, bytes]:
    """Files of an NVFlare job folder for ``app`` (paths relative to the job folder's parent).

    Args:
        app: a catalog app (``catalog.load_app``).
        params: the app's parameters; validated here against its schema, defaults applied.
        sites: ``SiteSpec`` or ``{"name": "site-1", "datasetPath": "/data/x.csv"}`` per client
            (``datasetPath`` a list when the site trains on several datasets).
        job_name: NVFlare job name (also the top folder of the returned paths).
        privacy: ``{"differentialPrivacy": {enabled, level, clipNorm, noiseMultiplier | epsilon, delta, accountant},
            "filters": [{"type": "ExcludeVars"|"PercentilePrivacy"|"SVTPrivacy", "args": {...}}]}``.
        aggregation: ``{"weighting": "sample"|"uniform"|"capped", "maxShare": 0.5}``.
        metadata: free-form JSON (e.g. the FederatedJob's uid and content hash), recorded in
            meta.json under ``flareop`` and in the results' model card.
        min_clients: sites that must answer each round (default: all).
        task_timeout: seconds a round may take per task (0 = no limit).
        resume: ``{"checkpoint": path or bytes, "startRound": k, "priorReleases": n}`` to continue
            after a server restart or suspend: a ``global_trainable.safetensors`` the previous run
            wrote after round k-1 (metrics.json ``last_completed_round`` = k-1) — its content (bytes),
            shipped inside the job as ``app_server/resume/…`` (the server may be a Pod that cannot see
            the operator's disk), or a path as the server sees it; n = updates each site already
            released in earlier attempts (DP accounting goes on from there; default 0).

    Raises:
        ParameterError (from the catalog) for bad params/privacy/aggregation, JobBuildError otherwise.
    """
    if not isinstance(job_name, str) or not JOB_NAME_RE.match(job_name):
        raise JobBuildError(f"invalid job name {job_name!r} (letters, digits, '.', '_', '-'; max 128)")
    site_specs = [SiteSpec.coerce(s) for s in sites]
    if not site_specs:
        raise JobBuildError("at least one site is required")
    names = [s.name for s in site_specs]
    for s in site_specs:
        if not isinstance(s.name, str) or not SITE_RE.match(s.name) or s.name == "server":
            raise JobBuildError(f"invalid site name {s.name!r}")
        paths = s.paths() if isinstance(s.dataset_path, str | tuple) else ()
        if not paths or not all(isinstance(x, str) and x for x in paths):
            raise JobBuildError(f"site {s.name}: datasetPath is required (a path, or a list of paths)")
        if len(set(paths)) != len(paths):
            raise JobBuildError(f"site {s.name}: the same dataset twice in {list(paths)}")
    if len(set(names)) != len(names):
        raise JobBuildError(f"duplicate site names in {names}")
    p = validate_params(app, params or {})
    priv = validate_privacy(privacy)
    agg = validate_aggregation(aggregation, len(site_specs))
    n_min = len(site_specs) if min_clients is None else int(min_clients)
    if not 1 <= n_min <= len(site_specs):
        raise JobBuildError(f"min_clients must be between 1 and {len(site_specs)}, got {min_clients}")
    if (
        any(f["type"] == "PercentilePrivacy" for f in priv["filters"])
        and app.nvflare.get("paramsTransfer") != "DIFF"
    ):
        raise JobBuildError("PercentilePrivacy needs an app that sends parameter differences")
    meta_extra = {"app": {"id": app.id, "version": app.version}, **dict(metadata or {})}
    try:
        json.dumps(meta_extra)
    except TypeError as e:
        raise JobBuildError(f"metadata must be JSON-serialisable: {e}") from e

    rounds = int(p.get("rounds", 1))
    ckpt, start_round, prior_releases = "", 0, 0
    if resume:
        ckpt = resume.get("checkpoint")
        start_round = resume.get("startRound", 0)
        prior_releases = resume.get("priorReleases", 0)
        if not isinstance(prior_releases, int) or prior_releases < 0:
            raise JobBuildError(f"resume.priorReleases must be a non-negative integer, got {prior_releases!r}")
        if not isinstance(ckpt, str | bytes) or not ckpt:
            raise JobBuildError("resume.checkpoint must be a non-empty path or the checkpoint's bytes")
        if not isinstance(start_round, int) or not 0 <= start_round < rounds:
            raise JobBuildError(f"resume.startRound must be an integer in [0, {rounds}), got {start_round!r}")
    files: dict[str, bytes] = {}
    root = job_name
    if isinstance(ckpt, bytes):
        files[f"{root}/app_server/{RESUME_CHECKPOINT}"] = ckpt
        ckpt = RESUME_CHECKPOINT  # relative: the controller resolves it against its app folder
    deploy_map = {"app_server": ["server"]}
    # --- server
    server_cfg = {
        "format_version": 2,
        "workflows": [
            {
                "id": "controller",
                "path": app.nvflare["serverController"],
                "args": {
                    "params": p,
                    "sites": names,
                    "num_rounds": rounds,
                    "aggregation": agg,
                    "privacy": priv,
                    "app": {"id": app.id, "version": app.version},
                    "job_name": job_name,
                    "metadata": dict(metadata or {}),
                    "min_clients": n_min,
                    "task_timeout": int(task_timeout),
                    "initial_checkpoint": ckpt,
                    "start_round": start_round,
                },
            }
        ],
        "components": [],
        "task_data_filters": [],
        "task_result_filters": [],
    }
    files[f"{root}/app_server/config/config_fed_server.json"] = _json(server_cfg)
    files.update(_custom_files(app, f"{root}/app_server/custom"))
    # --- clients
    result_filters = _result_filters(priv, prior_releases)
    sample_dp = _sample_dp(priv, rounds, prior_releases)
    problem = privacy_settings_problem(p, priv)
    if problem:
        raise JobBuildError(problem)
    for s in site_specs:
        app_name = f"app_{s.name}"
        deploy_map[app_name] = [s.name]
        client_cfg = {
            "format_version": 2,
            "executors": [
                {
                    "tasks": ["train", "validate"],
                    "executor": {
                        "path": CLIENT_EXECUTOR,
                        "args": {
                            "execution_mode": "in_process",
                            "task_script_path": app.nvflare["clientScript"],
                            "task_script_args": "",
                            "params_exchange_format": "numpy",
                            "server_expected_format": "numpy",
                            "params_transfer_type": app.nvflare.get("paramsTransfer", "FULL"),
                        },
                    },
                }
            ],
            "components": [LOG_STREAMER],
            "task_data_filters": [],
            "task_result_filters": [{"tasks": ["train"], "filters": result_filters}]
            if result_filters
            else [],
        }
        files[f"{root}/{app_name}/config/config_fed_client.json"] = _json(client_cfg)
        files.update(_custom_files(app, f"{root}/{app_name}/custom"))
        files[f"{root}/{app_name}/custom/site_config.json"] = _json(
            {
                "site": s.name,
                "datasetPath": s.wire_path(),
                "params": p,
                "app": {"id": app.id, "version": app.version},
                **({"sampleDP": sample_dp} if sample_dp else {}),
            }
        )
    meta = {
        "name": job_name,
        "resource_spec": {},
        "min_clients": n_min,
        "deploy_map": deploy_map,
        "flareop": meta_extra,
    }
    files[f"{root}/meta.json"] = _json(meta)
    return dict(sorted(files.items()))


def privacy_from_api(privacy: Mapping | None, rounds: int) -> dict:
    """FederatedJob ``spec.privacy`` (``level``, target ``epsilon``, ``delta``, ``clipNorm``) -> ``build_job``'s ``privacy``.

    Client level: the noise multiplier is calibrated (RDP accountant) so that each site's epsilon
    after ``rounds`` rounds is at most the target (needs the dp-accounting package). Sample level:
    the target passes through; each site calibrates its DP-SGD noise from its own record count.
    Already-built shapes (``noiseMultiplier``) pass through.
    """
    from ..catalog import noise_multiplier_for_epsilon

    privacy = dict(privacy or {})
    dp = dict(privacy.get("differentialPrivacy") or {})
    out: dict = {k: v for k, v in privacy.items() if k != "differentialPrivacy"}
    if "level" in dp:
        dp["level"] = str(dp["level"]).lower()  # API Client|Sample -> the app's client|sample
    # Sample level keeps the target: each site calibrates its own noise from its record count (sample_dp.py).
    sample = _sample_level(dp)
    calibrate = dp.get("enabled") and not sample and "noiseMultiplier" not in dp
    if (sample or calibrate) and dp.get("epsilon") is None:
        raise JobBuildError("privacy.differentialPrivacy.epsilon is required when differential privacy is enabled")
    if calibrate:
        delta = float(dp.get("delta", 1e-5))
        dp["noiseMultiplier"] = noise_multiplier_for_epsilon(
            float(dp.pop("epsilon")), int(rounds), delta, dp.get("accountant", "rdp")
        )
    elif not sample:
        dp.pop("epsilon", None)
    out["differentialPrivacy"] = dp
    return out


_WEIGHTING_FROM_API = {"samplecount": "sample", "sample": "sample", "uniform": "uniform", "capped": "capped"}


def aggregation_from_api(aggregation: Mapping | None) -> dict:
    """FederatedJob ``spec.aggregation`` (``SampleCount|Uniform|Capped``, ``maxSiteShare``) -> ``build_job``'s."""
    a = dict(aggregation or {})
    w = str(a.get("weighting", "SampleCount"))
    if w.lower() not in _WEIGHTING_FROM_API:
        raise JobBuildError(f"unknown aggregation weighting {w!r} (SampleCount, Uniform or Capped)")
    out = {"weighting": _WEIGHTING_FROM_API[w.lower()]}
    share = a.get("maxSiteShare", a.get("maxShare"))
    if share is not None:
        out["maxShare"] = float(share)
    return out


# --- from the API's specs, and what each site can rebuild itself ----------------------------------


def job_name_for(namespace: str, name: str) -> str:
    """The NVFlare job name of a FederatedJob."""
    return f"{namespace}-{name}"[:60]


def build_from_api(app: App, job: FederatedJobSpec, compute: ComputeSpecSpec, *, job_name: str,
                   metadata: Mapping | None = None, resume: Mapping | None = None) -> dict[str, bytes]:
    """``build_job`` for a FederatedJob spec on its ComputeSpec: one site per org, datasets by reference.

    The orchestrator builds what it submits with it, and each site builds the same job from the
    specs in its AccessRequest and its *own* catalog, to know which app folder it approves.
    """
    return build_job(
        app, {**job.parameters, "rounds": job.rounds}, sites_for(datasets_by_org(compute), client_name),
        job_name=job_name, privacy=privacy_from_api(job.privacy.to_wire(), job.rounds),
        aggregation=aggregation_from_api(job.aggregation.to_wire()), metadata=metadata, resume=resume)


def site_app_files(files: Mapping[str, bytes], job_name: str, site: str) -> dict[str, bytes]:
    """The files of one site's app folder (``app_<site>/``), keyed relative to that folder."""
    prefix = f"{job_name}/app_{site}/"
    return {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}


def app_code_digest(app: App) -> str:
    """'sha256:<hex>' of a catalog app's code as deployed: its app.yaml, custom code and the catalog's
    shared code. Bound into every job's content hash; each site recomputes it from its own catalog."""
    return job_content_hash({"app.yaml": (app.path / "app.yaml").read_bytes(), **_custom_files(app, "custom")})


def job_content_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over the sorted (path, bytes) pairs: what the sites approve."""
    h = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        h.update(path.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return "sha256:" + h.hexdigest()


def write_job(files: Mapping[str, bytes], dest: str | os.PathLike) -> Path:
    """Write the files under ``dest``; returns the job folder (``dest/<job_name>``)."""
    dest = Path(dest)
    tops: set[str] = set()
    for rel, data in files.items():
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise JobBuildError(f"unsafe path {rel!r}")
        tops.add(rel.split("/", 1)[0])
        fp = dest / rel
        fp.parent.mkdir(parents=True, exist_ok=True)
        fp.write_bytes(data)
    if len(tops) != 1:
        raise JobBuildError(f"expected one job folder, got {sorted(tops)}")
    return dest / tops.pop()


def site_names(sites: Iterable[SiteSpec | Mapping]) -> list[str]:
    return [SiteSpec.coerce(s).name for s in sites]
