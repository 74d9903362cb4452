"""Archives against a hostile reviewer: a tampered or replayed archived record, hostile keys in an
S3 archive, a location that holds something else, an import killed midway, credentials in the
URL, an upload that fails. Each test is named after the promise it guards (docs/archive.md).

The archives here are made by nixrepro's own writer (archive_runs.carry, write_front) over the
fixture record, so no Nix build is needed: everything refused here is refused before Nix is asked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nixrepro import archive_mirror, archive_runs
from nixrepro.errors import NoSuchObject
from nixrepro.record import record_sha256, summary_sha256
from nixrepro.runstore import RunStore
from tests.helpers import cli_in_process
from tests.s3server import S3Server
from tests.test_remote import project_repo, signing_key, stored_runs
from tests.test_remote_faults import one_error


def _archive(tmp_path: Path, count: int = 2) -> tuple[Path, str, list[str], RunStore]:
    """(an archive directory carrying ``count`` signed runs, the public key, their ids, the store)."""
    key = tmp_path / "team.sec"
    public = signing_key(key, "team-1")
    repo = project_repo(tmp_path / "machine-a", None, extra=f'[archive]\nkey_file = "{key}"\n')
    store, ids = stored_runs(repo, count)
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "nix-cache-info").write_text("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
    for run_id in ids:
        archive_runs.carry(store, run_id, archive, {"url": f"file://{archive}", "public_key": public,
                                                    "levels": ["runtime"]})
    archive_runs.write_front(archive, f"file://{archive}", public)
    return archive, public, ids, store


def _fresh(tmp_path: Path, public: str) -> Path:
    """A machine with no run store, that trusts the team's key."""
    return project_repo(tmp_path / "fresh", None, extra=f'[archive]\ntrusted_keys = ["{public}"]\n')


def test_an_archived_record_under_another_runs_directory_is_refused(tmp_path: Path) -> None:
    archive, public, (wanted, other), _ = _archive(tmp_path)
    shutil.rmtree(archive / "runs" / wanted)
    shutil.copytree(archive / "runs" / other, archive / "runs" / wanted)  # whole, validly signed
    fresh = _fresh(tmp_path, public)
    result = cli_in_process(["rebuild", wanted, "--from", f"file://{archive}"], fresh)
    assert one_error(result) == (
        f"Error: run {wanted}'s record in the archive file://{archive} is the record of run '{other}', so it "
        "is not used (a record copied under another run's directory). Archive the run again from a machine "
        "that has it.")
    assert not (fresh / ".nixrepro").exists()


def test_an_archived_record_of_another_shape_is_refused_naming_the_archive(tmp_path: Path) -> None:
    archive, public, (run_id, _), _ = _archive(tmp_path)
    carried = archive / "runs" / run_id
    doc = json.loads((carried / "record.json").read_bytes())
    doc["params"] = 5
    doc["summary_sha256"] = summary_sha256(doc)
    doc["record_sha256"] = record_sha256(doc)
    (carried / "record.json").write_text(json.dumps(doc))
    (carried / "record.sig").unlink()  # unsigned: its hashes alone vouch for it
    result = cli_in_process(["rebuild", run_id, "--from", f"file://{archive}"], _fresh(tmp_path, public))
    assert one_error(result) == (
        f"Error: run {run_id}'s record in the archive file://{archive} does not read (run record "
        f"'{run_id}' is malformed: params is an integer, it must be an object); it is not used. Archive the "
        "run again from a machine that has it.")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_archiving_into_a_directory_that_holds_something_else_is_refused_and_touches_nothing(
        tmp_path: Path) -> None:
    repo = project_repo(tmp_path / "repo", None)
    _, (run_id,) = stored_runs(repo, 1)
    home = tmp_path / "home"
    home.mkdir()
    (home / "README.md").write_text("# my notes\n")
    (home / "thesis.tex").write_text("\\begin{document}\n")
    before = _tree(home)
    refused = cli_in_process(["archive", run_id, "--to", f"file://{home}"], repo)
    assert one_error(refused, 2) == (
        f"Error: file://{home} holds files (README.md, thesis.tex) but no nix-cache-info, so it is not an "
        "archive, and archiving would write into it; archive into an empty directory or an existing archive "
        "(e.g. add /nix-archive to the URL).")
    assert _tree(home) == before
    cache = tmp_path / "cache"  # a binary cache of someone else's, with a README of its own
    cache.mkdir()
    (cache / "nix-cache-info").write_text("StoreDir: /nix/store\n")
    (cache / "README.md").write_text("# The lab's binary cache\nAsk Bob before deleting anything.\n")
    before = _tree(cache)
    refused = cli_in_process(["archive", run_id, "--to", f"file://{cache}"], repo)
    assert one_error(refused, 2) == (
        f"Error: file://{cache} has a README.md that nixrepro did not write, which the archive's own "
        "README.md would replace; move it elsewhere, or archive into a directory of its own (e.g. add "
        "/nix-archive to the URL).")
    assert _tree(cache) == before
    assert not (repo / ".nixrepro" / "runs" / run_id / "archives.json").exists()


