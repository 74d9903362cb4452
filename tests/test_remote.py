"""The remote run store (nixrepro.remote): runs pushed as immutable objects, listed from an index,
pulled only once verified; against the real SeaweedFS and against a file:// directory alike."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nixrepro.config import DataConfig
from nixrepro.errors import RemoteConflict, RunNotFoundError
from nixrepro.host import SlurmJob
from nixrepro.record import RunRecord, record_sha256, summary_sha256
from nixrepro.remote import RemoteURL, open_objects
from nixrepro.remote import index as index_layout
from nixrepro.remote import store as layout
from nixrepro.remote.pending import open_remote, push_one, queued, sync_step
from nixrepro.remote.store import RemoteRunStore
from nixrepro.runstore import RunStore
from tests.helpers import GIT_ID, Project, cli_in_process, run_cli, sh

FIXTURE = Path(__file__).parent / "fixtures" / "record-minimal.json"


@pytest.fixture(params=["file", "s3"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty remote: a directory, or a prefix of a new bucket on the session's SeaweedFS
    (its endpoint and credentials in the environment, as a user sets them)."""
    if request.param == "file":
        (tmp_path / "remote").mkdir()
        return f"file://{tmp_path / 'remote'}"
    server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{server.new_bucket()}/team"


def project_repo(root: Path, remote: str | None, extra: str = "") -> Path:
    """A git repository whose committed nixrepro.toml points at ``remote``."""
    root.mkdir(parents=True)
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    (root / "nixrepro.toml").write_text((f'[runs]\nremote = "{remote}"\n' if remote else "") + extra)
    sh(["git", "add", "-A"], cwd=root)
    sh(["git", "commit", "-qm", "init"], cwd=root)
    return root


def clone(origin: Path, target: Path) -> Path:
    sh(["git", "clone", "-q", str(origin), str(target)])
    return target


def stored_runs(repo: Path, count: int, name: str = "run", log_bytes: int = 64) -> tuple[RunStore, list[str]]:
    """``count`` ended runs in the repository's store (the fixture record, each with its own id,
    logs and metrics), saved as a run's end saves them: queued for the remote when one is set."""
    store = RunStore(repo / ".nixrepro")
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    ids = []
    for i in range(count):
        run_id, run_dir = store.new_run_dir()
        (run_dir / "stdout.log").write_bytes(f"{name} {i}\n".encode() + os.urandom(log_bytes))
        (run_dir / "stderr.log").write_text("")
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": i / 10}) + "\n")
        store.save(base.replace(id=run_id, name=f"{name}-{i}", metrics={"loss": i / 10},
                                started_at=f"2026-11-22T13:{i % 60:02d}:00+00:00"))
        ids.append(run_id)
    return store, ids


def remote_of(url: str) -> RemoteRunStore:
    """A second, independent view of the remote (another machine's client)."""
    return RemoteRunStore(open_objects(RemoteURL.parse(url), DataConfig()))


def object_keys(url: str) -> set[str]:
    return {item.key for item in remote_of(url).objects.list("")}


# --- push and pull ---------------------------------------------------------------------------------


def test_a_pushed_run_is_pulled_on_another_clone_byte_for_byte(remote_url: str, tmp_path: Path) -> None:
    origin = project_repo(tmp_path / "origin", remote_url)
    a, b = clone(origin, tmp_path / "a"), clone(origin, tmp_path / "b")
    store_a, ids = stored_runs(a, 2)
    assert queued(store_a) == sorted(ids)  # saved final records wait to be pushed
    done, failed = sync_step(store_a.root, dry_run=False)
    assert failed == [] and len(done) == 2 and queued(store_a) == []
    keys = object_keys(remote_url)
    assert layout.MARKER in keys
    for run_id in ids:
        assert {f"runs/{run_id}/{name}" for name in ("record.json", "stdout.log", "stderr.log",
                                                     "metrics.jsonl")} <= keys
        assert f"index/{run_id}.json" in keys

    store_b = RunStore(b / ".nixrepro", pull=True)
    pulled = store_b.resolve(ids[0][:10])  # a prefix, unknown locally: found in the remote
    assert pulled.id == ids[0] and pulled.metrics == {"loss": 0.0}
    for name in ("record.json", "stdout.log", "stderr.log", "metrics.jsonl"):
        assert (store_b.run_dir(ids[0]) / name).read_bytes() == (store_a.run_dir(ids[0]) / name).read_bytes()
    assert [s.id for s in store_b.summaries()] == [ids[0]]  # now a local run like any other
    shown = cli_in_process(["show", ids[1][:12], "--json"], b)  # the command line pulls too
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == ids[1]
    missing = cli_in_process(["show", "abcdef"], b)
    assert missing.returncode == 2 and missing.stderr.startswith(
        f"Error: no run matches 'abcdef' in {store_b.root} or in the remote run store {remote_url}; ")


