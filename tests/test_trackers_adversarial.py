"""The trackers against a hostile world, with the real wandb (offline) and the real mlflow (a
sqlite store per test, copied from one migrated per module): a tracking server that accepts and
never answers, signals while the trackers finish, nixrepro killed under them, hostile metrics
lines, credentials in tracking URIs, non-UTF-8 arguments, a library that floods the terminal and a
full disk. Each test is named after the promise it keeps (docs/trackers.md, "When a tracker
fails"): the run ends, its record is complete, each failed tracker costs one warning, no secret and
no traceback reaches the terminal, no tracker process is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import wandb_log
from tests.helpers import Project, git_commit
from tests.test_mlflow import mlflow_env

pytestmark = [pytest.mark.nix,
              pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
              pytest.mark.filterwarnings("ignore:SOCKS support in urllib3")]

LOCAL_INPUT = "is fetched from this machine's file system"  # the test project's own warning


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite store with MLflow's tables, made once (its migration takes seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, migrated: Path) -> Path:
    """This test's own tracking store, a copy of the migrated one."""
    path = tmp_path / "mlflow.db"
    shutil.copy(migrated, path)
    return path


def client_of(store: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{store}")


def configure(project: Project, toml: str, script: str) -> None:
    (project.root / "nixrepro.toml").write_text(toml)
    (project.root / "exp.py").write_text(script)
    git_commit(project.root, "adversarial")


def both(store: Path) -> str:
    return (f'[trackers.mlflow]\ntracking_uri = "sqlite:///{store}"\nexperiment = "adv"\n\n'
            '[trackers.wandb]\nproject = "adv"\nmode = "offline"\n')


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line and LOCAL_INPUT not in line]


def dropped(stderr: str) -> dict[str, str]:
    """The one warning of each dropped tracker, by name: its reason."""
    found: dict[str, str] = {}
    for line in warnings(stderr):
        head, _, rest = line.partition(" failed and is dropped for this run (")
        name = head.removeprefix("nixrepro: warning: ")
        assert rest.endswith("); the local record is complete"), line
        assert name not in found, f"two warnings for {name}"
        found[name] = rest.removesuffix("); the local record is complete")
    return found


def the_record(project: Project) -> dict[str, Any]:
    (record,) = [json.loads(p.read_text()) for p in project.runs_dir.glob("*/record.json")]
    return dict(record)


def tracker_processes(project: Project) -> list[tuple[int, str]]:
    """Tracker processes (and W&B's service) still running in the project: none may be."""
    return processes(project, "nixrepro.trackers.host", "wandb-core")


def processes(project: Project, *names: str) -> list[tuple[int, str]]:
    """The live processes in the project's directory whose command line has one of ``names``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                cmdline = file.read().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if any(name in cmdline for name in names) and cwd.startswith(str(project.root)):
            found.append((int(pid), cmdline[:80]))
    return found


@pytest.fixture(autouse=True)
def _nothing_left_behind(project: Project) -> Iterator[None]:
    """Whatever a failing test leaves running in its project (nixrepro, its trackers, the
    experiment) is killed at its end."""
    yield
    for pid, _ in processes(project, "nixrepro", "wandb-core", "exp.py"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def no_tracker_process_left(project: Project, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while tracker_processes(project) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tracker_processes(project) == []


def start(project: Project, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`nixrepro run` of exp.py in a session of its own, as a terminal starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", *args, "--", sys.executable,
         "exp.py"],
        cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


class Listener:
    """A TCP server on 127.0.0.1 that accepts every connection and then: ``silent``, never
    answers; ``close``, reads the request and hangs up; ``500``, answers 500 to everything."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            if self.mode == "silent":
                self._held.append(conn)
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                conn.recv(65536)
                if self.mode == "500":
                    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n"
                                 b"Connection: close\r\n\r\noops")
            except OSError:
                pass

    def close(self) -> None:
        self._socket.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    server = Listener(request.param)
    yield server
    server.close()


DONE = """\
import nixrepro
nixrepro.log({"loss": 0.5}, step=0)
print("done")
"""


def assert_complete(project: Project) -> dict[str, Any]:
    record = the_record(project)
    assert (record["status"], record["exit_code"]) == ("succeeded", 0)
    assert record["metrics"]["loss"] == 0.5
    assert (project.runs_dir / record["id"] / "stdout.log").read_text() == "done\n"
    return record


# --- a tracker that never answers, and signals while the trackers finish -------------------------