class HostileBucket:
    """:class:`archive_mirror.Objects` of an S3 that, as AWS does, lets a writer name keys with
    ``..`` and ``//`` (SeaweedFS refuses those, so the hostile bucket is played here)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def list_keys(self, under: str = "") -> list[str]:
        base = under.strip("/")
        return sorted(k for k in self.objects if not base or k.startswith(base + "/"))

    def put(self, key: str, path: Path) -> None:
        raise AssertionError("nothing is uploaded")

    def get(self, key: str, dest: Path) -> None:
        if key not in self.objects:
            raise NoSuchObject(f"no {key}")
        dest.write_bytes(self.objects[key])


def test_a_hostile_s3_archive_writes_nothing_outside_its_mirror(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, public, (run_id, _), _ = _archive(tmp_path)
    objects = {key: data for key, data in _tree(archive).items()}
    depth = "../" * 12
    objects.update({
        f"runs/{run_id}/{depth}tmp/escaped-{run_id}": b"written outside the mirror",  # under the run's dir
        f"{depth}tmp/escaped-root-{run_id}": b"written outside the mirror",
        f"/tmp/escaped-abs-{run_id}": b"written outside the mirror",
        "runs/../record.json": b"{}",  # a run named '..': its directory would be the mirror itself
    })
    monkeypatch.setattr(archive_mirror, "objects", lambda url, endpoint_url: HostileBucket(objects))
    mirror = tmp_path / "mirror"
    found = archive_runs.find("s3://team-archive/nix", run_id, mirror, endpoint_url=None, trusted=[public])
    assert found.record.id == run_id and found.signed_by == "team-1"
    assert sorted(p.name for p in (mirror / "runs" / run_id).iterdir()) == sorted(
        p.name for p in (archive / "runs" / run_id).iterdir())
    archive_mirror.download("s3://team-archive/nix", mirror, endpoint_url=None,
                            always=lambda key: False)  # the whole archive, as a build-deps rebuild does
    assert (mirror / "nix-cache-info").is_file()
    escaped = [Path(f"/tmp/escaped-{run_id}"), Path(f"/tmp/escaped-root-{run_id}"),
               Path(f"/tmp/escaped-abs-{run_id}")]
    try:
        assert not any(path.exists() for path in escaped)
    finally:
        for path in escaped:
            path.unlink(missing_ok=True)


IMPORT_KILLED = """
import os, signal, sys
from pathlib import Path
from nixrepro import archive_runs
from nixrepro.runstore import RunStore
archive, run_id, public, store = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
found = archive_runs.find(f"file://{archive}", run_id, archive, endpoint_url=None, trusted=[public])
real_copy = archive_runs.copy_atomic
def copy(source, target):
    real_copy(source, target)
    if source.name == "stdout.log":  # the record and more copied: the rest not yet
        os.kill(os.getpid(), signal.SIGKILL)
