"""`pipeline status` without `nix build`: the out path a stage's flake evaluates to is kept
(nixrepro/pipeline/envcache.py), and it must never make status report "up to date" for a stage
whose environment changed.

Real git, real Nix, real runs. A `nix` on PATH that logs its arguments and runs the real one shows
which nix commands each status needed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from nixrepro.git import GitRepo
from nixrepro.nix import Nix
from nixrepro.pipeline import envcache
from tests.helpers import Project, delete_store_paths, env_flake, git_commit, sh

pytestmark = pytest.mark.nix

TOML = """\
[run]
flake = ".#env"

[stages.prepare]
cmd = "sh stage.sh"
deps = ["stage.sh"]

[stages.train]
cmd = "sh stage.sh"
deps = ["stage.sh"]
after = ["prepare"]
params = { lr = 0.1 }
"""


class Logged:
    """The project, with a `nix` first on PATH that appends its arguments to a log."""

    def __init__(self, project: Project, tmp_path: Path) -> None:
        self.project = project
        self.log = tmp_path / "nix.log"
        shim = tmp_path / "shim"
        shim.mkdir()
        real = shutil.which("nix")
        assert real is not None
        (shim / "nix").write_text(f'#!/bin/sh\necho "$*" >> {self.log}\nexec {real} "$@"\n')
        (shim / "nix").chmod(0o755)
        self.env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}

    def run(self, *args: str) -> None:
        result = self.project.nixrepro("pipeline", "run", *args, env=self.env)
        assert result.returncode == 0, result.stderr

    def status(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Each stage's `now` in `pipeline status --json`, and the nix subcommands it ran."""
        self.log.write_text("")
        result = self.project.nixrepro("pipeline", "status", "--json", env=self.env)
        assert result.returncode == 0, result.stderr
        called = [_subcommand(line) for line in self.log.read_text().splitlines()]
        return {s["stage"]: s["now"] for s in json.loads(result.stdout)}, called


def _subcommand(line: str) -> str:
    words = line.replace("--extra-experimental-features nix-command flakes", "").split()
    return " ".join(w for w in words[:2] if not w.startswith("-"))


@pytest.fixture
def logged(project: Project, tmp_path: Path) -> Logged:
    (project.root / "stage.sh").write_text("true\n")
    (project.root / "nixrepro.toml").write_text(TOML)
    project.commit("pipeline")
    return Logged(project, tmp_path)


def _label(project: Project) -> str:
    return (project.root / "flake.nix").read_text().split('name = "', 1)[1].split("-1.0", 1)[0]


def _env_1_1(project: Project) -> None:
    (project.root / "flake.nix").write_text(
        env_flake(f"git+file://{project.dep}", label=_label(project), version="1.1"))


def test_status_after_a_run_asks_nix_nothing_and_says_up_to_date(logged: Logged) -> None:
    logged.run()
    now, called = logged.status()
    assert {name: o["state"] for name, o in now.items()} == {"prepare": "skipped", "train": "skipped"}
    assert called == []


def test_a_committed_change_to_flake_nix_is_seen(logged: Logged) -> None:
    logged.run()
    _env_1_1(logged.project)
    logged.project.commit("env 1.1")
    now, called = logged.status()
    assert now["prepare"]["reason"] == "would run: changed: environment"
    assert "build" in called
    logged.run()
    now, called = logged.status()
    assert now["prepare"]["state"] == "skipped" and called == []


def test_an_uncommitted_change_to_flake_nix_is_seen_and_never_kept(logged: Logged) -> None:
    logged.run()
    _env_1_1(logged.project)
    for _ in range(2):  # and the second status builds it again: a dirty tree is never kept
        now, called = logged.status()
        assert now["prepare"]["reason"] == "would run: changed: environment, uncommitted changes"
        assert "build" in called
    sh(["git", "add", "flake.nix"], cwd=logged.project.root)  # staged is as uncommitted
    now, called = logged.status()
    assert now["prepare"]["reason"] == "would run: changed: environment, uncommitted changes"
    assert "build" in called


def test_an_untracked_file_leaves_the_environment_to_the_cache(logged: Logged) -> None:
    """Nix copies no untracked file into a git flake: its environment is the commit's."""
    logged.run()
    (logged.project.root / "notes.txt").write_text("untracked\n")
    now, called = logged.status()
    assert now["prepare"]["reason"] == "would run: changed: uncommitted changes"
    assert called == []


def test_a_collected_environment_is_built_again_not_served_from_the_cache(logged: Logged) -> None:
    logged.run()
    project = logged.project
    runs = json.loads(project.nixrepro("runs", "--json").stdout)
    env_path = project.record(runs[0]["id"])["environment"]["env_path"]
    for run in runs:
        assert project.nixrepro("gc-roots", "remove", run["id"]).returncode == 0
    delete_store_paths([env_path])
    assert not Path(env_path).exists()
    now, called = logged.status()
    assert "build" in called and "path-info" in called  # a new path: its closure is asked too
    assert Path(env_path).exists()  # the same derivation, built again
    assert now["prepare"]["state"] == "skipped"


def test_an_updated_lock_is_seen(logged: Logged) -> None:
    project = logged.project
    logged.run()
    (project.dep / "flake.nix").write_text('{ outputs = { self }: { lib.greeting = "bonjour"; }; }\n')
    git_commit(project.dep, "bonjour")
    sh(["nix", "flake", "lock", "--update-input", "dep"], cwd=project.root)
    project.commit("lock: dep bonjour")
    now, called = logged.status()
    assert now["prepare"]["reason"] == "would run: changed: environment"
    assert "build" in called


