"""The S3 results store against a real S3-compatible server (hack/s3server: gofakes3 behind SigV4
checks, over HTTP on 127.0.0.1): what goes up comes back byte for byte with its sha256, a new put
replaces the old tree, and a missing bucket or refused credentials say so, naming endpoint and bucket."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from flare_operator.store import ResultsCorrupt, ResultsStoreError
from tests.unit.test_results_store import TREE, make_tree

pytestmark = pytest.mark.integration

def keys(client, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def unique() -> str:
    return "job-" + uuid.uuid4().hex[:8]


def test_roundtrip_with_sha256_metadata(s3_server, tmp_path):
    store = s3_server.store(prefix="results")
    job = unique()
    results = store.put_tree(make_tree(tmp_path / "out", TREE), "consumer-a", job)

    assert results.location == f"s3://{s3_server.bucket}/results/consumer-a/{job}/"
    assert [f.name for f in results.files] == sorted(TREE)
    client = s3_server.client()
    prefix = f"results/consumer-a/{job}/"
    assert keys(client, s3_server.bucket, prefix) == sorted(prefix + n for n in TREE)
    for name, data in TREE.items():
        head = client.head_object(Bucket=s3_server.bucket, Key=prefix + name)
        assert head["ContentLength"] == len(data)
        assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()

    paths = store.get_tree(results, tmp_path / "fetched")
    assert len(paths) == len(TREE)
    for name, data in TREE.items():
        assert (tmp_path / "fetched" / name).read_bytes() == data


def test_replacement_deletes_stale_keys_only_under_the_job(s3_server, tmp_path):
    store = s3_server.store()
    job, other = unique(), unique()
    store.put_tree(make_tree(tmp_path / "v1", TREE), "ns", job)
    store.put_tree(make_tree(tmp_path / "o", {"keep.txt": b"keep"}), "ns", other)

    second = {"model.safetensors": b"new", "metrics.json": b"{}"}
    results = store.put_tree(make_tree(tmp_path / "v2", second), "ns", job)

    client = s3_server.client()
    assert keys(client, s3_server.bucket, f"ns/{job}/") == sorted(f"ns/{job}/{n}" for n in second)
    assert keys(client, s3_server.bucket, f"ns/{other}/") == [f"ns/{other}/keep.txt"]
    store.get_tree(results, tmp_path / "fetched")
    assert (tmp_path / "fetched" / "model.safetensors").read_bytes() == b"new"

    store.delete("ns", job)
    assert keys(client, s3_server.bucket, f"ns/{job}/") == []
    assert keys(client, s3_server.bucket, f"ns/{other}/") == [f"ns/{other}/keep.txt"]


def test_tampered_object_is_detected(s3_server, tmp_path):
    store = s3_server.store()
    job = unique()
    results = store.put_tree(make_tree(tmp_path / "out", TREE), "ns", job)
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=f"ns/{job}/metrics.json", Body=b'{"loss": 0.01}\n'
    )
    with pytest.raises(ResultsCorrupt) as info:
        store.get_tree(results, tmp_path / "fetched")
    assert "metrics.json" in str(info.value)
    assert hashlib.sha256(TREE["metrics.json"]).hexdigest() in str(info.value)
    assert hashlib.sha256(b'{"loss": 0.01}\n').hexdigest() in str(info.value)

    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"ns/{job}/metrics.json")
    with pytest.raises(ResultsCorrupt, match="missing"):
        store.get_tree(results, tmp_path / "fetched2")


def test_missing_bucket_is_named_and_can_be_created(s3_server, tmp_path):
    bucket = "absent-" + uuid.uuid4().hex[:8]
    tree = make_tree(tmp_path / "out", {"a.txt": b"a"})
    with pytest.raises(ResultsStoreError) as info:
        s3_server.store(bucket=bucket).put_tree(tree, "ns", "job")
    message = str(info.value)
    assert bucket in message and s3_server.endpoint_url in message and "does not exist" in message

    creating = s3_server.store(bucket=bucket, create_bucket=True)
    results = creating.put_tree(tree, "ns", "job")
    assert results.location == f"s3://{bucket}/ns/job/"
    assert keys(s3_server.client(), bucket, "") == ["ns/job/a.txt"]

    # The bucket goes away after the store checked it: the upload itself says so.
    s3_server.client().delete_object(Bucket=bucket, Key="ns/job/a.txt")
    s3_server.client().delete_bucket(Bucket=bucket)
    with pytest.raises(ResultsStoreError) as info:
        creating.put_tree(tree, "ns", "job")
    assert bucket in str(info.value) and "NoSuchBucket" in str(info.value)


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"secret_access_key": "not-the-secret"}, "SignatureDoesNotMatch"),
        ({"access_key_id": "AKNOBODY"}, "InvalidAccessKeyId"),
    ],
)
def test_refused_credentials_are_explained(s3_server, tmp_path, override, code):
    store = s3_server.store(**override)
    with pytest.raises(ResultsStoreError) as info:
        store.put_tree(make_tree(tmp_path / "out", {"a.txt": b"a"}), "ns", unique())
    message = str(info.value)
    assert code in message and "credentials" in message
    assert s3_server.bucket in message and s3_server.endpoint_url in message

    results = s3_server.store().put_tree(make_tree(tmp_path / "ok", {"a.txt": b"a"}), "ns", "readable")
    with pytest.raises(ResultsStoreError, match=code):
        store.get_tree(results, tmp_path / "fetched")


def test_a_file_of_a_few_megabytes(s3_server, tmp_path):
    """12 MiB: above boto3's 8 MiB multipart threshold, so it goes up in parts."""
    data = os.urandom(12 * 1024 * 1024)
    store = s3_server.store()
    job = unique()
    results = store.put_tree(
        make_tree(tmp_path / "out", {"model.safetensors": data, "metrics.json": b"{}"}), "ns", job
    )
    big = next(f for f in results.files if f.name == "model.safetensors")
    assert big.size == len(data) and big.sha256 == hashlib.sha256(data).hexdigest()
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"ns/{job}/model.safetensors")
    assert head["ContentLength"] == len(data) and head["Metadata"]["sha256"] == big.sha256
    store.get_tree(results, tmp_path / "fetched")
    assert (tmp_path / "fetched" / "model.safetensors").read_bytes() == data


def test_unsigned_requests_are_refused(s3_server):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{s3_server.endpoint_url}/{s3_server.bucket}/", timeout=5)
    assert info.value.code == 403 and b"AccessDenied" in info.value.read()


def _non_loopback_ip() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_server_bound_to_all_addresses_answers_on_the_host_ip(s3_server_factory, tmp_path):
    """What pods on a real node will do: reach the server through the host's IP."""
    server = s3_server_factory.start(bind="0.0.0.0")
    ip = _non_loopback_ip()
    endpoints = [server.endpoint_url] + ([server.endpoint_for(ip)] if ip else [])
    for i, endpoint in enumerate(endpoints):
        client = server.client(endpoint_url=endpoint)
        client.put_object(Bucket=server.bucket, Key=f"k{i}", Body=b"via " + endpoint.encode())
        assert (
            client.get_object(Bucket=server.bucket, Key=f"k{i}")["Body"].read() == b"via " + endpoint.encode()
        )
