"""A finished job's results, downloaded to the modeller's machine from wherever the operator stored
them (``status.results``: a location and every file's size and sha256).

`flare-operator fetch --job NAME -n NAMESPACE --out DIR` does this from a shell. An ``s3://`` location
is read with the modeller's own S3 credentials (boto3's chain: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, a profile, a workload identity) at ``endpoint_url`` (an S3-compatible server;
None: AWS S3, or $AWS_ENDPOINT_URL); any other location is a folder this machine can read (the
process runtime's local store). Every file is checked against the size and sha256 in the status:
a file that differs is an error, never a silent download.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..api.job import Results


def download_results(results: dict, dest: Path, *, endpoint_url: str | None = None,
                     region: str = "us-east-1") -> list[Path]:
    """Download the files ``results`` (a job's ``status.results``) lists into ``dest``; their paths."""
    from ..store.results import LocalStore, S3Store

    listed = Results.model_validate(results)
    if listed.location.startswith("s3://"):
        bucket = listed.location[len("s3://"):].partition("/")[0]
        store = S3Store(endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
                        bucket=bucket, region=region)
    else:
        store = LocalStore(Path(listed.location))
    return store.get_tree(listed, Path(dest))
