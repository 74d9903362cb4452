"""`nixrepro run` under real faults: the outcome is always recorded and nothing produced is lost.

Real parts only: real git and Nix, a real SeaweedFS server frozen mid-upload (SIGSTOP), real
signals and kill -9, FIFOs and symlink loops, full and read-only tmpfs mounts (skipped, with the
reason, where mounting is not permitted).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Project, git_commit, make_project, run_cli, sh
from tests.s3server import S3Server

pytestmark = pytest.mark.nix


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, has_nix: None) -> Project:
    """One project for the tests that only add runs (each finds its own run by id)."""
    base = tmp_path_factory.mktemp("faults")
    project = make_project(base, label=f"faults-{base.name[-10:]}")
    project.build_env()
    (project.root / ".gitignore").write_text("work/\n")
    (project.root / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{base / "cache"}"\n')
    git_commit(project.root, "config")
    return project


def run_ids(project: Project) -> set[str]:
    return {p.name for p in project.runs_dir.iterdir()} if project.runs_dir.exists() else set()


def new_record(project: Project, before: set[str]) -> dict:
    (run_id,) = run_ids(project) - before
    return json.loads(project.nixrepro("show", run_id, "--json").stdout)


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# --- 1. the outcome is always recorded ---------------------------------------------------------------

UNSTORABLE = {
    "empty-directory": ("mkdir -p work/out", "a directory with no files in it", "failed"),
    "fifo": ("mkdir -p work && mkfifo work/out", "is a FIFO", "failed"),
    "symlink-loop": ("mkdir -p work && ln -s out work/out", "is a symlink loop", "failed"),
    "loop-inside-a-directory": ("mkdir -p work/out/sub && echo x > work/out/a && ln -s .. work/out/sub/up",
                                "work/out/sub/up is a symlink loop", "failed"),
    "dangling-link": ("mkdir -p work && ln -s /nonexistent/x work/out", "a symlink to nothing", "failed"),
    "never-written": ("mkdir -p work", "was not written by the command", "missing"),
}


@pytest.mark.parametrize("case", list(UNSTORABLE))
def test_an_output_that_cannot_be_stored_keeps_the_exit_code_and_says_why(
    shared: Project, tmp_path: Path, case: str
) -> None:
    make, words, state = UNSTORABLE[case]
    sh(["rm", "-rf", str(shared.root / "work")])
    before = run_ids(shared)
    result = run_cli(["run", "--flake", ".#env", "--output", f"work/out=file://{tmp_path}/store/out",
                      "--", "sh", "-c", f"{make}; exit 3"], cwd=shared.root, timeout=60)
    no_traceback(result)
    assert result.returncode == 3, result.stderr
    record = new_record(shared, before)
    assert (record["status"], record["exit_code"]) == ("failed", 3)
    (outcome,) = record["data"]["output_results"]
    assert outcome["state"] == state and outcome["local"] == "work/out"
    assert words in outcome["reason"] and words in result.stderr
    assert record["data"]["outputs"] == []


def test_a_full_store_and_cache_disk_still_records_the_outcome_and_keeps_the_file(
    project: Project, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "full", "size=1m") as full:
        (project.root / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{full / "cache"}"\n')
        (project.root / ".gitignore").write_text("big.bin\n")
        git_commit(project.root, "a cache on a small disk")
        result = project.nixrepro("run", "--flake", ".#env", "--output",
                                  f"big.bin=file://{full}/store/big.bin", "--", "sh", "-c",
                                  "head -c 3000000 /dev/urandom > big.bin")
        no_traceback(result)
        assert result.returncode == 0, result.stderr
        record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    assert (record["status"], record["exit_code"]) == ("succeeded", 0)
    (outcome,) = record["data"]["output_results"]
    assert outcome["state"] == "failed"
    assert "No space left on device" in outcome["reason"]
    assert "nixrepro data put big.bin" in outcome["reason"]  # the remedy, with the file kept
    assert (project.root / "big.bin").stat().st_size == 3000000


@contextlib.contextmanager
def frozen(server: S3Server) -> Iterator[None]:
    """The whole SeaweedFS server stopped (SIGSTOP): connections open, nothing answers."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_an_s3_upload_records_the_run_and_keeps_the_output_for_sync(
    project: Project, s3_server: S3Server, s3_bucket: str, tmp_path: Path, sig: int
) -> None:
    (project.root / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{tmp_path / "cache"}"\n')
    (project.root / ".gitignore").write_text("model.bin\n")
    git_commit(project.root, "s3 output")
    env = {**os.environ, **s3_server.env()}
    uri = f"s3://{s3_bucket}/model.bin"
    with frozen(s3_server):
        proc = subprocess.Popen(
            [sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", "--output",
             f"model.bin={uri}", "--", "sh", "-c", "echo weights > model.bin"],
            cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 30
        notes = None
        while time.monotonic() < deadline:
            found = list(project.runs_dir.glob("*/outputs.jsonl")) if project.runs_dir.exists() else []
            if found and '"storing"' in found[0].read_text():
                notes = found[0]
                break
            time.sleep(0.05)
        assert notes is not None, "the upload never started"
        time.sleep(0.3)  # inside the request to the frozen server
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 128 + sig
    record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    assert (record["status"], record["exit_code"]) == ("interrupted", 0)
    (outcome,) = record["data"]["output_results"]
    assert outcome["state"] == "pending" and signal.Signals(sig).name in outcome["reason"]
    assert record["data"]["outputs"][0]["pending"] is True

    synced = project.nixrepro("sync", env=env)
    assert synced.returncode == 0, synced.stderr
    after = json.loads(project.nixrepro("show", record["id"], "--json").stdout)
    assert after["data"]["output_results"][0]["state"] == "stored"
    assert after["data"]["outputs"][0]["version_id"]


def test_a_killed_recorder_keeps_the_runs_inputs_outputs_and_lineage(
    project: Project, tmp_path: Path
) -> None:
    base = f"file://{tmp_path / 'store'}"
    (project.root / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{tmp_path / "cache"}"\n')
    (project.root / ".gitignore").write_text("made.txt\nlater.txt\n")
    git_commit(project.root, "data")
    (tmp_path / "raw.txt").write_text("raw\n")
    assert project.nixrepro("data", "put", str(tmp_path / "raw.txt"), f"{base}/raw.txt").returncode == 0
    pid_file = tmp_path / "child.pid"
    script = (
        "import os, time, pathlib, nixrepro, nixrepro.data\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "pathlib.Path('made.txt').write_text('made')\n"
        f"nixrepro.data.output('made.txt', {base + '/made.txt'!r})\n"
        "nixrepro.log({'loss': 0.5})\n"
        f"pathlib.Path({str(pid_file)!r} + '.ready').write_text('')\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", "--input", f"{base}/raw.txt",
         "--output", f"later.txt={base}/later.txt", "--", sys.executable, "-c", script],
        cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{pid_file}.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()  # kill -9: the recorder writes nothing more
        proc.wait()
    finally:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    assert record["status"] == "crashed" and record["metrics"] == {"loss": 0.5}
    assert [i["uri"] for i in record["data"]["inputs"]] == [f"{base}/raw.txt"]
    (made,) = record["data"]["outputs"]
    assert made["uri"] == f"{base}/made.txt" and made["version_id"]
    (declared,) = record["data"]["output_results"]
    assert declared["state"] == "failed" and "recorder died" in declared["reason"]
    lineage = json.loads(project.nixrepro("lineage", f"{base}/made.txt", "--json").stdout)
    assert record["id"] in json.dumps(lineage)  # the stored version has its producing run
    listed = project.nixrepro("runs", "--json")
    assert json.loads(listed.stdout)[0]["status"] == "crashed"


# --- 2. a full disk while teeing logs ----------------------------------------------------------------


def test_a_full_disk_while_teeing_logs_stops_the_command_with_a_reason(project: Project) -> None:
    store = project.root / ".nixrepro"
    with tmpfs(store, "size=1m"):
        talker = "import sys\nfor i in range(100000): sys.stdout.write(f'step {i} loss 0.25 acc 0.5\\n')\n"
        started = time.monotonic()
        result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "-c", talker)
        assert time.monotonic() - started < 60
        no_traceback(result)
        assert result.returncode == 128 + signal.SIGTERM
        assert "could not write stdout.log (No space left on device)" in result.stderr
        (run_dir,) = (store / "runs").iterdir()
        record = json.loads((run_dir / "record.json").read_text())
    assert (record["status"], record["signal"]) == ("failed", "SIGTERM")
    assert record["ended_at"] is not None


# --- 3. start-up: a read-only store, a deleted cwd, Ctrl-C --------------------------------------------


def test_a_read_only_run_store_is_one_sentence(project: Project) -> None:
    with tmpfs(project.root / ".nixrepro", "ro,size=64k"):
        result = project.nixrepro("run", "--flake", ".#env", "--", "true")
    no_traceback(result)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()[-1:]
    assert line.startswith("Error: cannot write the run store") and "Read-only file system" in line


def test_a_deleted_working_directory_is_one_sentence(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    result = subprocess.run(
        ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" -m nixrepro runs', sys.executable],
        capture_output=True, text=True, timeout=60,
    )
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: the current directory no longer exists")


@pytest.mark.parametrize("moment", ["importing", 0.3, 0.6, 1.0])
def test_ctrl_c_during_start_up_exits_130_and_leaves_no_half_written_run(
    shared: Project, moment: str | float
) -> None:
    before = run_ids(shared)
    # -X importtime reports each module as it is imported: "importing" interrupts while the
    # command line itself is still being imported (click), before any of it could catch Ctrl-C.
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"} if moment == "importing" else None
    proc = subprocess.Popen([sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", "--",
                             "sleep", "20"], cwd=shared.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    if moment == "importing":
        seen = ""
        while not seen.rstrip().endswith(" click.core") and proc.poll() is None:
            seen = proc.stderr.readline()
    else:
        time.sleep(float(moment))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 130, stderr
    for run_id in run_ids(shared) - before:  # none, or one complete record
        record = json.loads((shared.runs_dir / run_id / "record.json").read_text())
        assert record["status"] == "interrupted" and record["ended_at"] is not None


# --- 4. the experiment side and dev runs ---------------------------------------------------------------


def test_logging_into_a_vanished_run_directory_warns_once_and_the_experiment_goes_on(
    tmp_path: Path,
) -> None:
    script = "import nixrepro\nfor i in range(3): nixrepro.log({'loss': i})\nprint('finished')\n"
    env = {**os.environ, "NIXREPRO_RUN_DIR": str(tmp_path / "vanished"), "NIXREPRO_RUN_ID": "x"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "finished\n"
    warnings = [line for line in result.stderr.splitlines() if "nixrepro: warning" in line]
    assert len(warnings) == 1 and "metrics cannot be written" in warnings[0]
    no_traceback(result)


def test_a_dev_run_stores_changes_inside_a_submodule(project: Project, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=lib)
    (lib / "model.py").write_text("LAYERS = 2\n")
    git_commit(lib, "lib")
    sh(["git", "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib"],
       cwd=project.root)
    git_commit(project.root, "a submodule")
    (project.root / "lib" / "model.py").write_text("LAYERS = 3\n")
    (project.root / "lib" / "extra.py").write_text("NEW = 1\n")
    result = project.nixrepro("run", "--dev", "--flake", ".#env", "--", "true")
    assert result.returncode == 0, result.stderr
    record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    assert record["code"]["dirty"] is True
    patch = project.runs_dir / record["id"] / "code.patch"
    assert b"LAYERS = 3" in patch.read_bytes() and b"NEW = 1" in patch.read_bytes()
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project.root), str(clone)])
    sh(["git", "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init"], cwd=clone)
    sh(["git", "apply", str(patch)], cwd=clone)
    assert (clone / "lib" / "model.py").read_text() == "LAYERS = 3\n"
    assert (clone / "lib" / "extra.py").read_text() == "NEW = 1\n"