archive_runs.copy_atomic = copy
archive_runs.import_run(RunStore(store), found)
"""


def test_an_archived_run_imported_by_reproduce_and_killed_midway_leaves_no_half_run(tmp_path: Path) -> None:
    archive, public, (run_id, _), _ = _archive(tmp_path)
    fresh = _fresh(tmp_path, public)
    argv = [sys.executable, "-c", IMPORT_KILLED, str(archive), run_id, public, str(fresh / ".nixrepro")]
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    listed = cli_in_process(["runs", "--json"], fresh)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # neither the run nor a copy of it
    assert os.listdir(fresh / ".nixrepro" / "runs") == []


SECRET = "Hunter2Secret99"


def test_an_archive_url_with_credentials_never_reaches_a_message_or_a_record(tmp_path: Path) -> None:
    archive, public, (run_id, _), store = _archive(tmp_path)
    fresh = _fresh(tmp_path, public)
    for url in (f"file://alice:{SECRET}@localhost{archive}", f"file://{archive}?access_token={SECRET}",
                f"s3://AKIAEXAMPLE:{SECRET}@team-archive/nix"):
        for repo, args in ((fresh, ["rebuild", run_id, "--from", url]),
                           (store.root.parent, ["archive", run_id, "--to", url])):
            result = cli_in_process(args, repo)
            assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
            assert SECRET not in result.stdout + result.stderr, (args, result.stdout, result.stderr)
            assert "carries credentials or a query" in result.stderr
    everything = [*store.root.rglob("*"), *archive.rglob("*")]
    assert all(SECRET.encode() not in path.read_bytes() for path in everything if path.is_file())


class NoNix:
    """The Nix calls of `archive`, answered without a store: the fixture's closure is not in it."""

    def path_infos(self, paths: object) -> tuple[list[object], list[str]]:
        return [], []

    def copy_to(self, target: str, paths: object) -> None:
        pass

    def flake_archive(self, target: str, flake: str) -> None:
        pass


