"""Adversarial: listings never show what `verify` would reject; one bad record never breaks `runs`;
a record's signature, summary and files are what `verify` proves. Real git, real Nix store, real
`nix key generate-secret` keys; each test is named after the promise it checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nixrepro.record import RunRecord, record_sha256, summary_sha256
from nixrepro.runstore import SUMMARY_FILE, RunStore
from tests.helpers import Project, run_cli, sh
from tests.test_runstore import make_store

FIXTURE = Path(__file__).parent / "fixtures" / "record-minimal.json"


@pytest.fixture(autouse=True)
def _own_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own XDG_CONFIG_HOME: no signing key unless it makes one."""
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


def _make_key(config: Path, name: str = "lab-key-1") -> str:
    """A real Nix signing key where nixrepro looks for the project's key; returns the public key."""
    secret = sh(["nix", "key", "generate-secret", "--key-name", name])
    (config / "nixrepro").mkdir(parents=True, exist_ok=True)
    (config / "nixrepro" / "archive-key.sec").write_text(secret)
    return subprocess.run(["nix", "key", "convert-secret-to-public"], input=secret,
                          capture_output=True, text=True, check=True).stdout.strip()


def _repo_store(tmp_path: Path, count: int = 3) -> tuple[Path, RunStore, list[RunRecord]]:
    """A git repository whose run store holds ``count`` finished runs (from the fixture record)."""
    root = tmp_path / "repo"
    root.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    store, saved = make_store(root, count)  # RunStore(root / ".nixrepro"): the repository's store
    assert store == RunStore.for_repo(root)
    return root, store, saved


def _rewrite(path: Path, edit: Any, *, rehash: bool) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    if rehash:  # what a forger does: recompute every hash nixrepro would check
        doc["summary_sha256"] = summary_sha256(doc)
        doc["record_sha256"] = record_sha256(doc)
    path.write_text(json.dumps(doc))


