"""Process runtime: NVFlare participants as supervised local processes (like NVFlare's POC mode).

For development, demos and CI, where kwok Pods run no containers. Same kits, same decisions as the
kubernetes runtime; only the workload differs. Each participant gets a folder
`<workdir>/<federation>/<participant>/` holding its kit (startup/, local/), its NVFlare workspace
and `stdout.log`. A supervisor task restarts a crashed participant with exponential backoff.

Participants outlive an operator crash, as Pods do: each one's pid and kit digest are recorded in
`participant.json`, and the next operator adopts a live participant with the same command line and
kit instead of starting a second one (so a running NVFlare job goes on). A graceful stop (SIGTERM,
Kopf cleanup) stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..builders.federation import nvflare_org
from ..nvflare.provisioning import unpack_kit

log = logging.getLogger(__name__)

SERVER_MODULE = "nvflare.private.fed.app.server.server_train"
CLIENT_MODULE = "nvflare.private.fed.app.client.client_train"
MAX_BACKOFF_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0
RECORD_FILE = "participant.json"
ADOPTED_POLL_SECONDS = 1.0


@dataclass
class Participant:
    key: str  # "<federation>/<participant>"
    folder: Path
    command: list[str]
    kit_digest: str
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task | None = None
    restarts: int = 0
    started_at: float = 0.0
    stopping: bool = False
    exit_codes: list[int] = field(default_factory=list)
    adopted_pid: int | None = None  # left running by a previous operator; not our child

    @property
    def pid(self) -> int | None:
        if self.process and self.process.returncode is None:
            return self.process.pid
        if self.adopted_pid and _alive(self.adopted_pid):
            return self.adopted_pid
        return None

    @property
    def log_file(self) -> Path:
        return self.folder / "stdout.log"


def participant_command(role: str, folder: Path, name: str, org: str) -> list[str]:
    """What NVFlare's sub_start.sh runs, with this interpreter (the one that has nvflare)."""
    if role == "server":
        return [sys.executable, "-u", "-m", SERVER_MODULE, "-m", str(folder), "-s", "fed_server.json",
                "--set", "secure_train=true", f"org={nvflare_org(org)}", "config_folder=config"]
    return [sys.executable, "-u", "-m", CLIENT_MODULE, "-m", str(folder), "-s", "fed_client.json",
            "--set", "secure_train=true", f"uid={name}", f"org={nvflare_org(org)}", "config_folder=config"]


def private_resources(folder: Path) -> None:
    """Point the job store and snapshots into the participant's folder, not the shared /tmp/nvflare."""
    default = folder / "local" / "resources.json.default"
    if not default.exists():
        return
    text = default.read_text().replace("/tmp/nvflare", str(folder / "storage"))
    (folder / "local" / "resources.json").write_text(text)


