"""The flake side, end to end: `nix flake init -t <checkout>#minimal`, then `nix run .#experiment`.

Real nix and git; nixpkgs is tests/fixtures/nixpkgs-standin (these machines cannot fetch it),
whose python3 and numpy are a real closure in the store (tests/test_real_closure.py proves the
experiment runs in it) and whose nixrepro command wraps this test run's interpreter. The copy of
this checkout that the tests use as the `nixrepro` flake has its inputs' URLs (in flake.nix and the
templates) pointed at the stand-in and at itself; nothing else differs from what a user runs, and
no `--override-input` is used (it implies --no-write-lock-file, which hid the quick start's
first-run refusal).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import GIT_ID, git_commit, sh, shown_record

pytestmark = pytest.mark.nix
ROOT = Path(__file__).resolve().parent.parent


NIXPKGS_URL = "github:NixOS/nixpkgs/nixos-25.05"
NIXREPRO_URL = "github:nixrepro/nixrepro"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the stand-in nixpkgs, a copy of this checkout's files) as path: flake inputs."""
    return make_inputs(tmp_path_factory.mktemp("flake-inputs"))


def make_inputs(base: Path) -> tuple[Path, Path]:
    """The stand-in nixpkgs and a copy of this checkout's files in ``base``, for path: inputs."""
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
    for flake in [checkout / "flake.nix", *checkout.glob("templates/*/flake.nix")]:
        text = flake.read_text()
        assert NIXPKGS_URL in text, flake
        flake.write_text(text.replace(NIXPKGS_URL, f"path:{standin}")
                         .replace(NIXREPRO_URL, f"path:{checkout}"))
    (checkout / "flake.lock").unlink()  # it pins the real nixpkgs, which is not here
    return standin, checkout


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment a user's shell has: git's identity, nix without a registry download (the
    default registry is on GitHub; nix develop asks it for bashInteractive)."""
    registry = tmp_path_factory.mktemp("registry") / "registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    config = os.environ.get("NIX_CONFIG", "") + f"\nflake-registry = {registry}"
    return {**os.environ, **GIT_ID, "NIX_CONFIG": config}


def nix(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nix", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_ID, **(env or {})}, timeout=300, check=False)


def new_project(base: Path, inputs: tuple[Path, Path], template: str = "minimal") -> Path:
    """A project made as the quick start says: init from the template, lock, commit."""
    _, checkout = inputs
    project = base / template
    project.mkdir()
    init = nix("flake", "init", "-t", f"path:{checkout}#{template}", cwd=project)
    assert init.returncode == 0, init.stderr
    lock = nix("flake", "lock", cwd=project)
    assert lock.returncode == 0, lock.stderr
    sh(["git", "init", "-q", "-b", "main"], cwd=project)
    git_commit(project, "init")
    return project


def last_record(project: Path) -> dict:
    return shown_record(project)


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
    assert record["command"]["argv"][-4:] == ["--lr", "0.3", "--epochs", "50"]
    script = record["command"]["argv"][-5]  # the flake's own copy of train.py: the recorded commit
    assert script.startswith("/nix/store/") and script.endswith("-source/train.py")
    assert Path(script).read_bytes() == (minimal / "train.py").read_bytes()
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
                            f"checkout is at {head[:12]}; run `nix run .#experiment` again (or check "
                            f"out {built_from[:12]} to record a run of that commit).\n")
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
    _, checkout = inputs
    override: list[str] = []  # the copy's flake.nix names the stand-in itself
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


def test_an_override_input_is_refused_and_recorded_as_overridden_with_dev(
        minimal: Path, inputs: tuple[Path, Path], tmp_path: Path) -> None:
    standin, _ = inputs
    other = tmp_path / "other-nixpkgs"
    shutil.copytree(standin, other)
    (other / "NOTE").write_text("another nixpkgs tree: another narHash\n")
    override = ["--override-input", "nixpkgs", f"path:{other}"]
    refused = nix("run", ".#experiment", *override, cwd=minimal)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1].startswith(
        "Error: the flake input 'nixpkgs' that was evaluated (narHash sha256-")
    assert "as with --override-input" in refused.stderr
    dev = nix("run", ".#experiment", *override, "--", "--epochs", "5", cwd=minimal,
              env={"NIXREPRO_DEV": "1"})
    assert dev.returncode == 0, dev.stderr
    recorded = last_record(minimal)["environment"]["inputs"]["nixpkgs"]
    locked = json.loads((minimal / "flake.lock").read_text())["nodes"]["nixpkgs"]["locked"]
    assert recorded["overridden"] is True and recorded["narHash"] != locked["narHash"]


def test_a_path_flake_is_not_called_dirty(minimal: Path) -> None:
    result = nix("run", "path:.#experiment", "--", "--epochs", "5", cwd=minimal)
    assert result.returncode == 0, result.stderr
    record = last_record(minimal)
    assert record["dev"] is False and record["facts"]["rev"] is None
    assert record["facts"]["git"] is False


def test_a_flake_run_by_reference_is_recorded_as_that_flake_not_the_cwd(
        minimal: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "another-project"
    elsewhere.mkdir()
    sh(["git", "init", "-q"], cwd=elsewhere)
    (elsewhere / "README").write_text("an unrelated project, dirty\n")
    git_commit(elsewhere, "unrelated")
    (elsewhere / "README").write_text("uncommitted\n")
    head = sh(["git", "rev-parse", "HEAD"], cwd=minimal).strip()
    result = nix("run", f"git+file://{minimal}#experiment", "--", "--epochs", "5", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    record = last_record(elsewhere)
    assert (record["code"]["commit"], record["code"]["origin"]) == (head, "flake")
    assert set(record["environment"]["inputs"]) == {"nixpkgs", "nixrepro"}
    assert record["status"] == "succeeded"


# --- the docs, executed as written ----------------------------------------------------------------


def sh_block(markdown: str, after: str = "") -> str:
    """The first ```sh block after the text ``after`` (a heading), as written."""
    rest = markdown[markdown.index(after):] if after else markdown
    start = rest.index("```sh\n") + len("```sh\n")
    return rest[start:rest.index("```", start)]