def _set(path: tuple[str, ...], value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value
    return edit


def _listed(root: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["runs", "--json"], cwd=root)


# --- listings never show what verify would reject --------------------------------------------


@pytest.mark.parametrize("recompute_own_fields", [False, True])
def test_an_edited_summary_is_never_listed(tmp_path: Path, recompute_own_fields: bool) -> None:
    root, store, saved = _repo_store(tmp_path)
    path = store.run_dir(saved[0].id) / SUMMARY_FILE
    doc = json.loads(path.read_text())
    doc["summary"]["metrics"] = {"loss": -1.0}  # a better-looking result
    if recompute_own_fields:  # a forger who makes the summary consistent with itself
        doc["summary"]["summary_sha256"] = summary_sha256(doc["summary"])
    path.write_text(json.dumps(doc))
    listed = {r["id"]: r for r in json.loads(_listed(root).stdout)}
    assert listed[saved[0].id]["metrics"] == {"loss": 0}
    assert store.latest(2).metrics == {"loss": 0}


def test_a_record_edited_in_place_with_its_mtime_restored_is_not_listed_from_the_old_summary(
        tmp_path: Path) -> None:
    root, store, saved = _repo_store(tmp_path)
    path = store.run_dir(saved[1].id) / "record.json"
    before = path.stat()
    text = path.read_text()
    assert text.count('"loss": 1}') == 1
    path.write_text(text.replace('"loss": 1}', '"loss": 7}'))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime
    assert path.stat().st_size == before.st_size
    result = _listed(root)
    listed = {r["id"]: r for r in json.loads(result.stdout)}
    assert saved[1].id not in listed  # verify fails it: no listing shows it, old or new
    assert f"{saved[1].id}'s record.json does not hash to its record_sha256" in result.stderr
    assert result.stderr.count("is left out of the listing") == 1


def test_a_record_whose_summary_hash_was_not_recomputed_is_left_out(tmp_path: Path) -> None:
    root, store, saved = _repo_store(tmp_path)
    path = store.run_dir(saved[0].id) / "record.json"
    doc = json.loads(path.read_text())
    doc["metrics"] = {"loss": -1}
    doc["record_sha256"] = record_sha256(doc)  # only the documented hash recomputed
    path.write_text(json.dumps(doc))
    result = _listed(root)
    assert saved[0].id not in {r["id"] for r in json.loads(result.stdout)}
    assert "does not hash to its summary_sha256" in result.stderr


# --- one bad record never breaks the store -----------------------------------------------------


WRONG_TYPES = [
    (("started_at",), 5, "started_at is an integer, it must be a string"),
    (("id",), 12, "id is an integer"),
    (("tags",), "abc", "tags is a string, it must be a list"),
    (("metrics",), [1], "metrics is a list, it must be an object"),
    (("metrics",), {"loss": {"x": 1}}, "metrics.loss is an object"),
    (("params",), {"lr": [0.1]}, "params.lr is a list"),
    (("duration_s",), "fast", "duration_s is a string, it must be a number"),
    (("exit_code",), True, "exit_code is a boolean, it must be an integer"),
    (("dev",), "yes", "dev is a string, it must be a boolean"),
    (("command", "argv"), "python train.py", "command.argv is a string"),
    (("environment", "closure_hash"), None, None),  # a required string: refused however
    (("host",), "a laptop", "host is a string, it must be an object"),
    (("code",), None, None),
]


@pytest.mark.parametrize(("path", "value", "named"), WRONG_TYPES, ids=lambda x: str(x)[:30])
def test_one_record_with_a_wrong_typed_field_is_skipped_with_one_warning_naming_it(
        tmp_path: Path, path: tuple[str, ...], value: Any, named: str | None) -> None:
    root, store, saved = _repo_store(tmp_path)
    bad = saved[1].id
    _rewrite(store.run_dir(bad) / "record.json", _set(path, value), rehash=True)
    (store.run_dir(bad) / SUMMARY_FILE).unlink()
    result = _listed(root)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert [r["id"] for r in json.loads(result.stdout)] == [saved[2].id, saved[0].id]
    warnings = [line for line in result.stderr.splitlines() if "is left out of the listing" in line]
    assert len(warnings) == 1 and bad in warnings[0]
    if named:
        assert named in warnings[0]
    text = run_cli(["runs"], cwd=root)  # the table, groups and @latest~N read the same listing
    assert text.returncode == 0 and "Traceback" not in text.stderr and saved[0].id[:8] in text.stdout
    assert run_cli(["show", "@latest~1"], cwd=root).stdout.startswith(f"run {saved[0].id}")


# --- verify covers the signature, the summary and the run's files -------------------------------


def _run(project: Project) -> dict[str, Any]:
    metric = '{"time": 1.0, "step": 1, "metrics": {"loss": 0.5}}'  # any language may write it
    result = project.nixrepro("run", "--flake", ".#env", "--", "sh", "-c",
                              f"echo out; echo err >&2; echo '{metric}' >> $NIXREPRO_RUN_DIR/metrics.jsonl")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(project.nixrepro("show", "@latest", "--json").stdout))


def _verify(project: Project, run_id: str) -> tuple[int, dict[str, tuple[str, str]]]:
    result = project.nixrepro("verify", run_id, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)
    return result.returncode, {c["name"]: (c["result"], c["detail"]) for c in doc["checks"]}


@pytest.mark.nix
def test_a_finished_run_records_the_hash_of_its_logs_and_metrics(project: Project) -> None:
    record = _run(project)
    run_dir = project.runs_dir / record["id"]
    assert set(record["files"]) == {"stdout.log", "stderr.log", "metrics.jsonl"}
    for name, digest in record["files"].items():
        assert digest == sh(["sha256sum", str(run_dir / name)]).split()[0]
    code, checks = _verify(project, record["id"])
    assert code == 0 and checks["run files"][0] == "pass" and checks["summary"][0] == "pass"


@pytest.mark.nix
@pytest.mark.parametrize("fault", ["edit stdout.log", "append metric", "delete stderr.log",
                                   "edit summary"])
def test_a_file_edited_after_the_run_ended_fails_verify(project: Project, fault: str) -> None:
    record = _run(project)
    run_dir = project.runs_dir / record["id"]
    if fault == "edit stdout.log":
        (run_dir / "stdout.log").write_text("all good\n")
    elif fault == "append metric":
        with open(run_dir / "metrics.jsonl", "a") as metrics:
            metrics.write(json.dumps({"time": 1.0, "step": 2, "metrics": {"loss": 0.01}}) + "\n")
    elif fault == "delete stderr.log":
        (run_dir / "stderr.log").unlink()
    else:
        _rewrite(run_dir / SUMMARY_FILE, _set(("summary", "metrics"), {"loss": 0.01}), rehash=False)
    code, checks = _verify(project, record["id"])
    assert code == 1
    failed = [name for name, (result, _) in checks.items() if result == "fail"]
    assert failed == (["summary"] if fault == "edit summary" else ["run files"])
    assert checks["record"][0] == "pass"
    text = project.nixrepro("verify", record["id"]).stdout
    assert text.splitlines()[-1] == "verification FAILED"


