"""Read back what wandb wrote for an offline run: its transaction log (``run-<id>.wandb``).

wandb 0.31 writes no config.yaml or wandb-summary.json for an offline run; everything is in the
transaction log, which is LevelDB's log format (32 KiB blocks of records with a 7-byte header:
crc32c, length, type FULL/FIRST/MIDDLE/LAST) after wandb's own 7-byte file header (``:W&B``, a
magic number, a version). Each record payload is a ``wandb_internal_pb2.Record`` protobuf; the
protobuf classes come from the installed wandb itself.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, pending = FILE_HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        else:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    run: Any = None  # the RunRecord protobuf: id, project, config, group, job_type, tags, git
    config: dict[str, Any] = field(default_factory=dict)  # with later config updates applied
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    artifacts: list[Any] = field(default_factory=list)
    exit_code: int | None = None


def read(run_dir: Path) -> OfflineRun:
    """Everything of interest in the offline run directory ``run_dir``."""
    (log,) = run_dir.glob("run-*.wandb")
    found = OfflineRun()
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found.run = record.run
            for item in record.run.config.update:
                found.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                found.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            found.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                found.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "files":
            found.files += [f.path for f in record.files.files]
        elif kind == "artifact":
            found.artifacts.append(record.artifact)
        elif kind == "exit":
            found.exit_code = record.exit.exit_code
    return found
