"""Local Kubernetes control planes for tests: etcd + kube-apiserver + kube-controller-manager
+ kube-scheduler + kwok, built from Go modules (hack/controlplane/) and run as processes.

    cp = ControlPlane.start(tmp_path / "hub", "hub")
    cp.kubectl("get", "nodes")
    api = cp.api_client()            # kubernetes.client.ApiClient
    alice = cp.user_kubeconfig("alice", ["org-a-admins"])
    cp.stop()

By default there is no kubelet: nodes and pods are kwok fakes (pods become Running/Ready, PVCs
bind through kwok's volume stages and the default StorageClass ``kwok-volume``). With
``real_nodes=1`` (root) the cluster also gets ``real-node-0``: kubelet, containerd, kube-proxy and
CoreDNS in their own namespaces, whose pods run the images passed in ``imports`` (OCI archives,
see tests/support/images.py); its default StorageClass is ``flarecp-local``.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.support.builds import built

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SH = REPO_ROOT / "hack" / "controlplane" / "build.sh"

__all__ = ["ControlPlane", "KubectlError", "bin_dir", "flarecp", "REPO_ROOT"]


@functools.lru_cache(maxsize=1)
def bin_dir() -> Path:
    """Directory holding flarecp, its multi-call links (kubectl, ...) and helm.

    Builds them with hack/controlplane/build.sh on first use (cold: many minutes; cached
    afterwards under $FLARE_CACHE_DIR). ``FLARECP_BIN_DIR`` overrides the lookup.
    """
    path = built(BUILD_SH, "FLARECP_BIN_DIR")
    if not (path / "flarecp").is_file():
        raise RuntimeError(f"{BUILD_SH} printed {path}, which has no flarecp")
    return path


def flarecp() -> Path:
    return bin_dir() / "flarecp"


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): a pid and its start
    time name one process, even after the pid is reused (pid_max wraps on long test runs)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def pid_running(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains text (e.g. a cluster directory)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if text in cmdline and pid_running(int(entry)):
            found.append(int(entry))
    return found


class ControlPlane:
    """One local cluster, run by ``flarecp cluster up --dir DIR`` as a child of this process."""

    def __init__(self, dir: Path | str, name: str | None = None):
        self.dir = Path(dir).resolve()
        self.name = name or self.dir.name.lstrip(".")
        self.kubeconfig = self.dir / "kubeconfig"
        self.proc: subprocess.Popen | None = None
        self.pids: dict[int, int | None] = {}  # launcher + components -> start time, for leak checks
        self.startup_seconds: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        dir: Path | str,
        name: str | None = None,
        *,
        nodes: int = 2,
        gpus: int = 8,
        timeout: float = 240.0,
        real_nodes: int = 0,
        imports: Sequence[Path | str] = (),
        extra_args: Sequence[str] = (),
    ) -> ControlPlane:
        """Start a cluster in ``dir`` and return once its kubeconfig is written (the launcher
        writes it last: apiserver /readyz, nodes Ready, default ServiceAccount present).
        ``real_nodes``/``imports``: a real node and the image archives loaded into it (the pause
        image among them); importing the runtime image takes a few minutes, so pass a longer
        ``timeout``."""
        cp = cls(dir, name)
        args = list(extra_args)
        if real_nodes:
            args += ["--real-nodes", str(real_nodes), "--timeout", f"{int(timeout)}s"]
            for archive in imports:
                args += ["--import", str(archive)]
        cp._start(nodes=nodes, gpus=gpus, timeout=timeout, extra_args=args)
        return cp

    def _start(self, *, nodes: int, gpus: int, timeout: float, extra_args: Sequence[str]) -> None:
        binary = flarecp()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.unlink(missing_ok=True)
        log = open(self.dir / "launcher.log", "ab")
        args = [
            str(binary), "cluster", "up", "--dir", str(self.dir), "--name", self.name,
            "--nodes", str(nodes), "--gpus", str(gpus),
            # SIGTERM to the launcher if this process dies: it then stops its components (which
            # themselves die with the launcher, Pdeathsig=SIGKILL).
            "--exit-with-parent", *extra_args,
        ]  # fmt: skip
        t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                cwd=self.dir,
            )  # fmt: skip
        finally:
            log.close()
        self._track([self.proc.pid])
        deadline = t0 + timeout
        while not self.kubeconfig.exists():
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"flarecp cluster up exited with {code} before the cluster was ready\n"
                    + self.diagnostics()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"cluster {self.name} not ready after {timeout:.0f}s\n" + self.diagnostics()
                )
            time.sleep(0.1)
        self.startup_seconds = time.monotonic() - t0
        self._track(_children(self.proc.pid))

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the launcher (it stops kwok, scheduler, controller-manager, apiserver, etcd in
        order) and wait; SIGKILL after ``timeout`` (the components die with it)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._track(_children(self.proc.pid))
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        deadline = time.monotonic() + 15
        while self.running_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        # A real node's image store holds an unpacked copy of every imported image (≈ 7 GB with
        # the runtime image): tests free it at once rather than leave it to pytest's tmp cleanup.
        store = self.dir / "node" / "containerd"
        if store.exists() and not self.running_pids():
            shutil.rmtree(store, ignore_errors=True)

    def _track(self, pids: list[int]) -> None:
        for pid in pids:
            self.pids.setdefault(pid, start_time(pid))

    def running_pids(self) -> list[int]:
        """Tracked pids still alive, plus any process still naming this cluster's directory."""
        alive = {p for p, started in self.pids.items() if pid_running(p) and start_time(p) == started}
        alive.update(processes_mentioning(str(self.dir) + "/"))
        return sorted(alive)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------------
    def api_client(self):
        """A new kubernetes.client.ApiClient for the cluster admin (system:masters)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        kubeconfig: Path | str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess:
        """Run kubectl (the flarecp multi-call one) against this cluster; text output."""
        # The cluster's own discovery cache: ~/.kube/cache is keyed by host:port, which earlier
        # clusters reused (a stale entry makes `get flare` name resources this server lacks).
        cmd = [str(bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig),
               "--cache-dir", str(self.dir / "kube-cache"), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def user_kubeconfig(self, user: str, groups: Iterable[str] = ()) -> Path:
        """Sign a client certificate (CN=user, O=groups) with the cluster CA; return the path of
        a kubeconfig using it (DIR/users/<user>.kubeconfig)."""
        out = self.dir / "users" / f"{user}.kubeconfig"
        args = [str(flarecp()), "user-kubeconfig", "--dir", str(self.dir), "--user", user]
        for g in groups:
            args += ["--group", g]
        args += ["--out", str(out)]
        subprocess.run(args, check=True, capture_output=True, text=True)
        return out

    @property
    def helm(self) -> Path:
        return bin_dir() / "helm"

    @property
    def server(self) -> str:
        import json

        return json.loads((self.dir / "cluster.json").read_text())["server"]

    # -- diagnostics -----------------------------------------------------------------------
    def diagnostics(self, lines: int = 30) -> str:
        usage = shutil.disk_usage(self.dir if self.dir.exists() else "/")
        parts = [f"--- disk at {self.dir}: {usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB "
                 "(a real node's kubelet evicts Pods below 1% free)"]
        for path in [self.dir / "launcher.log", *sorted((self.dir / "logs").glob("*.log"))]:
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ControlPlane {self.name} {state} {self.dir}>"