def test_a_run_that_ends_is_pushed_when_its_lock_is_released(remote_url: str, tmp_path: Path) -> None:
    repo = project_repo(tmp_path / "repo", remote_url)
    store = RunStore(repo / ".nixrepro")
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    run_id, _ = store.new_run_dir()
    with store.hold(run_id):  # the runner holds the lock from the first record to the last
        store.save(base.replace(id=run_id, status="running", ended_at=None, exit_code=None))
        store.save(base.replace(id=run_id))
        assert queued(store) == [run_id] and f"runs/{run_id}/record.json" not in object_keys(remote_url)
    assert queued(store) == []
    assert [s.id for s in remote_of(remote_url).summaries()] == [run_id]


def test_pushing_twice_is_a_no_op_and_another_run_under_the_same_id_is_refused(
        remote_url: str, tmp_path: Path) -> None:
    store, (run_id,) = stored_runs(project_repo(tmp_path / "a", remote_url), 1)
    remote = open_remote(store.root.parent)
    assert remote is not None
    first = push_one(store, remote, run_id)
    again = push_one(store, remote, run_id)
    assert first.written == 4 and (again.written, again.present) == (0, 4)
    # another machine's run with the same id (what 96 random bits make all but impossible)
    twin = RunStore(project_repo(tmp_path / "b", remote_url) / ".nixrepro")
    twin.run_dir(run_id).mkdir(parents=True)
    (twin.run_dir(run_id) / "stdout.log").write_text("another run's output\n")
    twin.save(RunRecord.from_dict(json.loads(FIXTURE.read_text())).replace(id=run_id, name="twin"))
    before = {key: remote.objects.get(key) for key in object_keys(remote_url)}
    with pytest.raises(RemoteConflict) as caught:
        push_one(twin, remote, run_id)
    assert str(caught.value).startswith(f"run {run_id} in {remote_url} holds a different stdout.log than "
                                        "the local run: the local run was changed after it was pushed, "
                                        "or another machine recorded a run with this id; runs are immutable")
    assert {key: remote.objects.get(key) for key in object_keys(remote_url)} == before  # untouched
    assert (twin.run_dir(run_id) / "record.json").is_file() and queued(twin) == []  # kept, not retried


def test_a_run_edited_after_it_ended_is_not_pushed(remote_url: str, tmp_path: Path) -> None:
    store, (run_id,) = stored_runs(project_repo(tmp_path / "a", remote_url), 1)
    (store.run_dir(run_id) / "metrics.jsonl").write_text('{"loss": -1}\n')
    done, failed = sync_step(store.root, dry_run=False)
    assert done == [] and failed == [f"run {run_id}: run {run_id}'s metrics.jsonl was changed after the "
                                     f"run ended, so it is not pushed; `nixrepro verify {run_id}` shows "
                                     "the checks."]
    assert not any(key.startswith("runs/") for key in object_keys(remote_url))


def test_a_run_waiting_for_a_data_output_is_pushed_once_the_output_is_uploaded(
        remote_url: str, tmp_path: Path) -> None:
    from nixrepro.record import DataRecord, DataVersion

    store, (run_id,) = stored_runs(project_repo(tmp_path / "a", remote_url), 1)
    record = store.load(run_id)
    pending = DataVersion("s3://data/out.csv", None, "0" * 64, 3, pending=True)
    store.save(record.replace(data=DataRecord(outputs=[pending])))
    done, failed = sync_step(store.root, dry_run=False)
    assert done == [] and failed[0].endswith("waits for its data outputs to be uploaded (`nixrepro sync` "
                                             "uploads them, then pushes the run).")
    assert queued(store) == [run_id]
    stored = DataVersion("s3://data/out.csv", "v1", "0" * 64, 3)  # what the data step fills in
    store.save(store.load(run_id).replace(data=DataRecord(outputs=[stored])))
    done, failed = sync_step(store.root, dry_run=False)
    assert failed == [] and done == [f"run {run_id} -> {remote_url}"]
    assert remote_of(remote_url).summaries()[0].data.outputs == [stored]


