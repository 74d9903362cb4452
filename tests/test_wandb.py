"""W&B as a sink ([trackers.wandb]), with the real wandb package offline: what lands in W&B's own
files, and that a W&B failure (at init, or its service killed mid-run) never costs the local record.
The older [tracker] kind = "wandb" table still works, as an alias."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import wandb_log
from tests.helpers import Project, git_commit, make_project, sh

pytestmark = pytest.mark.nix

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
run_dir = nixrepro.run_dir()
datalog.append(run_dir, "input", DataVersion("s3://bucket/data/train.csv", "v-in-1", "aa" * 32, 12))
datalog.append(run_dir, "output", DataVersion("s3://bucket/out/model.pt", "v-out-7", "bb" * 32, 34))
print("done")
"""


def wandb_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "WANDB_SILENT": "true", **extra}


def configure(project: Project, toml: str, script: str = TRAIN) -> None:
    (project.root / "nixrepro.toml").write_text(toml)
    (project.root / "train.py").write_text(script)
    git_commit(project.root, "tracker")


def offline_run_dirs(project: Project) -> list[Path]:
    return sorted((project.root / ".nixrepro" / "wandb").glob("offline-run-*"))


def the_record(project: Project) -> dict:
    (run_dir,) = project.runs_dir.iterdir()
    return json.loads((run_dir / "record.json").read_text())


@pytest.fixture
def nixpkgs_project(tmp_path: Path, has_nix: None) -> Project:
    """A project whose one flake input is called nixpkgs, so its locked rev is known."""
    project = make_project(tmp_path, label=f"wb-{tmp_path.name[-12:]}", input_name="nixpkgs")
    project.build_env()
    return project


OFFLINE = """\
[trackers.wandb]
project = "nixrepro-test"
mode = "offline"
job_type = "train"
"""


def test_a_recorded_run_appears_in_wandb_offline_files_with_its_provenance(
    nixpkgs_project: Project,
) -> None:
    project = nixpkgs_project
    env_path = project.build_env()
    configure(project, OFFLINE)
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--seed", "7", "--tag", "baseline",
                              "--", sys.executable, "train.py", env=wandb_env())
    assert result.returncode == 0, result.stderr
    # no warning but the one the test project's local (git+file) input earns
    assert [w for w in result.stderr.splitlines() if "warning" in w] == [
        w for w in result.stderr.splitlines() if "is fetched from this machine's file system" in w]
    record = the_record(project)

    (run_dir,) = offline_run_dirs(project)
    wb = wandb_log.read(run_dir)
    assert wb.run.run_id == record["id"]
    assert wb.run.project == "nixrepro-test"
    assert wb.run.job_type == "train"
    assert list(wb.run.tags) == ["main", "baseline"]
    assert wb.run.git.commit == record["code"]["commit"]

    assert wb.config["lr"] == 0.5
    provenance = wb.config["nixrepro"]
    env = record["environment"]
    assert provenance["environment"]["closure_hash"] == env["closure_hash"]
    assert provenance["environment"]["flake_lock_sha256"] == env["flake_lock_sha256"]
    lock = json.loads((project.root / "flake.lock").read_text())
    assert provenance["environment"]["nixpkgs_rev"] == lock["nodes"]["nixpkgs"]["locked"]["rev"]
    assert provenance["code"]["commit"] == record["code"]["commit"]
    assert provenance["seed"] == 7
    assert provenance["host"] == record["host"]  # every host fact, as recorded
    assert provenance["tags"] == ["baseline"]
    assert provenance["data"]["inputs"] == [
        {"uri": "s3://bucket/data/train.csv", "version_id": "v-in-1", "sha256": "aa" * 32,
         "size": 12, "pending": False}
    ]

    # metrics streamed with their steps; the summary holds the last values and the outcome
    metrics = [json.loads(line) for line in (project.runs_dir / record["id"] / "metrics.jsonl")
               .read_text().splitlines()]
    assert [(h["_step"], h["loss"]) for h in wb.history] == [
        (m["step"], m["metrics"]["loss"]) for m in metrics
    ]
    assert wb.summary["loss"] == record["metrics"]["loss"]
    assert wb.summary["nixrepro"]["status"] == "succeeded"
    assert wb.exit_code == 0

    # the record and the logs are attached; data are reference artifacts pinned to their version
    assert {"record.json", "stdout.log", "stderr.log", "metrics.jsonl"} <= set(wb.files)
    by_name = {a.name: a for a in wb.artifacts}
    used, produced = by_name["bucket-data-train.csv"], by_name["bucket-out-model.pt"]
    assert used.use_after_commit and not produced.use_after_commit
    entry = used.manifest.contents[0]
    assert entry.ref == "s3://bucket/data/train.csv"
    assert entry.digest == "aa" * 32
    assert {e.key: json.loads(e.value_json) for e in entry.extra}["versionID"] == "v-in-1"
    assert json.loads(produced.metadata)["version_id"] == "v-out-7"

    # the record knows its W&B run; W&B's files are in the run store, the tree is clean
    assert record["trackers"]["wandb"]["run_id"] == record["id"]
    assert record["trackers"]["wandb"]["mode"] == "offline"
    assert (project.root / record["trackers"]["wandb"]["dir"]) == run_dir
    assert sh(["git", "status", "--porcelain", "--ignored"], cwd=project.root) == "!! .nixrepro/\n"
    shown = project.nixrepro("show", record["id"][:8]).stdout
    assert f"wandb      {record['trackers']['wandb']['dir']} (offline)" in shown


