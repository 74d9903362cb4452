"""Hostile inputs to the environment identity: flake.lock, the build facts, LD_LIBRARY_PATH and
hostDriver's script. Each test names the promise a user relies on; whatever the input, nixrepro
answers with a record that tells the truth or one sentence that refuses, never a traceback, a
hang or a secret in the record.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nixrepro import cuda
from nixrepro.lock import FlakeLock, LockError
from tests.helpers import Project, make_project, sh
from tests.test_cuda import apps, closure_entry, gpu_host, library_dir, run_app  # noqa: F401
from tests.test_facts import write_facts

ROOT = Path(__file__).resolve().parent.parent
LOCKED = {"type": "github", "owner": "o", "repo": "r", "rev": "a" * 40,
          "narHash": "sha256-" + "A" * 43 + "="}


def lock_bytes(root_inputs: dict[str, object], nodes: dict[str, object]) -> bytes:
    return json.dumps({"version": 7, "root": "root",
                       "nodes": {"root": {"inputs": root_inputs}, **nodes}}).encode()


def commit_lock(project: Project, edit: dict[str, object]) -> None:
    """Commit a flake.lock whose one input's ``locked`` attributes are changed by ``edit``."""
    lock = json.loads((project.root / "flake.lock").read_text())
    locked = lock["nodes"]["dep"]["locked"]
    locked.update(edit)
    for name in [k for k, v in edit.items() if v is None]:  # None: the attribute is left out
        del locked[name]
    (project.root / "flake.lock").write_text(json.dumps(lock))
    project.commit("hostile lock")


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


# --- flake.lock --------------------------------------------------------------------------------


@pytest.mark.nix
def test_a_credential_in_an_input_url_never_reaches_the_record(project: Project) -> None:
    env = project.build_env()
    commit_lock(project, {"url": "https://oauth2:glpat-TOKEN1234567890@git.example.org/x", "rev": None})
    result = project.nixrepro("run", "--env", env, "--", "true")
    assert result.returncode == 0, result.stderr
    assert "TOKEN1234567890" not in result.stderr  # the unpinned-input warning names the url
    for written in project.runs_dir.rglob("*"):
        if written.is_file():
            assert b"TOKEN1234567890" not in written.read_bytes(), written


@pytest.mark.nix
def test_a_lock_nix_would_refuse_for_its_attribute_types_is_refused(project: Project) -> None:
    env = project.build_env()
    commit_lock(project, {"rev": 12345, "lastModified": "yesterday"})  # Nix: not a string / integer
    result = project.nixrepro("run", "--env", env, "--", "true")
    no_traceback(result)
    assert result.returncode == 1 and "flake.lock" in result.stderr
    assert not project.runs_dir.exists() or not list(project.runs_dir.iterdir())


def test_a_long_chain_of_follows_is_read_or_refused_in_one_sentence() -> None:
    depth = 3000
    root_inputs: dict[str, object] = {f"i{n}": [f"i{n + 1}"] for n in range(depth)}
    root_inputs[f"i{depth}"] = "leaf"
    try:
        lock = FlakeLock.parse(lock_bytes(root_inputs, {"leaf": {"locked": LOCKED}}))
    except LockError:
        return
    assert lock.inputs["i0"].rev == "a" * 40


def test_a_deeply_nested_lock_is_refused_in_one_sentence() -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    data = b'{"version": 7, "root": "root", "nodes": {"root": {"x": ' + nested + b"}}}"
    with pytest.raises(LockError):
        FlakeLock.parse(data)


def test_a_small_lock_of_chained_follows_is_read_at_once(tmp_path: Path) -> None:
    levels = 30  # 2**30 walks without memoising; a few hundred with it
    node = {"locked": LOCKED, "inputs": {f"t{j}": [f"a{j}"] for j in range(levels)}}
    root_inputs: dict[str, object] = {"a0": "n"}
    for j in range(1, levels + 1):
        root_inputs[f"a{j}"] = [f"a{j - 1}", f"t{j - 1}"]
    lock = tmp_path / "flake.lock"
    lock.write_bytes(lock_bytes(root_inputs, {"n": node}))
    assert len(lock.read_bytes()) < 2000
    script = f"from nixrepro.lock import FlakeLock; FlakeLock.read(__import__('pathlib').Path({str(lock)!r}))"
    try:
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=5, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a 1 KB flake.lock took more than 5 s")


def test_a_lock_with_a_lone_surrogate_is_refused_in_one_sentence() -> None:
    locked = {"type": "git", "url": "https://example.org/x", "rev": "a" * 40, "ref": "ma\ud800in"}
    with pytest.raises(LockError):
        FlakeLock.parse(lock_bytes({"x": "x"}, {"x": {"locked": locked}}))


# --- the build facts ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, str]:
    base = tmp_path_factory.mktemp("adversarial")
    project = make_project(base, label=f"adv-{base.name[-10:]}")
    return project, project.build_env()


HOSTILE_FACTS = {
    "nixpkgsConfig-a-list": {"nixpkgsConfig": [1]},
    "cudaCapabilities-a-number": {"nixpkgsConfig": {"cudaCapabilities": 8}},
    "rev-a-number": {"rev": 5},
    "nixpkgsRev-a-number": {"nixpkgsRev": 5},
    "flakeLockSha256-a-number": {"flakeLockSha256": 5},
    "an-input-rev-a-number": {"inputs": {"dep": {"rev": 5, "narHash": 7}}},
    "flakeLock-with-a-lone-surrogate": {"flakeLock": '{"version": 7, "x": "\ud800"}'},
}


@pytest.mark.nix
@pytest.mark.parametrize("changes", [
    pytest.param(changes, id=name)
    for name, changes in HOSTILE_FACTS.items()])
