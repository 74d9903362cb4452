"""The remote run store when things go wrong: every bad remote is one sentence with its remedy and
costs nothing local; a server killed mid-push, or the pushing process killed, loses nothing, and
`nixrepro sync` finishes the push."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixrepro.remote import ObjectInfo
from nixrepro.remote.pending import queued
from nixrepro.runstore import RunStore
from tests.helpers import Project, cli_in_process, run_cli
from tests.s3server import S3Server
from tests.test_faults_data import BreakingLink
from tests.test_remote import clone, object_keys, project_repo, remote_of, stored_runs


def files_of(store: RunStore) -> dict[str, bytes]:
    """Every file of every run directory: what "nothing local lost" compares."""
    return {p.relative_to(store.root).as_posix(): p.read_bytes()
            for p in sorted(store.runs_dir.rglob("*")) if p.is_file()}


def one_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


# --- bad remotes, one sentence each ----------------------------------------------------------------


def _bad_remote(kind: str, tmp_path: Path, server: S3Server,
                monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(the remote URL, the start of the sentence every command gives for it)."""
    if kind == "missing directory":
        folder = tmp_path / "not-mounted" / "runs"
        return f"file://{folder}", (
            f"Error: the remote run store file://{folder} does not exist ({folder} is not a directory); "
            "create it or mount the share, or fix [runs] remote in nixrepro.toml.")
    if kind == "missing bucket":
        return "s3://no-such-bucket-here/team", (
            f"Error: the remote run store s3://no-such-bucket-here/team does not exist: there is no bucket "
            f"no-such-bucket-here at {server.endpoint_url}; create it (`aws s3 mb s3://no-such-bucket-here`) "
            "or fix [runs] remote in nixrepro.toml.")
    bucket = server.new_bucket()
    url = f"s3://{bucket}/team"
    if kind == "no permission":
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
        server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        return url, (f"Error: the credentials have no permission to read nixrepro-runstore.json in the "
                     f"remote run store {url} (AccessDenied); ask for s3:GetObject, s3:PutObject and "
                     f"s3:ListBucket on bucket {bucket}, or use credentials that have them.")
    if kind == "wrong credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        return url, (f"Error: S3 at {server.endpoint_url} refused the credentials for the remote run store "
                     f"{url} (SignatureDoesNotMatch); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                     "AWS_PROFILE.")
    if kind == "not a run store":
        server.client().put_object(Bucket=bucket, Key="team/train.csv", Body=b"a,b\n")
        return url, (f"Error: {url} holds objects but no nixrepro-runstore.json, so it is not a nixrepro run "
                     "store; point [runs] remote in nixrepro.toml at an empty prefix (e.g. add /runs) or at "
                     "an existing run store.")
    assert kind == "newer format"
    server.client().put_object(Bucket=bucket, Key="team/nixrepro-runstore.json",
                               Body=b'{"format": "nixrepro-runstore", "version": 9}')
    return url, (f"Error: {url} is a run store of format version 9, newer than this nixrepro reads (1); "
                 "upgrade nixrepro.")


@pytest.mark.parametrize("kind", ["missing directory", "missing bucket", "no permission", "wrong credentials",
                                  "not a run store", "newer format"])
