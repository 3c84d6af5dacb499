"""Shared helpers for the esm2-finetune benchmarks (data, job building, simulator runs)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
APP_PATHS = [str(REPO / "flare_apps" / "esm2-finetune" / "custom"), str(REPO / "flare_apps" / "_shared")]


def add_app_paths():
    for p in reversed(APP_PATHS):
        if p not in sys.path:
            sys.path.insert(0, p)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def make_data(out: Path, **kw) -> dict:
    from flare_operator.datagen import GeneratorConfig, write_dataset

    return write_dataset(GeneratorConfig(**kw), out)


def env(work: Path) -> dict:
    e = dict(os.environ)
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    e.update(
        {
            "TMPDIR": str(work / "tmp"),
            "NVFLARE_SIMULATOR_WORKSPACE_ROOT": str(work / "simroot"),
            "OMP_NUM_THREADS": e.get("OMP_NUM_THREADS", "1"),
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    e["PATH"] = str(Path(PY).parent) + os.pathsep + e.get("PATH", "")
    return e


def run_federation(
    work: Path,
    data: dict,
    params: dict,
    job_name: str,
    privacy=None,
    aggregation=None,
    sites: list[str] | None = None,
    log_streamer: bool = True,
) -> dict:
    """Build the esm2-finetune job and run it in the NVFlare simulator; returns metrics.json.

    The job is built by the operator's ``build_job``, so it is the job the operator submits
    (including the JobLogStreamer in every client config); ``log_streamer=False`` removes that
    component, for an A/B check of its cost."""
    from flare_operator.builders.nvflare_job import build_job, write_job
    from flare_operator.catalog import load_app

    names = sites or list(data["sites"])
    files = build_job(
        load_app("esm2-finetune"),
        params,
        [{"name": n, "datasetPath": data["sites"][n]["path"]} for n in names],
        job_name=job_name,
        privacy=privacy,
        aggregation=aggregation,
    )
    if not log_streamer:
        for path in [p for p in files if p.endswith("config_fed_client.json")]:
            cfg = json.loads(files[path])
            cfg["components"] = [c for c in cfg["components"] if "JobLogStreamer" not in c["path"]]
            files[path] = json.dumps(cfg, indent=2).encode()
    job = write_job(files, work / "jobs")
    ws = work / "ws"
    log = work / "simulator.log"
    with open(log, "w") as f:
        r = subprocess.run(
            [
                PY,
                "-m",
                "nvflare.private.fed.app.simulator.simulator",
                str(job),
                "-w",
                str(ws),
                "-c",
                ",".join(names),
                "-t",
                str(len(names)),
            ],
            env=env(work),
            cwd=work,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    metrics = ws / "server" / "simulate_job" / "app_server" / "results" / "metrics.json"
    if r.returncode != 0 or not metrics.exists():
        raise RuntimeError(f"simulator failed ({r.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return json.loads(metrics.read_text())
