"""nixrepro.log (nixrepro/experiment.py) and the metrics file it writes (nixrepro/metrics.py).

Format (nixrepro/metrics.py): one JSON object per line in ``$NIXREPRO_RUN_DIR/metrics.jsonl``,
``{"time": <unix seconds>, "step": <int or null>, "metrics": {"<name>": <value>, ...}}``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

import nixrepro
from nixrepro import experiment
from nixrepro.metrics import METRICS_FILE, last_values, read_points

PROCS = 4
LINES_PER_PROC = 200


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    directory.mkdir()
    monkeypatch.setenv("NIXREPRO_RUN_DIR", str(directory))
    return directory


def strict_json(line: bytes | str) -> Any:
    """json.loads that refuses NaN/Infinity, which are not JSON (jq and most languages reject them)."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-JSON constant {token}")

    return json.loads(line, parse_constant=refuse)


def lines(run_dir: Path) -> list[dict[str, Any]]:
    return [strict_json(line) for line in (run_dir / METRICS_FILE).read_bytes().splitlines()]


# --- writing --------------------------------------------------------------------------------------


def test_log_appends_one_line_per_call_in_the_documented_format(run_dir: Path) -> None:
    before = time.time()
    nixrepro.log({"loss": 0.5}, step=1)
    nixrepro.log({"loss": 0.25, "acc": 0.75}, step=2)
    after = time.time()

    written = lines(run_dir)

    assert [sorted(line) for line in written] == [["metrics", "step", "time"]] * 2
    assert [line["step"] for line in written] == [1, 2]
    assert [line["metrics"] for line in written] == [{"loss": 0.5}, {"loss": 0.25, "acc": 0.75}]
    assert all(before <= line["time"] <= after for line in written)
    assert (run_dir / METRICS_FILE).read_bytes().endswith(b"\n")


def test_log_without_step_writes_null(run_dir: Path) -> None:
    nixrepro.log({"epoch_time_s": 12.5})
    assert lines(run_dir)[0]["step"] is None


def test_log_appends_to_what_is_already_there(run_dir: Path) -> None:
    existing = '{"time": 1.0, "step": 0, "metrics": {"loss": 9.0}}\n'
    (run_dir / METRICS_FILE).write_text(existing)
    nixrepro.log({"loss": 1.0}, step=1)
    assert (run_dir / METRICS_FILE).read_text().startswith(existing)
    assert [line["metrics"]["loss"] for line in lines(run_dir)] == [9.0, 1.0]


def test_bools_ints_and_short_strings_are_kept_as_they_are(run_dir: Path) -> None:
    nixrepro.log({"converged": True, "epoch": 3, "phase": "warmup", "lr": 1e-4})
    assert lines(run_dir)[0]["metrics"] == {"converged": True, "epoch": 3, "phase": "warmup", "lr": 1e-4}


class FakeNumpyScalar:
    """Stands in for numpy.float32 / torch.Tensor scalars: not a float, but has .item()."""

    def __init__(self, value: float) -> None:
        self.value = value

    def item(self) -> float:
        return self.value


def test_numpy_like_scalars_are_stored_as_plain_numbers(run_dir: Path) -> None:
    nixrepro.log({"loss": FakeNumpyScalar(0.125), "count": FakeNumpyScalar(7)}, step=1)
    assert lines(run_dir)[0]["metrics"] == {"loss": 0.125, "count": 7}


def test_nan_and_infinity_are_stored_as_strings_valid_json_can_hold(run_dir: Path) -> None:
    nixrepro.log({"loss": math.nan, "grad": math.inf, "neg": -math.inf, "np": FakeNumpyScalar(math.nan)})
    assert lines(run_dir)[0]["metrics"] == {"loss": "nan", "grad": "inf", "neg": "-inf", "np": "nan"}
    assert last_values(run_dir / METRICS_FILE)["loss"] == "nan"


def test_metric_names_become_strings(run_dir: Path) -> None:
    nixrepro.log({1: 0.5})  # type: ignore[dict-item]
    assert lines(run_dir)[0]["metrics"] == {"1": 0.5}


# --- outside a run --------------------------------------------------------------------------------