def test_a_bad_remote_is_one_sentence_for_every_command_and_nothing_local_is_lost(
        kind: str, tmp_path: Path, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, sentence = _bad_remote(kind, tmp_path, s3_env, monkeypatch)
    repo = project_repo(tmp_path / "repo", url)
    store, ids = stored_runs(repo, 2)
    before = files_of(store)
    listing = cli_in_process(["runs", "--remote"], repo)
    assert one_error(listing) == sentence
    assert one_error(cli_in_process(["show", "abcdef12"], repo)) == sentence  # the remote fallback
    assert one_error(cli_in_process(["pull", "abcdef12"], repo)) == sentence
    synced = cli_in_process(["sync"], repo)
    assert synced.returncode == 1 and "Traceback" not in synced.stderr
    assert f"  not uploaded: run {ids[0]}: {sentence.removeprefix('Error: ')}" in synced.stderr
    assert files_of(store) == before and queued(store) == sorted(ids)  # kept, still waiting
    assert cli_in_process(["show", ids[0][:8]], repo).returncode == 0  # local runs read as ever


def test_two_remotes_in_conflicting_places_are_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    repo = project_repo(tmp_path / "repo", f"file://{tmp_path / 'a'}")
    (repo / "pyproject.toml").write_text(f'[tool.nixrepro.runs]\nremote = "file://{tmp_path / "b"}"\n')
    result = cli_in_process(["runs", "--remote"], repo)
    assert one_error(result, 2) == (
        f"Error: two remote run stores are configured: {repo / 'nixrepro.toml'} has [runs] remote = "
        f"'file://{tmp_path / 'a'}', and {repo / 'pyproject.toml'} [tool.nixrepro.runs] has remote = "
        f"'file://{tmp_path / 'b'}', which nixrepro ignores while nixrepro.toml exists; keep the remote in "
        "nixrepro.toml only.")
    (repo / "nixrepro.toml").write_text("")  # a remote only where nixrepro does not read it
    ignored = one_error(cli_in_process(["pull", "ab"], repo), 2)
    assert "which nixrepro ignores while nixrepro.toml exists" in ignored


def test_a_remote_that_is_not_a_run_store_url_is_a_config_error(tmp_path: Path) -> None:
    repo = project_repo(tmp_path / "repo", "https://example.com/runs")
    assert one_error(cli_in_process(["runs", "--remote"], repo), 2) == (
        f"Error: {repo / 'nixrepro.toml'}: 'runs.remote': 'https://example.com/runs' is not a remote run "
        "store; use s3://bucket/prefix or file:///shared/dir.")


# --- the server killed mid-push -----------------------------------------------------------------------


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A SeaweedFS of this test alone: it gets killed."""
    (tmp_path / "s3").mkdir()
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


class SlowLink(BreakingLink):
    """The relay of the data-store fault tests, slow in both directions: an upload takes seconds."""

    def _pipe(self, source: object, sink: object, response: bool) -> None:
        super()._pipe(source, sink, True)  # type: ignore[arg-type]


def _wait_for(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _serves(server: S3Server, bucket: str) -> bool:
    try:
        server.client().put_object(Bucket=bucket, Key="ready", Body=b"1")
        server.client().delete_object(Bucket=bucket, Key="ready")
        return True
    except Exception:
        return False


def test_seaweedfs_killed_mid_push_loses_nothing_and_sync_finishes_after_its_restart(
        own_s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = own_s3.new_bucket()
    url = f"s3://{bucket}/team"
    link = SlowLink(own_s3.ports["s3.port"], rate=8e6)
    env = {**os.environ, **own_s3.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{link.port}"}
    try:
        origin = project_repo(tmp_path / "origin", url)
        store, ids = stored_runs(clone(origin, tmp_path / "a"), 8, log_bytes=2 * 2**20)
        before = files_of(store)
        sync = subprocess.Popen([sys.executable, "-m", "nixrepro", "sync"], cwd=store.root.parent, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = own_s3.client()

        def pushed() -> int:
            listed = client.list_objects_v2(Bucket=bucket, Prefix="team/runs/").get("Contents", [])
            return sum(1 for item in listed if item["Key"].endswith("/record.json"))

        _wait_for(lambda: pushed() >= 2)
        own_s3.stop()  # SIGKILL, with the next run's logs on their way
        _, err = sync.communicate(timeout=120)
        assert sync.returncode == 1 and "Traceback" not in err, err
        assert f"cannot reach S3 at http://127.0.0.1:{link.port} to " in err
        left = queued(store)
        assert 0 < len(left) < len(ids)  # the kill came mid-push
        assert files_of(store) == before  # nothing local lost
        own_s3.start()
        _wait_for(lambda: _serves(own_s3, bucket))  # back in full: it stores objects again
        again = run_cli(["sync"], cwd=store.root.parent, env=env)
        assert again.returncode == 0, again.stderr
        assert queued(store) == [] and f"runs: uploaded {len(left)}" in again.stdout
    finally:
        link.close()
    # every run is there once, whole: another machine pulls each and it verifies
    for name, value in own_s3.env().items():
        monkeypatch.setenv(name, value)
    assert set(remote_of(url).entries()) == set(ids)
    other = RunStore(clone(origin, tmp_path / "b") / ".nixrepro", pull=True)
    for run_id in ids:
        other.resolve(run_id)
        assert (other.run_dir(run_id) / "stdout.log").read_bytes() == \
            (store.run_dir(run_id) / "stdout.log").read_bytes()


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_push_killed_midway_is_finished_by_the_next_sync(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if backend == "file":
        (tmp_path / "remote").mkdir()
        url = f"file://{tmp_path / 'remote'}"
        link = None
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        link = SlowLink(server.ports["s3.port"], rate=16e6)
        env.update({**server.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{link.port}"})
        url = f"s3://{server.new_bucket()}/team"
    try:
        origin = project_repo(tmp_path / "origin", url)
        size = (8 if link is None else 1) * 2**20
        store, ids = stored_runs(clone(origin, tmp_path / "a"), 12, log_bytes=size)
        sync = subprocess.Popen([sys.executable, "-m", "nixrepro", "sync"], cwd=store.root.parent, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: len(queued(store)) < len(ids))  # one run pushed, the next on its way
        os.kill(sync.pid, signal.SIGKILL)
        sync.wait()
        left = queued(store)
        assert 0 < len(left) < len(ids)
        again = run_cli(["sync"], cwd=store.root.parent, env=env)
        assert again.returncode == 0, again.stderr
        assert queued(store) == []
        listed = json.loads(run_cli(["runs", "--remote", "--json"], cwd=store.root.parent, env=env).stdout)
        assert sorted(run["id"] for run in listed) == sorted(ids)
    finally:
        if link is not None:
            link.close()
    if backend == "file":  # a write the kill cut short is a hidden temporary file, never an object
        assert all(not key.split("/")[-1].startswith(".") for key in object_keys(url))
        other = RunStore(clone(origin, tmp_path / "b") / ".nixrepro", pull=True)
        assert all(other.resolve(run_id).id == run_id for run_id in ids)


# --- a run's end with the remote away ---------------------------------------------------------------


def test_a_run_completes_locally_when_the_remote_is_away_and_sync_pushes_it_later(
        project: Project, own_s3: S3Server, tmp_path: Path) -> None:
    bucket = own_s3.new_bucket()
    (project.root / "nixrepro.toml").write_text(f'[runs]\nremote = "s3://{bucket}/team"\n')
    project.commit("a remote run store")
    env = {**os.environ, **own_s3.env()}
    own_s3.stop()
    result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "train.py", env=env)
    assert result.returncode == 0, result.stderr
    record = json.loads(project.nixrepro("show", "@latest", "--json", env=env).stdout)
    assert record["status"] == "succeeded" and record["metrics"]["loss"] > 0  # recorded in full
    assert (f"nixrepro: warning: run {record['id']} is recorded here but not pushed: cannot reach S3 at "
            f"{own_s3.endpoint_url} to read nixrepro-runstore.json in the remote run store s3://{bucket}/team"
            ) in result.stderr
    assert result.stderr.rstrip().splitlines()[-2].endswith("`nixrepro sync` pushes it.")
    store = RunStore(project.runs_dir.parent)
    assert queued(store) == [record["id"]]
    own_s3.start()
    _wait_for(lambda: _serves(own_s3, bucket))
    synced = project.nixrepro("sync", env=env)
    assert synced.returncode == 0, synced.stderr
    assert f"run {record['id']} -> s3://{bucket}/team" in synced.stdout and queued(store) == []
    listed = project.nixrepro("runs", "--remote", "--json", env=env)
    assert [run["id"] for run in json.loads(listed.stdout)] == [record["id"]]


def test_the_index_stays_whole_when_a_compaction_races_a_listing(s3_env: S3Server, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A compaction that deletes a page a reader has just listed makes the reader list again: it
    never misses a run."""
    url = f"s3://{s3_env.new_bucket()}/team"
    store, ids = stored_runs(project_repo(tmp_path / "repo", url), 30)
    remote = remote_of(url)
    for run_id in ids[:20]:
        remote.push(store, run_id)
    remote.compact()  # one page of 20, not full
    for run_id in ids[20:]:
        remote.push(store, run_id)  # and 10 loose entries
    reader = remote_of(url)
    real_pages = reader._pages
    compacted: list[int] = []

    def listed_then_compacted() -> list[ObjectInfo]:
        pages = real_pages()
        if not compacted:  # another machine folds the page and the entries the reader just listed
            compacted.append(remote.compact())
        return pages

    monkeypatch.setattr(reader, "_pages", listed_then_compacted)
    assert set(reader.entries()) == set(ids) and compacted == [10]
    assert not [k for k in object_keys(url) if k.startswith("index/")]
