"""The remote run store against a hostile reviewer: processes killed at awkward moments, a full
disk, a server killed mid-pull, hostile objects in the remote, credentials in URLs. Each test is
named after the promise it guards (docs/teams.md)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixrepro.record import record_sha256, summary_sha256
from nixrepro.remote import store as layout
from nixrepro.remote.pending import queued, sync_step
from nixrepro.runstore import RunStore
from tests.helpers import cli_in_process, run_cli
from tests.s3server import S3Server
from tests.test_remote import clone, object_keys, project_repo, remote_of, stored_runs
from tests.test_remote_faults import SlowLink, _serves, _wait_for, files_of, one_error


@pytest.fixture
def team(tmp_path: Path) -> tuple[Path, str]:
    """(the origin repository, its file:// remote): every clone of it shares the remote."""
    (tmp_path / "remote").mkdir()
    url = f"file://{tmp_path / 'remote'}"
    return project_repo(tmp_path / "origin", url), url


def _pushed(origin: Path, tmp_path: Path, count: int = 1, log_bytes: int = 64) -> tuple[RunStore, list[str]]:
    """Machine A with ``count`` runs, pushed."""
    store, ids = stored_runs(clone(origin, tmp_path / "a"), count, log_bytes=log_bytes)
    done, failed = sync_step(store.root, dry_run=False)
    assert failed == [] and len(done) == count
    return store, ids


def _replace(url: str, key: str, data: bytes) -> None:
    """What a writer of the shared directory can do that nixrepro never does: replace an object."""
    path = Path(url.removeprefix("file://")) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.chmod(0o644)
        path.unlink()
    path.write_bytes(data)


def _rehashed(doc: dict[str, object]) -> bytes:
    doc = dict(doc)
    doc["summary_sha256"] = summary_sha256(doc)
    doc["record_sha256"] = record_sha256(doc)
    return json.dumps(doc).encode()


def _nothing_local(repo: Path) -> bool:
    runs = repo / ".nixrepro" / "runs"
    return not runs.exists() or os.listdir(runs) == []


# Runs `nixrepro ARGS` with a hook that SIGKILLs the process at one chosen moment.
KILLED_AT = """
import os, signal, sys
from pathlib import Path
import nixrepro.remote.file as file_backend
import nixrepro.remote.store as layout
moment, argv = sys.argv[1], sys.argv[2:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if moment == "rename into runs":  # every file of the pulled run written, the run not yet in place
    real_rename = os.rename
    def rename(src, dst, *args, **kwargs):
        if Path(dst).parent.name == "runs":
            die()
        return real_rename(src, dst, *args, **kwargs)
    os.rename = rename
elif moment == "before the record":  # the run's logs and metrics pushed, its record not
    real_put = file_backend.FileObjects.put_if_absent
    def put(self, key, data, sha256):
        if key.endswith("/record.json"):
            die()
        return real_put(self, key, data, sha256)
    file_backend.FileObjects.put_if_absent = put
elif moment == "compaction's first delete":  # the pages written, nothing folded deleted yet
    from nixrepro.remote import index
    index.COMPACT_AT = 2
    file_backend.FileObjects.delete = lambda self, key: die()
from nixrepro.cli import main
main(argv)
"""


def _killed(moment: str, args: list[str], cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-c", KILLED_AT, moment, *args], cwd=cwd, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == -signal.SIGKILL, (result.stdout, result.stderr)


# --- pulls killed, disks full, servers gone ---------------------------------------------------------


def test_a_pull_killed_midway_leaves_no_half_run_in_the_local_store(team: tuple[Path, str],
                                                                    tmp_path: Path) -> None:
    origin, _url = team
    _, (run_id,) = _pushed(origin, tmp_path)
    b = clone(origin, tmp_path / "b")
    _killed("rename into runs", ["pull", run_id], b)
    listed = cli_in_process(["runs", "--json"], b)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # no run, not even a copy
    assert _nothing_local(b)
    pulling = b / ".nixrepro" / "pulling"
    (left,) = os.listdir(pulling)  # what the killed pull had fetched: no finally ran
    in_progress = pulling / f"{run_id}-{left.split('-')[1]}-{os.getpid()}-0000"  # a live process's
    in_progress.mkdir()
    again = cli_in_process(["pull", run_id], b)
    assert again.returncode == 0, again.stderr
    assert [run["id"] for run in json.loads(cli_in_process(["runs", "--json"], b).stdout)] == [run_id]
    assert os.listdir(pulling) == [in_progress.name]  # the abandoned one removed, the live one kept


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only), unmounted after the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_pull_that_fills_the_local_disk_is_one_sentence_and_keeps_nothing_of_the_run(
        team: tuple[Path, str], tmp_path: Path, tiny_disk: Path) -> None:
    origin, _url = team
    _, (run_id,) = _pushed(origin, tmp_path, log_bytes=3 * 2**20)  # more than the disk holds
    b = clone(origin, tmp_path / "b")
    (b / ".nixrepro").symlink_to(tiny_disk)
    result = cli_in_process(["pull", run_id], b)
    assert one_error(result) == (
        f"Error: cannot write run {run_id} into {b / '.nixrepro' / 'runs'} (No space left on device); free "
        "space there (or fix its permissions) and pull it again: nothing of it was kept.")
    assert os.listdir(tiny_disk / "runs") == [] and os.listdir(tiny_disk / "pulling") == []


def test_a_push_to_a_full_file_remote_keeps_the_run_queued_and_lists_no_half_run(
        tmp_path: Path, tiny_disk: Path) -> None:
    url = f"file://{tiny_disk}"
    origin = project_repo(tmp_path / "origin", url)
    store, ids = stored_runs(clone(origin, tmp_path / "a"), 3, log_bytes=900 * 1024)  # 2 fit, not 3
    before = files_of(store)
    synced = cli_in_process(["sync"], store.root.parent)
    assert synced.returncode == 1 and "Traceback" not in synced.stderr
    left = queued(store)
    assert len(left) == 1
    assert (f"  not uploaded: run {left[0]}: the remote run store {url} is full: cannot write runs/{left[0]}/"
            ) in synced.stderr
    assert f"free space on {tiny_disk} (or raise the quota), then retry (`nixrepro sync` pushes what " \
           "waits)." in synced.stderr
    assert files_of(store) == before  # nothing local lost
    listed = {run["id"] for run in json.loads(cli_in_process(["runs", "--remote", "--json"], origin).stdout)}
    assert listed == set(ids) - set(left)  # the run cut short is not listed
    assert list(tiny_disk.rglob(".*")) == []  # no temporary file of the write cut short is left


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A SeaweedFS of this test alone: it gets killed."""
    (tmp_path / "s3").mkdir()
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


def test_seaweedfs_killed_mid_pull_is_one_sentence_and_writes_nothing_locally(
        own_s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = own_s3.new_bucket()
    url = f"s3://{bucket}/team"
    for name, value in own_s3.env().items():
        monkeypatch.setenv(name, value)
    origin = project_repo(tmp_path / "origin", url)
    store_a, (run_id,) = _pushed(origin, tmp_path, log_bytes=6 * 2**20)
    link = SlowLink(own_s3.ports["s3.port"], rate=2e6)  # the log takes 3 s to come
    try:
        b = clone(origin, tmp_path / "b")
        env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{link.port}"}
        pull = subprocess.Popen([sys.executable, "-m", "nixrepro", "pull", run_id], cwd=b, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pulling = b / ".nixrepro" / "pulling"
        deadline = time.monotonic() + 60
        while not (pulling.is_dir() and any(p.stat().st_size for p in pulling.rglob("*") if p.is_file())):
            assert time.monotonic() < deadline and pull.poll() is None, "the pull never started its files"
            time.sleep(0.01)
        own_s3.stop()  # SIGKILL, with the log half way
        _, err = pull.communicate(timeout=120)
    finally:
        link.close()
    assert pull.returncode == 1 and "Traceback" not in err, err
    assert f"Error: cannot reach S3 at http://127.0.0.1:{link.port} to read runs/{run_id}/" in err
    assert _nothing_local(b) and os.listdir(b / ".nixrepro" / "pulling") == []
    own_s3.start()
    _wait_for(lambda: _serves(own_s3, bucket))
    again = cli_in_process(["pull", run_id], b)  # the server back: the run comes whole, verified
    assert again.returncode == 0, again.stderr
    for name in ("record.json", "stdout.log", "stderr.log", "metrics.jsonl"):
        assert (b / ".nixrepro" / "runs" / run_id / name).read_bytes() == \
            (store_a.run_dir(run_id) / name).read_bytes()


# --- pushes killed at awkward moments ----------------------------------------------------------------


def test_a_push_killed_before_its_record_is_neither_listed_nor_pulled_until_sync_finishes_it(
        team: tuple[Path, str], tmp_path: Path) -> None:
    origin, url = team
    store, (run_id,) = stored_runs(clone(origin, tmp_path / "a"), 1)
    _killed("before the record", ["push", run_id], store.root.parent)
    assert f"runs/{run_id}/stdout.log" in object_keys(url)  # half of it is there
    b = clone(origin, tmp_path / "b")
    assert json.loads(cli_in_process(["runs", "--remote", "--json"], b).stdout) == []
    missing = cli_in_process(["pull", run_id], b)
    assert missing.returncode == 2 and missing.stderr.startswith(f"Error: no run of {url} matches ")
    assert _nothing_local(b)
    assert queued(store) == [run_id]  # still waiting
    assert cli_in_process(["sync"], store.root.parent).returncode == 0
    listed = json.loads(cli_in_process(["runs", "--remote", "--json"], b).stdout)
    assert [run["id"] for run in listed] == [run_id]
    assert cli_in_process(["pull", run_id], b).returncode == 0


def test_a_compaction_killed_before_it_deletes_lists_every_run_once_and_the_next_one_cleans_up(
        team: tuple[Path, str], tmp_path: Path) -> None:
    origin, url = team
    store, ids = stored_runs(clone(origin, tmp_path / "a"), 4)
    for run_id in ids[:3]:
        assert cli_in_process(["push", run_id], store.root.parent).returncode == 0  # 3 loose entries
    _killed("compaction's first delete", ["push", ids[3]], store.root.parent)
    keys = object_keys(url)
    assert any(k.startswith("pages/") for k in keys) and len([k for k in keys if k.startswith("index/")]) == 4
    listed = json.loads(cli_in_process(["runs", "--remote", "--json"], origin).stdout)
    assert sorted(run["id"] for run in listed) == sorted(ids)  # each once: the page and the entries agree
    remote_of(url).compact()
    assert not [k for k in object_keys(url) if k.startswith("index/")]
    assert sorted(r.id for r in remote_of(url).summaries()) == sorted(ids)


def test_a_marker_cut_short_by_a_killed_first_push_is_written_again_whole(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    url = f"s3://{bucket}/team"
    marker = b'{"conditional_writes": true, "format": "nixrepro-runstore", "version": 1}\n'
    # what SeaweedFS keeps of a PUT whose writer was killed before the body: nothing, with the
    # sha256 its writer meant
    s3_server.client().put_object(Bucket=bucket, Key=f"team/{layout.MARKER}", Body=b"",
                                  Metadata={"sha256": layout._sha(marker)})
    origin = project_repo(tmp_path / "origin", url)
    store, ids = stored_runs(clone(origin, tmp_path / "a"), 1)
    synced = cli_in_process(["sync"], store.root.parent)
    assert synced.returncode == 0, synced.stderr
    assert remote_of(url).objects.get(layout.MARKER) == marker
    assert [r.id for r in remote_of(url).summaries()] == ids
    # a marker of other bytes is never taken for a cut-short one
    s3_server.client().put_object(Bucket=bucket, Key=f"team/{layout.MARKER}", Body=b"{",
                                  Metadata={"sha256": "0" * 64})
    monkeypatch.setattr("nixrepro.remote.pending._opened", {})
    refused = cli_in_process(["runs", "--remote"], origin)
    assert one_error(refused).startswith(f"Error: {url}/{layout.MARKER} is not a nixrepro run store marker")


# --- hostile objects in the remote ---------------------------------------------------------------------


def test_a_remote_record_of_another_shape_is_refused_and_nothing_is_written_locally(
        team: tuple[Path, str], tmp_path: Path) -> None:
    """Its hashes recomputed and no signature: intact by its hashes, but no record nixrepro reads."""
    origin, url = team
    _, (run_id,) = _pushed(origin, tmp_path)
    doc = json.loads(remote_of(url).objects.get(f"runs/{run_id}/record.json"))
    _replace(url, f"runs/{run_id}/record.json", _rehashed({**doc, "params": 5}))
    b = clone(origin, tmp_path / "b")
    result = cli_in_process(["show", run_id], b)
    assert one_error(result) == (
        f"Error: run {run_id} in {url} fails verification (its record does not read: run record "
        f"'{run_id}' is malformed: params is an integer, it must be an object), so it is not pulled; nothing "
        "was written locally: ask whoever pushed it to check it with `nixrepro verify`, and the store's "
        "owner to look at who wrote it.")
    assert _nothing_local(b)
    assert cli_in_process(["runs"], b).returncode == 0  # the local store still lists


def test_a_signed_record_replayed_under_another_id_is_refused(tmp_path: Path) -> None:
    from tests.test_remote import signing_key

    (tmp_path / "remote").mkdir()
    url = f"file://{tmp_path / 'remote'}"
    key = tmp_path / "a.sec"
    public = signing_key(key, "machine-a-1")
    origin = project_repo(tmp_path / "origin", url, extra=f'[archive]\ntrusted_keys = ["{public}"]\n')
    a = clone(origin, tmp_path / "a")
    with open(a / "nixrepro.toml", "a") as config:
        config.write(f'key_file = "{key}"\n')
    store, (first, second) = _pushed_from(a, 2)
    objects = remote_of(url).objects
    # the first run's record and signature, whole and validly signed, under the second run's id;
    # then the second's record with the first's signature
    _replace(url, f"runs/{second}/record.json", objects.get(f"runs/{first}/record.json"))
    _replace(url, f"runs/{second}/record.sig", objects.get(f"runs/{first}/record.sig"))
    b = clone(origin, tmp_path / "b")
    assert one_error(cli_in_process(["pull", second], b)).startswith(
        f"Error: run {second} in {url} fails verification (its record is of run '{first}'), so it is not "
        "pulled")
    _replace(url, f"runs/{second}/record.json", (store.run_dir(second) / "record.json").read_bytes())
    assert "fails verification (the signature by machine-a-1 does not verify" in \
        one_error(cli_in_process(["pull", second], b))
    assert _nothing_local(b)


def _pushed_from(repo: Path, count: int) -> tuple[RunStore, list[str]]:
    store, ids = stored_runs(repo, count)
    assert sync_step(store.root, dry_run=False)[1] == []
    return store, ids


def test_a_listing_shows_no_run_whose_id_is_not_a_run_id_and_says_truly_why_an_entry_is_left_out(
        team: tuple[Path, str], tmp_path: Path) -> None:
    origin, url = team
    _, ids = _pushed(origin, tmp_path, 2)
    entry = json.loads(remote_of(url).objects.get(f"index/{ids[0]}.json"))
    hostile = [{**entry, "id": "../../x"}, {**entry, "id": "\x1b[2J\x1b[31mEVIL"}, {**entry, "id": 7},
               {**entry, "id": ids[0] + "ff"}]
    page = gzip.compress(json.dumps({"format": "nixrepro-runstore", "entries": hostile}).encode())
    _replace(url, f"pages/000004-{'0' * 32}.json.gz", page)
    _replace(url, f"index/{ids[1]}.json", json.dumps({**entry, "id": ids[1], "params": 5}).encode())
    result = cli_in_process(["runs", "--remote", "--json"], origin)
    assert result.returncode == 0, result.stderr
    assert [run["id"] for run in json.loads(result.stdout)] == [ids[0]]
    assert "\x1b" not in result.stdout + result.stderr
    assert result.stderr == (
        f"nixrepro: warning: run {ids[1]} of {url} is left out of the listing: its listing entry does not "
        f"read (run record '{ids[1]}' is malformed: params is an integer, it must be an object); `nixrepro "
        f"pull {ids[1]}` still fetches and verifies the run.\n")


def test_a_whole_run_id_is_pulled_even_where_the_remote_holds_ids_that_extend_it(
        team: tuple[Path, str], tmp_path: Path) -> None:
    origin, url = team
    _, (run_id,) = _pushed(origin, tmp_path)
    objects = remote_of(url).objects
    doc = json.loads(objects.get(f"runs/{run_id}/record.json"))
    for longer in (run_id + "0", run_id + "ab" * 4):  # a copy under ids that start with the real one
        _replace(url, f"runs/{longer}/record.json", _rehashed({**doc, "id": longer}))
    b = clone(origin, tmp_path / "b")
    pulled = cli_in_process(["pull", run_id], b)
    assert pulled.returncode == 0 and pulled.stdout == f"pulled run {run_id} from {url}\n", pulled.stderr
    assert cli_in_process(["show", run_id[:10]], b).returncode == 0


def test_a_fifo_in_a_file_remote_is_refused_and_never_hangs_a_pull(team: tuple[Path, str],
                                                                   tmp_path: Path) -> None:
    origin, url = team
    _, (run_id,) = _pushed(origin, tmp_path)
    log = Path(url.removeprefix("file://")) / "runs" / run_id / "stdout.log"
    log.unlink()
    os.mkfifo(log)  # open() of it waits for a writer: forever
    b = clone(origin, tmp_path / "b")
    result = run_cli(["pull", run_id], cwd=b, timeout=60)
    assert one_error(result) == (
        f"Error: runs/{run_id}/stdout.log in the remote run store {url} is not a file, so it is not an "
        f"object nixrepro wrote; remove it from {log.parents[2]}.")
    assert _nothing_local(b)


# --- credentials in URLs --------------------------------------------------------------------------------

SECRET = "Hunter2Secret99"


@pytest.mark.parametrize("remote", [f"s3://AKIAEXAMPLE:{SECRET}@team-bucket/runs",
                                    f"file://alice:{SECRET}@/shared/runs",
                                    f"file:///shared/runs?access_token={SECRET}",
                                    f"s3://team-bucket/runs?X-Amz-Security-Token={SECRET}"])
def test_credentials_in_a_remote_url_never_reach_a_message_or_the_local_store(
        remote: str, tmp_path: Path) -> None:
    repo = project_repo(tmp_path / "repo", remote)
    store, (run_id,) = stored_runs(repo, 1)
    commands = (["runs", "--remote"], ["pull", "abcdef12"], ["push", run_id], ["sync"], ["show", "abcdef12"])
    for args in commands:
        result = cli_in_process(args, repo)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
        assert SECRET not in result.stdout + result.stderr, (args, result.stderr)
        assert "remote run store URL" in result.stderr
    assert all(SECRET.encode() not in p.read_bytes() for p in store.root.rglob("*") if p.is_file())


def test_an_endpoint_with_a_password_never_reaches_a_message_or_the_local_store(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    url = f"s3://{s3_server.new_bucket()}/team"
    for port in (s3_server.ports["s3.port"], 1):  # the server, and nothing listening
        endpoint = f"http://alice:{SECRET}@127.0.0.1:{port}"
        repo = project_repo(tmp_path / f"repo-{port}", url, extra=f'endpoint_url = "{endpoint}"\n')
        store, _ = stored_runs(repo, 1)
        commands = (["sync"], ["runs", "--remote"], ["pull", "abcdef12"])
        outputs = [cli_in_process(args, repo) for args in commands]
        if port == 1:
            assert all(result.returncode == 1 for result in outputs)
            assert f"cannot reach S3 at http://<redacted>@127.0.0.1:1 to read {layout.MARKER}" in \
                outputs[1].stderr
        assert all(SECRET not in result.stdout + result.stderr for result in outputs)
        assert all(SECRET.encode() not in p.read_bytes() for p in store.root.rglob("*") if p.is_file())
    client, bucket = s3_server.client(), url.split("/")[2]
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(SECRET.encode() not in client.get_object(Bucket=bucket, Key=key)["Body"].read()
                        for key in keys)


# --- listings that race, trees that are too deep, pages that do not read, servers that stall --------------


def test_an_index_entry_folded_while_its_directory_is_listed_hides_no_other_run(
        team: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    origin, url = team
    store, ids = stored_runs(clone(origin, tmp_path / "a"), 3)
    remote = remote_of(url)
    for run_id in ids[:2]:
        remote.push(store, run_id)
    folded = remote.objects.get(f"index/{ids[0]}.json")
    remote.compact()  # a page of the first two; then a third run, loose
    remote.push(store, ids[2])
    _replace(url, f"index/{ids[0]}.json", folded)  # a compaction that has written its page, not yet deleted
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        entries = sorted(real_scandir(path), key=lambda entry: entry.name != f"{ids[0]}.json")
        if Path(path).name == "index":  # the other machine deletes the folded entry just now
            os.unlink(entries[0].path)
        return iter(entries)

    monkeypatch.setattr("nixrepro.remote.file.os.scandir", scandir)
    assert set(remote_of(url).entries()) == set(ids)


def test_a_tree_deeper_than_the_stack_in_a_file_remote_is_listed_without_a_traceback(
        team: tuple[Path, str], tmp_path: Path) -> None:
    origin, url = team
    _, (run_id,) = _pushed(origin, tmp_path)
    index = Path(url.removeprefix("file://")) / "index"
    fd = os.open(index, os.O_RDONLY)
    for _ in range(1200):  # index/d/d/d/...: deeper than Python recurses (os.makedirs and rmtree too)
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    try:
        listed = cli_in_process(["runs", "--remote", "--json"], origin)
    finally:  # removed here, deepest first: pytest's own clean-up (shutil.rmtree) would recurse
        subprocess.run(["rm", "-rf", str(index / "d")], check=True)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert [run["id"] for run in json.loads(listed.stdout)] == [run_id]


def test_a_page_that_does_not_read_is_never_deleted_unless_it_is_a_copy_cut_short(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    url = f"s3://{bucket}/team"
    store, ids = stored_runs(project_repo(tmp_path / "a", url), 2)
    remote = remote_of(url)
    remote.push(store, ids[0])
    client = s3_server.client()
    damaged = f"pages/000040-{'1' * 32}.json.gz"  # altered, or of someone else: the only copy of its runs
    client.put_object(Bucket=bucket, Key=f"team/{damaged}", Body=b"\x1f\x8b not a page")
    cut = f"pages/000002-{'2' * 32}.json.gz"  # what SeaweedFS keeps of a compaction killed mid-PUT
    client.put_object(Bucket=bucket, Key=f"team/{cut}", Body=b"\x1f\x8b",
                      Metadata={"sha256": "2" * 64})
    remote.push(store, ids[1])
    remote.compact()
    pages = {k for k in object_keys(url) if k.startswith("pages/")}
    assert damaged in pages and cut not in pages and len(pages) == 2
    assert {r.id for r in remote_of(url).summaries()} == set(ids)


def test_a_server_that_accepts_and_then_says_nothing_is_one_sentence_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    from nixrepro.remote import s3 as s3_backend

    monkeypatch.setattr(s3_backend, "READ_TIMEOUT", 1)  # 15 s in use: three attempts would take 45 s here
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(silent.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    for name, value in {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    repo = project_repo(tmp_path / "repo", "s3://team-bucket/runs", extra=f'endpoint_url = "{endpoint}"\n')
    try:
        started = time.monotonic()
        result = cli_in_process(["runs", "--remote"], repo)
        assert time.monotonic() - started < 20
    finally:
        silent.close()
        for sock in held:
            sock.close()
    assert one_error(result) == (
        f"Error: cannot reach S3 at {endpoint} to read nixrepro-runstore.json in the remote run store "
        "s3://team-bucket/runs (ReadTimeoutError); check the network and [runs] endpoint_url, then retry.")


def test_a_run_whose_files_cannot_be_read_ends_queued_with_one_warning_never_a_traceback(
        team: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from nixrepro.record import RunRecord
    from tests.test_remote import FIXTURE

    origin, url = team
    store = RunStore(clone(origin, tmp_path / "a") / ".nixrepro")
    run_id, run_dir = store.new_run_dir()
    for name in ("stdout.log", "stderr.log", "metrics.jsonl"):
        (run_dir / name).write_text("")

    def unreadable(path: Path) -> str:  # a log another user owns, or a disk that fails
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(layout, "sha256_file", unreadable)
    with store.hold(run_id):  # the run's end: its push fails, the run is recorded all the same
        store.save(RunRecord.from_dict(json.loads(FIXTURE.read_text())).replace(id=run_id))
    err = capsys.readouterr().err
    assert f"nixrepro: warning: run {run_id} is recorded here but not pushed: cannot read run {run_id} in " \
           f"{run_dir} to push it (Permission denied: {run_dir}/" in err
    assert queued(store) == [run_id] and store.load(run_id).status == "succeeded"
    monkeypatch.undo()
    assert sync_step(store.root, dry_run=False) == ([f"run {run_id} -> {url}"], [])


def test_a_huge_remote_object_is_refused_unread(team: tuple[Path, str], tmp_path: Path) -> None:
    origin, url = team
    _, ids = _pushed(origin, tmp_path, 2)
    root = Path(url.removeprefix("file://"))
    record = root / "runs" / ids[0] / "record.json"
    record.chmod(0o644)
    with open(record, "r+b") as handle:  # 300 MB (sparse: nothing is written, nothing may be read)
        handle.truncate(300 * 2**20)
    entry = root / "index" / f"{ids[1]}.json"
    entry.chmod(0o644)
    with open(entry, "r+b") as handle:
        handle.truncate(20 * 2**20)
    b = clone(origin, tmp_path / "b")
    assert one_error(cli_in_process(["pull", ids[0]], b)) == (
        f"Error: run {ids[0]} in {url} fails verification (its record.json is {300 * 2**20} bytes, more than "
        "any record), so it is not pulled; nothing was written locally: ask whoever pushed it to check it "
        "with `nixrepro verify`, and the store's owner to look at who wrote it.")
    listed = cli_in_process(["runs", "--remote", "--json"], b)
    assert listed.returncode == 0 and [run["id"] for run in json.loads(listed.stdout)] == [ids[0]]
    assert listed.stderr == (
        f"nixrepro: warning: run {ids[1]} of {url} is left out of the listing: its listing entry does not "
        f"read (cut short or altered); `nixrepro pull {ids[1]}` still fetches and verifies the run.\n")


def test_an_archive_and_a_run_store_in_one_place_never_write_over_each_other(
        team: tuple[Path, str], tmp_path: Path) -> None:
    from nixrepro import archive_runs

    origin, url = team
    store, (run_id,) = _pushed(origin, tmp_path)
    remote_dir = Path(url.removeprefix("file://"))
    before = {p: p.read_bytes() for p in remote_dir.rglob("*") if p.is_file()}
    refused = cli_in_process(["archive", run_id, "--to", url], store.root.parent)  # into the run store
    assert one_error(refused, 2).startswith(f"Error: {url} holds files (index, nixrepro-runstore.json, runs) "
                                            "but no nix-cache-info, so it is not an archive")
    assert {p: p.read_bytes() for p in remote_dir.rglob("*") if p.is_file()} == before
    archive = tmp_path / "archive"  # and the other way: an archive named as the run store
    archive.mkdir()
    (archive / "nix-cache-info").write_text("StoreDir: /nix/store\n")
    archive_runs.carry(store, run_id, archive, {"url": f"file://{archive}"})
    repo = project_repo(tmp_path / "other", f"file://{archive}")
    _, (second,) = stored_runs(repo, 1)
    assert one_error(cli_in_process(["push", second], repo)).startswith(
        f"Error: file://{archive} holds objects but no nixrepro-runstore.json, so it is not a nixrepro run "
        "store")
    assert sorted(p.name for p in (archive / "runs").iterdir()) == [run_id]
