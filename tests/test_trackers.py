"""nixrepro.trackers: the registry by kind, the [trackers.<kind>] tables, the provenance both sinks
send, and that no tracker library is imported unless its table is there. No tracker runs here
(tests/test_wandb.py and tests/test_mlflow.py run the real ones)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nixrepro import trackers
from nixrepro.config import Config, load, parse
from nixrepro.errors import ConfigError
from nixrepro.host import Gpu, HostInfo, KubernetesPod, SlurmJob
from nixrepro.record import DataVersion, RunRecord
from nixrepro.trackers import mlflow as mlflow_sink
from nixrepro.trackers import wandb as wandb_sink
from nixrepro.trackers.provenance import flat, provenance

FIXTURES = Path(__file__).parent / "fixtures"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def a_record() -> RunRecord:
    return RunRecord.from_dict(json.loads((FIXTURES / "record-minimal.json").read_text()))


# --- the registry and the config tables ----------------------------------------------------------


def test_every_registered_kind_is_a_module_with_settings_and_make() -> None:
    assert sorted(trackers.TRACKERS) == ["mlflow", "wandb"]
    for kind in trackers.TRACKERS:
        module = trackers.tracker_module(kind)
        assert dataclasses.is_dataclass(module.Settings)
        assert callable(module.make)
        assert module.Settings() == parse({"trackers": {kind: {}}}).trackers[kind]  # all optional


def test_several_tracker_tables_are_read_into_their_settings(tmp_path: Path) -> None:
    write(tmp_path / "nixrepro.toml", """
[trackers.wandb]
project = "churn"
mode = "offline"