@pytest.mark.parametrize("listener", ["silent"], indirect=True)
def test_a_tracking_server_that_never_answers_holds_the_run_only_its_timeout_and_costs_one_warning(
    project: Project, listener: Listener,
) -> None:
    """It accepts the connection (so it is no unreachable server) and never answers: MLflow's own
    client would wait 120 s per request and retry 7 times."""
    configure(project, f'[trackers.mlflow]\ntracking_uri = "http://127.0.0.1:{listener.port}"\n',
              DONE)
    began = time.monotonic()
    proc = start(project, mlflow_env(NIXREPRO_TRACKER_TIMEOUT="3"))
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    assert time.monotonic() - began < 40
    assert dropped(stderr) == {"mlflow": "it did not finish its run within 3 s of the run's end "
                                         "(NIXREPRO_TRACKER_TIMEOUT gives it longer); its process "
                                         "was stopped"}
    assert "Traceback" not in stderr
    assert "mlflow" not in assert_complete(project)["trackers"]
    no_tracker_process_left(project, within=1)


@pytest.mark.parametrize("listener", ["silent"], indirect=True)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_trackers_finish_stops_them_at_once_with_the_signals_exit_code(
    project: Project, mlflow_store: Path, listener: Listener, signum: int,
) -> None:
    """Ctrl-C (a second one) or a scheduler's SIGTERM once the experiment is done, while nixrepro
    waits for a tracker that cannot finish: nixrepro stops it and exits at once, 130 or 143."""
    silent = f"http://127.0.0.1:{listener.port}"
    configure(project, both(mlflow_store).replace(f"sqlite:///{mlflow_store}", silent), DONE)
    proc = start(project, mlflow_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the final record is written: the trackers are finishing
        found = list(project.runs_dir.glob("*/record.json")) if project.runs_dir.exists() else []
        if found and json.loads(found[0].read_text())["status"] != "running":
            break
        time.sleep(0.05)
    time.sleep(1.0)  # nixrepro waits for its trackers
    signalled = time.monotonic()
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, stderr
    assert time.monotonic() - signalled < 10
    reasons = dropped(stderr)
    assert reasons["mlflow"] == f"interrupted by {signal.Signals(signum).name} before it finished " \
                                "its run"
    assert set(reasons) <= {"mlflow", "wandb"}  # W&B offline may well have finished before it
    assert "Traceback" not in stderr
    assert_complete(project)  # the experiment's outcome, recorded before the trackers' end
    no_tracker_process_left(project, within=2)


SLOW = """\
import time
import nixrepro
for step in range(600):
    nixrepro.log({"loss": 1.0 / (step + 1)}, step=step)
    time.sleep(0.05)
"""


def test_nixrepro_killed_mid_run_leaves_no_tracker_process_and_no_run_marked_running(
    project: Project, mlflow_store: Path,
) -> None:
    """kill -9 of nixrepro: its trackers see the end of their input, end their runs as failed
    (not RUNNING on the dashboard for ever, with what was logged) and exit."""
    configure(project, both(mlflow_store), SLOW)
    proc = start(project, mlflow_env())
    client = client_of(mlflow_store)
    deadline = time.monotonic() + 60
    runs: list[Any] = []
    while not runs and time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("adv")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        time.sleep(0.1)
    assert runs, "the MLflow run never appeared"
    while time.monotonic() < deadline:  # and W&B's run is live (its debug.log says so)
        logs = list((project.root / ".nixrepro" / "wandb").glob("offline-run-*/logs/debug.log"))
        if logs and b"run started" in logs[0].read_bytes():
            break
        time.sleep(0.1)
    time.sleep(1.5)  # some points reach both trackers
    proc.kill()
    proc.communicate(timeout=30)
    no_tracker_process_left(project)  # (the experiment, left alone, is killed at the end)
    (run,) = client.search_runs([runs[0].info.experiment_id])
    assert run.info.status == "FAILED"
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 5
    (wandb_dir,) = (project.root / ".nixrepro" / "wandb").glob("offline-run-*")
    wandb = wandb_log.read(wandb_dir)
    assert wandb.exit_code == 1 and len(wandb.history) >= 5


# --- what the trackers are given -----------------------------------------------------------------

HOSTILE = r"""
import nixrepro
nixrepro.log({"loss": 1.0}, step=0)
lines = [
    b'{"time": NaN, "step": 1, "metrics": {"a": 1}}',
    b'{"time": 1e300, "step": 2, "metrics": {"a": 2}}',
    b'{"time": -1e12, "step": 3, "metrics": {"a": 3}}',
    b'{"time": 1.0, "step": "x", "metrics": {"a": 4}}',
    b'{"time": 1.0, "step": 1000000000000000000000000000000, "metrics": {"a": 5}}',
    b'{"time": 1.0, "step": 2.5, "metrics": {"a": 6}}',
    b'{"time": 1.0, "step": 7, "metrics": {"\\ud800": 7, "text": "\\udfff"}}',
    b'{"time": 1.0, "step": 8, "metrics": {"deep": ' + b'[' * 100000 + b']' * 100000 + b'}}',
    b'{"time": 1.0, "step": 9, "metrics": {"tree": ' + b'{"a": ' * 500 + b'1' + b'}' * 500 + b'}}',
    b'{"time": 1.0, "step": 10, "metrics": {"big": "' + b'x' * 1000000 + b'"}}',
    b'{"time": 1.0, "step": 11, "metrics": {"\xff\xfe": 1}}',
    b'{"time": 1' + b'0' * 400 + b', "step": 12, "metrics": {"a": 12}}',
]
with open(nixrepro.run_dir() / "metrics.jsonl", "ab") as metrics:
    metrics.write(b"\n".join(lines) + b"\n")
    # the last point, as a writer in another language may leave it: no newline at the end
    metrics.write(b'{"time": 2.0, "step": 100, "metrics": {"loss": 0.5}}')
print("done")
"""


def test_hostile_metrics_lines_cost_no_tracker_and_the_record_still_reads(
    project: Project, mlflow_store: Path,
) -> None:
    configure(project, both(mlflow_store), HOSTILE)
    result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "exp.py",
                              env=mlflow_env())
    assert result.returncode == 0, result.stderr
    assert warnings(result.stderr) == []
    assert "Traceback" not in result.stderr
    record = assert_complete(project)
    assert project.record()["id"] == record["id"]  # a record every command reads
    assert "deep" not in record["metrics"] and "tree" not in record["metrics"]
    client = client_of(mlflow_store)
    run = client.get_run(record["trackers"]["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")) == [
        (0, 1.0), (100, 0.5)]
    assert sorted(m.value for m in client.get_metric_history(run.info.run_id, "a")) == [
        1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    wandb = wandb_log.read(project.root / record["trackers"]["wandb"]["dir"])
    assert wandb.exit_code == 0
    assert [h["loss"] for h in wandb.history if "loss" in h] == [1.0, 0.5]
    assert [h["a"] for h in wandb.history if "a" in h] == [1, 2, 3, 4, 5, 6]


def test_a_non_utf8_name_tag_param_or_argument_costs_no_tracker(
    project: Project, mlflow_store: Path,
) -> None:
    """Bytes that are no UTF-8 (a latin-1 file name, say) are lone surrogates in Python: the
    trackers get a ``?`` for each, the record keeps them as they are."""
    configure(project, both(mlflow_store), DONE)
    argv = [os.fsencode(a) for a in (sys.executable, "-m", "nixrepro", "run", "--flake", ".#env")]
    argv += [b"--name", b"caf\xe9", b"--tag", b"t\xfe", b"-p", b"note=\xff", b"--",
             os.fsencode(sys.executable), b"exp.py", b"arg\xfc"]
    result = subprocess.run(argv, cwd=project.root, env=mlflow_env(), capture_output=True,
                            timeout=120)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    assert warnings(stderr) == []
    record = the_record(project)
    assert record["name"] == "caf\udce9"
    run = client_of(mlflow_store).get_run(record["trackers"]["mlflow"]["run_id"])
    assert (run.info.run_name, run.data.params) == ("caf?", {"note": "?"})
    wandb = wandb_log.read(project.root / record["trackers"]["wandb"]["dir"])
    assert wandb.run.display_name == "caf?" and wandb.exit_code == 0


# --- secrets and what the terminal shows ---------------------------------------------------------


def test_credentials_in_a_tracking_uri_never_reach_a_warning_or_a_trackers_files(
    project: Project,
) -> None:
    """An MLflow server that hangs up and a W&B server that answers 500, each reached with a user
    and password in its URL: MLflow's message and wandb-core's log quote the URL whole."""
    closing, failing = Listener("close"), Listener("500")
    try:
        configure(project, f'[trackers.mlflow]\ntracking_uri = "http://alice:mlflow-pw-1234@'
                           f'127.0.0.1:{closing.port}/"\n\n[trackers.wandb]\nmode = "online"\n',
                  DONE)
        env = mlflow_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", WANDB_INIT_TIMEOUT="3",
                         WANDB_BASE_URL=f"http://bob:wandb-pw-5678@127.0.0.1:{failing.port}",
                         WANDB_API_KEY="k" * 40)
        result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "exp.py",
                                  env=env)
    finally:
        closing.close()
        failing.close()
    assert result.returncode == 0, result.stderr
    reasons = dropped(result.stderr)
    assert sorted(reasons) == ["mlflow", "wandb"]
    assert f"http://<redacted>@127.0.0.1:{closing.port}/api/" in reasons["mlflow"]
    assert_complete(project)
    written = [p for p in (project.root / ".nixrepro").rglob("*") if p.is_file()]
    assert any("debug-internal.log" in p.name for p in written)  # wandb-core's log, scrubbed
    for secret in ("mlflow-pw-1234", "wandb-pw-5678", "k" * 40):
        assert secret not in result.stderr + result.stdout
        assert not [p for p in written if secret.encode() in p.read_bytes()], secret


