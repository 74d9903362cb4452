"""The metrics file: JSON lines under the run directory that any language can append to.

Format (docs/record.md): one object per line,
``{"time": <unix seconds>, "step": <int or null>, "metrics": {"<name>": <number|bool|str>, ...}}``.
Appends of one line are atomic with O_APPEND, so several processes of one run may log at once.
A torn last line (the experiment was killed mid-write) is skipped, never fatal.

JSON has no NaN or infinity, so ``nixrepro.log`` writes them as the strings ``"nan"``, ``"inf"``
and ``"-inf"``. Another writer's ``NaN``, ``Infinity`` or ``1e999`` (Python's json module and
others write and read them) is read as those same strings, so a record never holds one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class MetricPoint:
    time: float
    step: int | None
    metrics: dict[str, Any]


NON_FINITE = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}


def non_finite(value: float) -> str:
    """How a metric that is not a finite number is kept: "nan", "inf" or "-inf"."""
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _number(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else non_finite(value)  # 1e999 overflows to inf


_SCALARS = frozenset((int, float, bool, str, type(None)))  # what JSON gives a record can keep


def parse_point(raw: bytes) -> MetricPoint | None:
    """One line of the metrics file, or None when it is torn or not ours (nested deeper than the
    parser's stack, say). A value that is no number, boolean, string or null (a list, an object)
    is left out: a record keeps none (it would be a record no command reads)."""
    try:
        doc = json.loads(raw, parse_constant=NON_FINITE.__getitem__, parse_float=_number)
        values = doc["metrics"]
        if not isinstance(values, dict):
            return None
        if not all(type(value) in _SCALARS for value in values.values()):
            values = {key: value for key, value in values.items() if type(value) in _SCALARS}
        return MetricPoint(float(doc.get("time") or 0), doc.get("step"), values)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None


def read_points(path: Path) -> Iterator[MetricPoint]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            point = parse_point(raw)
            if point is not None:
                yield point


def last_values(path: Path) -> dict[str, Any]:
    """The last logged value of every metric (what the record keeps)."""
    last: dict[str, Any] = {}
    for point in read_points(path):
        last.update(point.metrics)
    return last
