"""MLflow as a sink, with the real mlflow package and a local sqlite tracking store per test: what
lands in MLflow (read back with MlflowClient), from every command that records a run, and that an
MLflow failure (a store it cannot open, a server that does not answer, an exception mid-run) never
costs the local record."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Project, git_commit, make_project, sh

pytestmark = [pytest.mark.nix,  # and what MLflow's own imports warn about, not nixrepro's
              pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
              pytest.mark.filterwarnings("ignore:SOCKS support in urllib3")]

FAKE_NVIDIA = Path(__file__).parent / "fixtures" / "bin-fake-nvidia"

TRAIN = """\
import json, os, sys
import nixrepro
from nixrepro import datalog
from nixrepro.record import DataVersion
lr = nixrepro.params()["lr"]
loss = 1.0
for step in range(5):
    loss *= 1 - lr
    nixrepro.log({"loss": loss, "acc": 1 - loss}, step=step)
nixrepro.log({"note": "not a number", "final": loss})  # no step: the step after the last
run_dir = nixrepro.run_dir()
datalog.append(run_dir, "input", DataVersion("s3://bucket/data/train.csv", "v-in-1", "aa" * 32, 12))
datalog.append(run_dir, "output", DataVersion("s3://bucket/out/model.pt", "v-out-7", "bb" * 32, 34))
print("done")
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""


def mlflow_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_"))}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "WANDB_SILENT": "true", **extra}


@pytest.fixture(scope="session")
def mlflow_client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory, mlflow_client: Any) -> Path:
    """A migrated, empty sqlite store, made once (creating MLflow's tables takes seconds)."""
    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    mlflow_client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, empty_store: Path) -> Path:
    """This test's own tracking store, a copy of the empty one."""
    path = tmp_path / "mlflow.db"
    shutil.copy(empty_store, path)
    return path


def tracker_toml(store: Path, experiment: str = "nixrepro-test") -> str:
    return f'[trackers.mlflow]\ntracking_uri = "sqlite:///{store}"\nexperiment = "{experiment}"\n'


def configure(project: Project, toml: str, script: str = TRAIN) -> None:
    (project.root / "nixrepro.toml").write_text(toml)
    (project.root / "train.py").write_text(script)
    git_commit(project.root, "tracker")


def records(project: Project) -> list[dict[str, Any]]:
    """Every record of the project, oldest first."""
    found = [json.loads((d / "record.json").read_text()) for d in project.runs_dir.iterdir()]
    return sorted(found, key=lambda r: r["started_at"])


def the_record(project: Project) -> dict[str, Any]:
    (record,) = records(project)
    return record


