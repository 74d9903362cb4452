"""Versioned data on both backends: a real SeaweedFS S3 server and file://, with the same semantics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nixrepro.config import DataConfig
from nixrepro.datastore import DataIntegrityError, DataStoreError, DataURI, NoSuchObject
from nixrepro.datastore import cache as datacache
from nixrepro.datastore.file import FileStore
from nixrepro.datastore.ops import Data
from nixrepro.errors import UsageError
from tests.s3server import S3Server


@pytest.fixture(params=["file", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh place to store data: a directory, or a versioned bucket on the real S3 server."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    server: S3Server = request.getfixturevalue("s3_server")
    return f"s3://{server.new_bucket()}"


@pytest.fixture
def data(tmp_path: Path, s3_env: None) -> Data:
    return Data(DataConfig(cache_dir=str(tmp_path / "cache")))


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS variables pointing at the test server (as a user would set them)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_every_put_is_a_new_version_and_old_ones_stay_readable(data: Data, base: str, tmp_path: Path) -> None:
    uri = f"{base}/sets/train.csv"
    local = write(tmp_path / "train.csv", "a,b\n1,2\n")
    first = data.put(local, uri)
    write(local, "a,b\n1,2\n3,4\n")
    second = data.put(local, uri)
    assert first.version.version_id != second.version.version_id
    assert (first.uploaded, second.uploaded) == (1, 1)

    old, _ = data.get(f"{uri}@{first.version.version_id}", tmp_path / "old.csv")
    assert (tmp_path / "old.csv").read_text() == "a,b\n1,2\n"
    assert old.sha256 == datacache.sha256_file(tmp_path / "old.csv")
    latest, _ = data.get(uri, tmp_path / "new.csv")
    assert latest.version_id == second.version.version_id
    assert (tmp_path / "new.csv").read_text() == "a,b\n1,2\n3,4\n"
    listed = data.store(DataURI.parse(uri)).versions(DataURI.parse(uri))
    assert [v.version_id for v in listed] == [second.version.version_id, first.version.version_id]
    assert [v.latest for v in listed] == [True, False]


def test_putting_unchanged_data_makes_no_new_version(data: Data, base: str, tmp_path: Path) -> None:
    local = write(tmp_path / "x.bin", "same bytes")
    first = data.put(local, f"{base}/x.bin")
    again = data.put(local, f"{base}/x.bin")
    assert again.unchanged and again.uploaded == 0
    assert again.version == first.version


def test_a_directory_is_pinned_by_its_manifest_version(data: Data, base: str, tmp_path: Path) -> None:
    src = tmp_path / "images"
    for i in range(5):
        write(src / f"class{i % 2}" / f"img{i}.txt", f"pixels {i}")
    uri = f"{base}/images"
    first = data.put(src, uri)
    assert first.uploaded == 5 and first.version.size == sum(len(f"pixels {i}") for i in range(5))

    write(src / "class0" / "img0.txt", "retouched")
    (src / "class1" / "img1.txt").unlink()
    second = data.put(src, uri)
    assert second.uploaded == 1  # only the changed file; the others keep their versions

    data.get(f"{uri}@{first.version.version_id}", tmp_path / "v1")
    data.get(uri, tmp_path / "v2")
    files = lambda root: {p.relative_to(root).as_posix(): p.read_text()  # noqa: E731
                          for p in root.rglob("*") if p.is_file()}
    assert files(tmp_path / "v1") == {f"class{i % 2}/img{i}.txt": f"pixels {i}" for i in range(5)}
    expected = {f"class{i % 2}/img{i}.txt": f"pixels {i}" for i in (2, 3, 4)}
    expected["class0/img0.txt"] = "retouched"
    assert files(tmp_path / "v2") == expected


def test_a_fetched_version_is_read_only_and_never_downloaded_twice(
    data: Data, base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"{base}/model.pt"
    put = data.put(write(tmp_path / "m", "weights"), uri)
    downloads: list[str] = []
    # The spy is on the backend's class, so that it also sees the downloads of the second Data
    # below (a fresh store instance, as another process would have).
    backend = type(data.store(DataURI.parse(uri)))
    real = backend.download

    def spy(self: object, *args: object, **kwargs: object) -> None:
        downloads.append(str(args[0]))
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "download", spy)
    first = data.fetch(uri, put.version.version_id)
    assert downloads == [uri]  # the spy sees real downloads
    again = Data(data.settings).fetch(uri, put.version.version_id)  # another process, same cache
    assert again.path == first.path and first.path.read_text() == "weights"
    assert not os.access(first.path, os.W_OK) or os.geteuid() == 0
    assert first.path.stat().st_mode & 0o222 == 0
    assert downloads == [uri]


def test_re_putting_an_unchanged_directory_reads_no_file(
    data: Data, base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "many"
    for i in range(300):
        write(src / f"d{i % 7}" / f"f{i}.txt", str(i))
    data.put(src, f"{base}/many")
    hashed: list[Path] = []
    real = datacache.sha256_file
    monkeypatch.setattr(datacache, "sha256_file", lambda p: hashed.append(p) or real(p))
    again = data.put(src, f"{base}/many")
    assert again.unchanged and again.uploaded == 0 and hashed == []
    write(src / "d0" / "f0.txt", "edited")
    changed = data.put(src, f"{base}/many")
    user_files = [p for p in hashed if tmp_path / "cache" not in p.parents]  # not the new manifest
    assert user_files == [src / "d0" / "f0.txt"] and changed.uploaded == 1


def test_a_corrupt_download_is_refused_never_handed_over(data: Data, tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store' / 'data.bin'}"
    put = data.put(write(tmp_path / "data.bin", "good bytes"), uri)
    stored = FileStore()._dir(DataURI.parse(uri)) / put.version.version_id
    os.chmod(stored, 0o644)
    stored.write_text("evil bytes")
    with pytest.raises(DataIntegrityError) as caught:
        data.fetch(uri, put.version.version_id)
    assert str(caught.value).startswith(f"{uri}@{put.version.version_id} arrived corrupt 3 times")
    assert not data.cache.has(str(put.version.sha256))
    with pytest.raises(DataIntegrityError):
        data.verify(f"{uri}@{put.version.version_id}")


def test_cache_verify_removes_a_corrupted_object(data: Data, tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store' / 'a'}"
    put = data.put(write(tmp_path / "a", "content"), uri)
    path = data.fetch(uri, put.version.version_id).path
    os.chmod(path, 0o644)
    path.write_text("bit rot")
    result = data.cache.verify()
    assert result.corrupt == [put.version.sha256]
    assert data.fetch(uri, put.version.version_id).path.read_text() == "content"  # fetched again


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://bucket/a/../b", "s3://bucket/a/../b: '..' and '.' are not allowed in a data key; name the "
                           "object directly."),
    ("s3://bucket//etc/passwd", "s3://bucket//etc/passwd: the key is an absolute path; write "
                                "s3://bucket/etc/passwd."),
    ("file://data/x", "file://data/x: a file URI needs an absolute path, as in file:///data/train.csv."),
    ("s3://No_Such/x", "s3://No_Such/x: 'No_Such' is not a valid S3 bucket name; use s3://bucket/key."),
    ("http://example.org/x", "'http://example.org/x' is not a data URI; use s3://bucket/key or "
                             "file:///dir/name."),
])
def test_bad_uris_are_refused_with_the_remedy(uri: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        DataURI.parse(uri)
    assert str(caught.value) == message


def test_missing_key_and_version_are_clear_errors(data: Data, base: str, tmp_path: Path) -> None:
    with pytest.raises(NoSuchObject) as caught:
        data.get(f"{base}/nothing-here", tmp_path / "x")
    assert str(caught.value) == (f"there is no object at {base}/nothing-here; `nixrepro data ls` lists "
                                 "what is there.")
    data.put(write(tmp_path / "f", "x"), f"{base}/f")
    with pytest.raises(DataStoreError) as caught:
        data.get(f"{base}/f@0000000000000000abcdef", tmp_path / "y")
    assert str(caught.value) == (f"{base}/f has no version 0000000000000000abcdef; "
                                 f"`nixrepro data versions {base}/f` lists them.")


def test_s3_missing_and_unversioned_buckets(data: Data, s3_server: S3Server, tmp_path: Path) -> None:
    local = write(tmp_path / "f", "x")
    with pytest.raises(DataStoreError) as caught:
        data.put(local, "s3://no-such-bucket-here/f")
    assert str(caught.value) == ("bucket no-such-bucket-here does not exist; create it (with versioning) "
                                 "or fix the URI.")
    plain = s3_server.new_bucket(versioned=False)
    with pytest.raises(DataStoreError) as caught:
        data.put(local, f"s3://{plain}/f")
    assert str(caught.value) == (
        f"bucket {plain} has no object versioning, so old versions would be lost; enable it with "
        f"`aws s3api put-bucket-versioning --bucket {plain} --versioning-configuration Status=Enabled "
        f"--endpoint-url {s3_server.endpoint_url}`.")


def test_wrong_credentials_are_named_without_revealing_them(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-but-secret-looking-0001")
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    with pytest.raises(DataStoreError) as caught:
        data.put(write(tmp_path / "f", "x"), f"s3://{bucket}/f")
    message = str(caught.value)
    assert message.startswith(f"S3 refused the credentials for bucket {bucket} (")
    assert message.endswith("); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE.")
    assert "not-the-secret" not in message and s3_server.access_key not in message


def test_several_processes_share_one_cache(data: Data, base: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    uri = f"{base}/shared.bin"
    put = data.put(write(tmp_path / "shared.bin", "x" * 100_000), uri)
    script = ("import sys; from pathlib import Path; from nixrepro.config import DataConfig; "
              "from nixrepro.datastore.ops import Data; "
              "d = Data(DataConfig(cache_dir=sys.argv[1])); print(d.fetch(sys.argv[2], sys.argv[3]).path)")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache"), uri,
                               put.version.version_id], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    paths = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert [p.returncode for p in procs] == [0] * 6
    (path,) = paths
    assert Path(path).read_text() == "x" * 100_000


def test_a_large_file_goes_up_in_parts_and_down_in_ranges_with_its_version(
    data: Data, s3_server: S3Server, tmp_path: Path
) -> None:
    uri = f"s3://{s3_server.new_bucket()}/big.bin"
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(40 * 2**20))  # above the multipart threshold, five ranges down
    first = data.put(local, uri).version
    local.write_bytes(os.urandom(40 * 2**20))
    second = data.put(local, uri).version
    assert first.version_id != second.version_id
    data.get(f"{uri}@{first.version_id}", tmp_path / "first.bin")
    assert datacache.sha256_file(tmp_path / "first.bin") == first.sha256
    listed = data.store(DataURI.parse(uri)).versions(DataURI.parse(uri))
    assert [v.version_id for v in listed] == [second.version_id, first.version_id]
