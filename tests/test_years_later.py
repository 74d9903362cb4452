"""Years later, on a fresh machine: the record from the team's remote run store, the environment
from the archive, after the input repository, machine A's checkout and every store path are gone.

End to end with the real Nix store, real git and, for ``s3``, the real SeaweedFS: machine A
records a run (pushed to the remote as it ends) and archives it; machine B is a fresh clone whose
only nixrepro state is the committed nixrepro.toml naming the remote and the archive. Only this
test's own store paths are deleted (never a garbage collection: other tests share the store).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Project, delete_store_paths, make_project, run_cli, sh

pytestmark = pytest.mark.nix


def _machine(tmp_path: Path, name: str, extra: dict[str, str]) -> dict[str, str]:
    """A machine's environment: its own key directory and cache (an S3 archive's mirror)."""
    return {**os.environ, **extra, "XDG_CONFIG_HOME": str(tmp_path / name / "config"),
            "XDG_CACHE_HOME": str(tmp_path / name / "cache")}


def _team_key(machine: dict[str, str]) -> str:
    """The team's signing key on machine A (as `nixrepro archive` makes one); its public half."""
    secret = sh(["nix", "key", "generate-secret", "--key-name", f"team-{secrets.token_hex(3)}-1"])
    key_file = Path(machine["XDG_CONFIG_HOME"]) / "nixrepro" / "archive-key.sec"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(secret)
    key_file.chmod(0o600)
    return sh(["nix", "key", "convert-secret-to-public"], input=secret).strip()


def _locations(backend: str, tmp_path: Path,
               request: pytest.FixtureRequest) -> tuple[str, str, dict[str, str]]:
    """(remote run store URL, archive URL, the variables that reach them)."""
    if backend == "file":
        (tmp_path / "shared" / "runs").mkdir(parents=True)  # the share is mounted: it exists
        return f"file://{tmp_path}/shared/runs", f"file://{tmp_path}/shared/nix-archive", {}
    server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket(versioned=False)  # an archive bucket needs no versioning
    return f"s3://{bucket}/runs", f"s3://{bucket}/nix-archive", server.env()


def _self_source(root: Path) -> str:
    """The project's own flake source in the store (nix copied it there to evaluate the flake)."""
    return str(json.loads(sh(["nix", "flake", "metadata", "--json"], cwd=root))["path"])


def _dep_source(record: dict[str, Any]) -> str:
    nar_hash = record["environment"]["inputs"]["dep"]["narHash"]
    return sh(["nix-store", "--print-fixed-path", "--recursive", "sha256", nar_hash, "source"]).strip()


