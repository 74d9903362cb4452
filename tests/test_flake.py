"""The flake side, end to end: `nix flake init -t <checkout>#minimal`, then `nix run .#experiment`.

Real nix and git; nixpkgs is tests/fixtures/nixpkgs-standin (these machines cannot fetch it),
whose python wraps this test run's interpreter. The scratch project's flake.lock pins the
stand-in and a copy of this checkout (`--override-input ... path:`), so `nix run` needs nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import GIT_ID, git_commit, sh

pytestmark = pytest.mark.nix
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the stand-in nixpkgs, a copy of this checkout's files) as path: flake inputs."""
    base = tmp_path_factory.mktemp("flake-inputs")
    standin = base / "nixpkgs-standin"
    shutil.copytree(ROOT / "tests" / "fixtures" / "nixpkgs-standin", standin)
    default = standin / "default.nix"
    default.write_text(default.read_text().replace("@PYTHON@", sys.executable))
    checkout = base / "nixrepro"  # the files git knows (not .venv): what a fetched flake would hold
    files = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    return standin, checkout


def nix(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nix", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_ID, **(env or {})}, timeout=300, check=False)


def new_project(base: Path, inputs: tuple[Path, Path], template: str = "minimal") -> Path:
    standin, checkout = inputs
    project = base / template
    project.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=project)
    init = nix("flake", "init", "-t", f"path:{checkout}#{template}", cwd=project)
    assert init.returncode == 0, init.stderr
    sh(["git", "add", "-A"], cwd=project)
    lock = nix("flake", "lock", "--override-input", "nixpkgs", f"path:{standin}",
               "--override-input", "nixrepro", f"path:{checkout}", cwd=project)
    assert lock.returncode == 0, lock.stderr
    git_commit(project, "init")
    return project


def last_record(project: Path) -> dict:
    shown = subprocess.run([sys.executable, "-m", "nixrepro", "show", "@latest", "--json"], cwd=project,
                           capture_output=True, text=True, check=True)
    return dict(json.loads(shown.stdout))


@pytest.fixture(scope="module")
def minimal(tmp_path_factory: pytest.TempPathFactory, inputs: tuple[Path, Path]) -> Path:
    """A project made from the minimal template, with one recorded `nix run .#experiment`."""
    project = new_project(tmp_path_factory.mktemp("minimal"), inputs)
    result = nix("run", ".#experiment", "--", "--lr", "0.3", "--epochs", "50", cwd=project)
    assert result.returncode == 0, result.stderr
    return project


def test_nix_run_experiment_records_the_run_end_to_end(minimal: Path) -> None:
    record = last_record(minimal)
    head = sh(["git", "rev-parse", "HEAD"], cwd=minimal).strip()
    assert record["status"] == "succeeded" and record["dev"] is False
    assert record["command"]["argv"][-5:] == ["train.py", "--lr", "0.3", "--epochs", "50"]
    assert 0.8 < record["metrics"]["accuracy"] <= 1.0
    env = record["environment"]["env_path"]
    assert env in {p["path"] for p in record["environment"]["closure"]}
    facts = record["facts"]
    assert (facts["rev"], facts["env"], facts["system"]) == (head, env, "x86_64-linux")
    assert facts["flake_lock_sha256"] == record["environment"]["flake_lock_sha256"]
    assert set(record["environment"]["inputs"]) == {"nixpkgs", "nixrepro"}


def test_a_stale_build_is_refused(minimal: Path, tmp_path: Path) -> None:
    program = nix("eval", "--raw", ".#apps.x86_64-linux.experiment.program", cwd=minimal).stdout
    built_from = sh(["git", "rev-parse", "HEAD"], cwd=minimal).strip()
    (minimal / "NOTES.md").write_text("a later commit\n")
    head = git_commit(minimal, "notes")
    stale = subprocess.run([program, "--lr", "0.3"], cwd=minimal, capture_output=True, text=True)
    assert stale.returncode == 1
    assert stale.stderr == (f"Error: this environment was built from commit {built_from[:12]} but the "
                            f"checkout is at {head[:12]}; run `nix run .#experiment` again.\n")
    again = nix("run", ".#experiment", "--", "--epochs", "5", cwd=minimal)  # a fresh build is fine
    assert again.returncode == 0, again.stderr


def test_a_build_with_another_flake_lock_is_refused(minimal: Path) -> None:
    program = nix("eval", "--raw", ".#apps.x86_64-linux.experiment.program", cwd=minimal).stdout
    lock = minimal / "flake.lock"
    lock.write_text(json.dumps(json.loads(lock.read_text()), indent=4) + "\n")  # same pins, new bytes
    git_commit(minimal, "reformat flake.lock")
    stale = subprocess.run([program], cwd=minimal, capture_output=True, text=True)
    assert stale.returncode == 1
    assert stale.stderr.startswith("Error: flake.lock changed since this environment was built (sha256 ")
    assert stale.stderr.endswith("); run `nix run .#experiment` again.\n")


def test_a_dirty_tree_is_refused_through_nix_run(minimal: Path) -> None:
    train = minimal / "train.py"
    original = train.read_text()
    try:
        train.write_text(original + "# an uncommitted edit\n")
        result = nix("run", ".#experiment", cwd=minimal)
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == (
            "Error: the work tree has uncommitted changes (M train.py); commit them, or "
            "pass --dev to record a development run with the diff.")
        dev = nix("run", ".#experiment", "--", "--epochs", "5", cwd=minimal, env={"NIXREPRO_DEV": "1"})
        assert dev.returncode == 0, dev.stderr
        record = last_record(minimal)
        assert record["dev"] is True and record["facts"]["rev"] is None  # nix saw the dirty tree
    finally:
        train.write_text(original)


def test_the_root_flake_and_every_template_evaluate(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    standin, checkout = inputs
    override = ["--override-input", "nixpkgs", f"path:{standin}"]
    for system in ("x86_64-linux", "aarch64-linux"):
        for attr in (f"packages.{system}.default.drvPath", f"devShells.{system}.default.drvPath",
                     f"checks.{system}.package.drvPath", f"apps.{system}.default.program"):
            result = nix("eval", "--raw", f"path:{checkout}#{attr}", *override, cwd=tmp_path)
            assert result.returncode == 0, (attr, result.stderr)
    templates = nix("eval", "--json", f"path:{checkout}#templates", "--apply", "builtins.attrNames",
                    *override, cwd=tmp_path)
    assert json.loads(templates.stdout) == ["default", "minimal", "pytorch-cuda"]

    cuda = new_project(tmp_path, inputs, "pytorch-cuda")
    built = nix("build", "--no-link", "--json", ".#env", cwd=cuda)
    assert built.returncode == 0, built.stderr
    # torch is not importable by this test's interpreter: the run fails, and is recorded with the
    # facts of the CUDA build
    result = nix("run", ".#experiment", cwd=cuda)
    assert result.returncode == 1 and "No module named 'torch'" in result.stderr
    facts = last_record(cuda)["facts"]
    assert (facts["cuda_support"], facts["allow_unfree"]) == (True, True)
    assert facts["cuda_capabilities"] == ["8.0", "8.6", "8.9", "9.0"]
