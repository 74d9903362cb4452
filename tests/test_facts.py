"""`nixrepro run --facts`: the build facts of `nix run .#experiment` are checked against the checkout.

The facts files here are what lib.mkExperiment writes (tests/test_flake.py makes them with real
`nix run`); these tests cover every check on a real git repository and a real Nix store.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import Project, sh

pytestmark = pytest.mark.nix


def write_facts(project: Project, path: Path, env: str, **changes: object) -> Path:
    head = sh(["git", "rev-parse", "HEAD"], cwd=project.root).strip()
    lock = hashlib.sha256((project.root / "flake.lock").read_bytes()).hexdigest()
    doc = {"schema": "nixrepro.facts/1", "rev": head, "narHash": "sha256-" + "A" * 43 + "=",
           "flakeLockSha256": lock, "env": env, "system": "x86_64-linux",
           "nixpkgsRev": "ac62194c3917d5f474c1a844b6fd6da2db95077d",
           "nixpkgsConfig": {"cudaSupport": True, "cudaCapabilities": ["8.9"], "allowUnfree": True}}
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return path


def test_matching_facts_are_recorded(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    facts = write_facts(project, tmp_path / "facts.json", env)
    result = project.nixrepro("run", "--facts", str(facts), "--env", env, "--", sys.executable, "-c", "1")
    assert result.returncode == 0, result.stderr
    record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    head = sh(["git", "rev-parse", "HEAD"], cwd=project.root).strip()
    assert record["facts"]["rev"] == head == record["code"]["commit"]
    assert record["facts"]["flake_lock_sha256"] == record["environment"]["flake_lock_sha256"]
    assert (record["facts"]["cuda_support"], record["facts"]["cuda_capabilities"]) == (True, ["8.9"])


def refused(project: Project, facts: Path, env: str, *extra: str) -> str:
    result = project.nixrepro("run", "--facts", str(facts), "--env", env, *extra, "--", "true")
    assert result.returncode == 1
    assert not project.runs_dir.exists() or not list(project.runs_dir.iterdir())
    return result.stderr


def test_a_build_from_a_dirty_tree_is_refused_unless_dev(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    facts = write_facts(project, tmp_path / "facts.json", env, rev=None)
    assert refused(project, facts, env) == (
        "Error: this environment was built from a dirty tree (the flake has no rev); commit your "
        "changes and run `nix run .#experiment` again, or pass --dev (NIXREPRO_DEV=1).\n")
    dev = project.nixrepro("run", "--facts", str(facts), "--env", env, "--", "true",
                           env={**os.environ, "NIXREPRO_DEV": "1"})
    assert dev.returncode == 0, dev.stderr
    assert json.loads(project.nixrepro("show", "@latest", "--json").stdout)["dev"] is True


def test_a_build_from_another_commit_is_refused(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    facts = write_facts(project, tmp_path / "facts.json", env)
    built_from = json.loads(facts.read_text())["rev"]
    (project.root / "notes.txt").write_text("a later commit\n")
    head = project.commit("later")
    assert refused(project, facts, env) == (
        f"Error: this environment was built from commit {built_from[:12]} but the checkout is at "
        f"{head[:12]}; run `nix run .#experiment` again.\n")


def test_a_build_with_another_flake_lock_is_refused(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    facts = write_facts(project, tmp_path / "facts.json", env, flakeLockSha256="0" * 64)
    on_disk = hashlib.sha256((project.root / "flake.lock").read_bytes()).hexdigest()
    assert refused(project, facts, env) == (
        f"Error: flake.lock changed since this environment was built (sha256 {on_disk[:12]}, built with "
        "000000000000); run `nix run .#experiment` again.\n")


def test_a_file_that_is_not_facts_is_a_usage_error(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    bogus = tmp_path / "facts.json"
    bogus.write_text('{"rev": "x"}')
    result = project.nixrepro("run", "--facts", str(bogus), "--env", env, "--", "true")
    assert result.returncode == 2
    assert result.stderr == (f"Error: {bogus} is not a nixrepro facts file (schema nixrepro.facts/1); "
                             "it is written by lib.mkExperiment.\n")