def _team_runs(cwd: Path, machine: dict[str, str]) -> set[str]:
    """The ids `nixrepro runs --remote --json` lists: the team's runs, as any clone sees them."""
    return {row["id"] for row in json.loads(_cli(["runs", "--remote", "--json"], cwd, machine).stdout)}


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> Any:
    result = run_cli(args, cwd=cwd, env=env, timeout=300)
    assert result.returncode == 0, f"nixrepro {' '.join(args)}: {result.stderr}"
    return result


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_years_later_a_fresh_clone_rebuilds_and_reproduces_from_the_remote_and_the_archive(
    backend: str, tmp_path: Path, has_nix: None, request: pytest.FixtureRequest
) -> None:
    remote, archive, reach = _locations(backend, tmp_path, request)
    machine_a = _machine(tmp_path, "a", reach)
    public_key = _team_key(machine_a)
    tag = secrets.token_hex(5)  # store paths of this test's own, also across test sessions
    project = make_project(tmp_path / "a", label=f"later-{tag}", extra_paths=2, greeting=f"hi-{tag}")
    (project.root / "nixrepro.toml").write_text(
        f'[runs]\nremote = "{remote}"\n\n[archive]\nto = "{archive}"\ntrusted_keys = ["{public_key}"]\n')
    project.commit("the team's remote run store and archive")
    origin = tmp_path / "origin.git"
    sh(["git", "clone", "-q", "--bare", str(project.root), str(origin)])

    # machine A: a run, pushed to the remote as it ends, then archived
    ran = _cli(["run", "--flake", ".#env", "-p", "lr=0.3", "--seed", "5", "--name", "base", "--",
                sys.executable, "train.py"], project.root, machine_a)
    assert "not pushed" not in ran.stderr
    record = json.loads(_cli(["show", "@latest", "--json"], project.root, machine_a).stdout)
    run_id, env = record["id"], record["environment"]
    assert (project.runs_dir / run_id / "record.sig").is_file()  # signed by the team key as it ended
    assert run_id in _team_runs(project.root, machine_a)  # pushed as it ended
    archived = _cli(["archive", run_id], project.root, machine_a)
    assert archived.stdout.startswith(f"archived run {run_id[:8]} to {archive} (runtime, sources;")

    # years pass: the input repository, machine A and every store path of the run are gone
    gone = [env["env_path"], sh(["nix-store", "--query", "--deriver", env["env_path"]]).strip(),
            *(p["path"] for p in env["closure"]), _dep_source(record), _self_source(project.root)]
    _cli(["gc-roots", "remove", run_id], project.root, machine_a)
    shutil.rmtree(project.dep)
    shutil.rmtree(tmp_path / "a")
    delete_store_paths(gone)
    assert not any(Path(p).exists() for p in gone)

    # machine B: a fresh clone, only the committed nixrepro.toml, no .nixrepro/, no key of its own
    machine_b = _machine(tmp_path, "b", reach)
    clone = tmp_path / "b" / "project"
    sh(["git", "clone", "-q", str(origin), str(clone)])
    assert not (clone / ".nixrepro").exists()
    rebuilt = json.loads(_cli(["rebuild", run_id[:10], "--json"], clone, machine_b).stdout)
    assert (rebuilt["identical"], rebuilt["env_path"], rebuilt["closure_hash"]) == (
        True, env["env_path"], env["closure_hash"])
    assert rebuilt["source"] is not None  # substituted from the archive: the sources were gone
    assert Path(_dep_source(record)).is_dir()
    verified = _cli(["verify", run_id], clone, machine_b)  # the pulled record, against the store
    assert "signed by team-" in verified.stdout

    reproduced = _cli(["reproduce", run_id[:10], "--json"], clone, machine_b)
    doc = json.loads(reproduced.stdout)
    assert (doc["parent"], doc["status"], doc["within_tolerance"]) == (run_id, "succeeded", True)
    child = json.loads(_cli(["show", doc["run"], "--json"], clone, machine_b).stdout)
    assert child["environment"]["closure_hash"] == env["closure_hash"]
    assert (child["params"], child["seed"], child["metrics"]) == (
        record["params"], record["seed"], record["metrics"])
    assert {run_id, doc["run"]} <= _team_runs(clone, machine_b)  # the reproduction is the team's too

    if backend == "file":  # later still, the share is gone too: the archive alone has the record
        shutil.rmtree(Path(remote.removeprefix("file://")))
        machine_d = _machine(tmp_path, "d", reach)
        last = tmp_path / "d" / "project"
        sh(["git", "clone", "-q", str(origin), str(last)])
        rebuilt_again = _cli(["rebuild", run_id], last, machine_d)
        assert "does not exist" in rebuilt_again.stderr and "Looking for run" in rebuilt_again.stderr
        assert rebuilt_again.stdout.splitlines() == [
            f"run {run_id[:8]}: record from the archive {archive} (record_sha256 matches, signed by "
            f"{public_key.split(':')[0]})",
            f"identical: {env['env_path']} has the recorded closure hash {env['closure_hash']} "
            f"({len(env['closure'])} paths)"]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_an_archive_alone_rebuilds_a_run_on_a_machine_with_no_run_store_and_no_remote(
    backend: str, tmp_path: Path, has_nix: None, request: pytest.FixtureRequest
) -> None:
    _, archive, reach = _locations(backend, tmp_path, request)
    machine_a = _machine(tmp_path, "a", reach)
    tag = secrets.token_hex(5)
    project: Project = make_project(tmp_path / "a", label=f"alone-{tag}", greeting=f"alone-{tag}")
    _cli(["run", "--flake", ".#env", "--", sys.executable, "train.py"], project.root, machine_a)
    record = json.loads(_cli(["show", "@latest", "--json"], project.root, machine_a).stdout)
    _cli(["archive", record["id"], "--to", archive], project.root, machine_a)
    clone = tmp_path / "c"
    sh(["git", "clone", "-q", str(project.root), str(clone)])
    env = record["environment"]
    gone = [env["env_path"], sh(["nix-store", "--query", "--deriver", env["env_path"]]).strip(),
            *(p["path"] for p in env["closure"]), _dep_source(record)]
    _cli(["gc-roots", "remove", record["id"]], project.root, machine_a)
    shutil.rmtree(project.dep)
    delete_store_paths(gone)

    machine_c = _machine(tmp_path, "c", reach)  # no key, no cache, no nixrepro.toml, no run store
    rebuilt = _cli(["rebuild", record["id"][:8], "--from", archive], clone, machine_c)
    assert rebuilt.stdout.splitlines()[-1].startswith(
        f"identical: {env['env_path']} has the recorded closure hash {env['closure_hash']}")
    assert f"record from the archive {archive}" in rebuilt.stdout
    assert "no trusted key on this machine; trusting the key the archive names" in rebuilt.stderr
    assert not (clone / ".nixrepro").exists()


