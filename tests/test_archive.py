"""`nixrepro archive`, `rebuild`, `reproduce`: bring an environment back after its sources are gone.

Real git, real Nix store, real binary caches. Only this test's own store paths are deleted (never a
garbage collection of the whole store: other tests use it at the same time).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nixrepro.closure import StorePathInfo, closure_hash
from nixrepro.record import record_sha256, summary_sha256
from tests.helpers import Project, delete_store_paths, make_project, run_cli, set_env, sh

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
    other = tmp_path / "someone-else" / "nixrepro" / "archive-key.sec"  # another local key
    other.parent.mkdir(parents=True)
    other.write_text(sh(["nix", "key", "generate-secret", "--key-name", "someone-else-1"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))
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
    # the cache's front and the run's record are rewritten; no narinfo or NAR is uploaded again
    assert {key for key, count in counts.items() if count == 2} == {
        "nix/nix-cache-info", "nix/README.md", "nix/public-keys.txt",
        *(f"nix/runs/{record['id']}/{name}" for name in
          ("record.json", "record.sig", "stdout.log", "stderr.log", "metrics.jsonl", "archive.json"))}
    assert all(count == 1 for key, count in counts.items() if key.endswith((".narinfo", ".nar.zst")))
    set_env(project, label=f"other-{record['id'][:8]}")  # a second environment in the same archive
    other = _run(project)
    assert project.nixrepro("archive", other["id"], "--to", url).returncode == 0

    shutil.rmtree(project.dep)
    _forget_environment(project, record)
    shutil.rmtree(tmp_path / "cache")  # another machine: nothing mirrored locally
    rebuilt = project.nixrepro("rebuild", record["id"])
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith(f"identical: {record['environment']['env_path']}")
    mirror = tmp_path / "cache" / "nixrepro" / "archives" / bucket / "nix"
    fetched = {p.name[:32] for p in mirror.glob("*.narinfo")}
    assert {Path(p["path"]).name[:32] for p in record["environment"]["closure"]} <= fetched
    assert Path(other["environment"]["env_path"]).name[:32] not in fetched  # only what it needs
    assert not (mirror / "runs").exists()


# --- archives that stand alone ------------------------------------------------------------------------


def _fresh_clone(project: Project, tmp_path: Path, name: str = "machine-b") -> Path:
    """Another machine's checkout: the repository alone, no .nixrepro/."""
    clone = tmp_path / name
    sh(["git", "clone", "-q", str(project.root), str(clone)])
    assert not (clone / ".nixrepro").exists()
    return clone


def _readme_block(readme: str, heading: str) -> str:
    """The indented commands under ``## heading`` of the archive's README, as a shell script."""
    section = readme.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines, started = [], False
    for line in section.splitlines():
        if line.startswith("    "):
            lines.append(line[4:])
            started = True
        elif started and line.strip():
            break
    return "\n".join(lines) + "\n"


def test_an_archive_carries_the_record_and_a_readme_that_restores_the_environment_with_plain_nix(
    unique_project: Project, tmp_path: Path
) -> None:
    project = unique_project
    record = _run(project)
    archive_dir = tmp_path / "archive"
    assert project.nixrepro("archive", record["id"], "--to", f"file://{archive_dir}").returncode == 0
    run_dir, carried = project.runs_dir / record["id"], archive_dir / "runs" / record["id"]
    for name in ("record.json", "record.sig", "stdout.log", "stderr.log", "metrics.jsonl"):
        assert (carried / name).read_bytes() == (run_dir / name).read_bytes(), name
    entry = json.loads((carried / "archive.json").read_text())
    public_key = (tmp_path / "config" / "nixrepro" / "archive-key.pub").read_text().strip()
    assert (entry["url"], entry["public_key"], entry["levels"]) == (
        f"file://{archive_dir}", public_key, ["runtime", "sources"])
    assert (archive_dir / "public-keys.txt").read_text() == public_key + "\n"
    readme = (archive_dir / "README.md").read_text()
    assert f"    {public_key}\n" in readme

    # years later, nixrepro is not installed: the README's commands alone bring the closure back
    shutil.rmtree(project.dep)
    gone = _forget_environment(project, record)
    script = _readme_block(readme, "Restore a run's environment").replace("<run id>", record["id"])
    script += _readme_block(readme, "Check that it is the recorded closure")
    plain = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    plain["PATH"] = "/usr/bin:/bin"  # nix and jq, no nixrepro
    out = sh(["bash", "-euo", "pipefail", "-c", script], cwd=archive_dir, env=plain)
    assert out.splitlines()[0] == record["id"]  # ls runs/
    assert out.splitlines()[-1] == "identical"
    closure = [p["path"] for p in record["environment"]["closure"]]
    assert all(Path(p).exists() for p in closure) and set(closure) <= set(gone)
    assert project.nixrepro("verify", record["id"]).returncode == 0  # the store agrees with the record


def test_a_readme_copy_with_a_key_nix_does_not_trust_is_refused_by_nix(
    unique_project: Project, tmp_path: Path
) -> None:
    project = unique_project
    record = _run(project)
    archive_dir = tmp_path / "archive"
    assert project.nixrepro("archive", record["id"], "--to", f"file://{archive_dir}").returncode == 0
    _forget_environment(project, record)
    other = sh(["nix", "key", "convert-secret-to-public"],
               input=sh(["nix", "key", "generate-secret", "--key-name", "mallory-1"]))
    (archive_dir / "public-keys.txt").write_text(other)  # a key swapped in: nix refuses the paths
    readme = (archive_dir / "README.md").read_text()
    script = _readme_block(readme, "Restore a run's environment").replace("<run id>", record["id"])
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=archive_dir,
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "signature" in result.stderr
    assert not Path(record["environment"]["env_path"]).exists()


