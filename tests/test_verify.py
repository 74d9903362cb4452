"""`nixrepro verify`: each check catches its own kind of tampering. Real runs, real Nix store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nixrepro.record import record_sha256, summary_sha256
from tests.helpers import Project, delete_store_paths

pytestmark = pytest.mark.nix


@pytest.fixture(autouse=True)
def _no_signing_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No project key unless a test makes one (tests/test_faults_records.py signs records)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _recorded(project: Project) -> dict[str, Any]:
    result = project.nixrepro("run", "--flake", ".#env", "--", "true")
    assert result.returncode == 0, result.stderr
    return project.record()


def _checks(project: Project, *args: str, run: str = "@latest") -> tuple[int, dict[str, str]]:
    result = project.nixrepro("verify", run, "--json", *args)
    doc = json.loads(result.stdout)
    return result.returncode, {c["name"]: c["result"] for c in doc["checks"]}


def _unpin_and_delete(project: Project, record: dict[str, Any]) -> None:
    assert project.nixrepro("gc-roots", "remove", record["id"]).returncode == 0
    delete_store_paths([record["environment"]["env_path"]])


def test_an_intact_run_passes_every_check(project: Project) -> None:
    record = _recorded(project)
    code, checks = _checks(project, "--contents")
    assert code == 0
    assert checks == {"record": "pass", "signature": "skip", "summary": "pass", "run files": "pass",
                      "closure hash": "pass", "closure in store": "pass", "contents": "pass",
                      "flake.lock": "pass", "dev patch": "skip", "data": "skip"}
    text = project.nixrepro("verify", record["id"][:5])
    assert text.returncode == 0
    assert text.stdout.splitlines()[0] == f"run {record['id']}"
    assert text.stdout.splitlines()[-1] == "verified: intact"


def test_a_hand_edited_record_is_reported_as_tampered(project: Project) -> None:
    record = _recorded(project)
    path = project.runs_dir / record["id"] / "record.json"
    doc = json.loads(path.read_text())
    doc["params"] = {"lr": 0.001}  # a better-looking result, edited in by hand
    path.write_text(json.dumps(doc))
    # by its id: @latest, like every listing, leaves out a record that fails its hash
    code, checks = _checks(project, run=record["id"])
    assert code == 1
    assert checks["record"] == "fail" and checks["closure in store"] == "pass"
    text = project.nixrepro("verify", record["id"]).stdout
    assert "the record was edited after it was written" in text
    assert text.splitlines()[-1] == "verification FAILED"


def test_a_modified_file_inside_a_store_path_fails_contents(project: Project) -> None:
    record = _recorded(project)
    env = record["environment"]["env_path"]
    code, checks = _checks(project)
    assert code == 0 and checks["contents"] == "skip"
    os.chmod(env, 0o755)
    os.chmod(Path(env) / "extras", 0o644)
    (Path(env) / "extras").write_text("tampered")
    try:
        code, checks = _checks(project)
        assert code == 0  # the store's database still has the old hash: only a re-hash can tell
        code, checks = _checks(project, "--contents")
        assert code == 1 and checks["contents"] == "fail"
        text = project.nixrepro("verify", "@latest", "--contents").stdout
        assert f"1 paths no longer match their hash ({env})" in text
        assert "`nix store repair`" in text
    finally:
        _unpin_and_delete(project, record)


def test_a_deleted_path_fails_the_store_check(project: Project) -> None:
    record = _recorded(project)
    _unpin_and_delete(project, record)
    code, checks = _checks(project)
    assert code == 1 and checks["closure in store"] == "fail" and checks["record"] == "pass"
    text = project.nixrepro("verify", "@latest").stdout
    env = record["environment"]["env_path"]
    assert f"1 missing from the store ({env}); restore them with `nixrepro rebuild`" in text


def test_a_lock_that_does_not_match_the_commit_fails(project: Project) -> None:
    record = _recorded(project)
    path = project.runs_dir / record["id"] / "record.json"
    doc = json.loads(path.read_text())
    doc["environment"]["flake_lock_sha256"] = "0" * 64  # recorded from some other lock
    doc["summary_sha256"] = summary_sha256(doc)
    doc["record_sha256"] = record_sha256(doc)
    path.write_text(json.dumps(doc))
    code, checks = _checks(project)
    assert code == 1 and checks["flake.lock"] == "fail" and checks["record"] == "pass"
    text = project.nixrepro("verify", "@latest").stdout
    assert f"flake.lock at {record['code']['commit'][:12]} hashes to" in text