# --- many machines, one store -------------------------------------------------------------------------

PUSHER = """
import sys, threading, time
from pathlib import Path
from nixrepro.remote import index
index.COMPACT_AT = 8  # compactions of the index race with the pushes
from nixrepro.remote.pending import open_remote, push_one, queued
from nixrepro.runstore import RunStore
store = RunStore(Path(sys.argv[1]))
remote = open_remote(store.root.parent)
todo = queued(store)
while not Path(sys.argv[2]).exists():  # both machines start together
    time.sleep(0.005)
errors = []
def push(run_id):
    try:
        push_one(store, remote, run_id)
        remote.maybe_compact()
    except Exception as exc:
        errors.append(f"{run_id}: {exc!r}")
threads = [threading.Thread(target=push, args=(run_id,)) for run_id in todo]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("\\n".join(errors))
sys.exit(1 if errors else 0)
"""


def test_two_machines_pushing_20_runs_at_once_each_lose_and_overwrite_nothing(
        remote_url: str, tmp_path: Path) -> None:
    origin = project_repo(tmp_path / "origin", remote_url)
    machines = {name: clone(origin, tmp_path / name) for name in ("machine-a", "machine-b")}
    stores = {name: stored_runs(repo, 20, name=name) for name, repo in machines.items()}
    go = tmp_path / "go"
    pushers = [subprocess.Popen([sys.executable, "-c", PUSHER, str(store.root), str(go)],
                                env={**os.environ, **GIT_ID}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for store, _ in stores.values()]
    go.touch()
    for pusher in pushers:
        out, err = pusher.communicate(timeout=240)
        assert pusher.returncode == 0, out + err
    everyone = {run_id for _, ids in stores.values() for run_id in ids}
    assert len(everyone) == 40  # no two runs of the two machines share an id
    remote = remote_of(remote_url)
    assert set(remote.entries()) == everyone  # every run listed, through the compactions
    keys = object_keys(remote_url)
    assert len([k for k in keys if k.startswith("index/")]) < index_layout.COMPACT_AT + 40
    assert any(k.startswith("pages/") for k in keys)  # the index was compacted meanwhile
    # each machine sees the other's runs, and pulls them verified and byte for byte
    store_a, ids_a = stores["machine-a"]
    store_b, _ = stores["machine-b"]
    puller = RunStore(store_b.root, pull=True)
    for run_id in ids_a:
        assert puller.resolve(run_id).name == f"machine-a-{ids_a.index(run_id)}"
        assert (store_b.run_dir(run_id) / "stdout.log").read_bytes() == \
            (store_a.run_dir(run_id) / "stdout.log").read_bytes()
    # nothing was overwritten: pushing everything again writes no object
    for store, ids in stores.values():
        assert all(push_one(store, remote, run_id).written == 0 for run_id in ids)


def test_listing_reads_pages_and_loose_entries_and_never_lists_a_run_twice(
        remote_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_layout, "PAGE_RUNS", 5)  # a few full pages and one that is not
    store, ids = stored_runs(project_repo(tmp_path / "a", remote_url), 13)
    remote = open_remote(store.root.parent)
    assert remote is not None
    for run_id in ids[:12]:
        push_one(store, remote, run_id)
    assert remote.compact() == 12
    push_one(store, remote, ids[12])
    push_one(store, remote, ids[0])  # pushed again after compaction: a loose entry that a page holds
    pages = sorted(k for k in object_keys(remote_url) if k.startswith("pages/"))
    assert [k.split("/")[1].split("-")[0] for k in pages] == ["000002", "000005", "000005"]
    listed = remote_of(remote_url).summaries()
    assert [r.id for r in listed] == [r.id for r in store.summaries()]  # newest first, once each
    assert all(r.env_vars == {} and r.environment.closure == [] for r in listed)  # listing entries
    assert listed[0].metrics == store.summaries()[0].metrics
    assert remote.compact() == 2  # the loose ones, merged with the page that is not full
    # (the entry pushed again is in a full page too: a listing takes each id once)
    assert sorted(k.split("/")[1].split("-")[0] for k in object_keys(remote_url)
                  if k.startswith("pages/")) == ["000004", "000005", "000005"]
    assert {r.id for r in remote_of(remote_url).summaries()} == set(ids)


def test_runs_remote_takes_the_local_filters_on_who_where_and_when(remote_url: str, tmp_path: Path) -> None:
    origin = project_repo(tmp_path / "origin", remote_url)
    a, b = clone(origin, tmp_path / "a"), clone(origin, tmp_path / "b")
    store, ids = stored_runs(a, 3)
    base = store.load(ids[0])
    job = SlurmJob(job_id="77", array_job_id="70", array_task_id="7", node_list="gpu-[01-02]")
    hosts = [dataclasses.replace(base.host, user="alice", hostname="gpu-01", slurm=job),
             dataclasses.replace(base.host, user="bob", hostname="laptop"),
             dataclasses.replace(base.host, user="alice", hostname="laptop")]
    for run_id, host, tags in zip(ids, hosts, (["sweep"], ["sweep"], []), strict=True):
        store.save(store.load(run_id).replace(host=host, tags=tags))
    assert sync_step(store.root, dry_run=False)[1] == []

    def listed(*args: str) -> list[str]:
        result = cli_in_process(["runs", "--remote", "--json", *args], b)
        assert result.returncode == 0, result.stderr
        return [run["name"] for run in json.loads(result.stdout)]

    assert listed("--user", "alice", "--tag", "sweep") == ["run-0"]
    assert listed("--host", "gpu-02") == ["run-0"]  # a node of its Slurm job
    assert listed("--host", "laptop", "--since", "2026-11-22T13:01:00+00:00") == ["run-2", "run-1"]
    assert listed("--name", "RUN-1", "--commit", base.code.commit[:7], "--status", "succeeded") == ["run-1"]
    bad = cli_in_process(["runs", "--remote", "--since", "last week"], b)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: --since 'last week' is not a date")


def test_a_prefix_that_matches_two_remote_runs_is_refused(remote_url: str, tmp_path: Path) -> None:
    store, ids = stored_runs(project_repo(tmp_path / "a", remote_url), 40)
    sync_step(store.root, dry_run=False)
    counts: dict[str, int] = {}
    for run_id in ids:
        counts[run_id[0]] = counts.get(run_id[0], 0) + 1
    shared = next(digit for digit, count in counts.items() if count > 1)  # 40 ids, 16 digits
    other = RunStore(clone(tmp_path / "a", tmp_path / "b") / ".nixrepro", pull=True)
    with pytest.raises(RunNotFoundError, match=f"^'{shared}' matches {counts[shared]} runs of "):
        other.resolve(shared)
    assert not other.runs_dir.exists() or other.ids() == []


# --- verification of what is pulled -------------------------------------------------------------------


def signing_key(path: Path, name: str) -> str:
    """A Nix ed25519 secret key at ``path``; returns its public key (name:base64)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    path.write_text(f"{name}:{base64.b64encode(seed + public).decode()}\n")
    return f"{name}:{base64.b64encode(public).decode()}"


def _rehashed(raw: bytes, change: dict[str, object]) -> bytes:
    doc = {**json.loads(raw), **change}
    doc["summary_sha256"] = summary_sha256(doc)
    doc["record_sha256"] = record_sha256(doc)
    return json.dumps(doc).encode()


TAMPERING = {
    "an edited record": (lambda raw: raw.replace(b'"loss": 0.0', b'"loss": 0.5'), "record.json",
                         "record_sha256 is "),
    "a recomputed record under a signature": (lambda raw: _rehashed(raw, {"name": "forged"}),
                                              "record.json", "the signature by machine-a-1 does not verify"),
    "an edited log": (lambda raw: raw + b"more", "stdout.log",
                      "stdout.log does not hash to the sha256 its record holds"),
    "a missing metrics file": (None, "metrics.jsonl", "a file its record names is missing"),
    "a record of another run": (lambda raw: _rehashed(raw, {"id": "ab" * 12}), "record.json",
                                "its record is of run 'abababababababababababab'"),
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_a_tampered_remote_run_is_refused_and_nothing_is_written_locally(
        remote_url: str, tmp_path: Path, how: str) -> None:
    key = tmp_path / "machine-a.sec"
    public = signing_key(key, "machine-a-1")
    trust = f'[archive]\nkey_file = "{key}"\ntrusted_keys = ["{public}"]\n'
    origin = project_repo(tmp_path / "origin", remote_url, extra=trust)
    store, (run_id,) = stored_runs(clone(origin, tmp_path / "a"), 1)
    assert (store.run_dir(run_id) / "record.sig").is_file()  # signed by machine A's key
    sync_step(store.root, dry_run=False)
    change, name, why = TAMPERING[how]
    objects = remote_of(remote_url).objects
    object_key = f"runs/{run_id}/{name}"
    tampered = None if change is None else change(objects.get(object_key))
    objects.delete(object_key)  # the tamperer can write the bucket (the store never would)
    if tampered is not None:
        assert objects.put_if_absent(object_key, tampered, "")
    b = clone(origin, tmp_path / "b")
    result = cli_in_process(["show", run_id], b)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: run {run_id} in {remote_url} fails verification ({why}")
    assert result.stderr.rstrip().endswith("so it is not pulled; nothing was written locally: ask whoever "
                                           "pushed it to check it with `nixrepro verify`, and the store's "
                                           "owner to look at who wrote it.")
    assert not (b / ".nixrepro" / "runs").exists() or os.listdir(b / ".nixrepro" / "runs") == []


def test_a_run_signed_by_a_trusted_key_is_pulled_and_verifies_there(remote_url: str, tmp_path: Path) -> None:
    key = tmp_path / "machine-a.sec"
    public = signing_key(key, "machine-a-1")
    origin = project_repo(tmp_path / "origin", remote_url, extra=f'[archive]\ntrusted_keys = ["{public}"]\n')
    a = clone(origin, tmp_path / "a")
    (a / "nixrepro.toml").write_text((a / "nixrepro.toml").read_text() + f'key_file = "{key}"\n')
    store, (run_id,) = stored_runs(a, 1)
    sync_step(store.root, dry_run=False)
    b = clone(origin, tmp_path / "b")
    pulled = cli_in_process(["pull", run_id[:8]], b)
    assert pulled.returncode == 0 and pulled.stdout == f"pulled run {run_id} from {remote_url}\n"
    assert cli_in_process(["pull", run_id], b).stdout == f"run {run_id} is already here\n"
    from nixrepro.verify import check_record_file

    checks = {c.name: c for c in check_record_file(RunStore(b / ".nixrepro"), run_id, [public])}
    assert all(c.ok for c in checks.values()) and checks["signature"].detail == "signed by machine-a-1"


# --- the service's conditional writes ---------------------------------------------------------------


def test_seaweedfs_honours_if_none_match_and_one_of_racing_writers_wins(
        s3_server: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3server import S3Server

    assert isinstance(s3_server, S3Server)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3_server.new_bucket()}/probe"
    objects = remote_of(url).objects
    assert objects.probe_conditional_writes() is True  # type: ignore[attr-defined]
    assert objects.list("") == []  # the probe object is gone again
    results: list[bool] = []
    barrier = threading.Barrier(12)

    def write(i: int) -> None:
        barrier.wait()
        results.append(objects.put_if_absent("race", f"writer {i}".encode(), ""))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 11 + [True]
    assert objects.get("race").startswith(b"writer ")
    objects.conditional_writes = False  # a service that ignores the header: a HEAD first
    assert objects.put_if_absent("race", b"overwrite?", "") is False
    assert objects.get("race").startswith(b"writer ")


def test_the_index_page_format_is_gzipped_json_that_names_its_count(remote_url: str, tmp_path: Path) -> None:
    store, ids = stored_runs(project_repo(tmp_path / "a", remote_url), 3)
    remote = open_remote(store.root.parent)
    assert remote is not None
    for run_id in ids:
        push_one(store, remote, run_id)
    remote.compact()
    (page,) = [k for k in object_keys(remote_url) if k.startswith("pages/")]
    doc = json.loads(gzip.decompress(remote.objects.get(page)))
    assert page.startswith("pages/000003-") and doc["format"] == "nixrepro-runstore"
    assert sorted(entry["id"] for entry in doc["entries"]) == sorted(ids)


# --- end to end: real runs on one clone, every command on the other ------------------------------------


def test_runs_repeats_and_reproductions_are_pushed_and_every_command_on_a_clone_sees_them(
        project: Project, remote_url: str, tmp_path: Path) -> None:
    (project.root / "nixrepro.toml").write_text(
        f'[runs]\nremote = "{remote_url}"\n\n[run]\nflake = ".#env"\n\n'
        f'[stages.prepare]\ncmd = "echo prepared"\n')
    project.commit("the team's run store")
    first = project.nixrepro("run", "--name", "base", "-p", "lr=0.5", "--", sys.executable, "train.py")
    assert first.returncode == 0 and "not pushed" not in first.stderr, first.stderr
    repeats = project.nixrepro("run", "--repeat", "2", "--", sys.executable, "train.py")
    assert repeats.returncode == 0 and "not pushed" not in repeats.stderr, repeats.stderr
    stage = project.nixrepro("pipeline", "run")
    assert stage.returncode == 0 and "not pushed" not in stage.stderr, stage.stderr
    mine = {run["id"]: run for run in json.loads(project.nixrepro("runs", "--json").stdout)}
    assert len(mine) == 4 and queued(RunStore(project.runs_dir.parent)) == []  # each pushed as it ended

    b = clone(project.root, tmp_path / "machine-b")
    listed = run_cli(["runs", "--remote", "--json"], cwd=b)
    assert listed.returncode == 0, listed.stderr
    assert {run["id"]: run for run in json.loads(listed.stdout)} == mine  # what A lists, B lists
    named = json.loads(run_cli(["runs", "--remote", "--json", "--where", "name~base"], cwd=b).stdout)
    assert [run["name"] for run in named] == ["base"]  # the local filters, on the remote's runs
    base_id = named[0]["id"]
    repeat_id = next(run_id for run_id, run in mine.items() if run["group"])
    diff = run_cli(["diff", base_id[:10], repeat_id[:10]], cwd=b)  # neither is in B's store yet
    assert diff.returncode == 0, diff.stderr
    assert "lr" in diff.stdout
    verify = run_cli(["verify", base_id], cwd=b)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    reproduced = run_cli(["reproduce", base_id[:10]], cwd=b)
    assert reproduced.returncode == 0, reproduced.stderr
    child = [run for run in json.loads(run_cli(["runs", "--json"], cwd=b).stdout) if run["parent"] == base_id]
    assert len(child) == 1  # the reproduction, recorded on B ...
    shown = project.nixrepro("show", child[0]["id"], "--json")  # ... and pushed: A sees it
    assert shown.returncode == 0 and json.loads(shown.stdout)["parent"] == base_id


def test_a_run_signed_by_a_key_the_team_does_not_list_is_refused(remote_url: str, tmp_path: Path) -> None:
    team = signing_key(tmp_path / "team.sec", "team-1")
    stranger = tmp_path / "stranger.sec"
    signing_key(stranger, "stranger-1")
    origin = project_repo(tmp_path / "origin", remote_url)
    a = clone(origin, tmp_path / "a")
    with open(a / "nixrepro.toml", "a") as config:
        config.write(f'[archive]\nkey_file = "{stranger}"\n')
    store, (run_id,) = stored_runs(a, 1)
    sync_step(store.root, dry_run=False)
    untrusting = clone(origin, tmp_path / "b")  # no team list: the signature proves nothing, the hashes pass
    assert cli_in_process(["pull", run_id], untrusting).returncode == 0
    listing = clone(origin, tmp_path / "c")
    (listing / "nixrepro.toml").write_text((listing / "nixrepro.toml").read_text()
                                           + f'[archive]\ntrusted_keys = ["{team}"]\n')
    refused = cli_in_process(["pull", run_id], listing)
    assert refused.returncode == 1 and refused.stderr.startswith(
        f"Error: run {run_id} in {remote_url} fails verification (it is signed by 'stranger-1', a key that "
        "[archive] trusted_keys does not list; if that is a team machine's key, add its public half there)")
    assert not (listing / ".nixrepro" / "runs" / run_id).exists()