def execute(block: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Type the block's lines into one shell, in order, stopping at the first that fails."""
    return subprocess.run(["bash", "-e", "-x", "-c", block], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def template_blocks(checkout: Path, template: str, base: Path) -> Iterator[tuple[str, Path, str]]:
    """For the template's welcomeText and its README: (which, a fresh `nix flake init` project,
    the first ```sh block as written)."""
    welcome = nix("eval", "--raw", f"path:{checkout}#templates.{template}.welcomeText", cwd=base)
    assert welcome.returncode == 0, welcome.stderr
    for source in ("welcomeText", "README.md"):
        project = base / source
        project.mkdir()
        init = nix("flake", "init", "-t", f"path:{checkout}#{template}", cwd=project)
        assert init.returncode == 0, init.stderr
        yield source, project, sh_block(
            welcome.stdout if source == "welcomeText" else (project / "README.md").read_text())


def assert_clean_first_run(project: Path, listing: str) -> dict:
    record = last_record(project)
    head = sh(["git", "rev-parse", "HEAD"], cwd=project).strip()
    assert record["dev"] is False and record["code"]["dirty"] is False
    assert record["facts"]["rev"] == head == record["code"]["commit"]
    assert record["code"]["origin"] == "checkout"
    assert set(record["environment"]["inputs"]) == {"nixpkgs", "nixrepro", "nixrepro/nixpkgs"} - {
        "nixrepro/nixpkgs"}  # nixrepro's nixpkgs follows the experiment's: one nixpkgs
    assert record["environment"]["inputs"]["nixpkgs"]["locked"] is True
    assert record["id"][:8] in listing  # `nix develop -c nixrepro runs` lists it
    return record


def test_the_readme_quick_start_works_as_written(tmp_path: Path, inputs: tuple[Path, Path],
                                                 user_env: dict[str, str]) -> None:
    _, checkout = inputs
    block = sh_block((ROOT / "README.md").read_text(), "## Quick start")
    script = block.replace(NIXREPRO_URL, f"path:{checkout}")  # only the template's URL differs
    assert script != block and "--override-input" not in script
    result = execute(script, tmp_path, user_env)
    assert result.returncode == 0, result.stderr
    record = assert_clean_first_run(tmp_path / "my-experiment", result.stdout)
    assert record["status"] == "succeeded" and record["params"] == {}
    assert record["command"]["argv"][-2:] == ["--lr", "0.1"]


def test_the_minimal_template_welcome_text_and_readme_work_as_written(
        tmp_path: Path, inputs: tuple[Path, Path], user_env: dict[str, str]) -> None:
    for source, project, block in template_blocks(inputs[1], "minimal", tmp_path):
        result = execute(block, project, user_env)
        assert result.returncode == 0, (source, result.stderr)
        assert_clean_first_run(project, result.stdout)
        if source == "README.md":  # two runs, then `nixrepro diff @latest~1 @latest`
            assert "--lr 0.5" in block and "identical environment (closure" in result.stdout


def test_the_cuda_template_welcome_text_and_readme_work_as_written(
        tmp_path: Path, inputs: tuple[Path, Path], user_env: dict[str, str]) -> None:
    """The stand-in nixpkgs has no torch the interpreter can import, so the experiment itself fails;
    what is tested is that nixrepro records that first run clean, with the CUDA build's facts."""
    fake_gpu = {**user_env, "PATH": f"{ROOT / 'tests' / 'fixtures' / 'bin-fake-nvidia'}:{user_env['PATH']}"}
    for source, project, block in template_blocks(inputs[1], "pytorch-cuda", tmp_path):
        for line in filter(str.strip, block.splitlines()):
            result = subprocess.run(["bash", "-c", line], cwd=project, env=fake_gpu,
                                    capture_output=True, text=True, timeout=600, check=False)
            if line.startswith("nix run .#experiment"):
                assert result.returncode == 1 and "No module named 'torch'" in result.stderr, line
                assert not any(e.startswith("Error:") for e in result.stderr.splitlines()), \
                    result.stderr  # not refused: recorded
            else:
                assert result.returncode == 0, (source, line, result.stderr)
        record = last_record(project)
        head = sh(["git", "rev-parse", "HEAD"], cwd=project).strip()
        assert (record["status"], record["dev"], record["facts"]["rev"]) == ("failed", False, head)
        assert record["facts"]["cuda_support"] is True


def test_committing_before_locking_is_refused_with_what_nix_did(
        tmp_path: Path, inputs: tuple[Path, Path], user_env: dict[str, str]) -> None:
    """The old quick start: commit first, so `nix run` writes flake.lock and `git add -N`s it."""
    _, checkout = inputs
    init = nix("flake", "init", "-t", f"path:{checkout}#minimal", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    result = execute("git init -q && git add -A && git commit -qm init\nnix run .#experiment\n",
                     tmp_path, user_env)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: nix wrote flake.lock during this run (the flake had no lock file yet), so the "
        "build is not of a commit; commit it: `git add flake.lock && git commit -m 'lock "
        "inputs'`, then `nix run .#experiment` again.")
    assert not (tmp_path / ".nixrepro" / "runs").exists()
    remedy = execute("git add flake.lock && git commit -m 'lock inputs'\nnix run .#experiment\n",
                     tmp_path, user_env)
    assert remedy.returncode == 0, remedy.stderr
    assert last_record(tmp_path)["dev"] is False