def fake_mlflow(tmp_path: Path, source: str) -> str:
    """An ``mlflow`` package of ``source`` first on the PYTHONPATH this returns (a library that
    misbehaves where nixrepro imports it: a flood, a traceback, a secret in what it prints)."""
    fake = tmp_path / "fake" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(source)
    return os.pathsep.join([str(fake.parent), *sys.path])


def test_what_a_trackers_library_prints_stays_off_the_terminal(
    project: Project, tmp_path: Path,
) -> None:
    """A library that floods stdout and stderr and prints a traceback (here an mlflow that fails
    its import loudly): the terminal shows the one warning, the tracker's log keeps the rest."""
    path = fake_mlflow(tmp_path,
        "import sys, traceback\n"
        "for i in range(20000):\n"
        "    print('chatter', i)\n"
        "    print('more chatter', i, file=sys.stderr)\n"
        "traceback.print_stack()\n"
        "raise ImportError('a loud failure')\n")
    configure(project, '[trackers.mlflow]\ntracking_uri = "sqlite:///mlflow.db"\n', DONE)
    env = mlflow_env(PYTHONPATH=path)
    result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "exp.py", env=env)
    assert result.returncode == 0, result.stderr
    assert dropped(result.stderr)["mlflow"].startswith(
        "MLflow could not start: mlflow cannot be imported where nixrepro runs (a loud failure)")
    assert "chatter" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr and 'File "' not in result.stderr
    assert result.stdout == "done\n"
    log = (project.root / ".nixrepro" / "trackers" / "mlflow.log").read_text()
    assert "more chatter 19999" in log
    assert_complete(project)