[trackers.mlflow]
tracking_uri = "sqlite:///mlruns.db"
experiment = "churn"
""")
    config = load(tmp_path)
    assert config.trackers == {
        "wandb": wandb_sink.Settings(project="churn", mode="offline"),
        "mlflow": mlflow_sink.Settings(tracking_uri="sqlite:///mlruns.db", experiment="churn"),
    }


def test_no_tracker_table_is_no_tracker(tmp_path: Path) -> None:
    assert load(tmp_path).trackers == {}
    assert trackers.from_config(Config(), tmp_path, tmp_path / ".nixrepro") == []


def test_the_older_tracker_table_is_read_as_trackers_wandb() -> None:
    old = parse({"tracker": {"kind": "wandb", "project": "p", "mode": "offline", "job_type": "t"}})
    new = parse({"trackers": {"wandb": {"project": "p", "mode": "offline", "job_type": "t"}}})
    assert old.trackers == new.trackers == {
        "wandb": wandb_sink.Settings(project="p", mode="offline", job_type="t")}
    # without a kind it is no tracker, as before, and its keys are still checked
    assert parse({"tracker": {"project": "p"}}).trackers == {}
    with pytest.raises(ConfigError) as caught:
        parse({"tracker": {"projekt": "p"}})
    assert str(caught.value).startswith(
        "nixrepro.toml: unknown key 'tracker.projekt'; known keys here: tracker.entity, "
        "tracker.group, tracker.job_type, tracker.kind, tracker.mode, tracker.project")


@pytest.mark.parametrize(("toml", "message"), [
    ('[trackers.neptune]\nproject = "x"\n',
     "there is no tracker 'neptune' ([trackers.neptune]); the known kinds are mlflow and wandb."),
    ('[tracker]\nkind = "wandb"\n\n[trackers.wandb]\nproject = "x"\n',
     "both [tracker] kind = \"wandb\" and [trackers.wandb] configure W&B; keep [trackers.wandb] "
     "([tracker] is its older name)."),
    ('[tracker]\nkind = "mlflow"\n', "'tracker.kind' must be \"wandb\" (or left out), not 'mlflow'."),
    ('[tracker]\nkind = 3\n', "'tracker.kind' must be a string, not an integer."),
    ('trackers = "wandb"\n', "'trackers' must be a table of [trackers.<kind>] tables, not a string; "
     "write [trackers.wandb] or [trackers.mlflow]."),
    ('[trackers]\nmlflow = "sqlite:///x.db"\n', "'trackers.mlflow' must be a table, not a string."),
    ('[trackers.wandb]\nmode = "sometimes"\n',
     "'trackers.wandb.mode' must be one of online, offline, disabled, not 'sometimes'."),
    ('[tracker]\nkind = "wandb"\nmode = "sometimes"\n',
     "'tracker.mode' must be one of online, offline, disabled, not 'sometimes'."),
    ('[trackers.mlflow]\ntracking_uri = 5\n',
     "'trackers.mlflow.tracking_uri' must be a string, not an integer."),
    ('[trackers.mlflow]\nexperiment = " "\n',
     "'trackers.mlflow.experiment' is empty; give a value or leave the key out."),
    ('[trackers.mlflow]\ntracking-uri = "x"\n',
     "unknown key 'trackers.mlflow.tracking-uri'; known keys here: trackers.mlflow.artifact_location, "
     "trackers.mlflow.experiment, trackers.mlflow.tracking_uri."),
])
def test_a_bad_tracker_table_is_one_sentence_naming_the_file_and_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = write(tmp_path / "nixrepro.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == f"{path}: {message}"


def test_from_config_makes_one_fresh_observer_per_enabled_tracker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sink in (wandb_sink, mlflow_sink):  # a sink starts importing its library when made
        monkeypatch.setattr(sink, f"_import_{sink.__name__.rsplit('.', 1)[1]}", lambda: None)
    config = parse({"trackers": {"wandb": {"mode": "offline"}, "mlflow": {}}})
    store = tmp_path / ".nixrepro"
    first = trackers.from_config(config, tmp_path, store, environ={}, in_process=True)
    second = trackers.from_config(config, tmp_path, store, environ={}, in_process=True)
    assert [type(o) for o in first] == [wandb_sink.WandbSink, mlflow_sink.MlflowSink]
    assert [o.name for o in first] == ["wandb", "mlflow"]
    assert all(a is not b for a, b in zip(first, second, strict=True))
    # a disabled tracker is not started at all, in this process or in one of its own
    disabled = parse({"trackers": {"wandb": {"mode": "disabled"}}})
    assert trackers.from_config(disabled, tmp_path, store, environ={}) == []
    assert trackers.from_config(parse({"trackers": {"wandb": {}}}), tmp_path, store,
                                environ={"WANDB_MODE": "disabled"}) == []


def test_trackers_with_an_offline_store_are_sync_steps() -> None:
    assert [kind for kind, _ in trackers.sync_steps()] == ["wandb"]


def test_import_nixrepro_and_its_cli_import_no_tracker_module_or_library() -> None:
    code = ("import sys, nixrepro, nixrepro.cli, nixrepro.config; "
            "nixrepro.config.parse({'run': {}}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'mlflow') "
            "or m.startswith('nixrepro.trackers.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


def test_a_configured_sink_module_is_light_until_its_run_starts(tmp_path: Path) -> None:
    """Reading [trackers.*] imports the sinks' modules, not their libraries or the run path: the
    sink is made (and starts its library's import in a thread) before the run path is imported."""
    code = ("import sys; from nixrepro.config import parse; "
            "parse({'trackers': {'mlflow': {}, 'wandb': {}}}); "
            "print(sorted(m for m in ('wandb', 'mlflow', 'nixrepro.record', 'nixrepro.runner') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


# --- provenance: derived once from the record's fields ---------------------------------------------


def test_every_host_fact_reaches_the_trackers_without_a_line_of_tracker_code() -> None:
    record = a_record()
    host = HostInfo(os="NixOS 24.05", kernel="6.8.0", arch="x86_64", cpu="EPYC", cpu_count=64,
                    memory_bytes=2**40, hostname="gpu-01", user="alice",
                    gpus=[Gpu("NVIDIA H100 80GB HBM3", "GPU-1", 85899345920, "9.0")],
                    nvidia_driver="550.54.15", cuda_driver="12.4",
                    slurm=SlurmJob(job_id="42", partition="gpu"),
                    kubernetes=KubernetesPod(pod="train-0", namespace="ml"))
    for f in dataclasses.fields(HostInfo):  # a field added to HostInfo is a test case here
        assert getattr(host, f.name) not in (None, "", [], 0), f"give {f.name} a value above"
    tags = flat(record.replace(host=host))
    for f in dataclasses.fields(HostInfo):
        assert any(key == f"nixrepro.host.{f.name}" or key.startswith(f"nixrepro.host.{f.name}.")
                   for key in tags), f.name
    assert tags["nixrepro.host.gpus.0.name"] == "NVIDIA H100 80GB HBM3"
    assert tags["nixrepro.host.nvidia_driver"] == "550.54.15"
    assert tags["nixrepro.host.slurm.job_id"] == "42"
    assert provenance(record.replace(host=host))["host"]["gpus"][0]["compute_capability"] == "9.0"


def test_flat_provenance_names_the_identity_of_the_run() -> None:
    record = a_record()
    data = dataclasses.replace(record.data, inputs=[
        DataVersion("s3://bucket/train.csv", "v-1", "aa" * 32, 12)])
    tags = flat(record.replace(data=data, tags=["baseline"], seed=7))
    assert tags["nixrepro.run_id"] == record.id
    assert tags["nixrepro.code.commit"] == record.code.commit
    assert tags["nixrepro.code.dirty"] == "false"
    assert tags["nixrepro.environment.closure_hash"] == record.environment.closure_hash
    assert tags["nixrepro.environment.flake_lock_sha256"] == record.environment.flake_lock_sha256
    assert tags["nixrepro.environment.closure_paths"] == str(len(record.environment.closure))
    assert tags["nixrepro.data.inputs.0.version_id"] == "v-1"
    assert tags["nixrepro.data.inputs.0.sha256"] == "aa" * 32
    assert tags["nixrepro.seed"] == "7"
    assert "nixrepro.environment.closure" not in tags  # its hash and count, never 2,000 paths
    assert not [key for key, value in tags.items() if value in ("None", "", "[]")]
    long = flat(record.replace(command=dataclasses.replace(record.command, argv=["x" * 9000])))
    assert len(long["nixrepro.command"]) == 8000 and long["nixrepro.command"].endswith("...")


# --- the MLflow sink's pure parts ----------------------------------------------------------------


@pytest.mark.parametrize(("given", "environ", "expected"), [
    (None, {}, "sqlite:////repo/.nixrepro/mlflow/mlflow.db"),
    (None, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, "http://mlflow:5000"),
    ("sqlite:///mlruns.db", {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, "sqlite:////repo/mlruns.db"),
    ("sqlite:////abs/mlruns.db", {}, "sqlite:////abs/mlruns.db"),
    ("./mlruns", {}, "/repo/mlruns"),
    ("mlruns", {}, "/repo/mlruns"),
    ("file:mlruns", {}, "file:///repo/mlruns"),
    ("file:///abs/mlruns", {}, "file:///abs/mlruns"),
    ("databricks", {}, "databricks"),
    ("postgresql://u@db/mlflow", {}, "postgresql://u@db/mlflow"),
])
def test_a_relative_tracking_store_is_relative_to_the_repository(
    given: str | None, environ: dict[str, str], expected: str
) -> None:
    settings = mlflow_sink.Settings(tracking_uri=given)
    assert mlflow_sink.resolve_tracking_uri(settings, Path("/repo"), Path("/repo/.nixrepro"),
                                            environ) == expected


def test_metrics_mlflow_cannot_hold_are_left_to_the_local_record() -> None:
    value = mlflow_sink.metric_value
    assert [value(v) for v in (1, 0.5, True, "inf", "-inf")] == [1.0, 0.5, 1.0, float("inf"),
                                                                 float("-inf")]
    assert value("nan") != value("nan")  # NaN
    assert [value(v) for v in ("fast", None, [1])] == [None, None, None]
    assert value(10**400) == float("inf")
    assert [mlflow_sink.valid_name(n) for n in ("loss", "train/loss", "acc@1", "", "../x", "a//b",
                                                "x" * 251)] == [True, True, False, False, False,
                                                                False, False]
    assert mlflow_sink.STATUS == {"succeeded": "FINISHED", "interrupted": "KILLED",
                                  "failed": "FAILED", "crashed": "FAILED"}


# --- W&B's service, started while the sink imports what wandb.init imports at its end -------------

BROKEN_SERVICE = """\
import json, os, sys, time
from pathlib import Path
import wandb.sdk.lib.service.service_process as service_process
from nixrepro.errors import TrackerError
from nixrepro.metrics import MetricPoint
from nixrepro.record import RunRecord
from nixrepro.trackers import TrackerContext
from nixrepro.trackers import wandb as wandb_sink

def no_core():
    raise RuntimeError("no wandb-core on this machine")

service_process.get_core_path = no_core
root = Path(sys.argv[2])
record = RunRecord.from_dict(json.loads(Path(sys.argv[1]).read_text()))
sink = wandb_sink.make(wandb_sink.Settings(project="p", mode="offline"),
                       TrackerContext(root, root / ".nixrepro", os.environ))
start = time.monotonic()
sink.started(record, root)
sink.logged(MetricPoint(time.time(), 0, {"loss": 0.5}))
try:
    sink.ended(record, root)
except TrackerError as exc:
    print(exc)
print(round(time.monotonic() - start))
"""


def test_a_wandb_service_that_cannot_start_is_one_failure_not_a_hang(tmp_path: Path) -> None:
    """The service is started before wandb.init as init starts it (wandb.setup() would hang on a
    service that fails to start: it reports the failure under its own lock, wandb 0.31)."""
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    out = subprocess.run([sys.executable, "-c", BROKEN_SERVICE, str(FIXTURES / "record-minimal.json"),
                          str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env={**env, "WANDB_SILENT": "true"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    error, seconds = out.stdout.splitlines()
    assert error == "W&B could not start: no wandb-core on this machine"
    assert int(seconds) < 10