def mlflow_runs(client: Any, experiment: str = "nixrepro-test") -> dict[str, Any]:
    """The MLflow runs of ``experiment``, by the nixrepro run id they carry."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id])
    return {run.data.tags["nixrepro.run_id"]: run for run in runs}


def local_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()  # but the one the test project's local input earns
            if "warning" in line and "is fetched from this machine's file system" not in line]


@pytest.fixture
def nixpkgs_project(tmp_path: Path, has_nix: None) -> Project:
    """A project whose one flake input is called nixpkgs, so its locked rev is known."""
    project = make_project(tmp_path, label=f"ml-{tmp_path.name[-12:]}", input_name="nixpkgs")
    project.build_env()
    return project


def test_a_recorded_run_is_an_mlflow_run_with_params_provenance_metrics_and_artifacts(
    nixpkgs_project: Project, store: Path, mlflow_client: Any
) -> None:
    project = nixpkgs_project
    env_path = project.build_env()
    configure(project, tracker_toml(store))
    gpu = mlflow_env(PATH=f"{FAKE_NVIDIA}:{os.environ['PATH']}")  # an H100 and driver 550 to record
    result = project.nixrepro("run", "--env", env_path, "--name", "baseline", "-p", "lr=0.5",
                              "--seed", "7", "--tag", "first", "--", sys.executable, "train.py",
                              env=gpu)
    assert result.returncode == 0, result.stderr
    assert local_warnings(result.stderr) == []
    record = the_record(project)
    info = record["trackers"]["mlflow"]
    client = mlflow_client(f"sqlite:///{store}")
    run = client.get_run(info["run_id"])
    assert info["tracking_uri"] == f"sqlite:///{store}"
    assert info["experiment"] == "nixrepro-test"
    assert info["experiment_id"] == run.info.experiment_id

    assert run.info.status == "FINISHED"
    assert run.info.run_name == "baseline"
    assert run.data.params == {"lr": "0.5"}
    tags = run.data.tags
    env = record["environment"]
    lock = json.loads((project.root / "flake.lock").read_text())
    assert {key: tags.get(key) for key in (
        "nixrepro.run_id", "nixrepro.environment.closure_hash",
        "nixrepro.environment.flake_lock_sha256", "nixrepro.environment.nixpkgs_rev",
        "nixrepro.code.commit", "nixrepro.code.dirty", "nixrepro.seed", "nixrepro.tags",
        "nixrepro.data.inputs.0.uri", "nixrepro.data.inputs.0.version_id",
        "nixrepro.data.outputs.0.version_id", "nixrepro.host.gpus.0.name",
        "nixrepro.host.nvidia_driver", "nixrepro.host.cuda_driver", "nixrepro.status",
        "nixrepro.exit_code", "mlflow.source.git.commit", "mlflow.source.git.branch",
    )} == {
        "nixrepro.run_id": record["id"],
        "nixrepro.environment.closure_hash": env["closure_hash"],
        "nixrepro.environment.flake_lock_sha256": env["flake_lock_sha256"],
        "nixrepro.environment.nixpkgs_rev": lock["nodes"]["nixpkgs"]["locked"]["rev"],
        "nixrepro.code.commit": record["code"]["commit"],
        "nixrepro.code.dirty": "false",
        "nixrepro.seed": "7",
        "nixrepro.tags": '["first"]',
        "nixrepro.data.inputs.0.uri": "s3://bucket/data/train.csv",
        "nixrepro.data.inputs.0.version_id": "v-in-1",
        "nixrepro.data.outputs.0.version_id": "v-out-7",  # known at the end: sent at the end
        "nixrepro.host.gpus.0.name": record["host"]["gpus"][0]["name"],
        "nixrepro.host.nvidia_driver": record["host"]["nvidia_driver"],
        "nixrepro.host.cuda_driver": record["host"]["cuda_driver"],
        "nixrepro.status": "succeeded",
        "nixrepro.exit_code": "0",
        "mlflow.source.git.commit": record["code"]["commit"],
        "mlflow.source.git.branch": "main",
    }
    assert record["host"]["nvidia_driver"]  # the fake nvidia-smi was read

    # every metric with its step, as metrics.jsonl has it; the text metric stays local
    points = [json.loads(line) for line in (project.runs_dir / record["id"] / "metrics.jsonl")
              .read_text().splitlines()]
    history = client.get_metric_history(info["run_id"], "loss")
    assert [(m.step, m.value) for m in history] == [
        (p["step"], p["metrics"]["loss"]) for p in points if "loss" in p["metrics"]]
    assert [m.timestamp for m in history] == [int(p["time"] * 1000) for p in points[:5]]
    assert [(m.step, m.value) for m in client.get_metric_history(info["run_id"], "final")] == [
        (5, record["metrics"]["final"])]
    assert client.get_metric_history(info["run_id"], "note") == []
    assert record["metrics"]["note"] == "not a number"

    # the record and the logs are artifacts, outside the work tree; show names where they are
    names = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"record.json", "stdout.log", "stderr.log", "metrics.jsonl", "data.jsonl"} <= names
    artifacts = project.root / info["dir"]
    assert json.loads((artifacts / "record.json").read_text())["id"] == record["id"]
    assert (artifacts / "stdout.log").read_text() == "done\n"
    assert info["dir"].startswith(".nixrepro/mlflow/artifacts/")
    assert sh(["git", "status", "--porcelain", "--ignored"], cwd=project.root) == "!! .nixrepro/\n"
    shown = project.nixrepro("show", record["id"][:8]).stdout
    assert f"  mlflow     {info['dir']}" in shown.splitlines()


def test_a_failed_run_is_a_failed_mlflow_run_with_its_exit_code(
    project: Project, store: Path, mlflow_client: Any
) -> None:
    env_path = project.build_env()
    configure(project, tracker_toml(store))
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable,
                              "train.py", env=mlflow_env(EXIT_WITH="3"))
    assert result.returncode == 3, result.stderr
    record = the_record(project)
    assert record["status"] == "failed"
    run = mlflow_client(f"sqlite:///{store}").get_run(record["trackers"]["mlflow"]["run_id"])
    assert run.info.status == "FAILED"
    assert (run.data.tags["nixrepro.status"], run.data.tags["nixrepro.exit_code"]) == ("failed", "3")
    assert run.data.metrics["loss"] == pytest.approx(0.5**5)  # what it logged before it failed


def _assert_complete_without_mlflow(project: Project, stderr: str) -> str:
    """The one warning's reason; the record complete, with no MLflow run in it."""
    (warning,) = local_warnings(stderr)
    head = "nixrepro: warning: mlflow failed and is dropped for this run ("
    tail = "); the local record is complete"
    assert warning.startswith(head) and warning.endswith(tail), warning
    assert "Traceback" not in stderr
    record = the_record(project)
    assert (record["status"], record["exit_code"]) == ("succeeded", 0)
    assert record["metrics"]["loss"] == pytest.approx(0.5**5)
    assert len(record["data"]["outputs"]) == 1
    assert "mlflow" not in record["trackers"]
    assert (project.runs_dir / record["id"] / "stdout.log").read_text() == "done\n"
    return warning[len(head):-len(tail)]