def test_an_input_locked_without_a_rev_is_asked_of_nix_every_time(logged: Logged, tmp_path: Path) -> None:
    """A dirty git input is locked by its narHash alone, no rev: not locked by Nix's rules for git
    (nixrepro.lock), so its flake is never kept."""
    project = logged.project
    dirty = tmp_path / "dirty-dep"
    dirty.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=dirty)
    (dirty / "flake.nix").write_text('{ outputs = { self }: { lib.greeting = "one"; }; }\n')
    git_commit(dirty, "one")
    (dirty / "flake.nix").write_text('{ outputs = { self }: { lib.greeting = "two"; }; }\n')
    (project.root / "flake.nix").write_text(env_flake(f"git+file://{dirty}", label=_label(project)))
    sh(["nix", "flake", "lock"], cwd=project.root)
    project.commit("dirty input")
    assert '"rev"' not in json.dumps(json.loads((project.root / "flake.lock").read_text())["nodes"]["dep"])
    logged.run()
    for _ in range(2):
        now, called = logged.status()
        assert now["prepare"]["state"] == "skipped" and "build" in called


def test_a_lock_nix_would_change_is_never_kept(logged: Logged) -> None:
    """flake.nix names an input flake.lock does not have: nix locks it anew (and writes the file)."""
    project = logged.project
    flake = project.root / "flake.nix"
    flake.write_text(flake.read_text().replace(
        "  outputs = {", f'  inputs.other.url = "git+file://{project.dep}";\n  outputs = {{ other,'))
    commit = project.commit("an input the lock lacks")
    for _ in range(2):
        _, called = logged.status()
        assert "build" in called
    assert (project.root / "flake.lock").read_text().count('"other"') >= 1  # nix wrote it
    kept = [json.loads(p.read_text())["key"] for p in envcache.cache_dir().glob("*")]
    assert not [k for k in kept if k["commit"] == commit]


# --- what the key holds ---------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    (root / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    (root / "sub" / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    git_commit(root, "init")
    return GitRepo(Path(sh(["git", "rev-parse", "--show-toplevel"], cwd=root).strip()))


def _key(repo: GitRepo, ref: str = ".#env", **env: str) -> dict[str, Any] | None:
    nix = Nix(env={**os.environ, **env})
    return envcache.key(repo, repo.snapshot().commit, ref, nix, "2.8.0")


@pytest.mark.parametrize("ref", [".#env", ".", "./sub#env", "./sub/#env.x"])
def test_a_path_to_this_repositorys_flake_is_kept(repo: GitRepo, ref: str) -> None:
    parts = _key(repo, ref)
    assert parts is not None and parts["ref"] == ref and parts["commit"] == repo.snapshot().commit


@pytest.mark.parametrize("ref", ["path:.#env", "git+file:.#env", "github:o/r#env", "env#x", "sub#env",
                                 ".?dir=sub#env", "./missing#env", "./sub/..//sub#env x"])
def test_what_nix_does_not_read_as_this_repositorys_git_flake_is_asked_every_time(
        repo: GitRepo, ref: str) -> None:
    assert _key(repo, ref) is None


def test_a_flake_in_a_nested_repository_is_asked_every_time(repo: GitRepo) -> None:
    sh(["git", "init", "-q"], cwd=repo.root / "sub")
    assert _key(repo, "./sub#env") is None
    assert _key(repo, ".#env") is not None


def test_a_change_nix_sees_makes_the_tree_unkept_and_an_untracked_file_does_not(repo: GitRepo) -> None:
    (repo.root / "untracked").write_text("x\n")
    assert _key(repo) is not None
    (repo.root / "sub" / "flake.nix").write_text("{ outputs = { self }: { x = 1; }; }\n")
    assert _key(repo) is None


def test_nix_settings_are_in_the_key(repo: GitRepo, tmp_path: Path) -> None:
    base = _key(repo, NIX_CONFIG="experimental-features = nix-command flakes")
    assert base is not None
    assert _key(repo, NIX_CONFIG="experimental-features = nix-command flakes\nsystem = aarch64-linux") \
        not in (None, base)
    assert _key(repo, NIX_STORE_DIR="/other/store") not in (None, base)
    included = tmp_path / "included.conf"
    included.write_text("system = x86_64-linux\n")
    user = tmp_path / "user.conf"
    user.write_text(f"!include {included.name}\n")
    first = _key(repo, NIX_USER_CONF_FILES=str(user))
    included.write_text("system = aarch64-linux\n")
    assert first is not None and _key(repo, NIX_USER_CONF_FILES=str(user)) not in (None, first)


@pytest.mark.parametrize("env", [{"NIX_CONFIG": "pure-eval = false"}, {"NIX_REMOTE": "ssh://builder"},
                                 {"NIX_CONFIG": "store = local?root=/tmp/other"}])
def test_settings_nixrepro_does_not_follow_are_asked_every_time(repo: GitRepo, env: dict[str, str]) -> None:
    assert _key(repo, **env) is None


def test_an_entry_whose_path_is_gone_or_whose_key_differs_is_a_miss(repo: GitRepo, tmp_path: Path) -> None:
    parts = _key(repo)
    assert parts is not None
    out = tmp_path / "out"
    out.write_text("")
    envcache.remember(parts, str(out))
    assert envcache.lookup(parts) == str(out)
    assert envcache.lookup({**parts, "commit": "0" * 40}) is None
    out.unlink()
    assert envcache.lookup(parts) is None
