"""`nixrepro archive`, `rebuild`, `reproduce`: bring an environment back after its sources are gone.

Real git, real Nix store, real binary caches. Only this test's own store paths are deleted (never a
garbage collection of the whole store: other tests use it at the same time).
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

from nixrepro.closure import StorePathInfo, closure_hash
from nixrepro.record import record_sha256
from tests.helpers import Project, delete_store_paths, make_project, sh

pytestmark = pytest.mark.nix


@pytest.fixture
def unique_project(tmp_path: Path, has_nix: None, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project whose dep input has a source of its own in the store (safe to delete)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the signing key lives here
    tag = secrets.token_hex(5)  # store paths of their own, also across test sessions
    return make_project(tmp_path, label=f"arch-{tag}", extra_paths=2, greeting=f"hello-{tag}")


def _run(project: Project, *args: str) -> dict[str, Any]:
    result = project.nixrepro("run", "--flake", ".#env", *args, "--", sys.executable, "train.py")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(project.nixrepro("show", "@latest", "--json").stdout))


def _dep_source(record: dict[str, Any]) -> str:
    nar_hash = record["environment"]["inputs"]["dep"]["narHash"]
    return sh(["nix-store", "--print-fixed-path", "--recursive", "sha256", nar_hash, "source"]).strip()


def _forget_environment(project: Project, record: dict[str, Any]) -> list[str]:
    """Unpin and delete the env, its derivation, its closure and the dep's source."""
    env = record["environment"]["env_path"]
    drv = sh(["nix-store", "--query", "--deriver", env]).strip()
    assert project.nixrepro("gc-roots", "remove", record["id"]).returncode == 0
    gone = [env, drv, *(p["path"] for p in record["environment"]["closure"]), _dep_source(record)]
    delete_store_paths(gone)
    assert not any(Path(p).exists() for p in gone)
    return gone


def test_years_later_rebuild_from_the_archive_after_the_input_repository_is_gone(
    unique_project: Project, tmp_path: Path
) -> None:
    project = unique_project
    record = _run(project)
    record_file = project.runs_dir / record["id"] / "record.json"
    before = record_file.read_bytes()
    archive_dir = tmp_path / "archive"
    result = project.nixrepro("archive", record["id"], "--to", f"file://{archive_dir}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"archived run {record['id'][:8]} to file://{archive_dir} "
                                    "(runtime, sources;")
    assert record_file.read_bytes() == before  # the record and its record_sha256 are untouched
    entries = json.loads((project.runs_dir / record["id"] / "archives.json").read_text())
    public_key = (tmp_path / "config" / "nixrepro" / "archive-key.pub").read_text().strip()
    assert [(e["url"], e["public_key"], e["levels"]) for e in entries] == [
        (f"file://{archive_dir}", public_key, ["runtime", "sources"])]
    narinfo = (archive_dir / (Path(record["environment"]["env_path"]).name[:32] + ".narinfo")).read_text()
    assert f"Sig: {public_key.split(':')[0]}:" in narinfo
    assert project.nixrepro("verify", record["id"]).returncode == 0

    # years later: the input repository is gone, and so is everything in the store
    shutil.rmtree(project.dep)
    _forget_environment(project, record)

    # without the archive the rebuild fails and names the source that is gone
    sidecar = project.runs_dir / record["id"] / "archives.json"
    sidecar.rename(sidecar.with_suffix(".away"))
    failed = project.nixrepro("rebuild", record["id"])
    assert failed.returncode == 1
    dep = record["environment"]["inputs"]["dep"]
    assert failed.stderr == (
        f"Error: the source of flake input 'dep' ({dep['url']} at rev {dep['rev'][:12]}) is gone: "
        "it is not in the Nix store, not at its URL, and no archive was given; rebuild with --from "
        "the URL of an archive made by `nixrepro archive`.\n"
    )
    assert sh(["git", "worktree", "list"], cwd=project.root).count("\n") == 1  # cleaned up

    # with the archive recorded beside the run: the identical closure
    sidecar.with_suffix(".away").rename(sidecar)
    rebuilt = project.nixrepro("rebuild", record["id"])
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == (
        f"identical: {record['environment']['env_path']} has the recorded closure hash "
        f"{record['environment']['closure_hash']} ({len(record['environment']['closure'])} paths)\n"
    )
    assert Path(_dep_source(record)).is_dir()  # the input's source came back from the archive
    assert project.nixrepro("verify", record["id"], "--contents").returncode == 0