def test_a_facts_file_of_the_wrong_types_is_refused_in_one_sentence(
        built: tuple[Project, str], tmp_path: Path, changes: dict[str, object]) -> None:
    project, env = built
    facts = write_facts(project, tmp_path / "facts.json", env, **changes)
    result = project.nixrepro("run", "--facts", str(facts), "--env", env, "--", "true")
    no_traceback(result)
    assert result.returncode != 0 and result.stderr.startswith("Error: "), result.stderr
    assert not project.runs_dir.exists() or not list(project.runs_dir.iterdir())


@pytest.mark.nix
def test_a_flake_run_by_reference_never_records_fewer_inputs_than_its_lock(
        built: tuple[Project, str], tmp_path: Path) -> None:
    project, env = built
    doc = json.loads(write_facts(project, tmp_path / "facts.json", env, rev="0" * 40,
                                 nixpkgsRev=None).read_text())
    del doc["flakeLock"]  # the sha256 of the lock it was built with stays
    (tmp_path / "facts.json").write_text(json.dumps(doc))
    result = project.nixrepro("run", "--facts", str(tmp_path / "facts.json"), "--env", env, "--", "true")
    no_traceback(result)
    if result.returncode == 0:
        record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
        assert record["environment"]["flake_lock_sha256"] == doc["flakeLockSha256"]
        assert set(record["environment"]["inputs"]) == {"dep"}


# --- LD_LIBRARY_PATH ----------------------------------------------------------------------------


def cuda_env(tmp_path: Path) -> list:
    return [closure_entry(tmp_path / "store", "cuda_cudart-12.4.127-lib", ["libcudart.so.12"])]


def test_a_fifo_named_libcuda_on_the_library_path_never_hangs_the_run(tmp_path: Path) -> None:
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "libcuda.so.1")
    closure, found = cuda_env(tmp_path), []
    worker = threading.Thread(target=lambda: found.append(cuda.collect(
        closure, gpu_host("550.54.15", "12.4"), {"LD_LIBRARY_PATH": str(fifo_dir)}, tmp_path / "none")),
        daemon=True)
    worker.start()
    worker.join(3)
    hung = worker.is_alive()
    if hung:  # let the blocked open() return
        fd = os.open(fifo_dir / "libcuda.so.1", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(3)
    assert not hung, "collecting the CUDA facts blocked on a FIFO named libcuda.so.1"
    assert found and found[0] is not None and found[0].libcuda is None


def test_a_directory_named_libcuda_is_not_taken_for_the_driver(tmp_path: Path) -> None:
    (tmp_path / "odd" / "libcuda.so.1").mkdir(parents=True)
    real = library_dir(tmp_path / "driver", ["libcuda.so.1"])
    info = cuda.collect(cuda_env(tmp_path), gpu_host("550.54.15", "12.4"),
                        {"LD_LIBRARY_PATH": f"{tmp_path / 'odd'}:{real}"}, tmp_path / "none")
    assert info is not None
    assert info.libcuda == str(real / "libcuda.so.1")  # the one the loader loads


def test_a_long_library_path_is_checked_at_once(tmp_path: Path) -> None:
    script = ("from nixrepro import cuda\n"
              "cuda.foreign_library_dirs({'LD_LIBRARY_PATH': ':'.join("
              "f'/opt/cluster/modules/lib/{i}' for i in range(60000))})\n")
    try:
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=5, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("checking an LD_LIBRARY_PATH of 60,000 entries took more than 5 s")


# --- hostDriver's script ------------------------------------------------------------------------


@pytest.mark.nix
@pytest.mark.skipif((cuda.NIXOS_DRIVER_DIR / "libcuda.so.1").exists(), reason="a NixOS driver wins")
def test_host_driver_puts_its_directory_on_the_library_path_as_one_entry(
        apps: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    host_lib = library_dir(tmp_path / "usr/lib64", ["libcuda.so.1"])
    cache = tmp_path / "a:b" / "cache"
    seen = run_app(apps["on"], {"XDG_CACHE_HOME": str(cache), "NIXREPRO_DRIVER_SEARCH_PATH": str(host_lib)})
    if seen["NIXREPRO_DRIVER_DIR"]:  # injected: the loader must find it there
        assert seen["NIXREPRO_DRIVER_DIR"] in seen["LD_LIBRARY_PATH"].split(":")


# --- found sound: kept as guards -----------------------------------------------------------------


@pytest.mark.nix
def test_a_dirty_lock_that_nix_staged_is_refused_with_what_nix_did(built: tuple[Project, str],
                                                                   tmp_path: Path) -> None:
    project, env = built
    facts = write_facts(project, tmp_path / "facts.json", env)
    try:
        sh(["git", "rm", "-q", "--cached", "flake.lock"], cwd=project.root)
        sh(["git", "commit", "-qm", "no lock"], cwd=project.root)
        sh(["git", "add", "-N", "flake.lock"], cwd=project.root)  # what `nix run` does
        result = project.nixrepro("run", "--facts", str(facts), "--env", env, "--", "true")
    finally:
        sh(["git", "add", "flake.lock"], cwd=project.root)
        sh(["git", "commit", "-qm", "lock again"], cwd=project.root)
    no_traceback(result)
    assert result.returncode == 1 and "nix wrote flake.lock" in result.stderr


def test_a_follows_cycle_marks_the_input_unlocked_and_never_loops() -> None:
    lock = FlakeLock.parse(lock_bytes({"a": ["b"], "b": ["a"], "c": "c"}, {"c": {"locked": LOCKED}}))
    assert (lock.inputs["a"].locked, lock.inputs["b"].locked, lock.inputs["c"].locked) == (False, False, True)
    assert hashlib.sha256(b"").hexdigest() != lock.sha256