@pytest.mark.parametrize(("uri", "reason"), [
    ("http://127.0.0.1:9", "MLflow could not start: the tracking server http://127.0.0.1:9 does not "
                           "answer"),
    ("sqlite:////proc/nixrepro-no-such-dir/mlflow.db", "MLflow could not start: "),
    ("nosuch://store", "MLflow could not start: "),
])
def test_a_tracking_store_mlflow_cannot_use_is_one_warning_and_a_complete_record(
    project: Project, uri: str, reason: str
) -> None:
    env_path = project.build_env()
    configure(project, f'[trackers.mlflow]\ntracking_uri = "{uri}"\n')
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable,
                              "train.py", env=mlflow_env())
    assert result.returncode == 0, result.stderr
    assert _assert_complete_without_mlflow(project, result.stderr).startswith(reason)


DELETE_MLFLOW_RUN = """\
import os, sys, time
from mlflow.tracking import MlflowClient
import nixrepro
nixrepro.log({"started": 1}, step=0)
# Wait until nixrepro's MLflow run exists, then delete it: MLflow refuses what comes next.
client = MlflowClient(os.environ["STORE"])
deadline = time.time() + 60
while time.time() < deadline:
    found = client.search_runs(["1"], f"tags.`nixrepro.run_id` = '{nixrepro.run_id()}'")
    if found:
        break
    time.sleep(0.1)
else:
    sys.exit("the MLflow run never appeared")
client.delete_run(found[0].info.run_id)
exec(open("train.py").read())
time.sleep(1.2)  # nixrepro hands the metrics to MLflow, and hears that the run is gone
"""


def test_mlflow_failing_mid_run_is_one_warning_and_a_complete_record(
    project: Project, store: Path
) -> None:
    env_path = project.build_env()
    (project.root / "delete_run.py").write_text(DELETE_MLFLOW_RUN)
    configure(project, tracker_toml(store))
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable,
                              "delete_run.py", env=mlflow_env(STORE=f"sqlite:///{store}"))
    assert result.returncode == 0, result.stderr
    assert _assert_complete_without_mlflow(project, result.stderr).startswith(
        "MLflow stopped during the run: ")


