"""`nixrepro init`: config for an existing flake project, ready for its first run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixrepro.config import load
from tests.helpers import Project, git_commit, run_cli, sh

pytestmark = pytest.mark.nix


def test_init_writes_a_valid_config_and_ignores_the_run_store(project: Project) -> None:
    (project.root / ".gitignore").write_text("*.pyc\n")
    git_commit(project.root, "ignore")
    result = project.nixrepro("init")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("wrote nixrepro.toml .gitignore; commit them: "
                             "git add nixrepro.toml .gitignore && git commit -m 'nixrepro'\n")
    assert load(project.root).run.flake == ".#env"
    assert (project.root / ".gitignore").read_text() == "*.pyc\n.nixrepro/\nresult\n"

    git_commit(project.root, "nixrepro")
    run = project.nixrepro("run", "--", "true")  # no --flake: the config's
    assert run.returncode == 0, run.stderr
    record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    assert record["environment"]["flake_ref"] == ".#env"


def test_init_refuses_to_overwrite_unless_forced(project: Project) -> None:
    assert project.nixrepro("init").returncode == 0
    again = project.nixrepro("init", "--flake", ".#other")
    assert again.returncode == 2
    assert again.stderr == (f"Error: {project.root / 'nixrepro.toml'} already exists; edit it, or pass "
                            "--force to overwrite it.\n")
    forced = project.nixrepro("init", "--flake", ".#other", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("wrote nixrepro.toml; ")  # .gitignore already had the entries
    assert load(project.root).run.flake == ".#other"


def test_init_without_a_flake_points_to_the_templates(tmp_path: Path) -> None:
    sh(["git", "init", "-q"], cwd=tmp_path)
    result = run_cli(["init"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (f"Error: {tmp_path} has no flake.nix; start from a template instead: "
                             "`nix flake init -t <nixrepro flake>#minimal`.\n")
    assert not (tmp_path / "nixrepro.toml").exists()