@pytest.mark.nix
def test_a_run_ended_with_the_project_key_is_signed_and_verify_names_the_key(
        project: Project, _own_config: Path) -> None:
    public = _make_key(_own_config)
    record = _run(project)
    sig = json.loads((project.runs_dir / record["id"] / "record.sig").read_text())
    assert sig["record_sha256"] == record["record_sha256"] and sig["signature"].startswith("lab-key-1:")
    code, checks = _verify(project, record["id"])
    assert code == 0 and checks["signature"] == ("pass", "signed by lab-key-1")
    assert public.startswith("lab-key-1:")


@pytest.mark.nix
def test_a_record_forged_with_every_hash_recomputed_fails_its_signature(
        project: Project, _own_config: Path) -> None:
    _make_key(_own_config)
    record = _run(project)
    path = project.runs_dir / record["id"] / "record.json"
    _rewrite(path, _set(("params",), {"lr": 0.001}), rehash=True)  # record_sha256 "matches"
    code, checks = _verify(project, record["id"])
    assert code == 1
    assert checks["record"][0] == "pass"  # what the hash alone cannot tell
    assert checks["signature"][0] == "fail" and "does not verify" in checks["signature"][1]
    sig_file = project.runs_dir / record["id"] / "record.sig"
    _rewrite(sig_file, _set(("record_sha256",), record_sha256(json.loads(path.read_text()))),
             rehash=False)  # the signature file made to claim the forged hash: still the old bytes
    code, checks = _verify(project, record["id"])
    assert code == 1 and checks["signature"][0] == "fail"


@pytest.mark.nix
def test_an_unsigned_run_says_unsigned_and_archive_signs_it(
        project: Project, _own_config: Path, tmp_path: Path) -> None:
    record = _run(project)  # no key yet
    assert not (project.runs_dir / record["id"] / "record.sig").exists()
    before = (project.runs_dir / record["id"] / "record.json").read_bytes()
    code, checks = _verify(project, record["id"])
    assert code == 0 and checks["signature"][0] == "skip" and "unsigned" in checks["signature"][1]
    archived = project.nixrepro("archive", record["id"], "--to", f"file://{tmp_path / 'cache'}")
    assert archived.returncode == 0, archived.stderr  # makes the key and signs the record
    code, checks = _verify(project, record["id"])
    assert code == 0 and checks["signature"][0] == "pass"
    assert checks["signature"][1].startswith("signed by nixrepro-")
    # the signature lies beside the record: signing never changes the record's bytes
    assert (project.runs_dir / record["id"] / "record.json").read_bytes() == before


@pytest.mark.nix
def test_a_signature_by_a_key_this_project_does_not_trust_proves_nothing(
        project: Project, _own_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_key(_own_config, "intruder-1")
    record = _run(project)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "owner"))
    _make_key(tmp_path / "owner", "owner-1")
    code, checks = _verify(project, record["id"])
    assert code == 0 and checks["signature"][0] == "skip"  # no better than unsigned: not a failure
    assert "signed by intruder-1, which is not this project's key (owner-1)" in checks["signature"][1]


@pytest.mark.nix
def test_an_unreadable_signing_key_costs_the_signature_never_the_run(
        project: Project, _own_config: Path) -> None:
    (_own_config / "nixrepro").mkdir(parents=True)
    (_own_config / "nixrepro" / "archive-key.sec").write_text("not a key\n")
    result = project.nixrepro("run", "--flake", ".#env", "--", "true")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "is recorded unsigned" in result.stderr and "nix key generate-secret" in result.stderr
    record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    assert record["status"] == "succeeded"
    assert not (project.runs_dir / record["id"] / "record.sig").exists()


def test_signing_costs_nothing_at_import_or_run_start_up() -> None:
    code = ("import sys, nixrepro, nixrepro.runstore, nixrepro.runner, nixrepro.record; "
            "sys.exit('cryptography' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
