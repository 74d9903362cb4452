"""Repeat groups: the runs of one ``nixrepro run --repeat N``, read back with their statistics.

A group id is ``g`` followed by 24 hex digits: 96 random bits, as a run id has, so that the groups
of a team's machines sharing one remote run store never meet (docs/repeats.md gives the odds);
groups made before were ``g`` and 12 digits and read as ever, nothing depends on the length. Run
ids are pure hex, so a reference starting with ``g`` always means a group, and any unique prefix
of it names the group (``show g3f9a``).
Statistics are over the group's *succeeded* runs; metrics that are not numbers, or are beyond
what a 64-bit float holds (an integer of 400 digits), are left out of them (each run still lists
its value). JSON output is strict: a statistic that does not fit a float is ``null``.
:func:`compare_groups` is the comparison ``diff GROUP_A GROUP_B`` prints (Welch's t-test).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import RunNotFoundError
from .present import table
from .record import RunRecord
from .runstore import GROUP_PREFIX, ID_BYTES, RunStore
from .stats import ALPHA, Summary, Welch, summarize, welch


def new_group_id() -> str:
    return GROUP_PREFIX + secrets.token_hex(ID_BYTES)


@dataclass(frozen=True)
class Group:
    id: str
    runs: list[RunRecord]  # ordered by repeat_index

    @property
    def short_id(self) -> str:
        return self.id[:9]

    @property
    def succeeded(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "succeeded"]

    def metrics(self) -> dict[str, Summary]:
        return metric_summaries(self.succeeded)


def _number(value: Any) -> float | None:
    """The metric as a finite float; None for a non-number, nan/inf or an integer beyond a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _json_number(value: float | None) -> float | None:
    """JSON has no nan or inf: those are null."""
    return value if value is not None and math.isfinite(value) else None


def _shown(ref: str) -> str:
    """A reference as an error message quotes it: at most 40 characters."""
    return repr(ref if len(ref) <= 40 else ref[:40] + "...")


def metric_summaries(records: Sequence[RunRecord]) -> dict[str, Summary]:
    """Per metric: n, mean, std, SEM over the runs that logged it as a finite number."""
    values: dict[str, list[float]] = {}
    for record in records:
        for name, raw in record.metrics.items():
            number = _number(raw)
            if number is not None:
                values.setdefault(name, []).append(number)
    return {name: summarize(found) for name, found in sorted(values.items())}


def groups_of(records: Sequence[RunRecord]) -> dict[str, Group]:
    members: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.group:
            members.setdefault(record.group, []).append(record)
    return {gid: Group(gid, sorted(runs, key=lambda r: (r.repeat_index or 0, r.started_at)))
            for gid, runs in members.items()}


def resolve_group(store: RunStore, ref: str) -> Group:
    """The group named by its id or a unique prefix of it."""
    groups = groups_of(store.summaries())
    if ref in groups:
        return groups[ref]
    matches = sorted(gid for gid in groups if gid.startswith(ref))
    if not matches:
        raise RunNotFoundError(
            f"no repeat group matches {_shown(ref)} in {store.root}; `nixrepro runs` lists them."
        )
    if len(matches) > 1:
        raise RunNotFoundError(
            f"{_shown(ref)} matches {len(matches)} groups ({', '.join(matches[:5])}); give more characters."
        )
    return groups[matches[0]]


# --- text -----------------------------------------------------------------------------------------


def format_mean(summary: Summary) -> str:
    if summary.sem is None:
        beyond = " ± beyond a float" if summary.n >= 2 else ""
        return f"{summary.mean:.4g}{beyond} (n={summary.n})"
    return f"{summary.mean:.4g} ± {summary.sem:.2g} (n={summary.n})"