def test_outside_a_run_log_warns_once_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NIXREPRO_RUN_DIR", raising=False)
    monkeypatch.setattr(experiment, "_warned", [])
    monkeypatch.chdir(tmp_path)

    for step in range(3):
        nixrepro.log({"loss": 1.0 / (step + 1)}, step=step)

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "nixrepro: not inside `nixrepro run`; metrics are not recorded\n"
    assert list(tmp_path.iterdir()) == []


# --- reading --------------------------------------------------------------------------------------


def write_lines(path: Path, *raw: str) -> Path:
    path.write_text("".join(raw))
    return path


def test_last_values_keeps_the_last_value_of_each_metric(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / METRICS_FILE,
        '{"time": 1.0, "step": 1, "metrics": {"loss": 0.9, "acc": 0.1}}\n',
        '{"time": 2.0, "step": 2, "metrics": {"loss": 0.5}}\n',
        '{"time": 3.0, "step": null, "metrics": {"val_loss": 0.7}}\n',
        '{"time": 4.0, "step": 3, "metrics": {"loss": 0.2, "acc": 0.8}}\n',
    )
    assert last_values(path) == {"loss": 0.2, "acc": 0.8, "val_loss": 0.7}


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / METRICS_FILE,
        '{"time": 1.0, "step": 1, "metrics": {"loss": 0.9}}\n',
        '{"time": 2.0, "step": 2, "metrics": {"loss": 0.5, "acc": 0.6}}\n',
        '{"time": 3.0, "step": 3, "metrics": {"loss": 0.1, "ac',
    )
    assert last_values(path) == {"loss": 0.5, "acc": 0.6}
    assert [point.step for point in read_points(path)] == [1, 2]


def test_read_points_gives_time_step_and_metrics(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / METRICS_FILE, '{"time": 1718000000.5, "step": 7, "metrics": {"loss": 0.3}}\n'
    )
    [point] = list(read_points(path))
    assert (point.time, point.step, point.metrics) == (1718000000.5, 7, {"loss": 0.3})


def test_no_metrics_file_means_no_metrics(tmp_path: Path) -> None:
    assert last_values(tmp_path / METRICS_FILE) == {}


def test_what_log_writes_is_what_last_values_reads(run_dir: Path) -> None:
    for step in range(5):
        nixrepro.log({"loss": 1.0 / (step + 1), "step_seen": step}, step=step)
    assert last_values(run_dir / METRICS_FILE) == {"loss": 0.2, "step_seen": 4}


# --- several processes at once --------------------------------------------------------------------


def _log_from_process(run_dir: str, proc: int) -> None:
    os.environ["NIXREPRO_RUN_DIR"] = run_dir
    for i in range(LINES_PER_PROC):
        nixrepro.log({"proc": proc, "i": i, "padding": "x" * (50 + 37 * proc)}, step=i)


def test_concurrent_processes_write_intact_lines(run_dir: Path) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_log_from_process, args=(str(run_dir), n)) for n in range(PROCS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0

    written = lines(run_dir)  # every line parses: none torn or interleaved

    assert len(written) == PROCS * LINES_PER_PROC
    seen = sorted((line["metrics"]["proc"], line["metrics"]["i"]) for line in written)
    assert seen == [(p, i) for p in range(PROCS) for i in range(LINES_PER_PROC)]
    for p in range(PROCS):  # each process's own lines stay in its order
        steps = [line["step"] for line in written if line["metrics"]["proc"] == p]
        assert steps == list(range(LINES_PER_PROC))


# --- the rest of the in-experiment API ------------------------------------------------------------


def test_params_seed_and_run_id_come_from_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIXREPRO_PARAMS", json.dumps({"lr": 0.1, "model": "mlp", "fp16": False}))
    monkeypatch.setenv("NIXREPRO_SEED", "1234")
    monkeypatch.setenv("NIXREPRO_RUN_ID", "20260611T101500-3f9c2a")
    assert nixrepro.params() == {"lr": 0.1, "model": "mlp", "fp16": False}
    assert nixrepro.seed() == 1234
    assert nixrepro.run_id() == "20260611T101500-3f9c2a"


def test_outside_a_run_params_are_empty_and_seed_and_id_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NIXREPRO_PARAMS", "NIXREPRO_SEED", "NIXREPRO_RUN_ID", "NIXREPRO_RUN_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert nixrepro.params() == {}
    assert nixrepro.seed() is None
    assert nixrepro.run_id() is None
    assert nixrepro.run_dir() is None
