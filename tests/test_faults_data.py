"""The data side under real faults: the pending queue survives prune, kill -9, concurrent syncs and
broken items; bytes are checked where they are served; S3 dying mid-get, a full cache disk and bad
URIs are one sentence, never a traceback.

Everything is real: the file store, a SeaweedFS server (killed for real), a TCP link that breaks
mid-body, a 1 MiB tmpfs, other processes. Each test is named after the promise it checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixrepro.config import DataConfig
from nixrepro.datastore import (
    VERSIONS_DIR,
    DataIntegrityError,
    DataStoreError,
    DataURI,
)
from nixrepro.datastore.cache import DataCache, sha256_file
from nixrepro.datastore.file import FileStore
from nixrepro.datastore.ops import Data
from tests.helpers import GIT_ID, run_cli
from tests.s3server import S3Server


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project directory (git, a nixrepro.toml pointing the data cache at tmp) for the CLI."""
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env={**os.environ, **GIT_ID})
    (root / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{tmp_path / "cache"}"\n')
    return root


@pytest.fixture
def data(tmp_path: Path) -> Data:
    return Data(DataConfig(cache_dir=str(tmp_path / "cache")))


def cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), cwd=repo, env={**os.environ, **(env or {})})


def one_sentence(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The CLI failed with ``code`` and one 'Error: ...' line, no traceback; returns the line."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.stderr
    return last


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_dir(root: Path, count: int, size: int = 64) -> dict[str, bytes]:
    files = {f"d{i % 4}/f{i:04}.bin": (f"{i:08}".encode() * (size // 8 + 1))[:size] for i in range(count)}
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return files


def file_versions(store_dir: Path) -> dict[str, int]:
    """Every object of a file:// store below ``store_dir`` -> how many versions it has."""
    counts: dict[str, int] = {}
    for meta in store_dir.rglob(f"{VERSIONS_DIR}/*/*.json"):
        if not meta.name.startswith("."):
            key = str(meta.parent.parent.parent / meta.parent.name)
            counts[key] = counts.get(key, 0) + 1
    return counts


def corrupt(path: Path) -> None:
    """Same size, other bytes: only a re-hash can tell."""
    os.chmod(path, 0o644)
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])


# --- the pending queue ------------------------------------------------------------------------


def test_prune_never_deletes_a_file_a_pending_directory_needs(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = make_dir(out, 6)
    uri = f"file://{tmp_path / 'store' / 'out'}"
    data.keep_pending(out, uri, None)
    for rel in files:  # the run's directory is gone: the cache holds the only copy
        (out / rel).unlink()
    data.put(_write(tmp_path / "other", b"not pending"), f"file://{tmp_path / 'store' / 'other'}")
    data.fetch(f"file://{tmp_path / 'store' / 'other'}")
    removed, _ = data.cache.prune()
    assert removed == 1  # only the object no pending item needs
    report = data.sync_pending()
    assert report.failed == [] and len(report.done) == 1
    data.get(uri, tmp_path / "back")
    assert tree_of(tmp_path / "back") == files


def test_prune_waits_for_an_output_being_kept(data: Data, tmp_path: Path) -> None:
    """An object added for a pending item whose row is not written yet is never pruned: prune
    (another process) waits for the lock that keep_pending holds."""
    script = ("import sys; from nixrepro.config import DataConfig; from nixrepro.datastore.ops import Data; "
              "print(Data(DataConfig(cache_dir=sys.argv[1])).cache.prune())")
    with data.cache.keeping():
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache")],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert proc.poll() is None, "prune ran while an output was being kept"
    assert proc.communicate(timeout=30)[0].strip() == "(0, 0)"


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_one_broken_pending_item_never_blocks_the_others(repo: Path, tmp_path: Path) -> None:
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    store = tmp_path / "store"
    broken = data.keep_pending(_write(tmp_path / "a", b"lost bytes"), f"file://{store}/a", None)
    data.keep_pending(_write(tmp_path / "b", b"kept bytes"), f"file://{store}/b", None)
    missing = data.keep_pending(_write(tmp_path / "c", b"corrupt bytes"), f"file://{store}/c", None)
    (tmp_path / "cache" / "objects" / str(broken.sha256)[:2] / str(broken.sha256)).unlink()
    corrupt(data.cache.object_path(str(missing.sha256)))

    synced = cli(repo, "sync")
    last = one_sentence(synced, 1)
    assert last.startswith("Error: 2 pending item(s) could not be uploaded")
    assert "`nixrepro sync --discard ID`" in last
    assert f"not uploaded: #1 file://{store}/a: the kept bytes are missing from the data cache" \
        in synced.stderr
    assert f"not uploaded: #3 file://{store}/c: the kept bytes in the data cache no longer hash to" \
        in synced.stderr
    assert f"#2 file://{store}/b@" in synced.stdout
    assert (tmp_path / "got-b").exists() is False
    assert cli(repo, "data", "get", f"file://{store}/b", str(tmp_path / "got-b")).returncode == 0
    assert (tmp_path / "got-b").read_bytes() == b"kept bytes"
    assert not (store / VERSIONS_DIR / "c").exists()  # corrupt kept bytes are never uploaded
    assert [p.id for p in data.cache.pending()] == [1, 3]  # reported, still queued


def test_a_pending_item_leaves_the_queue_unuploaded_only_by_an_explicit_discard(
    repo: Path, tmp_path: Path
) -> None:
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    item = data.keep_pending(_write(tmp_path / "a", b"x"), f"file://{tmp_path}/store/a", None)
    (tmp_path / "cache" / "objects" / str(item.sha256)[:2] / str(item.sha256)).unlink()
    assert cli(repo, "sync").returncode == 1
    assert cli(repo, "sync").returncode == 1  # a failed sync drops nothing
    dry = cli(repo, "sync", "--dry-run")
    assert f"  #1 file://{tmp_path}/store/a (1 bytes)" in dry.stdout
    wrong = cli(repo, "sync", "--discard", "7")
    assert one_sentence(wrong, 2) == ("Error: no pending item is '7'; `nixrepro sync --dry-run` lists "
                                      "them by id.")
    gone = cli(repo, "sync", "--discard", "#1")
    assert gone.returncode == 0 and gone.stdout == f"discarded #1 file://{tmp_path}/store/a\n"
    assert cli(repo, "sync").stdout.startswith("data: nothing to upload\n")


def test_an_item_another_sync_holds_is_uploaded_by_that_one_only(data: Data, tmp_path: Path) -> None:
    store = tmp_path / "store"
    data.keep_pending(_write(tmp_path / "a", b"first"), f"file://{store}/a", None)
    data.keep_pending(_write(tmp_path / "b", b"second"), f"file://{store}/b", None)
    other = DataCache(tmp_path / "cache")  # as another process would hold it
    with other.item_lock(1) as held:
        assert held
        report = data.sync_pending()
    assert [line.split("@")[0] for line in report.done] == [f"#2 file://{store}/b"]
    assert file_versions(store) == {f"{store}/b": 1}
    assert [line.split("@")[0] for line in data.sync_pending().done] == [f"#1 file://{store}/a"]
    assert file_versions(store) == {f"{store}/a": 1, f"{store}/b": 1}


def test_concurrent_syncs_upload_each_item_once(repo: Path, tmp_path: Path) -> None:
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    store = tmp_path / "store"
    for i in range(12):
        out = tmp_path / f"out{i}"
        make_dir(out, 30)
        data.keep_pending(out, f"file://{store}/out{i}", None)
    argv = [sys.executable, "-m", "nixrepro", "sync"]
    procs = [subprocess.Popen(argv, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [proc.communicate(timeout=120) for proc in procs]
    counts = file_versions(store)
    assert len(counts) == 12 * 31 and set(counts.values()) == {1}  # 30 files + a manifest each
    assert [p.returncode for p in procs] == [0] * 4, results
    reported = [line for out, _ in results for line in out.splitlines() if line.startswith("  #")]
    assert len(reported) == 12  # each item reported by exactly one sync
    assert data.cache.pending() == []


def test_a_sync_killed_mid_upload_makes_no_second_version(repo: Path, tmp_path: Path) -> None:
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    store = tmp_path / "store"
    files = make_dir(tmp_path / "out", 800)
    data.keep_pending(tmp_path / "out", f"file://{store}/out", None)
    proc = subprocess.Popen([sys.executable, "-m", "nixrepro", "sync"], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(file_versions(store)) < 100 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # kill -9, half-way through the directory's files
    proc.communicate(timeout=30)
    half = len(file_versions(store))
    assert 0 < half < 801, "the sync was not killed mid-upload"
    assert len(data.cache.pending()) == 1  # the item is still queued

    again = cli(repo, "sync")
    assert again.returncode == 0, again.stderr
    counts = file_versions(store)
    assert len(counts) == 801 and set(counts.values()) == {1}
    data.get(f"file://{store}/out", tmp_path / "back")
    assert tree_of(tmp_path / "back") == files


def test_a_pending_output_whose_run_record_cannot_be_read_makes_no_duplicate_version(
    repo: Path, tmp_path: Path
) -> None:
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    run_dir = repo / ".nixrepro" / "runs" / "20250101-000000-abcdef"
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text('{"id": "20250101-000000-abc')  # torn
    store = tmp_path / "store"
    data.keep_pending(_write(tmp_path / "model.pt", b"weights"), f"file://{store}/model.pt", run_dir)
    for _ in range(2):
        synced = cli(repo, "sync")
        assert file_versions(store) == {f"{store}/model.pt": 1}
        one_sentence(synced, 1)
        assert f"the record of run {run_dir.name} cannot be updated" in synced.stderr
        assert "nothing is uploaded twice" in synced.stderr
    assert len(data.cache.pending()) == 1
    lines = [json.loads(line) for line in (run_dir / "data.jsonl").read_text().splitlines()]
    assert {line["version_id"] for line in lines} == {next(iter(file_versions_ids(store)))}


def file_versions_ids(store: Path) -> set[str]:
    return {m.name[:-5] for m in store.rglob(f"{VERSIONS_DIR}/*/*.json") if not m.name.startswith(".")}


# --- bytes checked where they are served ----------------------------------------------------------


def test_a_corrupt_cache_object_is_evicted_and_fetched_again_never_served(
    data: Data, repo: Path, tmp_path: Path
) -> None:
    uri = f"file://{tmp_path / 'store' / 'train.csv'}"
    put = data.put(_write(tmp_path / "train.csv", b"a,b\n1,2\n"), uri).version
    served = data.fetch(uri, put.version_id).path
    corrupt(served)
    assert data.fetch(uri, put.version_id).path.read_bytes() == b"a,b\n1,2\n"  # nixrepro.data.input, --input
    corrupt(data.cache.object_path(str(put.sha256)))
    got = cli(repo, "data", "get", f"{uri}@{put.version_id}", str(tmp_path / "copy.csv"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "copy.csv").read_bytes() == b"a,b\n1,2\n"
    assert sha256_file(data.cache.object_path(str(put.sha256))) == put.sha256


def test_a_changed_file_of_a_fetched_directory_tree_is_never_served(data: Data, tmp_path: Path) -> None:
    files = make_dir(tmp_path / "images", 5)
    uri = f"file://{tmp_path / 'store' / 'images'}"
    version = data.put(tmp_path / "images", uri).version
    tree = data.fetch(uri, version.version_id).path
    corrupt(tree / "d1" / "f0001.bin")  # a link: the cached object changes with it
    (tree / "d0" / "planted.bin").write_bytes(b"not in the manifest")
    (tree / "d2" / "f0002.bin").unlink()
    again = data.fetch(uri, version.version_id).path
    assert tree_of(again) == files


def test_verify_contents_rehashes_every_file_of_a_directory(data: Data, tmp_path: Path) -> None:
    make_dir(tmp_path / "images", 5)
    uri = f"file://{tmp_path / 'store' / 'images'}"
    version = data.put(tmp_path / "images", uri).version
    data.verify(f"{uri}@{version.version_id}")  # intact: passes
    child = DataURI.parse(f"{uri}/d3/f0003.bin")
    (stored,) = [p for p in FileStore()._dir(child).iterdir() if not p.name.endswith(".json")]
    corrupt(stored)  # the manifest is untouched; one file's bytes are not
    with pytest.raises(DataIntegrityError) as caught:
        data.verify(f"{uri}@{version.version_id}")
    assert str(caught.value).startswith(f"{uri}@{version.version_id}: 1 of its 5 files do not match the "
                                        "manifest (d3/f0003.bin: its bytes hash to ")
    # `nixrepro verify RUN --contents` on a run that wrote this directory (its data check reads
    # only the record's data section)
    from types import SimpleNamespace

    from nixrepro.record import DataRecord
    from nixrepro.verify import check_data

    record = SimpleNamespace(data=DataRecord(outputs=[version]))
    check = check_data(record, data.settings, contents=True)  # type: ignore[arg-type]
    assert check.result == "fail" and "d3/f0003.bin: its bytes hash to" in check.detail
    assert check_data(record, data.settings, contents=False).result == "pass"  # type: ignore[arg-type]


# --- S3 dying in the middle of a get --------------------------------------------------------------


class BreakingLink:
    """A TCP relay to S3 that serves responses at ``rate`` bytes/s and, while ``cut_after`` is set,
    closes a connection after that many response bytes (then clears it: the next one passes)."""

    def __init__(self, upstream: int, rate: float = 64e6, cut_after: int | None = None) -> None:
        self.upstream, self.rate, self.cut_after = upstream, rate, cut_after
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()  # the server is dead: refused, as it would be without the relay
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, response: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
                sent += len(chunk)
                if response and self.cut_after is not None and sent >= self.cut_after:
                    self.cut_after, self.cuts = None, self.cuts + 1
                    break
                if response:
                    time.sleep(len(chunk) / self.rate)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A SeaweedFS of this test alone: it gets killed."""
    (tmp_path / "s3").mkdir()
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


def _s3_env(server: S3Server, port: int) -> dict[str, str]:
    return {**server.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}


def test_s3_cutting_a_get_short_is_retried(
    own_s3: S3Server, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = own_s3.new_bucket()
    content = os.urandom(6 * 2**20)  # one GET
    own_s3.client().put_object(Bucket=bucket, Key="big.bin", Body=content)
    link = BreakingLink(own_s3.ports["s3.port"], cut_after=2**20)
    try:
        got = cli(repo, "data", "get", f"s3://{bucket}/big.bin", str(tmp_path / "big.bin"),
                  env=_s3_env(own_s3, link.port))
        assert got.returncode == 0, got.stderr
        assert link.cuts == 1 and (tmp_path / "big.bin").read_bytes() == content
    finally:
        link.close()


def test_s3_dying_in_the_middle_of_a_get_is_a_clean_error(
    own_s3: S3Server, repo: Path, tmp_path: Path
) -> None:
    bucket = own_s3.new_bucket()
    for key, size in (("small.bin", 6 * 2**20), ("big.bin", 24 * 2**20)):  # one GET; ranged GETs
        own_s3.client().put_object(Bucket=bucket, Key=key, Body=os.urandom(size))
    link = BreakingLink(own_s3.ports["s3.port"], rate=4e6)  # a slow link: the get takes seconds
    try:
        env = _s3_env(own_s3, link.port)
        gets = [subprocess.Popen([sys.executable, "-m", "nixrepro", "data", "get", f"s3://{bucket}/{key}",
                                  str(tmp_path / key)], cwd=repo, env={**os.environ, **env},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for key in ("small.bin", "big.bin")]
        cache = tmp_path / "cache" / "objects"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                p.stat().st_size > 2**20 for p in cache.rglob(".*.tmp")):
            time.sleep(0.02)
        own_s3.stop()  # SIGKILL, mid-body
        for proc in gets:
            out, err = proc.communicate(timeout=120)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            assert one_sentence(result, 1).startswith(f"Error: cannot reach S3 at http://127.0.0.1:"
                                                      f"{link.port} for s3://{bucket}/")
        assert not list(cache.rglob("*.tmp")) and not list(cache.rglob("??/[0-9a-f]*"))  # nothing half
    finally:
        link.close()


# --- a full cache disk --------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "the full-disk cases need root and mount permission")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_cache_disk_is_one_sentence_and_leaves_nothing_half_written(
    tiny_disk: Path, repo: Path, tmp_path: Path
) -> None:
    (repo / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{tiny_disk / "cache"}"\n')
    uri = f"file://{tmp_path / 'store' / 'big.bin'}"
    big = _write(tmp_path / "big.bin", os.urandom(2 * 2**20))
    Data(DataConfig(cache_dir=str(tmp_path / "other-cache"))).put(big, uri)
    got = cli(repo, "data", "get", uri, str(tmp_path / "copy.bin"))
    assert "No space left on device" in one_sentence(got, 1)
    assert not [p for p in (tiny_disk / "cache" / "objects").rglob("*") if p.is_file()]
    data = Data(DataConfig(cache_dir=str(tiny_disk / "cache")))
    with pytest.raises(DataStoreError) as caught:
        data.keep_pending(big, f"file://{tmp_path / 'store' / 'out.bin'}", None)
    assert "(No space left on device); free space there" in str(caught.value)
    assert data.cache.pending() == []


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "code", "message"), [
    (("data", "get", "file:///"), 2, "Error: file:/// is the file system root, not a store; name a "
                                     "directory, as in file:///data/train.csv."),
    (("data", "put", "nixrepro.toml", "file:///"), 2, "Error: file:/// is the file system root, not a "
                                                      "store; name a directory, as in file:///data/train.csv."),
    (("data", "ls", "file://///"), 2, "Error: file:///// is the file system root, not a store"),
    (("data", "put", "nixrepro.toml", "file://{tmp}/.nixrepro-versions/x"), 2,
     "Error: file://{tmp}/.nixrepro-versions/x: .nixrepro-versions is where nixrepro keeps versions, "
     "not a key; name the object itself."),
    (("data", "get", "s3://some-bucket"), 2, "Error: s3://some-bucket/ names a bucket, not an object; "
                                             "add the key, as in s3://some-bucket/train.csv."),
    (("data", "verify", "file:///"), 2, "Error: file:/// is the file system root, not a store; name a "
                                        "directory, as in file:///data/train.csv."),
])
def test_bad_data_uris_are_one_sentence(
    repo: Path, tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    result = cli(repo, *(arg.replace("{tmp}", str(tmp_path)) for arg in args))
    assert one_sentence(result, code).startswith(message.replace("{tmp}", str(tmp_path)))
    assert not Path("/.nixrepro-versions").exists()


def test_a_key_with_an_at_sign_can_be_got_back(data: Data, repo: Path, tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store' / 'user@host' / 'a@b'}"
    put = cli(repo, "data", "put", str(_write(tmp_path / "f", b"at")), uri)
    assert put.returncode == 0, put.stderr
    version = put.stdout.split()[0].rpartition("@")[2]
    for ref in (uri, f"{uri}@", f"{uri}@{version}"):
        dest = tmp_path / f"got{len(ref)}"
        got = cli(repo, "data", "get", ref, str(dest))
        assert got.returncode == 0, (ref, got.stderr)
        assert dest.read_bytes() == b"at"
    assert data.fetch(uri).path.read_bytes() == b"at"  # nixrepro.data.input
    head, _, tail = uri.rpartition("@")
    assert data.fetch(head, tail).path.read_bytes() == b"at"  # `run --input URI` splits it so
    assert data.fetch(uri, version).version.version_id == version


def test_truncated_version_metadata_is_one_sentence(data: Data, repo: Path, tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store' / 'x.csv'}"
    version = data.put(_write(tmp_path / "x.csv", b"1,2\n"), uri).version
    meta = tmp_path / "store" / VERSIONS_DIR / "x.csv" / f"{version.version_id}.json"
    meta.write_text(meta.read_text()[:9])
    for args in (("data", "versions", uri), ("data", "get", uri, str(tmp_path / "y")),
                 ("data", "ls", f"file://{tmp_path / 'store'}")):
        line = one_sentence(cli(repo, *args), 1)
        assert line == (f"Error: the metadata of {uri}@{version.version_id} ({meta}) is damaged "
                        "(JSONDecodeError); restore it from a backup, or delete it and the version file "
                        "next to it to drop that version.")


def test_the_pending_queue_of_an_older_cache_is_read(tmp_path: Path) -> None:
    """A cache index written before upload progress was kept still opens, and its queue syncs."""
    cache = tmp_path / "cache"
    cache.mkdir()
    db = sqlite3.connect(cache / "index.sqlite")
    db.execute("CREATE TABLE pending (id INTEGER PRIMARY KEY AUTOINCREMENT, uri TEXT NOT NULL, "
               "sha256 TEXT NOT NULL, size INTEGER NOT NULL, kind TEXT NOT NULL, run_dir TEXT, "
               "created REAL NOT NULL)")
    db.commit()
    db.close()
    data = Data(DataConfig(cache_dir=str(cache)))
    data.keep_pending(_write(tmp_path / "a", b"old"), f"file://{tmp_path}/store/a", None)
    assert len(data.sync_pending().done) == 1


def test_a_password_in_the_endpoint_url_never_reaches_an_error_message(repo: Path, tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on: the endpoint is unreachable
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {"AWS_ENDPOINT_URL": f"http://admin:hunter2-endpoint-pw@127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_MAX_ATTEMPTS": "1"}
    got = cli(repo, "data", "get", "s3://bucket/key", str(tmp_path / "x"), env=env)
    line = one_sentence(got, 1)
    assert "hunter2-endpoint-pw" not in got.stderr + got.stdout
    assert line.startswith(f"Error: cannot reach S3 at http://<redacted>@127.0.0.1:{port} for s3://bucket/key")
