"""`nixrepro run`: what it refuses, what it records, how the command is run. Real git, real Nix."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Project, run_cli, sh

pytestmark = pytest.mark.nix


def records(project: Project) -> list[dict]:
    if not project.runs_dir.exists():
        return []
    # A run directory exists a moment before its first record is written (atomically).
    found = (d / "record.json" for d in project.runs_dir.iterdir())
    return [json.loads(path.read_text()) for path in found if path.exists()]


def only_record(project: Project) -> dict:
    found = records(project)
    assert len(found) == 1, found
    return found[0]


# --- refusals: exit 1, one sentence with the remedy, nothing recorded -----------------------------


def test_refuses_outside_a_git_repository(tmp_path: Path) -> None:
    result = run_cli(["run", "--env", "/nix/store/x", "--", "true"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: {tmp_path} is not inside a git repository; run `git init`, commit your project, "
        "and start the run from inside it.\n"
    )


def test_refuses_a_dirty_tree_and_names_the_files(project: Project) -> None:
    env = project.build_env()
    (project.root / "train.py").write_text("print('changed')\n")
    (project.root / "notes.txt").write_text("new\n")
    result = project.nixrepro("run", "--env", env, "--", "true")
    assert result.returncode == 1
    assert result.stderr == (
        "Error: the work tree has uncommitted changes (M train.py, ?? notes.txt); commit them, or "
        "pass --dev to record a development run with the diff.\n"
    )
    assert "Traceback" not in result.stderr
    assert records(project) == []


@pytest.mark.parametrize("case", ["missing", "untracked"])
def test_refuses_an_unpinned_flake_lock(project: Project, case: str) -> None:
    env = project.build_env()
    if case == "missing":
        sh(["git", "rm", "-q", "flake.lock"], cwd=project.root)
        project.commit("drop lock")
        expected = ("Error: flake.lock is missing, so the flake's inputs are not pinned; run "
                    "`nix flake lock` and commit flake.lock.\n")
    elif case == "untracked":
        sh(["git", "rm", "-q", "--cached", "flake.lock"], cwd=project.root)
        (project.root / ".gitignore").write_text("flake.lock\n")
        project.commit("untrack lock")
        expected = "Error: flake.lock is not tracked by git; `git add flake.lock` and commit it.\n"
    result = project.nixrepro("run", "--env", env, "--", "true")
    assert result.returncode == 1
    assert result.stderr == expected
    assert records(project) == []


def test_refuses_a_modified_flake_lock_and_a_dev_run_keeps_its_diff(project: Project) -> None:
    env = project.build_env()
    lock = project.root / "flake.lock"
    lock.write_text(lock.read_text().replace('"version": 7', '"version":  7'))
    result = project.nixrepro("run", "--env", env, "--", "true")
    assert result.returncode == 1
    assert result.stderr == (
        "Error: the work tree has uncommitted changes (M flake.lock); commit them, or pass --dev "
        "to record a development run with the diff.\n"
    )
    assert records(project) == []
    result = project.nixrepro("run", "--dev", "--env", env, "--", "true")
    assert result.returncode == 0, result.stderr
    record = only_record(project)
    assert record["dev"] is True and record["code"]["dirty_files"] == ["M flake.lock"]
    patch = (project.runs_dir / record["id"] / "code.patch").read_text()
    assert '-  "version": 7' in patch and '+  "version":  7' in patch  # the lock's diff, both sides


def test_refuses_a_path_that_is_not_in_the_store(project: Project) -> None:
    missing = "/nix/store/00000000000000000000000000000000-missing"
    result = project.nixrepro("run", "--env", missing, "--", "true")
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: {missing} is not a valid path in the Nix store; build it first (`nix build`) "
        "or pass the output of a build with --env.\n"
    )
    assert records(project) == []


def test_missing_nix_is_a_clear_error(project: Project, tmp_path: Path) -> None:
    env = project.build_env()
    bin_dir = tmp_path / "bin-without-nix"
    bin_dir.mkdir()
    for tool in ("git", "true", "sh"):
        (bin_dir / tool).symlink_to(sh(["sh", "-c", f"command -v {tool}"]).strip())
    result = project.nixrepro("run", "--env", env, "--", "true",
                              env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 1
    assert result.stderr == (
        "Error: `nix` is not installed or not on PATH; install Nix (Debian: `apt-get install "
        "nix-bin`) or put it on PATH.\n"
    )
    assert records(project) == []


def test_no_environment_is_a_usage_error(project: Project) -> None:
    result = project.nixrepro("run", "--", "true")
    assert result.returncode == 2
    assert "no environment given; pass --env STOREPATH or --flake REF" in result.stderr


# --- what is recorded ------------------------------------------------------------------------------


def test_records_code_lock_closure_params_and_outcome(project: Project) -> None:
    result = project.nixrepro("run", "--flake", ".#env", "-p", "lr=0.25", "-p", "opt=adam",
                              "-p", "warm=true", "--seed", "7", "--name", "baseline", "--tag", "a",
                              "--", sys.executable, "train.py")
    assert result.returncode == 0, result.stderr
    assert "final loss" in result.stdout
    record = only_record(project)
    assert record["status"] == "succeeded" and record["exit_code"] == 0 and record["dev"] is False
    assert record["params"] == {"lr": 0.25, "opt": "adam", "warm": True}
    assert record["seed"] == 7 and record["name"] == "baseline" and record["tags"] == ["a"]
    assert record["code"]["commit"] == sh(["git", "rev-parse", "HEAD"], cwd=project.root).strip()
    assert record["code"]["branch"] == "main" and record["code"]["dirty"] is False
    lock_bytes = (project.root / "flake.lock").read_bytes()
    assert record["environment"]["flake_lock_sha256"] == hashlib.sha256(lock_bytes).hexdigest()
    dep = record["environment"]["inputs"]["dep"]
    locked = json.loads(lock_bytes)["nodes"]["dep"]["locked"]
    assert (dep["type"], dep["rev"], dep["narHash"]) == ("git", locked["rev"], locked["narHash"])
    assert record["metrics"] == {"loss": pytest.approx(0.75**5)}
    assert record["env_vars"]["NIXREPRO_SEED"] == "7"
    assert record["env_vars"]["PYTHONHASHSEED"] == "7"
    assert json.loads(record["env_vars"]["NIXREPRO_PARAMS"]) == record["params"]
    run_dir = project.runs_dir / record["id"]
    assert "final loss" in (run_dir / "stdout.log").read_text()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 5


def test_closure_hash_matches_an_independent_computation(project: Project) -> None:
    env = project.build_env()
    assert project.nixrepro("run", "--env", env, "--", "true").returncode == 0
    recorded = only_record(project)["environment"]
    listing = json.loads(sh(["nix", "path-info", "--recursive", "--json", env]))
    lines = sorted(f"{item['path']} {item['narHash']}\n" for item in listing)
    assert recorded["closure_hash"] == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert [p["path"] for p in recorded["closure"]] == sorted(i["path"] for i in listing)
    assert recorded["env_path"] == env


def test_show_json_round_trips_and_has_every_design_field(project: Project) -> None:
    from tests.record_paths import missing_paths

    assert project.nixrepro("run", "--flake", ".#env", "--", "true").returncode == 0
    shown = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
    assert shown == only_record(project)
    assert missing_paths(shown) == []
    from nixrepro.record import RunRecord, record_sha256

    assert RunRecord.from_dict(shown).to_dict() == shown
    assert shown["record_sha256"] == record_sha256(shown)


def test_env_bin_comes_first_on_path_and_run_identity_is_exported(project: Project) -> None:
    result = project.nixrepro("run", "--flake", ".#env", "--", "sh", "-c",
                              'greet; echo "$NIXREPRO_RUN_ID $NIXREPRO_RUN_DIR"')
    record = only_record(project)
    assert result.returncode == 0
    label = Path(record["environment"]["env_path"]).name[33:-4]  # <hash>-<label>-1.0
    assert result.stdout.splitlines()[0] == f"hello from {label}"
    assert result.stdout.splitlines()[1] == f"{record['id']} {project.runs_dir / record['id']}"


def test_exit_code_is_passed_through_and_recorded(project: Project) -> None:
    result = project.nixrepro("run", "--flake", ".#env", "--", "sh", "-c", "echo oops >&2; exit 3")
    assert result.returncode == 3
    record = only_record(project)
    assert (record["status"], record["exit_code"], record["signal"]) == ("failed", 3, None)
    assert (project.runs_dir / record["id"] / "stderr.log").read_text() == "oops\n"


def test_a_command_that_does_not_exist_is_recorded_as_failed(project: Project) -> None:
    result = project.nixrepro("run", "--flake", ".#env", "--", "no-such-program-xyz")
    assert result.returncode == 127
    assert "no-such-program-xyz: command not found" in result.stderr
    assert only_record(project)["status"] == "failed"


def test_result_link_and_run_store_are_not_dirt(project: Project) -> None:
    sh(["nix", "build", ".#env"], cwd=project.root)  # leaves ./result
    assert (project.root / "result").is_symlink()
    for _ in range(2):  # the second run sees the store the first one made
        result = project.nixrepro("run", "--flake", ".#env", "--", "true")
        assert result.returncode == 0, result.stderr
    assert sh(["git", "status", "--porcelain"], cwd=project.root) == "?? result\n"


def test_dev_run_stores_the_diff_with_untracked_files(project: Project) -> None:
    (project.root / "train.py").write_text("print('tweaked')\n")
    (project.root / "new_module.py").write_text("VALUE = 42\n")
    result = project.nixrepro("run", "--dev", "--flake", ".#env", "--", sys.executable, "train.py")
    assert result.returncode == 0, result.stderr
    record = only_record(project)
    patch = (project.runs_dir / record["id"] / "code.patch").read_bytes()
    assert b"VALUE = 42" in patch and b"print('tweaked')" in patch
    assert record["dev"] is True and record["code"]["dirty"] is True
    assert record["code"]["diff_sha256"] == hashlib.sha256(patch).hexdigest()
    # the patch applies to the recorded commit and gives back the dirty tree
    clone = project.root.parent / "clone"
    sh(["git", "clone", "-q", str(project.root), str(clone)])
    sh(["git", "apply", str(project.runs_dir / record["id"] / "code.patch")], cwd=clone)
    assert (clone / "new_module.py").read_text() == "VALUE = 42\n"
    # the user's index is untouched
    assert sh(["git", "diff", "--cached", "--name-only"], cwd=project.root) == ""
    assert "succeeded (dev)" in project.nixrepro("runs").stdout
    assert "DEV RUN" in project.nixrepro("show", record["id"]).stdout


def test_verify_contents_refuses_a_corrupted_closure(project: Project) -> None:
    env = project.build_env()
    target = Path(env) / "extras"
    os.chmod(env, 0o755)
    os.chmod(target, 0o644)
    target.write_text("tampered")
    try:
        result = project.nixrepro("run", "--verify-contents", "--env", env, "--", "true")
        assert result.returncode == 1
        assert result.stderr.startswith(f"Error: the environment's closure is corrupted ({env} ")
        assert "`nix store repair`" in result.stderr
        assert records(project) == []
    finally:
        sh(["nix", "store", "delete", env], check=False)


def test_env_is_pinned_against_garbage_collection(project: Project) -> None:
    assert project.nixrepro("run", "--flake", ".#env", "--", "true").returncode == 0
    record = only_record(project)
    env = record["environment"]["env_path"]
    listed = project.nixrepro("gc-roots").stdout
    assert f"{record['id']}  {env}" in listed
    deleted = subprocess.run(["nix", "store", "delete", env], capture_output=True, text=True)
    assert deleted.returncode != 0 and "alive" in deleted.stderr
    assert project.nixrepro("gc-roots", "remove", record["id"]).returncode == 0
    assert project.nixrepro("gc-roots", "--json").stdout.strip() == "[]"
    assert subprocess.run(["nix", "store", "delete", env], capture_output=True).returncode == 0


# --- secrets ----------------------------------------------------------------------------------------


def test_a_planted_secret_reaches_no_file_nixrepro_writes(project: Project) -> None:
    secret = "sk-PLANTED-7f3a9c1e5b"
    env = {**os.environ, "MY_API_KEY": secret, "AWS_SECRET_ACCESS_KEY": secret + "aws",
           "WANDB_API_KEY": secret + "wandb", "HARMLESS": "visible-value"}
    result = project.nixrepro(
        "run", "--flake", ".#env", "-p", f"token={secret}", "--", "sh", "-c",
        f'echo "leak $MY_API_KEY"; echo "again $WANDB_API_KEY" >&2; echo {secret}', env=env,
    )
    assert result.returncode == 0
    assert secret in result.stdout  # the terminal shows what the program printed
    for path in project.root.joinpath(".nixrepro").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    record = only_record(project)
    assert record["env_vars"]["MY_API_KEY"] == "<redacted>"
    assert record["env_vars"]["HARMLESS"] == "visible-value"
    assert "leak <redacted>" in (project.runs_dir / record["id"] / "stdout.log").read_text()


# --- signals, crashes, concurrency ------------------------------------------------------------------


def _start_sleeper(project: Project, marker: Path) -> subprocess.Popen[str]:
    script = f"trap 'echo got-$1 > {marker}; exit 0' INT; trap 'echo TERM > {marker}; exit 143' TERM; " \
             f"echo ready > {marker}.ready; sleep 30 >/dev/null 2>&1 & wait"
    return subprocess.Popen(
        [sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", "--", "sh", "-c", script],
        cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_running(project: Project, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(project)
        if found and found[0]["status"] == "running":
            time.sleep(0.3)  # let the child install its traps
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the run never started")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_are_forwarded_to_the_command(project: Project, tmp_path: Path, sig: int) -> None:
    marker = tmp_path / "marker"
    proc = _start_sleeper(project, marker)
    _wait_running(project)
    deadline = time.monotonic() + 30
    while not marker.with_suffix(".ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the traps are installed once the command says so
    proc.send_signal(sig)
    proc.wait(timeout=30)
    record = only_record(project)
    assert marker.exists(), "the command never saw the signal"
    if sig == signal.SIGTERM:
        assert marker.read_text().strip() == "TERM"
        assert (proc.returncode, record["exit_code"], record["status"]) == (143, 143, "interrupted")
    else:
        assert marker.read_text().startswith("got-")
        # the command handled SIGINT and exited 0: the record says so, and that it was interrupted
        assert (proc.returncode, record["exit_code"], record["signal"]) == (0, 0, None)
        assert record["status"] == "interrupted"
    assert record["ended_at"] is not None and record["duration_s"] > 0


def test_an_unhandled_sigterm_marks_the_run_interrupted(project: Project) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", "--", "sleep", "30"],
        cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_running(project)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    record = only_record(project)
    assert (record["status"], record["signal"], record["exit_code"]) == ("interrupted", "SIGTERM", None)
    assert proc.returncode == 128 + signal.SIGTERM


def test_a_signal_while_the_command_starts_reaches_the_command(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM delivered after nixrepro checked for signals and before it forwards them (the
    child being started) still stops the command: it is not left to run to its end."""
    from nixrepro import runner, supervise
    from nixrepro.runner import RunRequest

    real_popen = subprocess.Popen

    def popen_after_a_signal(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        if args and args[0] == ["sleep", "30"]:  # the command, not git or nix before it
            os.kill(os.getpid(), signal.SIGTERM)  # noted by nixrepro's handler, not forwarded yet
        return real_popen(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(supervise.subprocess, "Popen", popen_after_a_signal)
    started = time.monotonic()
    with pytest.raises(supervise.Interrupted):
        runner.run(RunRequest(argv=["sleep", "30"], cwd=project.root, flake=".#env"))
    assert time.monotonic() - started < 20, "the command ran to its end"
    record = only_record(project)
    assert (record["status"], record["signal"], record["exit_code"]) == ("interrupted", "SIGTERM", None)


def test_a_killed_recorder_shows_as_crashed_and_keeps_metrics(project: Project) -> None:
    script = "import nixrepro, time\nnixrepro.log({'loss': 0.5}, step=1)\ntime.sleep(30)\n"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", "--", sys.executable, "-c", script],
        cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    record = _wait_running(project)
    metrics = project.runs_dir / record["id"] / "metrics.jsonl"
    deadline = time.monotonic() + 20
    # The file appears before its first line is complete: wait for the line itself.
    while not (metrics.exists() and metrics.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: the recorder cannot write anything more
    proc.wait()
    listed = json.loads(project.nixrepro("runs", "--json").stdout)
    assert [(r["id"], r["status"]) for r in listed] == [(record["id"], "crashed")]
    assert listed[0]["metrics"] == {"loss": 0.5}
    assert "crashed" in project.nixrepro("runs").stdout


def test_twenty_concurrent_runs_are_complete_and_distinct(project: Project) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", "-p", f"i={i}", "--",
             sys.executable, "train.py"],
            cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for i in range(20)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * 20
    found = records(project)
    assert len({r["id"] for r in found}) == 20
    assert sorted(r["params"]["i"] for r in found) == list(range(20))
    assert all(r["status"] == "succeeded" and r["metrics"]["loss"] > 0 for r in found)
    from nixrepro.record import record_sha256

    assert all(r["record_sha256"] == record_sha256(r) for r in found)


# --- runs and show ----------------------------------------------------------------------------------


def test_runs_lists_newest_first_and_resolves_references(project: Project) -> None:
    for name in ("first", "second", "third"):
        assert project.nixrepro("run", "--flake", ".#env", "--name", name, "--", "true").returncode == 0
    listed = json.loads(project.nixrepro("runs", "--json").stdout)
    assert [r["name"] for r in listed] == ["third", "second", "first"]
    assert json.loads(project.nixrepro("show", "@latest~2", "--json").stdout)["name"] == "first"
    assert json.loads(project.nixrepro("show", listed[1]["id"][:6], "--json").stdout)["name"] == "second"
    assert len(json.loads(project.nixrepro("runs", "--limit", "1", "--json").stdout)) == 1
    assert project.nixrepro("runs", "--status", "failed", "--json").stdout.strip() == "[]"


def test_unknown_and_ambiguous_references_are_clear_errors(project: Project) -> None:
    result = project.nixrepro("show", "@latest")
    assert result.returncode == 2
    assert result.stderr == (f"Error: no run is recorded in {project.root / '.nixrepro'} yet; start "
                             "one with `nixrepro run -- CMD`.\n")
    result = project.nixrepro("show", "zzzz")
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: no run matches 'zzzz' in {project.root / '.nixrepro'}; `nixrepro runs` lists the runs.\n"
    )
    for _ in range(2):
        project.nixrepro("run", "--flake", ".#env", "--", "true")
    result = project.nixrepro("show", "")
    assert result.returncode == 2 and "no run matches ''" in result.stderr
    result = project.nixrepro("show", "@latest~5")
    assert result.returncode == 2 and "there are only 2 runs" in result.stderr


def test_debug_shows_the_traceback(project: Project) -> None:
    result = project.nixrepro("--debug", "show", "zzzz")
    assert result.returncode != 0 and "Traceback" in result.stderr
