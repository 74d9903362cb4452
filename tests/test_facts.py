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

from tests.helpers import TRAIN_PY, Project, sh

pytestmark = pytest.mark.nix


def write_facts(project: Project, path: Path, env: str, **changes: object) -> Path:
    head = sh(["git", "rev-parse", "HEAD"], cwd=project.root).strip()
    lock_bytes = (project.root / "flake.lock").read_bytes()
    lock = hashlib.sha256(lock_bytes).hexdigest()
    dep = json.loads(lock_bytes)["nodes"]["dep"]["locked"]  # the project's one input
    doc = {"schema": "nixrepro.facts/1", "rev": head, "narHash": "sha256-" + "A" * 43 + "=",
           "flakeLockSha256": lock, "env": env, "system": "x86_64-linux", "git": True,
           "inputs": {"dep": {"rev": dep["rev"], "narHash": dep["narHash"]}},
           "flakeLock": lock_bytes.decode(),
           "nixpkgsRev": dep["rev"],
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
    assert refused(project, facts, env) == (  # the tree is clean now: built dirty, then committed
        "Error: this environment was built without a rev although the work tree is clean: either "
        "from a dirty tree since committed, or with a lock that is not the committed flake.lock "
        "(--override-input, --update-input, --no-write-lock-file); run `nix run .#experiment` "
        "again without those flags (if nix says it did not write a modified lock file, run "
        "`nix flake lock` and commit flake.lock first).\n")
    (project.root / "train.py").write_text("# an uncommitted edit\n")
    dirty = project.nixrepro("run", "--facts", str(facts), "--env", env, "--", "true")
    assert dirty.stderr.startswith("Error: the work tree has uncommitted changes (M train.py)")
    (project.root / "train.py").write_text(TRAIN_PY)
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
        f"{head[:12]}; run `nix run .#experiment` again (or check out {built_from[:12]} to record "
        "a run of that commit).\n")


def test_a_build_with_another_flake_lock_is_refused(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    facts = write_facts(project, tmp_path / "facts.json", env, flakeLockSha256="0" * 64, flakeLock=None)
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


def record_of(project: Project) -> dict:
    return project.record()


def test_an_overridden_input_is_refused_and_recorded_as_overridden_with_dev(
        project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    other = "sha256-" + "B" * 43 + "="
    facts = write_facts(project, tmp_path / "facts.json", env,
                        inputs={"dep": {"rev": None, "narHash": other}})
    locked = json.loads((project.root / "flake.lock").read_text())["nodes"]["dep"]["locked"]
    assert refused(project, facts, env) == (
        f"Error: the flake input 'dep' that was evaluated (narHash {other}) is not the one "
        f"flake.lock pins (rev {locked['rev'][:12]}), as with --override-input; lock it instead "
        "(`nix flake lock --override-input dep REF`) and commit flake.lock, or pass --dev to "
        "record it as a development run.\n")
    dev = project.nixrepro("run", "--dev", "--facts", str(facts), "--env", env, "--", "true")
    assert dev.returncode == 0, dev.stderr
    dep = record_of(project)["environment"]["inputs"]["dep"]
    assert (dep["overridden"], dep["narHash"], dep["rev"]) == (True, other, None)


def test_a_nixpkgs_that_flake_lock_does_not_pin_is_refused(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    facts = write_facts(project, tmp_path / "facts.json", env, nixpkgsRev="f" * 40)
    assert refused(project, facts, env).startswith(
        "Error: the nixpkgs this environment was built with (rev ffffffffffff) is none of the "
        "inputs flake.lock pins;")


def test_a_path_flake_has_no_rev_and_is_not_called_dirty(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    facts = write_facts(project, tmp_path / "facts.json", env, rev=None, git=False)
    result = project.nixrepro("run", "--facts", str(facts), "--env", env, "--", "true")
    assert result.returncode == 0, result.stderr
    record = record_of(project)
    assert record["dev"] is False and record["code"]["origin"] == "checkout"
    assert record["facts"]["git"] is False


def test_a_flake_run_by_reference_is_not_compared_with_the_checkout(
        project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    elsewhere = sh(["git", "rev-parse", "HEAD"], cwd=project.dep).strip()  # not in this repo
    its_lock = json.dumps(json.loads((project.root / "flake.lock").read_text()), indent=1)
    facts = write_facts(project, tmp_path / "facts.json", env, rev=elsewhere, flakeLock=its_lock,
                        flakeLockSha256=hashlib.sha256(its_lock.encode()).hexdigest())
    (project.root / "scratch.txt").write_text("the cwd's checkout is dirty, and not the code\n")
    result = project.nixrepro("run", "--facts", str(facts), "--env", env, "--", "true")
    assert result.returncode == 0, result.stderr
    record = record_of(project)
    assert record["code"] == {**record["code"], "commit": elsewhere, "origin": "flake",
                              "dirty": False, "branch": None}
    assert set(record["environment"]["inputs"]) == {"dep"}  # from the lock the build carried
    assert record["environment"]["flake_lock_path"] is None
    assert record["environment"]["flake_lock_sha256"] == hashlib.sha256(its_lock.encode()).hexdigest()


def test_a_lock_nix_wrote_during_the_run_is_named_as_such(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    facts = write_facts(project, tmp_path / "facts.json", env, rev=None)
    sh(["git", "rm", "-q", "--cached", "flake.lock"], cwd=project.root)
    sh(["git", "commit", "-qm", "no lock yet"], cwd=project.root)
    sh(["git", "add", "--intent-to-add", "flake.lock"], cwd=project.root)  # what nix does
    assert refused(project, facts, env) == (
        "Error: nix wrote flake.lock during this run (the flake had no lock file yet), so the "
        "build is not of a commit; commit it: `git add flake.lock && git commit -m 'lock "
        "inputs'`, then `nix run .#experiment` again.\n")


def test_a_local_input_is_named_in_a_warning_and_marked_in_the_record(project: Project) -> None:
    env = project.build_env()
    result = project.nixrepro("run", "--env", env, "--", "true")
    assert result.returncode == 0, result.stderr
    assert (f"nixrepro: warning: the flake input 'dep' (git+file://{project.dep}?ref=main&rev="
            in result.stderr)
    assert "is fetched from this machine's file system" in result.stderr
    dep = record_of(project)["environment"]["inputs"]["dep"]
    assert (dep["locked"], dep["local"]) == (True, True)


@pytest.mark.parametrize("lock_text, problem", [
    ('{"version": 7, "root": "root", "nodes": {"root": {"inputs": {"dep": "dep_9"}}}}',
     "is malformed: it references the missing node 'dep_9'"),
    ('{"version": 4, "root": "root", "nodes": {}}', "has lock version 4, which Nix and nixrepro"),
    ('{"nodes": ', "is not valid JSON"),
], ids=["dangling node", "old version", "not JSON"])
def test_a_bad_committed_lock_is_one_sentence_exit_1_and_nothing_recorded(
        project: Project, lock_text: str, problem: str) -> None:
    env = project.build_env()
    (project.root / "flake.lock").write_text(lock_text)
    project.commit("a broken lock")
    result = project.nixrepro("run", "--env", env, "--", "true")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {project.root / 'flake.lock'} {problem}") and "Traceback" not in line
    assert not project.runs_dir.exists() or not list(project.runs_dir.iterdir())
