"""The data log: which data versions a run read and wrote, as JSON lines under the run directory.

The experiment side (``nixrepro.data``) appends one line per input or output:
``{"direction": "input"|"output", "uri": ..., "version_id": ..., "sha256": ..., "size": ...,
"pending": false}``; the runner folds the file into the record's ``data`` when the run ends
(the last line for a (direction, uri) wins, so a pending output later synced replaces itself).
Pins for ``reproduce`` travel the other way, as NIXREPRO_DATA_PINS (JSON: uri -> version id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import codec
from .fsutil import append_line
from .record import DataRecord, DataVersion

DATA_FILE = "data.jsonl"
PINS_VARIABLE = "NIXREPRO_DATA_PINS"


def append(run_dir: Path, direction: str, version: DataVersion, **extra: Any) -> None:
    """Append one line (atomic with O_APPEND, like metrics)."""
    line = json.dumps({"direction": direction, **codec.encode(version), **extra}, sort_keys=True) + "\n"
    append_line(run_dir / DATA_FILE, line)


def read(run_dir: Path) -> DataRecord:
    inputs: dict[str, DataVersion] = {}
    outputs: dict[str, DataVersion] = {}
    try:
        lines = (run_dir / DATA_FILE).read_bytes().splitlines()
    except FileNotFoundError:
        return DataRecord()
    for raw in lines:
        try:
            doc = json.loads(raw)
            version = DataVersion(
                uri=str(doc["uri"]), version_id=doc.get("version_id"), sha256=doc.get("sha256"),
                size=doc.get("size"), pending=bool(doc.get("pending", False)),
            )
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a killed process
        (inputs if doc.get("direction") == "input" else outputs)[version.uri] = version
    return DataRecord(inputs=list(inputs.values()), outputs=list(outputs.values()))
