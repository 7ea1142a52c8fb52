"""Against a real S3-compatible store (moto), through presigned URLs, as users hand them
to blobdl: S3's own answers, not a script's."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import blobdl
from faultserver.registry import S3Server, start_s3
from tests.conftest import PART, fast_settings, run_cli

BUCKET = "store"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    store = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        store.create_bucket(BUCKET)
        yield store
    finally:
        store.stop()


def _client(s3: S3Server) -> Any:
    import boto3  # moto[server] brings it (a test dependency)
    from botocore.config import Config

    # verify=False: the endpoint is plain HTTP; it keeps botocore from reading the
    # machine's AWS_CA_BUNDLE (empty or absent alike) for nothing.
    return boto3.client(
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id="blobdl",
        aws_secret_access_key="blobdl-secret",
        region_name="us-east-1",
        config=Config(signature_version="s3v4"),
        verify=False,
    )


def presigned(s3: S3Server, key: str, data: bytes) -> str:
    """Put ``data`` at ``key`` and hand out a presigned GET URL for it, as a user gets one."""
    client = _client(s3)
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    url: str = client.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600
    )
    return url


def test_an_empty_object_on_s3_downloads_as_an_empty_file(s3: S3Server, tmp_path: Path) -> None:
    """S3 answers any Range on an empty object with 416 InvalidRange and no Content-Range
    (AWS, MinIO and moto alike): that is an empty blob, as curl fetches it, not a failure."""
    url = presigned(s3, "empty.bin", b"")
    done = run_cli(url, "-o", str(tmp_path / "cli.bin"), "--json")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli.bin").read_bytes() == b""
    (finished,) = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "finished"]
    assert finished["size"] == 0

    result = blobdl.Downloader(fast_settings()).download(url, tmp_path / "lib.bin")
    assert result.size == 0 and (tmp_path / "lib.bin").read_bytes() == b""

    digest = "sha256:" + hashlib.sha256(b"").hexdigest()
    some = presigned(s3, "some.bin", b"x" * (3 * PART + 5))
    items = [
        blobdl.Item(url, str(tmp_path / "a.bin"), digest=digest),
        blobdl.Item(some, str(tmp_path / "b.bin")),
    ]
    results = blobdl.download_many(items, settings=fast_settings())
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    assert (tmp_path / "a.bin").read_bytes() == b""
    assert (tmp_path / "b.bin").read_bytes() == b"x" * (3 * PART + 5)