def test_a_run_pushed_unsigned_gets_its_signature_pushed_when_it_is_archived(
    tmp_path: Path, has_nix: None, request: pytest.FixtureRequest
) -> None:
    remote, archive, _ = _locations("file", tmp_path, request)
    machine = _machine(tmp_path, "a", {})  # no key yet: the run ends unsigned
    project = make_project(tmp_path / "a", label=f"unsigned-{secrets.token_hex(5)}")
    (project.root / "nixrepro.toml").write_text(f'[runs]\nremote = "{remote}"\n')
    project.commit("a remote run store")
    _cli(["run", "--flake", ".#env", "--", sys.executable, "-c", "pass"], project.root, machine)
    run_id = json.loads(_cli(["show", "@latest", "--json"], project.root, machine).stdout)["id"]
    pushed = Path(remote.removeprefix("file://")) / "runs" / run_id
    assert (pushed / "record.json").is_file() and not (pushed / "record.sig").exists()
    archived = _cli(["archive", run_id, "--to", archive], project.root, machine)
    assert archived.stdout.splitlines()[-1] == f"pushed the signed record to {remote}"
    assert (pushed / "record.sig").read_bytes() == (project.runs_dir / run_id / "record.sig").read_bytes()
    again = _cli(["archive", run_id, "--to", archive], project.root, machine)
    assert "pushed the signed record" not in again.stdout  # signed already: nothing new to push


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's own
def test_a_dashboard_row_leads_to_the_record_in_the_remote_run_store(
    tmp_path: Path, has_nix: None, request: pytest.FixtureRequest
) -> None:
    from mlflow.tracking import MlflowClient

    from tests import wandb_log

    remote, _, _ = _locations("file", tmp_path, request)
    machine = {key: value for key, value in _machine(tmp_path, "a", {}).items()
               if not key.startswith(("WANDB_", "MLFLOW_"))}
    machine.update(WANDB_SILENT="true", MLFLOW_DISABLE_TELEMETRY="true")
    project = make_project(tmp_path / "a", label=f"dash-{secrets.token_hex(5)}")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (project.root / "nixrepro.toml").write_text(
        f'[runs]\nremote = "{remote}"\n\n[trackers.wandb]\nproject = "p"\nmode = "offline"\n\n'
        f'[trackers.mlflow]\ntracking_uri = "{tracking}"\nexperiment = "e"\n')
    project.commit("trackers and a remote run store")
    _cli(["run", "--flake", ".#env", "--", sys.executable, "train.py"], project.root, machine)
    run_id = json.loads(_cli(["show", "@latest", "--json"], project.root, machine).stdout)["id"]
    where = {"store": remote, "record": f"{remote}/runs/{run_id}/record.json"}
    assert Path(where["record"].removeprefix("file://")).is_file()  # the row's link is the record

    (offline,) = (project.root / ".nixrepro" / "wandb").glob("offline-run-*")
    assert wandb_log.read(offline).config["nixrepro"]["remote"] == where
    client = MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    tags = run.data.tags
    assert {key: tags[f"nixrepro.remote.{key}"] for key in where} == where
