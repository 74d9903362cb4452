"""nixrepro.datastore.quick_head: one S3 HEAD without botocore, answering exactly as botocore does
or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nixrepro.config import DataConfig
from nixrepro.datastore import DataURI
from nixrepro.datastore.quick_head import QuickHead
from nixrepro.datastore.s3 import S3Store
from tests.s3server import S3Server

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy",
                 "http_proxy", "all_proxy")


@pytest.fixture
def aws(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server's keys and endpoint in the environment; no ~/.aws of the machine's."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def versions(server: S3Server) -> tuple[DataURI, str, str]:
    """An object with two versions: (its URI, the first version id, the latest's)."""
    bucket = server.new_bucket()
    client = server.client()
    first = client.put_object(Bucket=bucket, Key="dir/a b+é.csv", Body=b"one",
                              Metadata={"sha256": "a" * 64, "nixrepro-kind": "manifest"})
    latest = client.put_object(Bucket=bucket, Key="dir/a b+é.csv", Body=b"second",
                               Metadata={"sha256": "b" * 64})
    return DataURI.parse(f"s3://{bucket}/dir/a b+é.csv"), first["VersionId"], latest["VersionId"]


def botocore_head(uri: DataURI, version_id: str | None) -> object:
    store = S3Store(DataConfig())
    store._quick = None  # botocore only
    return store.head(uri, version_id)


@pytest.mark.parametrize("pinned", [False, True])
def test_the_quick_answer_is_botocores(aws: S3Server, pinned: bool) -> None:
    uri, first, _latest = versions(aws)
    store = S3Store(DataConfig())
    version = first if pinned else None
    assert store.head(uri, version) == botocore_head(uri, version)
    assert isinstance(store._quick, QuickHead)
    assert store._client is None  # botocore was not needed


def test_the_keys_of_a_profile_in_the_credentials_file_are_used(aws: S3Server, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "credentials").write_text(
        f"[team]\naws_access_key_id = {aws.access_key}\naws_secret_access_key = {aws.secret_key}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    uri, _first, latest = versions(aws)
    quick = QuickHead.configure(DataConfig(profile="team"))
    assert quick is not None
    found = quick.head(uri.bucket, uri.key, None)
    assert found is not None and found.version_id == latest and found.metadata["sha256"] == "b" * 64


@pytest.mark.parametrize("setup", ["role", "sso", "process", "proxy", "no keys"])
def test_what_only_botocore_can_do_is_left_to_it(aws: S3Server, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, setup: str) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    keys = f"aws_access_key_id = {aws.access_key}\naws_secret_access_key = {aws.secret_key}\n"
    (tmp_path / "credentials").write_text(f"[default]\n{keys}")
    config = {"role": "role_arn = arn:aws:iam::1:role/x\nsource_profile = default\n",
              "sso": "sso_session = corp\n", "process": "credential_process = /bin/creds\n"}
    if setup in config:
        (tmp_path / "config").write_text(f"[default]\n{config[setup]}")
    elif setup == "proxy":
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    else:
        (tmp_path / "credentials").unlink()
    assert QuickHead.configure(DataConfig()) is None


def test_an_answer_that_is_not_a_plain_200_is_botocores_to_explain(aws: S3Server) -> None:
    uri, first, _ = versions(aws)
    quick = QuickHead.configure(DataConfig())
    assert quick is not None
    assert quick.head(uri.bucket, "no/such/key", None) is None
    assert quick.head(uri.bucket, uri.key, "no-such-version") is None
    wrong = QuickHead(quick.keys._replace(secret_key="wrong"), quick.region, quick.endpoint)
    assert wrong.head(uri.bucket, uri.key, first) is None
    unreachable = QuickHead(quick.keys, quick.region, "http://127.0.0.1:9")
    assert unreachable.head(uri.bucket, uri.key, None) is None


def test_reputting_an_unchanged_directory_imports_no_botocore(aws: S3Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a")
    (data / "sub" / "b.txt").write_text("b")
    uri = f"s3://{aws.new_bucket()}/data"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    put = [sys.executable, "-c", "import sys; from nixrepro.cli import main; main(sys.argv[1:]); "
           "print('botocore' in sys.modules)", "data", "put", str(data), uri]
    assert subprocess.run(put, env=env, capture_output=True, text=True, check=False).returncode == 0
    again = subprocess.run(put, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert "(unchanged)" in again.stdout and again.stdout.strip().endswith("False")
