"""The S3 test server behaves like versioned S3: the data tests rely on each of these."""

from __future__ import annotations

import botocore.exceptions
import pytest

from tests.s3server import S3Server


def test_versioned_bucket_keeps_every_version(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    first = client.put_object(Bucket=s3_bucket, Key="k", Body=b"one")["VersionId"]
    second = client.put_object(Bucket=s3_bucket, Key="k", Body=b"two")["VersionId"]
    assert first != second
    assert client.get_object(Bucket=s3_bucket, Key="k", VersionId=first)["Body"].read() == b"one"
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"two"


def test_wrong_credentials_are_rejected(s3_server: S3Server, s3_bucket: str) -> None:
    bad = S3Server(s3_server.directory, ports=s3_server.ports, secret_key="wrong-secret").client()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        bad.list_objects_v2(Bucket=s3_bucket)
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_a_new_bucket_without_versioning_reports_no_status(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket(versioned=False)
    assert s3_server.client().get_bucket_versioning(Bucket=bucket).get("Status") is None
