"""One run directory's files and its one fold into the record.

While a run lives, what it produces is appended to files beside its record: ``metrics.jsonl``
(the experiment's metrics), ``data.jsonl`` (data versions read and written, nixrepro.datalog),
``seeded.json`` (nixrepro.seed_everything) and ``outputs.jsonl``: what became of each
``--output LOCAL=URI``, written before the command starts (``waiting``), before each upload
(``storing``) and when it is settled. :func:`fold` turns these files into the record's fields. A
normal end (nixrepro.runner) and crash detection (nixrepro.runstore) both call it, so a crashed
run keeps exactly what a finished one would have kept: its inputs, every output version stored
before the recorder died (lineage finds its producing run), its metrics, and a reason for each
output it never settled.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from . import datalog, determinism
from .fsutil import append_line
from .metrics import METRICS_FILE, last_values
from .record import DataRecord, OutputResult, RunRecord

# The files of a run directory that are not the store's own (record.json, summary.json, record.sig,
# lock, gcroot: nixrepro.runstore), nor written by the experiment (metrics.jsonl: nixrepro.metrics;
# data.jsonl: nixrepro.datalog; seeded.json: nixrepro.determinism).
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
DEV_PATCH = "code.patch"  # a --dev run's diff against its commit (code.diff_sha256)
OUTPUTS_FILE = "outputs.jsonl"
SETTLED = ("stored", "pending", "failed", "missing")
# Written while the run lives; a crashed run's output still in one of these was never settled.
UNSETTLED = {
    "waiting": "the recorder died before the command ended",
    "storing": "the recorder died while storing it",
}


def note_output(run_dir: Path, result: OutputResult) -> None:
    """Append what is known now of one output (one O_APPEND line: a crash leaves whole lines)."""
    line = json.dumps({"uri": result.uri, "local": result.local, "state": result.state,
                       "reason": result.reason}, sort_keys=True) + "\n"
    append_line(run_dir / OUTPUTS_FILE, line)


def read_output_results(run_dir: Path) -> dict[str, OutputResult]:
    """The last line of each output (by uri), in the order the outputs were declared."""
    results: dict[str, OutputResult] = {}
    try:
        lines = (run_dir / OUTPUTS_FILE).read_bytes().splitlines()
    except FileNotFoundError:
        return results
    for raw in lines:
        try:
            doc = json.loads(raw)
            result = OutputResult(uri=str(doc["uri"]), local=str(doc["local"]),
                                  state=str(doc["state"]), reason=doc.get("reason"))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a killed recorder
        results[result.uri] = result
    return results


def fold(record: RunRecord, run_dir: Path) -> RunRecord:
    """``record`` with what the run directory's files say: metrics, data, seeding, outputs.

    The data log has the last word on an output's state: a version in it was stored (or kept
    pending) even if the recorder died before it could say so in ``outputs.jsonl``, and a pending
    output that ``nixrepro sync`` uploaded later reads as stored.
    """
    data = datalog.read(run_dir)
    versions = {version.uri: version for version in data.outputs}
    results = []
    for result in read_output_results(run_dir).values():
        version = versions.get(result.uri)
        if version is not None and not version.pending:
            result = OutputResult(result.uri, result.local, "stored")
        elif version is not None and result.state != "pending":
            result = OutputResult(result.uri, result.local, "pending",
                                  result.reason or "it was kept locally; `nixrepro sync` uploads it")
        elif result.state in UNSETTLED:
            result = OutputResult(
                result.uri, result.local, "failed",
                f"{UNSETTLED[result.state]}; nothing was stored for {result.uri}: if the command "
                f"wrote {result.local}, store it with `nixrepro data put {result.local} {result.uri}`",
            )
        results.append(result)
    return record.replace(
        metrics=last_values(run_dir / METRICS_FILE),
        data=DataRecord(inputs=data.inputs, outputs=data.outputs, output_results=results),
        seeded=determinism.read_seeded(run_dir),
    )


RESERVE_FILE = ".reserve"
RESERVE_MARGIN = 256 * 1024  # output notes, the data log's last lines, the summary


def reserve(run_dir: Path, record: RunRecord) -> None:
    """Hold room on the run's disk for its final record, so that a command that fills the disk
    (its logs, its checkpoints) still gets its outcome recorded; released just before the end.

    Refuses (OSError) when the disk cannot hold even that, before the command starts.
    """
    size = 2 * len(record.to_json().encode()) + RESERVE_MARGIN  # the record and its summary
    fd = os.open(run_dir / RESERVE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)  # real blocks, not a sparse file: the room is taken now
    except OSError:
        os.close(fd)
        (run_dir / RESERVE_FILE).unlink(missing_ok=True)
        raise
    os.close(fd)


def release(run_dir: Path) -> None:
    """Give back the room :func:`reserve` held (also for a crashed run, whose recorder is gone)."""
    with contextlib.suppress(OSError):
        (run_dir / RESERVE_FILE).unlink()