def test_a_substitute_must_be_signed_by_the_archive_key(
    unique_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = unique_project
    env = project.build_env()
    result = project.nixrepro("run", "--env", env, "--", "true")  # no flake to build it from
    assert result.returncode == 0, result.stderr
    record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    archive_dir = tmp_path / "archive"
    assert project.nixrepro("archive", "@latest", "--to", f"file://{archive_dir}").returncode == 0
    (project.runs_dir / record["id"] / "archives.json").unlink()
    _forget_environment(project, record)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))  # another local key
    refused = project.nixrepro("rebuild", record["id"], "--from", f"file://{archive_dir}")
    assert refused.returncode == 1
    assert f"the substitute for '{env}' from 'file://{archive_dir}' is not signed" in refused.stderr
    assert not Path(env).exists()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the key that signed it
    restored = project.nixrepro("rebuild", record["id"], "--from", f"file://{archive_dir}")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(f"identical: {env} ")


def test_rebuild_reports_a_closure_that_differs_from_the_record(unique_project: Project) -> None:
    project = unique_project
    record = _run(project)
    path = project.runs_dir / record["id"] / "record.json"
    doc = json.loads(path.read_text())
    entry = next(p for p in doc["environment"]["closure"] if p["path"] == doc["environment"]["env_path"])
    entry["narHash"] = "sha256-" + "B" * 43 + "="  # as if recorded from a non-reproducible build
    doc["environment"]["closure_hash"] = closure_hash(
        StorePathInfo(**p) for p in doc["environment"]["closure"])
    doc["record_sha256"] = record_sha256(doc)
    path.write_text(json.dumps(doc))
    result = project.nixrepro("rebuild", record["id"])
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(
        "same recipe but different bits: the same 3 store paths, 1 with different contents")
    assert record["environment"]["env_path"] in result.stdout


def test_reproduce_runs_again_as_a_child_with_identical_metrics(
    unique_project: Project, tmp_path: Path
) -> None:
    project = unique_project
    record = _run(project, "-p", "lr=0.3", "--seed", "11", "--name", "base", "--tag", "t1")
    archive_dir = tmp_path / "archive"
    assert project.nixrepro("archive", "@latest", "--to", f"file://{archive_dir}").returncode == 0
    shutil.rmtree(project.dep)
    _forget_environment(project, record)
    result = project.nixrepro("reproduce", record["id"][:6], "--from", f"file://{archive_dir}")
    assert result.returncode == 0, result.stderr
    child = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    assert child["id"] != record["id"] and child["parent"] == record["id"]
    for key in ("params", "seed", "name", "tags"):
        assert child[key] == record[key]
    assert child["command"]["argv"] == record["command"]["argv"]
    assert child["environment"]["closure_hash"] == record["environment"]["closure_hash"]
    assert child["metrics"] == record["metrics"]
    assert f"reproduced run {record['id'][:8]} as run {child['id'][:8]} (succeeded)" in result.stdout
    assert result.stdout.splitlines()[-1] == "metrics within rtol=0 (bit-identical)"


