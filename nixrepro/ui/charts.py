"""Chart data: what the page's script (static/app.js) hands to uPlot, made from the records.

A spec is plain JSON: ``{"kind": "line" | "band" | "scatter", "title", "xlabel", "ylabel",
"x": [...], "series": [{"label", "y": [...]}], "xticks": [...] (a category axis), "band": [i, j]
(series i and j bound a shaded band)}``. Curves come from each run's metrics.jsonl
(nixrepro.metrics), one point per logged value that is a finite number; a point logged without a
step takes the next step after the one before it. A curve of more than :data:`MAX_POINTS` points
is thinned evenly (its first and last point kept); ``points`` says how many were logged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import METRICS_FILE, read_points
from ..record import RunRecord
from ..stats import summarize

MAX_POINTS = 2000


@dataclass
class Curve:
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def number(value: Any) -> float | None:
    """A finite float, or None (a bool, a string such as "nan", an integer beyond a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def curves(run_dir: Path) -> dict[str, Curve]:
    """Every metric of the run with at least one finite number, in the order first logged."""
    found: dict[str, Curve] = {}
    last_step: dict[str, float] = {}
    for point in read_points(run_dir / METRICS_FILE):
        step = number(point.step) if point.step is not None else None
        for name, raw in point.metrics.items():
            value = number(raw)
            if value is None:
                continue
            curve = found.setdefault(str(name), Curve())
            at = step if step is not None else last_step.get(name, -1.0) + 1
            last_step[name] = at
            curve.steps.append(at)
            curve.values.append(value)
    return found


def thin(curve: Curve, limit: int = MAX_POINTS) -> Curve:
    if len(curve.steps) <= limit:
        return curve
    stride = (len(curve.steps) - 1) / (limit - 1)
    picks = sorted({round(i * stride) for i in range(limit)})
    return Curve([curve.steps[i] for i in picks], [curve.values[i] for i in picks])


def plotted(curve_map: Mapping[str, Curve]) -> dict[str, Curve]:
    """The curves worth a chart: two points or more (one value is a number in the table)."""
    return {name: thin(c) for name, c in curve_map.items() if len(c.steps) >= 2}


def run_label(record: RunRecord) -> str:
    return record.short_id + (f" {record.name}" if record.name else "")


def line_chart(metric: str, series: Sequence[tuple[str, Curve]]) -> dict[str, Any]:
    """Curves of one metric on a shared step axis (a run without a step there has a gap)."""
    xs = sorted({s for _, c in series for s in c.steps})
    at = {x: i for i, x in enumerate(xs)}
    columns = []
    for label, c in series:
        ys: list[float | None] = [None] * len(xs)
        for s, v in zip(c.steps, c.values, strict=True):
            ys[at[s]] = v
        columns.append({"label": label, "y": ys})
    return {"kind": "line", "title": metric, "xlabel": "step", "ylabel": metric, "x": xs,
            "series": columns}


def overlay(runs: Sequence[tuple[RunRecord, Mapping[str, Curve]]]) -> dict[str, dict[str, Any]]:
    """One chart per metric that any run plotted, each run a series."""
    names: dict[str, None] = {}
    for _, found in runs:
        names.update(dict.fromkeys(found))
    return {name: line_chart(name, [(run_label(r), found[name]) for r, found in runs if name in found])
            for name in names}


def band_chart(metric: str, group: str, members: Sequence[Curve]) -> dict[str, Any] | None:
    """The mean of a repeat group's curves at each step, with mean ± SEM shaded (steps that two or
    more runs logged); None when no step has two values."""
    by_step: dict[float, list[float]] = {}
    for c in members:
        for s, v in zip(c.steps, c.values, strict=True):
            by_step.setdefault(s, []).append(v)
    xs, mean, low, high = [], [], [], []
    for s in sorted(by_step):
        values = by_step[s]
        if len(values) < 2:
            continue
        summary = summarize(values)
        sem = summary.sem if summary.sem is not None else 0.0
        xs.append(s)
        mean.append(summary.mean)
        low.append(summary.mean - sem)
        high.append(summary.mean + sem)
    if not xs:
        return None
    return {"kind": "band", "title": f"{metric}: group {group[:9]}, mean ± SEM (n={len(members)})",
            "xlabel": "step", "ylabel": metric, "x": xs,
            "series": [{"label": "mean + SEM", "y": high}, {"label": "mean", "y": mean},
                       {"label": "mean - SEM", "y": low}], "band": [0, 2]}


def scatter(records: Sequence[RunRecord], param: str, metric: str) -> dict[str, Any] | None:
    """One point per run that has both: the param's value (a category axis for text and
    booleans) against the metric's last value. None when fewer than two runs have both."""
    pairs = [(r.params.get(param), number(r.metrics.get(metric))) for r in records]
    points = [(p, m) for p, m in pairs if p is not None and m is not None]
    if len(points) < 2:
        return None
    numeric = all(number(p) is not None for p, _ in points)
    ticks: list[str] | None = None
    if numeric:
        xs = [number(p) for p, _ in points]
    else:
        labels = sorted({_label(p) for p, _ in points})
        ticks = labels
        xs = [float(labels.index(_label(p))) for p, _ in points]
    ordered = sorted(zip(xs, (m for _, m in points), strict=True), key=lambda xy: xy[0] or 0.0)
    spec: dict[str, Any] = {
        "kind": "scatter", "title": f"{metric} by {param}", "xlabel": param, "ylabel": metric,
        "x": [x for x, _ in ordered], "series": [{"label": metric, "y": [y for _, y in ordered]}],
    }
    if ticks is not None:
        spec["xticks"] = ticks
    rho = spearman([x for x, _ in ordered if x is not None], [y for _, y in ordered]) if numeric else None
    if rho is not None:
        spec["title"] += f" (Spearman rho = {rho:+.2f})"
        spec["rho"] = rho
    return spec


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties share a rank); None where it is undefined."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / math.sqrt(vx * vy)