def test_rebuild_from_an_archive_with_no_run_store_at_all(unique_project: Project, tmp_path: Path) -> None:
    project = unique_project
    record = _run(project)
    archive_dir = tmp_path / "archive"
    url = f"file://{archive_dir}"
    assert project.nixrepro("archive", record["id"], "--to", url).returncode == 0
    shutil.rmtree(project.dep)
    _forget_environment(project, record)
    clone = _fresh_clone(project, tmp_path)

    rebuilt = run_cli(["rebuild", record["id"][:7], "--from", url], cwd=clone)
    assert rebuilt.returncode == 0, rebuilt.stderr
    key_name = (tmp_path / "config" / "nixrepro" / "archive-key.pub").read_text().split(":")[0]
    assert rebuilt.stdout.splitlines() == [
        f"run {record['id'][:8]}: record from the archive {url} (record_sha256 matches, signed by "
        f"{key_name})",
        f"identical: {record['environment']['env_path']} has the recorded closure hash "
        f"{record['environment']['closure_hash']} ({len(record['environment']['closure'])} paths)",
    ]
    assert not (clone / ".nixrepro").exists()  # a rebuild reads; it writes no run store
    as_json = json.loads(run_cli(["rebuild", record["id"], "--from", url, "--json"], cwd=clone).stdout)
    assert (as_json["identical"], as_json["record_from"]) == (True, url)
    missing = run_cli(["rebuild", "0123456789ab", "--from", url], cwd=clone)
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"Error: no run matches '0123456789ab' in the archive {url}; ")


def test_an_archived_record_that_fails_verification_is_refused(
    unique_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = unique_project
    record = _run(project)
    archive_dir = tmp_path / "archive"
    url = f"file://{archive_dir}"
    assert project.nixrepro("archive", record["id"], "--to", url).returncode == 0
    clone = _fresh_clone(project, tmp_path)
    carried = archive_dir / "runs" / record["id"] / "record.json"
    original = carried.read_bytes()

    doc = json.loads(original)
    doc["metrics"]["loss"] = 0.0001  # a better result, written in by hand
    carried.write_text(json.dumps(doc))
    edited = run_cli(["rebuild", record["id"], "--from", url], cwd=clone)
    assert edited.returncode == 1
    assert edited.stderr.startswith(
        f"Error: run {record['id']}'s record in the archive {url} fails verification (record: "
        "record_sha256 is ")
    doc["summary_sha256"] = summary_sha256(doc)
    doc["record_sha256"] = record_sha256(doc)  # the hashes recomputed: the signature catches it
    carried.write_text(json.dumps(doc))
    forged = run_cli(["rebuild", record["id"], "--from", url], cwd=clone)
    assert forged.returncode == 1 and "fails verification (signature: the signature by" in forged.stderr

    carried.write_bytes(original)
    other = tmp_path / "other-config" / "nixrepro" / "archive-key.sec"
    other.parent.mkdir(parents=True)
    other.write_text(sh(["nix", "key", "generate-secret", "--key-name", "someone-else-1"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-config"))  # a project key of its own
    untrusted = run_cli(["rebuild", record["id"], "--from", url], cwd=clone)
    assert untrusted.returncode == 1
    assert "which this project does not trust (someone-else-1); if you trust it, add its public " \
           "key (in public-keys.txt there) to [archive] trusted_keys in nixrepro.toml." in untrusted.stderr
    public = (archive_dir / "public-keys.txt").read_text().strip()
    (clone / "nixrepro.toml").write_text(f'[archive]\ntrusted_keys = ["{public}"]\n')
    trusted = run_cli(["rebuild", record["id"], "--from", url], cwd=clone)
    assert trusted.returncode == 0, trusted.stderr

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-keys"))  # a machine that trusts no key
    (clone / "nixrepro.toml").unlink()
    first_use = run_cli(["rebuild", record["id"], "--from", url], cwd=clone)
    assert first_use.returncode == 0, first_use.stderr
    assert "warning: no trusted key on this machine; trusting the key the archive names" in first_use.stderr


def test_rebuild_from_what_is_no_archive_or_with_a_malformed_trusted_key_is_one_sentence(
    tmp_path: Path, has_nix: None
) -> None:
    project = make_project(tmp_path, label="no-archive")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = project.nixrepro("rebuild", "3f9a2c", "--from", f"file://{empty}")
    assert (result.returncode, result.stderr) == (2, (
        f"Error: file://{empty} is not an archive (no nix-cache-info); give the URL that "
        "`nixrepro archive` wrote to.\n"))
    result = project.nixrepro("rebuild", "3f9a2c", "--from", "ftp://example.invalid/x")
    assert result.returncode == 2 and "neither file:///dir nor s3://bucket/prefix" in result.stderr
    (project.root / "nixrepro.toml").write_text('[archive]\ntrusted_keys = ["team-1:not base64"]\n')
    result = project.nixrepro("rebuild", "3f9a2c", "--from", f"file://{empty}")
    assert (result.returncode, result.stderr) == (2, (
        f"Error: {project.root / 'nixrepro.toml'}: 'archive.trusted_keys[0]' is 'team-1:not base64', "
        "not a Nix public key; give it as `nix key convert-secret-to-public` prints it (name:base64).\n"))