def test_the_older_tracker_table_still_makes_a_wandb_run(project: Project) -> None:
    env_path = project.build_env()
    configure(project, OFFLINE.replace("[trackers.wandb]", '[tracker]\nkind = "wandb"'))
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable, "train.py",
                              env=wandb_env())
    assert result.returncode == 0, result.stderr
    record = the_record(project)
    (run_dir,) = offline_run_dirs(project)
    assert wandb_log.read(run_dir).run.project == "nixrepro-test"
    assert record["trackers"]["wandb"]["run_id"] == record["id"]


STAGE = """\
import sys, time
import nixrepro
for step in range(3):
    nixrepro.log({"value": float(sys.argv[1]) + step}, step=step)
    time.sleep(0.4)  # the two stages' W&B runs are live at the same time
"""


def test_stages_running_at_once_each_get_their_own_wandb_run(project: Project) -> None:
    (project.root / "stage.py").write_text(STAGE)
    stages = "".join(f"""
[stages.{name}]
cmd = [{json.dumps(sys.executable)}, "stage.py", "{base}"]
env = ".#env"
""" for name, base in (("left", 10), ("right", 20)))
    configure(project, OFFLINE + stages)
    result = project.nixrepro("pipeline", "run", "-j", "2", env=wandb_env())
    assert result.returncode == 0, result.stderr
    assert [w for w in result.stderr.splitlines() if "warning" in w
            and "is fetched from this machine's file system" not in w] == []
    records = [json.loads((d / "record.json").read_text()) for d in project.runs_dir.iterdir()]
    assert len(records) == 2
    for record in records:
        wb = wandb_log.read(project.root / record["trackers"]["wandb"]["dir"])
        base = 10 if record["stage"]["name"] == "left" else 20
        assert wb.run.run_id == record["id"]
        assert [(h["_step"], h["value"]) for h in wb.history] == [(s, base + s) for s in range(3)]
        assert wb.exit_code == 0


def test_wandb_mode_from_the_environment_wins_over_the_config(project: Project) -> None:
    env_path = project.build_env()
    configure(project, OFFLINE)
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable, "train.py",
                              env=wandb_env(WANDB_MODE="disabled"))
    assert result.returncode == 0, result.stderr
    assert the_record(project)["trackers"] == {}
    assert not (project.root / ".nixrepro" / "wandb").exists()


def test_online_without_a_network_keeps_the_wandb_run_offline(project: Project) -> None:
    env_path = project.build_env()
    configure(project, OFFLINE.replace('"offline"', '"online"'))
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable, "train.py",
                              env=wandb_env(WANDB_BASE_URL="http://127.0.0.1:9"))
    assert result.returncode == 0, result.stderr
    assert ("nixrepro: W&B (http://127.0.0.1:9) is unreachable; the W&B run is kept offline, "
            "`nixrepro sync` uploads it later.\n") in result.stderr
    assert the_record(project)["trackers"]["wandb"]["mode"] == "offline"
    assert len(offline_run_dirs(project)) == 1


def _assert_complete_without_wandb(project: Project, stderr: str, reason: str) -> None:
    warnings = [line for line in stderr.splitlines()  # but the test project's local input's
                if "warning" in line and "is fetched from this machine's file system" not in line]
    assert warnings == [
        f"nixrepro: warning: wandb failed and is dropped for this run ({reason}); "
        "the local record is complete"
    ]
    assert "Traceback" not in stderr
    record = the_record(project)
    assert record["status"] == "succeeded"
    assert record["exit_code"] == 0
    assert record["metrics"]["loss"] == pytest.approx(0.5**5)
    assert len(record["data"]["outputs"]) == 1
    assert "wandb" not in record["trackers"]
    assert (project.runs_dir / record["id"] / "stdout.log").read_text() == "done\n"


