"""pytest plugin: a real S3-compatible server (hack/s3server: gofakes3 behind SigV4 checks) as fixtures.

Register with ``pytest_plugins = ["tests.support.s3"]`` in tests/conftest.py.

Fixtures
  s3_server_factory  session  ``factory.start(bind="127.0.0.1", bucket=...) -> S3Server``; more
                              servers (e.g. one on 0.0.0.0 that pods reach through the node's IP),
                              all stopped at session end
  s3_server          session  the session's shared server on 127.0.0.1, with bucket
                              ``S3Server.bucket`` created; started on first request

Each server has its own random access key and secret (``credentials``, ``env()``) and keeps its
objects in a bolt file under the session's temporary folder. ``S3SERVER_BIN`` names a prebuilt
binary instead of hack/s3server/build.sh's.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.builds import built

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "hack" / "s3server" / "build.sh"

__all__ = ["S3Server", "S3ServerFactory", "s3server_binary", "s3_server", "s3_server_factory"]


def s3server_binary() -> Path:
    """The s3server binary: ``$S3SERVER_BIN``, else built (or reused) by hack/s3server/build.sh."""
    path = built(BUILD_SH, "S3SERVER_BIN")
    if not path.is_file():
        raise RuntimeError(f"{BUILD_SH} printed {path}, which is not a file")
    return path


@dataclass
class S3Server:
    """One running s3server process."""

    bind: str
    port: int
    bucket: str
    access_key_id: str
    secret_access_key: str
    workdir: Path
    region: str = "us-east-1"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        """Where a client on this machine reaches it (127.0.0.1 when bound to all addresses)."""
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "", "::") else self.bind
        return self.endpoint_for(host)

    def endpoint_for(self, host: str) -> str:
        """The endpoint as seen from elsewhere, e.g. a pod reaching the node's IP."""
        return f"http://{host}:{self.port}"

    @property
    def credentials(self) -> dict[str, str]:
        return {"aws_access_key_id": self.access_key_id, "aws_secret_access_key": self.secret_access_key}

    def env(
        self, id_var: str = "AWS_ACCESS_KEY_ID", secret_var: str = "AWS_SECRET_ACCESS_KEY"
    ) -> dict[str, str]:
        return {id_var: self.access_key_id, secret_var: self.secret_access_key}

    def client(self, **overrides: Any):
        """A boto3 S3 client for this server (path-style, the server's credentials unless overridden)."""
        import boto3
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "config": Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
            **self.credentials,
        }
        kwargs.update(overrides)
        return boto3.session.Session().client("s3", **kwargs)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def store(self, prefix: str = "", bucket: str | None = None, **kwargs: Any):
        """A flare_operator S3Store on this server."""
        from flare_operator.store import S3Store

        return S3Store(
            endpoint_url=self.endpoint_url,
            bucket=bucket or self.bucket,
            region=self.region,
            prefix=prefix,
            access_key_id=kwargs.pop("access_key_id", self.access_key_id),
            secret_access_key=kwargs.pop("secret_access_key", self.secret_access_key),
            **kwargs,
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        bucket: str = "flare-results",
        timeout: float = 30.0,
    ) -> S3Server:
        binary = s3server_binary()
        workdir.mkdir(parents=True, exist_ok=True)
        server = cls(
            bind=bind,
            port=port,
            bucket=bucket,
            access_key_id="FLAREOP" + secrets.token_hex(6).upper(),
            secret_access_key=secrets.token_urlsafe(30),
            workdir=workdir,
        )
        log = (workdir / "s3server.log").open("ab")
        env = {
            **os.environ,
            "S3SERVER_ACCESS_KEY": server.access_key_id,
            "S3SERVER_SECRET_KEY": server.secret_access_key,
        }
        host = f"[{bind}]" if ":" in bind else bind
        proc = subprocess.Popen(
            [str(binary), "-addr", f"{host}:{port}", "-db", str(workdir / "objects.db")],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        server.process = proc
        try:
            server.port = _read_port(proc, timeout)
            server._wait_answering(timeout)
            server.create_bucket(bucket)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # 403 to an unsigned request: it answers
            except OSError:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(
                        f"s3server exited with {self.process.returncode}; see {self.workdir}/s3server.log"
                    ) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"s3server at {self.endpoint_url} did not answer in {timeout}s"
                    ) from None
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


def _read_port(proc: subprocess.Popen, timeout: float) -> int:
    """The port from the server's "s3server: listening on http://HOST:PORT" line."""
    result: dict[str, str] = {}

    def read() -> None:
        assert proc.stdout is not None
        result["line"] = proc.stdout.readline().decode(errors="replace").strip()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    line = result.get("line", "")
    if not line.startswith("s3server: listening on http://"):
        raise RuntimeError(
            f"s3server did not report its address (exit code {proc.poll()}, first line {line!r})"
        )
    return int(line.rsplit(":", 1)[1])


class S3ServerFactory:
    """Starts servers under one base folder and stops them all at the end."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.servers: list[S3Server] = []

    def start(self, *, bind: str = "127.0.0.1", bucket: str = "flare-results", port: int = 0) -> S3Server:
        server = S3Server.start(self.base / f"s3-{len(self.servers)}", bind=bind, port=port, bucket=bucket)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="session")
def s3_server_factory(tmp_path_factory) -> Iterator[S3ServerFactory]:
    s3server_binary()  # build (or reuse) before any server starts, outside any per-test timeout
    factory = S3ServerFactory(tmp_path_factory.mktemp("s3", numbered=True))
    try:
        yield factory
    finally:
        factory.stop_all()
        left = [s.process.pid for s in factory.servers if s.process is not None and s.process.poll() is None]
        assert not left, f"s3server processes left after stop: {left}"


@pytest.fixture(scope="session")
def s3_server(s3_server_factory) -> S3Server:
    return s3_server_factory.start()