def test_an_s3_archive_whose_upload_fails_records_no_archive_of_the_run(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nixrepro.archive import archive_run
    from nixrepro.config import ArchiveConfig
    from nixrepro.errors import NixreproError
    from nixrepro.git import GitRepo

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": ["s3:PutObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/*"]}]}
    s3_server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    key = tmp_path / "team.sec"
    key.with_suffix(".pub").write_text(signing_key(key, "team-1") + "\n")
    repo = project_repo(tmp_path / "repo", None)
    store, (run_id,) = stored_runs(repo, 1)
    config = ArchiveConfig(key_file=str(key), endpoint_url=s3_server.endpoint_url)
    with pytest.raises(NixreproError):
        archive_run(store, store.load(run_id), f"s3://{bucket}/nix", config=config, nix=NoNix(),  # type: ignore[arg-type]
                    repo=GitRepo(repo))
    assert not (store.run_dir(run_id) / "archives.json").exists()  # nothing says it is archived there


def test_an_archived_record_whose_environment_is_no_store_path_is_never_built(tmp_path: Path) -> None:
    """Unsigned, its hashes recomputed: intact by its hashes, and naming a flake of anyone's to build."""
    archive, public, (run_id, _), _ = _archive(tmp_path)
    carried = archive / "runs" / run_id
    doc = json.loads((carried / "record.json").read_bytes())
    doc["environment"] = {**doc["environment"], "flake_ref": None, "env_path": "github:mallory/pwn#default"}
    doc["summary_sha256"] = summary_sha256(doc)
    doc["record_sha256"] = record_sha256(doc)
    (carried / "record.json").write_text(json.dumps(doc))
    (carried / "record.sig").unlink()
    result = cli_in_process(["rebuild", run_id, "--from", f"file://{archive}"], _fresh(tmp_path, public))
    assert one_error(result) == (
        f"Error: run {run_id[:8]}'s record names 'github:mallory/pwn#default' as its environment, which is "
        "no Nix store path (/nix/store/<hash>-<name>), so it is not built; the record was not written by "
        "nixrepro: `nixrepro verify` it where it was recorded.")


def test_an_s3_archive_url_with_dot_dot_segments_is_refused_before_its_mirror_is_made(tmp_path: Path) -> None:
    repo = project_repo(tmp_path / "repo", None)
    _, (run_id,) = stored_runs(repo, 1)
    cache = Path(os.environ["XDG_CACHE_HOME"])
    before = sorted(p.name for p in cache.parent.iterdir())
    url = "s3://team-archive/../../../../escaped-mirror"  # the mirror would be <cache>/../escaped-mirror
    refused = cli_in_process(["archive", run_id, "--to", url], repo)
    assert one_error(refused, 2) == (
        f"Error: archive URL {url!r}: '.' and '..' path segments are not allowed; name the prefix directly.")
    assert sorted(p.name for p in cache.parent.iterdir()) == before


def _key(name: str) -> str:
    import base64

    return f"{name}:{base64.b64encode(os.urandom(32)).decode()}"


def test_machines_archiving_into_one_archive_at_once_keep_every_key_in_its_list(tmp_path: Path) -> None:
    import threading

    for trial in range(3):
        archive = tmp_path / f"archive-{trial}"
        archive.mkdir()
        keys = [_key(f"machine-{i}-1") for i in range(8)]
        start = threading.Barrier(len(keys))

        def archive_with(key: str, into: Path = archive, start: threading.Barrier = start) -> None:
            start.wait()
            archive_runs.write_front(into, f"file://{into}", key)

        threads = [threading.Thread(target=archive_with, args=(key,)) for key in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(archive_runs.known_keys(archive)) == sorted(keys)  # none dropped by another
    # a key dropped before (a list written by an older nixrepro racing) comes back with the next archive
    (tmp_path / "healing").mkdir()
    archive, public, _, _ = _archive(tmp_path / "healing")
    (archive / "public-keys.txt").write_text(_key("someone-1") + "\n")
    archive_runs.write_front(archive, f"file://{archive}", _key("machine-c-1"))
    assert public in archive_runs.known_keys(archive)
    assert f"    {public}\n" in (archive / "README.md").read_text()


def test_an_s3_archive_keeps_the_key_another_machine_dropped_while_both_archived(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nixrepro.archive import archive_run
    from nixrepro.config import ArchiveConfig
    from nixrepro.git import GitRepo

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    key = tmp_path / "team.sec"
    public = signing_key(key, "machine-a-1")
    key.with_suffix(".pub").write_text(public + "\n")
    other = _key("machine-b-1")
    real_upload = archive_mirror.upload

    def upload_raced(local: Path, url: str, **options: object) -> tuple[int, int]:
        done = real_upload(local, url, **options)  # type: ignore[arg-type]
        # machine B, archiving at the same time, uploads the list it read before A's key was in it
        s3_server.client().put_object(Bucket=bucket, Key="nix/public-keys.txt", Body=f"{other}\n".encode())
        return done

    monkeypatch.setattr(archive_mirror, "upload", upload_raced)
    repo = project_repo(tmp_path / "repo", None)
    store, (run_id,) = stored_runs(repo, 1)
    config = ArchiveConfig(key_file=str(key), endpoint_url=s3_server.endpoint_url)
    archive_run(store, store.load(run_id), f"s3://{bucket}/nix", config=config, nix=NoNix(),  # type: ignore[arg-type]
                repo=GitRepo(repo))
    client = s3_server.client()
    listed = client.get_object(Bucket=bucket, Key="nix/public-keys.txt")["Body"].read().decode().split()
    assert sorted(listed) == sorted([public, other])
    readme = client.get_object(Bucket=bucket, Key="nix/README.md")["Body"].read().decode()
    assert f"    {public}\n" in readme and f"    {other}\n" in readme
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if any(part.startswith(".") for part in k.split("/"))]  # no lock, no .part


@pytest.mark.parametrize("name", ["stdout.log", "archive.json", "../../public-keys.txt"])
def test_a_fifo_in_an_archive_is_refused_or_skipped_and_never_hangs_a_rebuild(name: str,
                                                                             tmp_path: Path) -> None:
    from tests.helpers import run_cli

    archive, _, (run_id, _), _ = _archive(tmp_path)
    fifo = archive / "runs" / run_id / name
    fifo.unlink()
    os.mkfifo(fifo)  # open() of it waits for a writer: forever
    fresh = project_repo(tmp_path / "fresh", None)  # no trusted key: the archive's own list is read
    result = run_cli(["rebuild", run_id, "--from", f"file://{archive}"], cwd=fresh, timeout=60)
    assert "Traceback" not in result.stderr and result.returncode in (1, 2), result.stderr
    if name == "stdout.log":
        assert one_error(result) == (
            f"Error: run {run_id}'s stdout.log in the archive file://{archive} is not a file, so it is not "
            "what `nixrepro archive` wrote; it is not used. Archive the run again from a machine that has "
            "it.")