def test_wandb_failing_at_init_leaves_a_complete_record_and_one_warning(project: Project) -> None:
    env_path = project.build_env()
    configure(project, OFFLINE.replace('"nixrepro-test"', '"bad/name"'))
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable, "train.py",
                              env=wandb_env())
    assert result.returncode == 0, result.stderr
    _assert_complete_without_wandb(
        project, result.stderr,
        "W&B could not start: Invalid project name 'bad/name': cannot contain characters "
        "'/,\\\\,#,?,%,:', found '/'",
    )


KILL_SERVICE = """\
import glob, os, signal, sys, time
import nixrepro
nixrepro.log({"started": 1}, step=0)
# Wait until wandb.init has returned in nixrepro (its debug.log says so): the W&B run is live.
run_id = nixrepro.run_id()
deadline = time.time() + 60
while time.time() < deadline:
    logs = glob.glob(f".nixrepro/wandb/offline-run-*-{run_id}/logs/debug.log")
    if logs and b"run started" in open(logs[0], "rb").read():
        break
    time.sleep(0.1)
else:
    sys.exit("W&B never started")
time.sleep(1.0)  # the first metric reaches W&B
# wandb's service (wandb-core) is a child of the tracker's process, a child of nixrepro's
parents, cmdlines = {}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        parents[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        cmdlines[int(pid)] = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        continue
def below_nixrepro(pid):
    while pid > 1:
        pid = parents.get(pid, 0)
        if pid == os.getppid():
            return True
    return False
for pid, cmdline in cmdlines.items():
    if b"wandb-core" in cmdline and below_nixrepro(pid):
        os.kill(pid, signal.SIGKILL)
exec(open("train.py").read())
time.sleep(1.2)  # nixrepro hands the metrics to the dead service, and notices
"""


def test_wandb_service_killed_mid_run_leaves_a_complete_record_and_one_warning(
    project: Project,
) -> None:
    env_path = project.build_env()
    (project.root / "kill_wandb.py").write_text(KILL_SERVICE)
    configure(project, OFFLINE)
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable,
                              "kill_wandb.py", env=wandb_env())
    assert result.returncode == 0, result.stderr
    _assert_complete_without_wandb(project, result.stderr,
                                   "W&B stopped during the run: Connection lost")


def test_sync_uploads_pending_offline_runs_with_wandb_sync(project: Project, tmp_path: Path) -> None:
    env_path = project.build_env()
    configure(project, OFFLINE)
    assert "wandb: nothing to upload" in project.nixrepro("sync").stdout.splitlines()
    result = project.nixrepro("run", "--env", env_path, "-p", "lr=0.5", "--", sys.executable, "train.py",
                              env=wandb_env())
    assert result.returncode == 0, result.stderr
    (run_dir,) = offline_run_dirs(project)
    rel = run_dir.relative_to(project.root)
    dry = project.nixrepro("sync", "--dry-run")
    assert dry.returncode == 0
    assert dry.stdout.endswith(f"wandb: would upload 1\n  {rel}\n")
    # No credentials (and no network) here: the real `wandb sync` refuses, and says how to fix it.
    home = tmp_path / "home"
    home.mkdir()
    failed = project.nixrepro("sync", env=wandb_env(HOME=str(home)))
    assert failed.returncode == 1
    assert failed.stderr == (
        "Error: `wandb sync` could not upload 1 offline W&B run(s) (Error: No API key configured. "
        "Use `wandb login` to log in.); check `wandb login` and the network, then run "
        "`nixrepro sync` again.\n"
    )
    # a run `wandb sync` has marked synced is no longer pending
    (log,) = run_dir.glob("run-*.wandb")
    log.with_name(log.name + ".synced").write_text("")
    assert json.loads(project.nixrepro("sync", "--json").stdout)["wandb"] == []


def test_a_bad_tracker_config_is_a_usage_error(project: Project) -> None:
    env_path = project.build_env()
    configure(project, '[trackers.wandb]\nmode = "sometimes"\n')
    result = project.nixrepro("run", "--env", env_path, "--", "true")
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {project.root / 'nixrepro.toml'}: 'trackers.wandb.mode' must be one of online, "
        "offline, disabled, not 'sometimes'.\n"
    )
    assert not project.runs_dir.exists()


def test_import_nixrepro_stays_light() -> None:
    code = ("import sys, nixrepro; "
            "print(sorted(m for m in ('wandb', 'mlflow', 'click', 'boto3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"