def test_what_a_trackers_library_prints_reaches_its_log_and_the_terminal_scrubbed(
    project: Project, tmp_path: Path,
) -> None:
    """A library that prints a token of the environment, a URL with its password and the value of
    a variable named in [secrets] extra_names, and fails with them in its message: the tracker's
    log keeps every line, without them, and the one warning shows none of them either."""
    path = fake_mlflow(tmp_path,
        "import os, sys\n"
        "print('token', os.environ['ADV_API_TOKEN'])\n"
        "print('retrying http://carol:url-pw-4321@127.0.0.1:9/api', file=sys.stderr)\n"
        "print('project key', os.environ['PROJECT_THING'], 'end of line')\n"
        "raise ImportError('cannot use ' + os.environ['PROJECT_THING'])\n")
    configure(project, '[trackers.mlflow]\ntracking_uri = "sqlite:///mlflow.db"\n\n'
                       '[secrets]\nextra_names = ["PROJECT_THING"]\n', DONE)
    env = mlflow_env(PYTHONPATH=path, ADV_API_TOKEN="tok-" + "7" * 20, PROJECT_THING="thing-" + "8" * 20)
    result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "exp.py", env=env)
    assert result.returncode == 0, result.stderr
    assert "cannot use <redacted>" in dropped(result.stderr)["mlflow"]
    trackers = project.root / ".nixrepro" / "trackers"
    log = (trackers / "mlflow.log").read_text()
    assert "token <redacted>" in log and "project key <redacted> end of line" in log
    assert "retrying http://<redacted>@127.0.0.1:9/api" in log
    for secret in ("7" * 20, "8" * 20, "url-pw-4321"):
        assert secret not in result.stderr + result.stdout + log
    assert not (trackers / "mlflow.log.scrub").exists()  # done: nothing left for the next run
    assert_complete(project)


