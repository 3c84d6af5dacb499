"""Real NVFlare federations for the e2e tier: simulator runs and provisioned POC processes.

Everything lives under pytest's tmp dirs (private TMPDIR, workspaces, job stores): nothing in
/tmp/nvflare. Processes are started in their own process group and always stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

# Small, fast, learnable data for 2 sites (tiny ESM on 2 CPU cores).
DATA_ARGS = dict(sites=2, samples_per_site=400, min_len=30, max_len=60, seed=0, alpha=0.5, test_samples=200)
# App parameters the e2e runs share: tiny model, 1 torch thread per process (2 cores, 3 processes).
BASE_PARAMS = {
    "preset": "tiny",
    "maxSeqLength": 64,
    "batchSize": 32,
    "learningRate": 0.001,
    "torchThreads": 1,
    "seed": 0,
}


def private_env(tmp: Path) -> dict:
    t = tmp / "tmp"
    t.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "TMPDIR": str(t),
            "NVFLARE_SIMULATOR_WORKSPACE_ROOT": str(tmp / "simroot"),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    # the venv's bin first: NVFlare's scripts call python3
    env["PATH"] = str(Path(PY).parent) + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="session")
def e2e_data(tmp_path_factory) -> dict:
    from flare_operator.datagen import GeneratorConfig, write_dataset

    out = tmp_path_factory.mktemp("esm2data")
    return write_dataset(GeneratorConfig(**DATA_ARGS), out)


def build_job_dir(
    dest: Path,
    params: dict,
    data: dict,
    job_name: str,
    privacy=None,
    aggregation=None,
    metadata=None,
    resume=None,
) -> Path:
    from flare_operator.builders.nvflare_job import build_job, write_job
    from flare_operator.catalog import load_app

    files = build_job(
        load_app("esm2-finetune"),
        {**BASE_PARAMS, **params},
        [{"name": n, "datasetPath": s["path"]} for n, s in data["sites"].items()],
        job_name=job_name,
        privacy=privacy,
        aggregation=aggregation,
        metadata=metadata or {"test": job_name},
        resume=resume,
    )
    return write_job(files, dest)


def run_simulator(job_dir: Path, workdir: Path, sites: list[str], timeout: int = 300) -> Path:
    """Run the NVFlare simulator in a subprocess; returns the server's results folder."""
    ws = workdir / "ws"
    log = workdir / "simulator.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [
                PY,
                "-m",
                "nvflare.private.fed.app.simulator.simulator",
                str(job_dir),
                "-w",
                str(ws),
                "-c",
                ",".join(sites),
                "-t",
                str(len(sites)),
            ],
            env=private_env(workdir),
            cwd=workdir,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    text = log.read_text()
    results = ws / "server" / "simulate_job" / "app_server" / "results"
    assert proc.returncode == 0, f"simulator failed ({proc.returncode}):\n{text[-4000:]}"
    assert (results / "metrics.json").exists(), f"no results; simulator log tail:\n{text[-4000:]}"
    return results


def load_metrics(results: Path) -> dict:
    return json.loads((results / "metrics.json").read_text())


# ---------------------------------------------------------------- provisioned POC


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provision(root: Path, sites: list[str]) -> dict:
    from nvflare.lighter.impl.cert import CertBuilder
    from nvflare.lighter.impl.signature import SignatureBuilder
    from nvflare.lighter.impl.static_file import StaticFileBuilder
    from nvflare.lighter.impl.workspace import WorkspaceBuilder
    from nvflare.lighter.provision import prepare_project
    from nvflare.lighter.provisioner import Provisioner

    admin = "admin@hub.example"
    participants = [
        {
            "name": "localhost",
            "type": "server",
            "org": "hub",
            "fed_learn_port": free_port(),
            "admin_port": free_port(),
        }
    ]
    participants += [{"name": s, "type": "client", "org": f"org_{i}"} for i, s in enumerate(sites)]
    participants.append({"name": admin, "type": "admin", "org": "hub", "role": "project_admin"})
    orgs = {p["name"]: p["org"] for p in participants}  # prepare_project consumes the dicts
    project = prepare_project(
        {"api_version": 3, "name": "esm2e2e", "description": "e2e", "participants": participants}
    )
    ctx = Provisioner(
        str(root),
        [
            WorkspaceBuilder(template_file=["master_template.yml"]),
            StaticFileBuilder(config_folder="config", scheme="grpc"),
            CertBuilder(),
            SignatureBuilder(),
        ],
    ).provision(project)
    prod = Path(ctx.get("current_prod_dir"))
    # private job store / snapshot paths instead of /tmp/nvflare
    for kit in [prod / "localhost"] + [prod / s for s in sites]:
        default = kit / "local" / "resources.json.default"
        text = default.read_text().replace("/tmp/nvflare", str(root / "state" / kit.name))
        (kit / "local" / "resources.json").write_text(text)
    return {"prod": prod, "admin": admin, "orgs": orgs}


