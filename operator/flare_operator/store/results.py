"""Results stores: where a finished FederatedJob's files go (model files, metrics.json, MODEL_CARD.md,
logs/, tensorboard/), one folder or key prefix per consumer namespace and job.

- ``LocalStore``: ``<root>/<namespace>/<job>/`` on the operator's machine (the single-machine default);
- ``S3Store``: ``s3://<bucket>/<prefix><namespace>/<job>/`` on any S3-compatible server.

Both are synchronous (callers run them in a thread). ``put_tree`` replaces what was stored for the job
and returns the ``Results`` the job's status records: the location and every file's size and sha256.
``get_tree`` downloads the listed files and checks them against those hashes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Protocol

from ..api.job import ResultFile, Results

if TYPE_CHECKING:
    from ..config import OperatorConfig, ResultsStoreConfig

log = logging.getLogger(__name__)


def _max_listed() -> int:
    for constraint in Results.model_fields["files"].metadata:
        if getattr(constraint, "max_length", None) is not None:
            return int(constraint.max_length)
    return 256


MAX_LISTED_FILES = _max_listed()
"""Results.files holds at most this many entries (the CRD's maxItems); the rest are stored, not listed."""
MAX_NAME_LENGTH = 512
_CHUNK = 1 << 20


class ResultsCorrupt(ValueError):
    """A stored file is missing or does not match the size and sha256 that were recorded for it."""


class ResultsStoreError(RuntimeError):
    """The store cannot be used: no such bucket, credentials refused, endpoint unreachable."""


class ResultsStore(Protocol):
    def put_tree(self, source: Path, namespace: str, job: str) -> Results: ...

    def get_tree(self, results: Results, dest: Path) -> list[Path]: ...

    def delete(self, namespace: str, job: str) -> None: ...


@dataclass(frozen=True)
class _Entry:
    name: str  # relative, '/'-separated
    path: Path
    size: int
    sha256: str


def _check_segment(kind: str, value: str) -> None:
    if (
        not value
        or "/" in value
        or "\\" in value
        or value in (".", "..")
        or value.startswith(".")
        or len(value) > 253
    ):
        raise ValueError(f"invalid {kind} for the results store: {value!r}")


def _safe_name(name: str) -> PurePosixPath:
    """A stored file's relative name; refuses absolute names, '..', empty or odd segments."""
    p = PurePosixPath(name)
    if (
        not name
        or p.is_absolute()
        or "\\" in name
        or "\0" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise ValueError(f"refusing result file name {name!r}: it must be a plain relative path")
    return p


def _dest_path(dest: Path, name: str) -> Path:
    rel = _safe_name(name)
    root = dest.resolve()
    target = root.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(root):  # a symlinked folder under dest pointing elsewhere
        raise ValueError(f"refusing result file name {name!r}: it leads outside {dest}")
    return target


def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _walk(source: Path) -> list[_Entry]:
    """Every regular file under ``source``, sorted by relative name. Symlinks are followed only where
    they resolve inside ``source`` (a results folder must not leak the operator's other files)."""
    if not source.is_dir():
        raise FileNotFoundError(f"results folder {source} does not exist or is not a folder")
    root = source.resolve()
    entries: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for d in list(dirnames):
            full = base / d
            if full.is_symlink():
                dirnames.remove(d)
                log.warning("results: skipping symlinked folder %s", full)
        for fn in filenames:
            full = base / fn
            if full.is_symlink() and not full.resolve().is_relative_to(root):
                log.warning("results: skipping %s: a symlink to %s, outside %s", full, full.resolve(), root)
                continue
            if not full.is_file():
                continue
            name = full.relative_to(root).as_posix()
            if len(name) > MAX_NAME_LENGTH:
                raise ValueError(f"result file name longer than {MAX_NAME_LENGTH} characters: {name[:80]}...")
            size, digest = _hash_file(full)
            entries.append(_Entry(name, full, size, digest))
    entries.sort(key=lambda e: e.name)
    return entries


def _listing(location: str, entries: list[_Entry]) -> Results:
    files = [ResultFile(name=e.name, size=e.size, sha256=e.sha256) for e in entries]
    if len(files) > MAX_LISTED_FILES:
        log.warning(
            "results at %s: %d files stored, only the first %d (by name) are listed in the job's status",
            location,
            len(files),
            MAX_LISTED_FILES,
        )
        files = files[:MAX_LISTED_FILES]
    return Results(location=location, files=files)


def _copy_verified(read: IO[bytes], target: Path, expected: ResultFile) -> None:
    """Write ``read`` to ``target`` (via a temporary sibling), checking size and sha256 before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := read.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        digest = h.hexdigest()
        if size != expected.size or digest != expected.sha256:
            raise ResultsCorrupt(
                f"result file {expected.name!r} does not match its record: expected {expected.size} bytes "
                f"sha256 {expected.sha256}, got {size} bytes sha256 {digest}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LocalStore:
    """Results under ``root/<namespace>/<job>/``; a put replaces the job folder whole."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _job_dir(self, namespace: str, job: str) -> Path:
        _check_segment("namespace", namespace)
        _check_segment("job name", job)
        return self.root.resolve() / namespace / job

    def put_tree(self, source: Path, namespace: str, job: str) -> Results:
        target = self._job_dir(namespace, job)
        entries = _walk(Path(source))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{job}.", suffix=".new"))
        try:
            stored: list[_Entry] = []
            for e in entries:
                dst = tmp.joinpath(*PurePosixPath(e.name).parts)
                dst.parent.mkdir(parents=True, exist_ok=True)
                with e.path.open("rb") as src:
                    _copy_verified(src, dst, ResultFile(name=e.name, size=e.size, sha256=e.sha256))
                stored.append(e)
            tmp.chmod(0o755)
            old: Path | None = None
            if target.exists():
                old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{job}.", suffix=".old"))
                os.replace(target, old / "tree")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return _listing(str(target), stored)

    def get_tree(self, results: Results, dest: Path) -> list[Path]:
        if "://" in results.location:
            raise ValueError(f"LocalStore cannot read {results.location!r}: not a local folder")
        location = Path(results.location)
        paths = []
        for f in results.files:
            target = _dest_path(dest, f.name)
            src = location.joinpath(*_safe_name(f.name).parts)
            try:
                handle = src.open("rb")
            except FileNotFoundError:
                raise ResultsCorrupt(
                    f"result file {f.name!r} is missing from {location} (expected sha256 {f.sha256}, got none)"
                ) from None
            with handle:
                _copy_verified(handle, target, f)
            paths.append(target)
        return paths

    def delete(self, namespace: str, job: str) -> None:
        shutil.rmtree(self._job_dir(namespace, job), ignore_errors=True)


class S3Store:
    """Results at ``s3://<bucket>/<prefix><namespace>/<job>/`` on an S3-compatible server (boto3).

    Each object also carries its sha256 as user metadata ``sha256``. A put uploads every file and
    then deletes the keys under the job's prefix that the new tree does not have."""

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        region: str = "us-east-1",
        prefix: str = "",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
        verify_tls: bool | str | Path = True,
    ):
        import boto3
        from botocore.config import Config

        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self.prefix = prefix.lstrip("/")
        self.create_bucket = create_bucket
        self._bucket_checked = False
        config = Config(
            region_name=region,
            signature_version="s3v4",
            # S3-compatible servers (MinIO, Ceph, gofakes3, ...) are addressed by path.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
            # botocore >= 1.36 adds CRC checksums (aws-chunked uploads with trailers) to every request
            # by default; many S3-compatible servers refuse or mangle those. The files' own sha256
            # (user metadata, verified on download) is the end-to-end check.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
            verify=str(verify_tls) if isinstance(verify_tls, Path) else verify_tls,
        )

    # -- errors -----------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3 (' + self.region + ')'}"

    def _explain(self, exc: BaseException, doing: str) -> ResultsStoreError | None:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            SSLError,
        )

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (code == "404" and doing == "check bucket"):
                return ResultsStoreError(f"results store: {self._where()} does not exist ({doing})")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
                return ResultsStoreError(
                    f"results store: {self._where()} refused the credentials ({code}: {err.get('Message', '')}) "
                    f"while trying to {doing}; check the access key id and secret"
                )
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                return ResultsStoreError(
                    f"results store: {self._where()} denied access ({code or status}) while trying to {doing}: "
                    "the credentials are refused or lack permission"
                )
            return None
        from boto3.exceptions import S3UploadFailedError

        if isinstance(exc, S3UploadFailedError):  # upload_file wraps the ClientError in its message
            text = str(exc)
            for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "NoSuchBucket"):
                if code in text:
                    return ResultsStoreError(
                        f"results store: {self._where()} refused to {doing} ({code}): {text}"
                    )
            return ResultsStoreError(f"results store: could not {doing} to {self._where()}: {text}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ResultsStoreError(f"results store: no credentials for {self._where()} ({exc})")
        if isinstance(exc, SSLError):
            return ResultsStoreError(f"results store: TLS verification failed for {self._where()}: {exc}")
        if isinstance(exc, EndpointConnectionError):
            return ResultsStoreError(f"results store: cannot reach {self._where()}: {exc}")
        return None

    def _call(self, doing: str, fn, /, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            explained = self._explain(exc, doing)
            if explained is not None:
                raise explained from exc
            raise

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code.isdigit() and code != "404":
                # A HEAD response has no body, so no error code: ask again with a GET to learn why
                # (InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied, ...).
                try:
                    self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
                except ClientError as detail:
                    raise (self._explain(detail, "check bucket") or detail) from exc
            if code not in ("404", "NoSuchBucket", "NotFound") or not self.create_bucket:
                raise (self._explain(exc, "check bucket") or exc) from exc
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self._client.create_bucket(**kwargs)
            except ClientError as cexc:
                if cexc.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    raise (self._explain(cexc, "create the bucket") or cexc) from cexc
            else:
                log.info("results store: created %s", self._where())
        except Exception as exc:
            if isinstance(exc, ResultsStoreError):
                raise
            raise (self._explain(exc, "check bucket") or exc) from exc
        self._bucket_checked = True

    # -- keys -------------------------------------------------------------------------------------

    def _job_prefix(self, namespace: str, job: str) -> str:
        _check_segment("namespace", namespace)
        _check_segment("job name", job)
        return f"{self.prefix}{namespace}/{job}/"

    def _keys(self, bucket: str, prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in self._call(
            "list objects", lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix))
        ):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            resp = self._call(
                "delete objects",
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise ResultsStoreError(
                    f"results store: {self._where()} refused to delete {len(errors)} objects, "
                    f"e.g. {first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}"
                )

    # -- the protocol -----------------------------------------------------------------------------

    def location(self, namespace: str, job: str) -> str:
        return f"s3://{self.bucket}/{self._job_prefix(namespace, job)}"

    def put_tree(self, source: Path, namespace: str, job: str) -> Results:
        prefix = self._job_prefix(namespace, job)
        entries = _walk(Path(source))
        self._ensure_bucket()
        for e in entries:
            self._call(
                f"upload {e.name}",
                self._client.upload_file,
                str(e.path),
                self.bucket,
                prefix + e.name,
                ExtraArgs={"Metadata": {"sha256": e.sha256}},
            )
        wanted = {prefix + e.name for e in entries}
        stale = [k for k in self._keys(self.bucket, prefix) if k not in wanted]
        if stale:
            self._delete_keys(stale)
        return _listing(self.location(namespace, job), entries)

    def get_tree(self, results: Results, dest: Path) -> list[Path]:
        loc = results.location
        if not loc.startswith("s3://"):
            raise ValueError(f"S3Store cannot read {loc!r}: not an s3:// location")
        bucket, _, key_prefix = loc[len("s3://") :].partition("/")
        if key_prefix and not key_prefix.endswith("/"):
            key_prefix += "/"
        from botocore.exceptions import ClientError

        paths = []
        for f in results.files:
            target = _dest_path(dest, f.name)
            key = key_prefix + str(_safe_name(f.name))
            try:
                obj = self._client.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise ResultsCorrupt(
                        f"result file {f.name!r} is missing from {loc} (expected sha256 {f.sha256}, got none)"
                    ) from None
                raise (self._explain(exc, f"download {f.name}") or exc) from exc
            body = obj["Body"]
            try:
                _copy_verified(body, target, f)
            finally:
                body.close()
            paths.append(target)
        return paths

    def delete(self, namespace: str, job: str) -> None:
        keys = list(self._keys(self.bucket, self._job_prefix(namespace, job)))
        if keys:
            self._delete_keys(keys)


def store_from_config(cfg: ResultsStoreConfig | OperatorConfig, workdir: Path) -> ResultsStore:
    """The store an operator's configuration names (``OperatorConfig`` or its ``results_store``).
    S3 credentials come from the environment variables the configuration names; when those are
    unset boto3's own chain (instance profile, web identity, ...) applies."""
    store_cfg = getattr(cfg, "results_store", cfg)
    if store_cfg.type == "local":
        return LocalStore(Path(store_cfg.path) if store_cfg.path is not None else Path(workdir) / "results")
    s3 = store_cfg.s3
    if s3 is None:  # the config's validator already refuses this
        raise ValueError("resultsStore.type s3 needs resultsStore.s3")
    access_key = os.environ.get(s3.access_key_id_env) or None
    secret_key = os.environ.get(s3.secret_access_key_env) or None
    if (access_key is None) != (secret_key is None):
        missing = s3.secret_access_key_env if secret_key is None else s3.access_key_id_env
        raise ResultsStoreError(
            f"results store: environment variable {missing} is not set (bucket {s3.bucket!r})"
        )
    return S3Store(
        endpoint_url=s3.endpoint,
        bucket=s3.bucket,
        region=s3.region,
        prefix=s3.prefix,
        access_key_id=access_key,
        secret_access_key=secret_key,
        create_bucket=s3.create_bucket,
        verify_tls=s3.ca_bundle if s3.ca_bundle is not None else True,
    )