def wait_for_mlflow_run(client: Any, run_id: str, timeout: float = 60) -> Any:
    """The MLflow run that carries nixrepro run ``run_id``'s tag, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.search_runs(["1"], f"tags.`nixrepro.run_id` = '{run_id}'")
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no MLflow run for {run_id}")


def start_run(project: Project, env_path: str, script: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`nixrepro run` of ``script`` in a process group of its own, as a terminal starts it."""
    (project.root / "slow.py").write_text(script)
    git_commit(project.root, "slow")
    return subprocess.Popen(
        [sys.executable, "-m", "nixrepro", "run", "--env", env_path, "-p", "lr=0.5", "--",
         sys.executable, "slow.py"],
        cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def running_record(project: Project, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(project.runs_dir.glob("*/record.json")) if project.runs_dir.exists() else []
        if found:
            return dict(json.loads(found[0].read_text()))
        time.sleep(0.05)
    raise AssertionError("the run never started")


SLOW = """\
import time
import nixrepro
nixrepro.log({"loss": 0.5}, step=0)
time.sleep(60)
"""


def test_ctrl_c_records_an_interrupted_run_and_a_killed_mlflow_run(
    project: Project, store: Path, mlflow_client: Any
) -> None:
    env_path = project.build_env()
    configure(project, tracker_toml(store))
    proc = start_run(project, env_path, SLOW, mlflow_env())
    client = mlflow_client(f"sqlite:///{store}")
    wait_for_mlflow_run(client, running_record(project)["id"])
    time.sleep(0.8)  # the first point reaches MLflow
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at the terminal sends: its whole group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert local_warnings(stderr) == []
    record = the_record(project)
    assert (record["status"], record["signal"]) == ("interrupted", "SIGINT")
    run = client.get_run(record["trackers"]["mlflow"]["run_id"])
    assert run.info.status == "KILLED"  # the tracker's own process was not interrupted: it ended it
    assert run.data.tags["nixrepro.status"] == "interrupted"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]


WAIT_FOR_GO = """\
import os, time
import nixrepro
from nixrepro import datalog
from nixrepro.record import DataVersion
nixrepro.log({"loss": 0.5}, step=0)
while not os.path.exists("go"):  # the test kills the tracker's process meanwhile
    time.sleep(0.05)
print("done")
nixrepro.log({"loss": 0.5 ** 5}, step=1)
time.sleep(1.2)  # nixrepro hands it to the tracker, and finds its process gone
datalog.append(nixrepro.run_dir(), "output", DataVersion("s3://b/m", "v", None, 1))
"""


def test_the_trackers_process_dying_mid_run_is_one_warning_and_a_complete_record(
    project: Project, store: Path, mlflow_client: Any
) -> None:
    env_path = project.build_env()
    configure(project, tracker_toml(store))
    (project.root / ".gitignore").write_text("go\n")
    git_commit(project.root, "go is the test's")
    proc = start_run(project, env_path, WAIT_FOR_GO, mlflow_env())
    wait_for_mlflow_run(mlflow_client(f"sqlite:///{store}"), running_record(project)["id"])
    (host,) = [pid for pid in _descendants(proc.pid) if b"nixrepro.trackers.host" in _cmdline(pid)]
    os.kill(host, signal.SIGKILL)
    (project.root / "go").write_text("")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert _assert_complete_without_mlflow(project, stderr) == (
        "its process ended (exit status -9) before the run did")


def _descendants(root: int) -> list[int]:
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as file:
                parents[int(pid)] = int(file.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    found, todo = [], [root]
    while todo:
        parent = todo.pop()
        children = [pid for pid, up in parents.items() if up == parent]
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


def test_mlflow_and_wandb_together_each_get_the_run(
    project: Project, store: Path, mlflow_client: Any
) -> None:
    env_path = project.build_env()
    configure(project, tracker_toml(store) + '\n[trackers.wandb]\nproject = "both"\nmode = "offline"\n')
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable,
                              "train.py", env=mlflow_env())
    assert result.returncode == 0, result.stderr
    assert local_warnings(result.stderr) == []
    record = the_record(project)
    assert sorted(record["trackers"]) == ["mlflow", "wandb"]
    assert record["trackers"]["wandb"]["run_id"] == record["id"]
    assert (project.root / record["trackers"]["wandb"]["dir"]).is_dir()
    (run,) = mlflow_runs(mlflow_client(f"sqlite:///{store}")).values()
    assert run.info.run_id == record["trackers"]["mlflow"]["run_id"]
    assert run.data.tags["nixrepro.run_id"] == record["id"]


def test_every_run_of_a_repeat_group_reaches_mlflow(
    project: Project, store: Path, mlflow_client: Any
) -> None:
    env_path = project.build_env()
    configure(project, tracker_toml(store))
    result = project.nixrepro("run", "--env", env_path, "--repeat", "2", "-p", "lr=0.5", "--",
                              sys.executable, "train.py", env=mlflow_env())
    assert result.returncode == 0, result.stderr
    first, second = records(project)
    runs = mlflow_runs(mlflow_client(f"sqlite:///{store}"))
    assert sorted(runs) == sorted([first["id"], second["id"]])
    for record in (first, second):
        tags = runs[record["id"]].data.tags
        assert runs[record["id"]].info.run_id == record["trackers"]["mlflow"]["run_id"]
        assert (tags["nixrepro.group"], tags["nixrepro.repeat_index"], tags["nixrepro.seed"]) == (
            first["group"], str(record["repeat_index"]), str(record["seed"]))
    assert first["group"] == second["group"] and first["seed"] != second["seed"]


def test_pipeline_stages_reach_mlflow_also_two_at_once_on_a_new_store(
    project: Project, tmp_path: Path, mlflow_client: Any
) -> None:
    store = tmp_path / "new.db"  # no tables yet: the first tracker makes them, the other waits
    configure(project, tracker_toml(store) + "".join(f"""
[stages.{name}]
cmd = [{json.dumps(sys.executable)}, "train.py"]
env = ".#env"
params = {{ lr = {lr} }}
""" for name, lr in (("left", 0.5), ("right", 0.25))))
    result = project.nixrepro("pipeline", "run", "-j", "2", env=mlflow_env())
    assert result.returncode == 0, result.stderr
    assert local_warnings(result.stderr) == []
    runs = mlflow_runs(mlflow_client(f"sqlite:///{store}"))
    for record in records(project):
        run = runs[record["id"]]
        assert run.info.run_id == record["trackers"]["mlflow"]["run_id"]
        assert run.data.tags["nixrepro.stage"] == record["stage"]["name"]
        assert run.data.params == {"lr": str(record["params"]["lr"])}
        assert run.info.status == "FINISHED"
    assert sorted(r.data.tags["nixrepro.stage"] for r in runs.values()) == ["left", "right"]


def test_a_reproduced_run_reaches_mlflow_with_its_parent(
    project: Project, store: Path, mlflow_client: Any
) -> None:
    configure(project, tracker_toml(store))
    env = mlflow_env()
    result = project.nixrepro("run", "--flake", ".#env", "-p", "lr=0.5", "--", sys.executable,
                              "train.py", env=env)
    assert result.returncode == 0, result.stderr
    result = project.nixrepro("reproduce", "@latest", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["within_tolerance"] is True  # stdout: the JSON alone
    original, again = records(project)
    runs = mlflow_runs(mlflow_client(f"sqlite:///{store}"))
    assert sorted(runs) == sorted([original["id"], again["id"]])
    assert runs[again["id"]].data.tags["nixrepro.parent"] == original["id"]
    assert again["trackers"]["mlflow"]["run_id"] == runs[again["id"]].info.run_id


def imported(stderr: str) -> Iterator[str]:
    """The modules ``python -X importtime`` says it imported."""
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            yield line.rsplit("|", 1)[1].strip()


def test_a_run_without_trackers_imports_no_tracker(project: Project) -> None:
    env_path = project.build_env()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "nixrepro", "run", "--env", env_path, "--", "true"],
        cwd=project.root, env=mlflow_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    modules = set(imported(result.stderr))
    assert "nixrepro.runner" in modules  # the run path was imported, and reported
    assert {m for m in modules if m.split(".")[0] in ("mlflow", "wandb", "sqlalchemy")
            or m in ("nixrepro.trackers.mlflow", "nixrepro.trackers.wandb")} == set()
    assert the_record(project)["trackers"] == {}