def _status_counts(runs: Sequence[RunRecord]) -> str:
    """'' when every run succeeded, else e.g. '3 succeeded, 1 failed'."""
    counts: dict[str, int] = {}
    for record in runs:
        counts[record.status] = counts.get(record.status, 0) + 1
    if set(counts) == {"succeeded"}:
        return ""
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def group_summary(group: Group) -> str:
    """``show GROUP``: the per-metric table, then the runs."""
    first = group.runs[0]
    counts = _status_counts(group.runs)
    lines = [
        f"group {group.id}" + (f"  ({first.name})" if first.name else ""),
        f"  runs       {len(group.runs)}" + (f" ({counts})" if counts else " (all succeeded)"),
        f"  command    {' '.join(first.command.argv)}",
        f"  code       {first.code.commit}",
        f"  closure    {first.environment.closure_hash}",
        "",
    ]
    metrics = group.metrics()
    if metrics:
        stats_rows = [(name, _num(s.mean), _num(s.std), _num(s.sem), str(s.n), _num(s.min), _num(s.max))
                      for name, s in metrics.items()]
        lines += table(("METRIC", "MEAN", "STD", "SEM", "N", "MIN", "MAX"), stats_rows).splitlines()
    else:
        lines.append("  no numeric metrics from a succeeded run")
    lines.append("")
    run_rows = [(r.short_id, str(r.repeat_index), str(r.seed), str(r.status),
                 ", ".join(f"{k}={v}" for k, v in sorted(r.metrics.items()))) for r in group.runs]
    lines += table(("RUN", "REPEAT", "SEED", "STATUS", "METRICS"), run_rows).splitlines()
    return "\n".join(lines)


def _summary_json(summary: Summary) -> dict[str, Any]:
    return {"n": summary.n, "mean": summary.mean, "std": summary.std, "sem": summary.sem,
            "min": summary.min, "max": summary.max}  # all finite floats or None (stats.summarize)


def group_json(group: Group) -> dict[str, Any]:
    return {
        "group": group.id,
        "runs": [{"id": r.id, "repeat_index": r.repeat_index, "seed": r.seed, "status": r.status,
                  "metrics": r.metrics} for r in group.runs],
        "metrics": {name: _summary_json(s) for name, s in group.metrics().items()},
    }


# --- comparing two groups --------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricComparison:
    name: str
    a: Summary
    b: Summary
    test: Welch | None  # None when a side has fewer than 2 runs

    @property
    def within_noise(self) -> bool | None:
        """True when Welch's test cannot tell the means apart at ALPHA; None when it cannot run."""
        return None if self.test is None else self.test.p_value >= ALPHA


@dataclass(frozen=True)
class GroupComparison:
    metrics: list[MetricComparison]  # metrics present in both groups
    only_a: list[str]
    only_b: list[str]


def compare_groups(records_a: Sequence[RunRecord], records_b: Sequence[RunRecord]) -> GroupComparison:
    """Compare the metric means of two sets of runs (the succeeded ones) with Welch's t-test."""
    a = metric_summaries([r for r in records_a if r.status == "succeeded"])
    b = metric_summaries([r for r in records_b if r.status == "succeeded"])
    both = sorted(set(a) & set(b))
    return GroupComparison(
        metrics=[MetricComparison(name, a[name], b[name], welch(a[name], b[name])) for name in both],
        only_a=sorted(set(a) - set(b)),
        only_b=sorted(set(b) - set(a)),
    )


def comparison_text(comparison: GroupComparison, label_a: str = "A", label_b: str = "B") -> str:
    if not comparison.metrics and not comparison.only_a and not comparison.only_b:
        return "neither group has a numeric metric from a succeeded run"
    rows = []
    for m in comparison.metrics:
        if m.test is None and min(m.a.n, m.b.n) >= 2:
            verdict = "cannot test: a standard deviation is beyond a 64-bit float"
        elif m.test is None:
            verdict = "too few runs to test (need 2 per group)"
        elif m.within_noise:
            verdict = f"within noise (p={m.test.p_value:.2g})"
        else:
            verdict = f"differs (p={m.test.p_value:.2g})"
        delta = m.b.mean - m.a.mean
        rows.append((m.name, format_mean(m.a), format_mean(m.b), f"{delta:+.4g}", verdict))
    lines = table(("METRIC", label_a, label_b, "B - A", "WELCH'S T-TEST"), rows).splitlines()
    if comparison.only_a:
        lines.append(f"only in {label_a}: {', '.join(comparison.only_a)}")
    if comparison.only_b:
        lines.append(f"only in {label_b}: {', '.join(comparison.only_b)}")
    return "\n".join(lines)


def comparison_json(comparison: GroupComparison) -> dict[str, Any]:
    return {
        "alpha": ALPHA,
        "metrics": {
            m.name: {
                "a": _summary_json(m.a), "b": _summary_json(m.b),
                "difference": _json_number(m.b.mean - m.a.mean),
                "t": _json_number(m.test.t) if m.test else None,
                "df": _json_number(m.test.df) if m.test else None,
                "p_value": m.test.p_value if m.test else None,
                "within_noise": m.within_noise,
            }
            for m in comparison.metrics
        },
        "only_a": comparison.only_a,
        "only_b": comparison.only_b,
    }