def test_a_trackers_log_a_killed_nixrepro_left_unscrubbed_is_scrubbed_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kill -9 of nixrepro leaves the tracker's output as printed and its start in <kind>.log.scrub:
    the next tracker of that kind scrubs it before it starts (and before the log is moved aside)."""
    from nixrepro.trackers.host import LOG_MAX, LogTail

    monkeypatch.setenv("ADV_API_TOKEN", "tok-" + "9" * 20)
    log = tmp_path / "mlflow.log"
    before = b"an earlier run, scrubbed\n"
    log.write_bytes(before + b"token tok-" + b"9" * 20 + b"\n" + b"x" * LOG_MAX)
    (tmp_path / "mlflow.log.scrub").write_text(f"{len(before)}\n")
    LogTail.recover(log, ())
    assert log.read_bytes().startswith(before + b"token <redacted>\nxxx")
    assert not (tmp_path / "mlflow.log.scrub").exists()


MANY = """\
import nixrepro
for step in range(3000):
    nixrepro.log({"loss": 0.5, "x" * 60 + str(step % 9): step}, step=step)
print("done")
"""


@pytest.fixture
def full_disks(project: Project, tmp_path: Path, migrated: Path) -> Iterator[tuple[Path, Path]]:
    """The W&B directory and an MLflow store, each on a 2 MiB tmpfs with about 48 KiB left."""
    wandb_home, mlflow_home = project.root / ".nixrepro" / "wandb", tmp_path / "mlflow"
    mounted = []
    try:
        for where in (wandb_home, mlflow_home):
            where.mkdir(parents=True)
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"a tmpfs cannot be mounted here ({done.stderr.strip()})")
            mounted.append(where)
        shutil.copy(migrated, mlflow_home / "mlflow.db")
        for where in mounted:
            free = shutil.disk_usage(where).free
            (where / "filler").write_bytes(b"\0" * max(0, free - 48 * 1024))
        yield wandb_home, mlflow_home / "mlflow.db"
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_under_a_tracker_costs_one_warning_and_prints_no_traceback(
    project: Project, full_disks: tuple[Path, Path],
) -> None:
    """Each library logs what it hits (MLflow a SQLAlchemy traceback, W&B's logging a "Logging
    error" for every line it cannot write): none of it reaches the terminal."""
    _, full_store = full_disks
    configure(project, both(full_store), MANY)
    result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "exp.py",
                              env=mlflow_env())
    assert result.returncode == 0, result.stderr
    reasons = dropped(result.stderr)
    assert "disk is full" in reasons["mlflow"] or "No space left" in reasons["mlflow"], reasons
    assert "wandb" not in reasons or "No space left" in reasons["wandb"], reasons
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    assert result.stderr.count("\n") <= len(warnings(result.stderr)) + 3  # and the run's summary
    record = the_record(project)
    assert (record["status"], record["metrics"]["loss"]) == ("succeeded", 0.5)


SECRET_OUTPUT = """\
import os, sys
import nixrepro
nixrepro.log({"loss": 0.5}, step=0)
print("token", os.environ["WANDB_API_KEY"], os.environ["HF_TOKEN"], sys.argv[1:])
print("https://carol:PrintedPw_77aa@git.example/r", file=sys.stderr)
print("done")
"""


def test_no_secret_reaches_the_mlflow_store_or_its_artifacts(
    project: Project, mlflow_store: Path,
) -> None:
    """What test_faults_secrets checks of W&B's files, for MLflow's: the sqlite store (params,
    tags, the run's name and source) and the artifacts (the record, the logs)."""
    secrets = {"WANDB_API_KEY": "wbKey_0123456789abcdef", "HF_TOKEN": "EnvTok3n_aa11bb22"}
    configure(project, both(mlflow_store).split("\n\n")[0] + "\n", SECRET_OUTPUT)
    result = project.nixrepro(
        "run", "--flake", ".#env", "--name", "sweep EnvTok3n_aa11bb22", "--tag",
        "https://t:TagUrlPw_mm33@h/x", "-p", "api_key=ParamSecret_cc33", "-p",
        "db=postgres://u:ParamUrlPw_dd44@h/db", "--", sys.executable, "exp.py",
        "--token=FlagEqSecret_ee55", "https://bob:UrlPassword_hh88@git.example/x",
        env=mlflow_env(**secrets))
    assert result.returncode == 0, result.stderr
    record = the_record(project)
    artifacts = project.root / record["trackers"]["mlflow"]["dir"]
    assert (artifacts / "stdout.log").is_file()
    written = [mlflow_store, *(p for p in artifacts.rglob("*") if p.is_file())]
    assert record["id"].encode() in mlflow_store.read_bytes()  # the run's tags are in the file
    for secret in (*secrets.values(), "TagUrlPw_mm33", "ParamSecret_cc33", "ParamUrlPw_dd44",
                   "FlagEqSecret_ee55", "UrlPassword_hh88", "PrintedPw_77aa"):
        assert not [p for p in written if secret.encode() in p.read_bytes()], secret
        assert secret not in "\n".join(line for line in result.stderr.splitlines()
                                       if line.startswith("nixrepro:"))