class ProcessSupervisor:
    """Owns every participant process of this operator; all methods run on the event loop."""

    def __init__(self, workdir: Path):
        self.workdir = workdir.resolve()
        self.participants: dict[str, Participant] = {}

    def folder(self, federation: str, participant: str) -> Path:
        return self.workdir / federation / participant

    async def ensure(self, federation: str, participant: str, *, role: str, org: str, kit: bytes,
                     kit_digest: str, env: dict[str, str] | None = None) -> Participant:
        """Run the participant with this kit; restart it if the kit changed; no-op otherwise."""
        key = f"{federation}/{participant}"
        current = self.participants.get(key)
        if current and current.kit_digest == kit_digest and current.task and not current.task.done():
            return current
        if current:
            await self.stop(federation, participant, remove=False)
        folder = self.folder(federation, participant)
        command = participant_command(role, folder, participant, org)
        adopted = _adoptable(folder, command, kit_digest)
        if adopted is None:
            await _terminate_recorded(folder)  # a predecessor's participant with another kit
            for sub in ("startup", "local"):
                shutil.rmtree(folder / sub, ignore_errors=True)
            unpack_kit(kit, folder)
            private_resources(folder)
        else:
            log.info("adopted %s (pid %s) left running by a previous operator", key, adopted)
        tmp = folder / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", **(env or {})}
        p = Participant(key, folder, command, kit_digest, full_env, adopted_pid=adopted)
        p.task = asyncio.create_task(self._supervise(p), name=f"supervise {key}")
        self.participants[key] = p
        return p

    async def _supervise(self, p: Participant) -> None:
        backoff = 1.0
        while p.adopted_pid and not p.stopping and _alive(p.adopted_pid):
            await asyncio.sleep(ADOPTED_POLL_SECONDS)
        if p.adopted_pid and not p.stopping:
            log.warning("adopted %s (pid %s) exited; starting it again", p.key, p.adopted_pid)
            p.adopted_pid = None
            p.restarts += 1
        while not p.stopping:
            with p.log_file.open("ab") as out:
                p.process = await asyncio.create_subprocess_exec(
                    *p.command, cwd=p.folder, env=p.env, stdout=out, stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            p.started_at = time.monotonic()
            _record(p)
            log.info("started %s (pid %s)", p.key, p.process.pid)
            code = await p.process.wait()
            p.exit_codes.append(code)
            if p.stopping:
                break
            ran = time.monotonic() - p.started_at
            backoff = 1.0 if ran > 60 else min(backoff * 2, MAX_BACKOFF_SECONDS)
            p.restarts += 1
            log.warning("%s exited with %s after %.0fs; restarting in %.0fs", p.key, code, ran, backoff)
            await asyncio.sleep(backoff)

    async def stop(self, federation: str, participant: str, *, remove: bool) -> None:
        key = f"{federation}/{participant}"
        p = self.participants.pop(key, None)
        if p is not None:
            p.stopping = True
            await _terminate(p.process)
            if p.adopted_pid:
                await _terminate_pid(p.adopted_pid)
            _kill_leftovers(p.folder)
            (p.folder / RECORD_FILE).unlink(missing_ok=True)
            if p.task:
                p.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await p.task
        if remove:
            shutil.rmtree(self.folder(federation, participant), ignore_errors=True)

    async def stop_federation(self, federation: str, *, remove: bool) -> None:
        prefix = f"{federation}/"
        for key in [k for k in self.participants if k.startswith(prefix)]:
            await self.stop(federation, key[len(prefix):], remove=False)
        if remove:
            shutil.rmtree(self.workdir / federation, ignore_errors=True)

    async def stop_all(self) -> None:
        for key in list(self.participants):
            federation, participant = key.rsplit("/", 1)
            await self.stop(federation, participant, remove=False)

    def running(self, federation: str, participant: str) -> bool:
        p = self.participants.get(f"{federation}/{participant}")
        return bool(p and p.pid)

    def status(self) -> dict[str, dict]:
        return {k: {"pid": p.pid, "restarts": p.restarts, "exit_codes": p.exit_codes[-5:]}
                for k, p in self.participants.items()}

    def describe(self) -> str:
        return json.dumps(self.status(), sort_keys=True)


def _record(p: Participant) -> None:
    record = {"pid": p.process.pid, "kitDigest": p.kit_digest, "command": p.command}
    (p.folder / RECORD_FILE).write_text(json.dumps(record))


def _kill_leftovers(folder: Path) -> None:
    """SIGKILL what the participant started in sessions of its own (NVFlare's job processes name the
    participant's folder on their command line) and left behind when it was stopped."""
    needle = f" {folder} ".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = b" " + (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if needle in cmdline:
            log.info("stopping leftover process %s of %s", proc.name, folder)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _recorded(folder: Path) -> dict | None:
    """The participant a previous operator left running in `folder`, if it still runs."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
        cmdline = Path(f"/proc/{int(record['pid'])}/cmdline").read_bytes().split(b"\0")[:-1]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if [c.decode(errors="replace") for c in cmdline] != record.get("command") or not _alive(int(record["pid"])):
        return None  # gone, or the pid now belongs to another process
    return record


def _adoptable(folder: Path, command: list[str], kit_digest: str) -> int | None:
    record = _recorded(folder)
    if record and record["command"] == command and record.get("kitDigest") == kit_digest:
        return int(record["pid"])
    return None


async def _terminate_recorded(folder: Path) -> None:
    record = _recorded(folder)
    if record:
        await _terminate_pid(int(record["pid"]))
    (folder / RECORD_FILE).unlink(missing_ok=True)


async def _terminate_pid(pid: int) -> None:
    """Stop a participant that is not our child (adopted): its process group, then wait for it."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if not _alive(pid):
            break
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _terminate(process: asyncio.subprocess.Process | None) -> None:
    """SIGTERM the participant's process group (NVFlare forks job processes), then SIGKILL."""
    if process is None or process.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), wait)
            break
        except TimeoutError:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers in the group (job workers)