class PocFederation:
    """Server + clients as real processes from their startup kits, and an admin FLARE API session."""

    def __init__(self, root: Path, sites: list[str]):
        self.root, self.sites = root, sites
        self.procs: list[tuple[str, subprocess.Popen, object]] = []
        self.session = None
        self.info = provision(root / "provision", sites)
        self.env = private_env(root)

    def _start(self, name: str, module: str, extra: list[str]):
        kit = self.info["prod"] / name
        log = open(self.root / f"{name}.log", "w")
        cmd = [
            PY,
            "-u",
            "-m",
            module,
            "-m",
            str(kit),
            "-s",
            extra[0],
            "--set",
            "secure_train=true",
            *extra[1:],
            "config_folder=config",
        ]
        p = subprocess.Popen(
            cmd, cwd=kit, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, p, log))

    def start(self, timeout: float = 120):
        self._start(
            "localhost", "nvflare.private.fed.app.server.server_train", ["fed_server.json", "org=hub"]
        )
        for s in self.sites:
            self._start(
                s,
                "nvflare.private.fed.app.client.client_train",
                ["fed_client.json", f"uid={s}", f"org={self.info['orgs'][s]}"],
            )
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            self._check_alive()
            try:
                if self.session is None:
                    self.session = new_secure_session(
                        self.info["admin"], str(self.info["prod"] / self.info["admin"]), timeout=5.0
                    )
                clients = {c.name for c in self.session.get_connected_client_list()}
                if set(self.sites) <= clients:
                    return self
            except Exception as e:  # server not up yet
                last = e
            time.sleep(1)
        raise TimeoutError(f"clients did not connect in {timeout}s (last error: {last})\n{self.logs()}")

    def _check_alive(self):
        for name, p, _ in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        out = []
        for name, _, _ in self.procs:
            f = self.root / f"{name}.log"
            if f.exists():
                out.append(f"--- {name}\n{f.read_text()[-tail:]}")
        return "\n".join(out)

    def stop(self):
        if self.session is not None:
            try:
                self.session.shutdown("all")
            except Exception:
                pass
            try:
                self.session.close()
            except Exception:
                pass
        deadline = time.time() + 30
        for _, p, _ in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for _, p, log in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            else:
                # job processes the participant spawned live in its process group
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            log.close()


@pytest.fixture
def poc_federation(tmp_path):
    fed = PocFederation(tmp_path / "poc", ["site-1", "site-2"])
    try:
        yield fed
    finally:
        fed.stop()


def submit_and_wait(fed: PocFederation, job_dir: Path, token: str, timeout: float = 300) -> Path:
    """Submit a copy of the job, wait for it to finish, download results; returns the download folder."""
    copy = fed.root / "submit" / job_dir.name
    shutil.copytree(job_dir, copy)
    s = fed.session
    job_id = s.submit_job(str(copy), submit_token=token)
    deadline = time.time() + timeout
    status = None
    while time.time() < deadline:
        fed._check_alive()
        meta = s.get_job_meta(job_id)
        status = meta.get("status")
        if status and status.startswith("FINISHED"):
            break
        time.sleep(2)
    assert status == "FINISHED:COMPLETED", f"job {job_id} ended {status}\n{fed.logs()}"
    dest = fed.root / "download"
    dest.mkdir(exist_ok=True)
    return Path(s.download_job_result(job_id, destination=str(dest)))


def stale_atime(path: Path) -> None:
    """atime older than mtime: under relatime the next read of the file moves it."""
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns - 3_600_000_000_000, st.st_mtime_ns))


def was_read(path: Path) -> bool:
    st = path.stat()
    return st.st_atime_ns >= st.st_mtime_ns