def test_reproduce_flags_metrics_outside_the_tolerance(unique_project: Project) -> None:
    project = unique_project
    (project.root / "noisy.py").write_text(
        "import os, nixrepro\nnixrepro.log({'score': int.from_bytes(os.urandom(4), 'big') + 1})\n")
    project.commit("a noisy experiment")
    result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "noisy.py")
    assert result.returncode == 0, result.stderr
    result = project.nixrepro("reproduce", "@latest", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["within_tolerance"] is False and doc["status"] == "succeeded"
    assert [(m["name"], m["within"]) for m in doc["metrics"]] == [("score", False)]


def test_reproduce_refuses_when_head_is_not_the_recorded_commit(unique_project: Project) -> None:
    project = unique_project
    record = _run(project)
    (project.root / "notes.txt").write_text("later work\n")
    project.commit("later")
    result = project.nixrepro("reproduce", record["id"])
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: run {record['id'][:8]} was recorded at commit {record['code']['commit'][:12]} but HEAD "
        f"is {sh(['git', 'rev-parse', 'HEAD'], cwd=project.root).strip()[:12]}; check it out "
        f"(`git checkout {record['code']['commit'][:12]}`) and reproduce again.\n"
    )


def test_archive_needs_a_location(unique_project: Project) -> None:
    _run(unique_project)
    result = unique_project.nixrepro("archive", "@latest")
    assert result.returncode == 2
    assert result.stderr == (
        "Error: no archive location; pass --to file:///dir or s3://bucket/prefix, or set "
        "[archive] to in nixrepro.toml.\n"
    )
    result = unique_project.nixrepro("archive", "@latest", "--to", "http://example.invalid/x")
    assert result.returncode == 2 and "neither file:///dir nor s3://bucket/prefix" in result.stderr


def test_archive_with_build_deps_keeps_the_derivations(unique_project: Project, tmp_path: Path) -> None:
    project = unique_project
    record = _run(project)
    archive_dir = tmp_path / "archive"
    result = project.nixrepro("archive", "@latest", "--to", f"file://{archive_dir}", "--build-deps")
    assert result.returncode == 0, result.stderr
    assert "(runtime, sources, build-deps;" in result.stdout
    drv = sh(["nix-store", "--query", "--deriver", record["environment"]["env_path"]]).strip()
    assert (archive_dir / (Path(drv).name[:32] + ".narinfo")).is_file()
    config = project.root / "nixrepro.toml"
    config.write_text(f'[archive]\nto = "file://{tmp_path / "second"}"\n')
    project.commit("archive location")
    again = project.nixrepro("archive", record["id"])
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "second" / "nix-cache-info").is_file()
    kept = json.loads((project.runs_dir / record["id"] / "archives.json").read_text())
    assert [e["url"] for e in kept] == [f"file://{archive_dir}", f"file://{tmp_path / 'second'}"]
    assert os.stat(tmp_path / "config" / "nixrepro" / "archive-key.sec").st_mode & 0o777 == 0o600


def test_an_s3_archive_brings_the_environment_back_on_a_machine_without_its_mirror(
    unique_project: Project, tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = unique_project
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the local mirror of the archive
    record = _run(project)
    url = f"s3://{s3_server.new_bucket()}/nix"
    archived = project.nixrepro("archive", record["id"], "--to", url)
    assert archived.returncode == 0, archived.stderr
    client, bucket = s3_server.client(), url[5:].split("/")[0]
    objects = client.list_object_versions(Bucket=bucket, Prefix="nix/")["Versions"]
    assert any(o["Key"] == "nix/nix-cache-info" for o in objects)
    assert any(o["Key"].endswith(".narinfo") for o in objects)
    again = project.nixrepro("archive", record["id"], "--to", url)
    assert again.returncode == 0, again.stderr
    rewritten = client.list_object_versions(Bucket=bucket, Prefix="nix/")["Versions"]
    counts = {key: sum(o["Key"] == key for o in rewritten) for key in {o["Key"] for o in rewritten}}
    assert counts.pop("nix/nix-cache-info") == 2  # always rewritten; nothing else uploaded again
    assert set(counts.values()) == {1}

    shutil.rmtree(project.dep)
    _forget_environment(project, record)
    shutil.rmtree(tmp_path / "cache")  # another machine: nothing mirrored locally
    rebuilt = project.nixrepro("rebuild", record["id"])
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith(f"identical: {record['environment']['env_path']}")
