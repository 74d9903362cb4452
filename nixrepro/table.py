"""The experiment table: runs as rows, their params and last metric values as columns.

``nixrepro runs`` and the web viewer (nixrepro.ui) both build on it: which columns there are and
what a name such as ``lr`` or ``metrics.acc`` means (:func:`resolve_columns`), which params and
metrics differ across the listed runs (:func:`varying_columns`), ``--where`` conditions
(:func:`parse_where`), sorting by any column (:func:`sort_records`), the tree of ``--parent`` links
(:func:`tree_order`) and the CSV export (:func:`to_csv`).

A bare name is a built-in column (``status``, ``started``...) first, then a param or a metric;
``params.NAME`` and ``metrics.NAME`` always name one of those. ``params.*`` or ``metrics.val_*``
(shell-style patterns) expand to every matching param or metric.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .present import clip, human_duration, local_time, local_times, status_label
from .record import RunRecord

PARAM, METRIC = "params.", "metrics."
CELL_WIDTH = 14  # a param or metric cell in the terminal; a 400-digit integer must not widen a row
AUTO_COLUMNS = 8  # at most this many varying params and metrics are picked without --columns


@dataclass(frozen=True)
class Column:
    """One column: ``key`` names it (``status``, ``params.lr``), ``header`` is what a table shows."""

    key: str
    header: str
    value: Callable[[RunRecord], Any]  # the raw value (None: the run has none)
    text: Callable[[RunRecord], str]  # the cell in the terminal
    # the cells of many runs at once, as ``text`` makes them one by one, with no call per cell:
    # the table of 10,000 runs is made of these (None: ``text`` for each)
    texts: Callable[[Sequence[RunRecord]], list[str]] | None = None

    @property
    def kind(self) -> str:
        """``builtin``, ``param`` or ``metric``."""
        if self.key.startswith(PARAM):
            return "param"
        return "metric" if self.key.startswith(METRIC) else "builtin"

    @property
    def name(self) -> str:
        """The param or metric name (the key for a built-in column)."""
        return self.key.split(".", 1)[1] if self.kind != "builtin" else self.key

    def cells(self, records: Sequence[RunRecord]) -> list[str]:
        """``text`` of each of ``records``."""
        if self.texts is not None:
            return self.texts(records)
        text = self.text
        return [text(r) for r in records]


def _commit_text(r: RunRecord) -> str:
    return r.code.commit[:8] + ("+" if r.code.dirty else "")


def _builtin(key: str, value: Callable[[RunRecord], Any], text: Callable[[RunRecord], str] | None = None,
             texts: Callable[[Sequence[RunRecord]], list[str]] | None = None) -> Column:
    return Column(key, key.upper(), value, text or (lambda r: cell_text(value(r))),
                  texts or (lambda rs: cell_texts([value(r) for r in rs])))


def clip_all(texts: Iterable[str], width: int) -> list[str]:
    """:func:`clip` of each; a text that fits and is printable (no tab or newline) as it is."""
    return [t if len(t) <= width and t.isprintable() else clip(t, width) for t in texts]


def _durations(records: Sequence[RunRecord]) -> list[str]:
    return [f"{d:.1f}s" if d is not None and 0 <= d < 60 else human_duration(d)
            for d in (r.duration_s for r in records)]


BUILTINS: dict[str, Column] = {c.key: c for c in (
    _builtin("id", lambda r: r.id, lambda r: r.short_id, lambda rs: [r.id[:8] for r in rs]),
    _builtin("status", lambda r: r.status, status_label,
             lambda rs: [r.status + " (dev)" if r.dev else r.status for r in rs]),
    _builtin("started", lambda r: r.started_at, lambda r: local_time(r.started_at),
             lambda rs: local_times([r.started_at for r in rs])),
    _builtin("duration", lambda r: r.duration_s, lambda r: human_duration(r.duration_s), _durations),
    _builtin("commit", lambda r: r.code.commit, _commit_text,
             lambda rs: [r.code.commit[:8] + "+" if r.code.dirty else r.code.commit[:8] for r in rs]),
    _builtin("name", lambda r: r.name, lambda r: clip(r.name or "", 30),
             lambda rs: clip_all((r.name or "" for r in rs), 30)),
    _builtin("command", lambda r: " ".join(r.command.argv), lambda r: clip(" ".join(r.command.argv), 50),
             lambda rs: clip_all((" ".join(r.command.argv) for r in rs), 50)),
    _builtin("tags", lambda r: ",".join(r.tags) or None, lambda r: clip(",".join(r.tags), 30),
             lambda rs: clip_all((",".join(r.tags) for r in rs), 30)),
    _builtin("dev", lambda r: r.dev),
    _builtin("exit_code", lambda r: r.exit_code),
    _builtin("seed", lambda r: r.seed),
    _builtin("group", lambda r: r.group, lambda r: (r.group or "")[:9],
             lambda rs: [(r.group or "")[:9] for r in rs]),
    _builtin("parent", lambda r: r.parent, lambda r: (r.parent or "")[:8],
             lambda rs: [(r.parent or "")[:8] for r in rs]),
    _builtin("closure", lambda r: r.environment.closure_hash, lambda r: r.environment.closure_hash[:12],
             lambda rs: [r.environment.closure_hash[:12] for r in rs]),
    # who ran it where (nixrepro.host): the account and the host name; --host also matches the
    # scheduler's nodes (nixrepro.filters)
    _builtin("user", lambda r: r.host.user or None, lambda r: clip(r.host.user or "-", 20),
             lambda rs: clip_all((r.host.user or "-" for r in rs), 20)),
    _builtin("host", lambda r: r.host.hostname or None, lambda r: clip(r.host.hostname or "-", 30),
             lambda rs: clip_all((r.host.hostname or "-" for r in rs), 30)),
)}
DEFAULT_BEFORE = ("id", "status", "started", "duration", "commit", "name")  # then params and metrics
DEFAULT_AFTER = ("command",)


def cell_text(value: Any, width: int = CELL_WIDTH) -> str:
    """A value as a table cell: floats to 6 significant digits, booleans as JSON writes them."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return clip(str(value), width)


def cell_texts(values: Iterable[Any], width: int = CELL_WIDTH) -> list[str]:
    """:func:`cell_text` of each value, the common types without a call each."""
    out = []
    for value in values:
        kind = type(value)
        if kind is float:
            out.append(f"{value:.6g}")
        elif value is None:
            out.append("-")
        elif kind is int and -10**13 < value < 10**13:  # at most 14 characters: never clipped
            out.append(str(value))
        else:
            out.append(cell_text(value, width))
    return out


def _param(name: str, header: str) -> Column:
    return Column(PARAM + name, header, lambda r: r.params.get(name), lambda r: cell_text(r.params.get(name)),
                  lambda rs: cell_texts([r.params.get(name) for r in rs]))


def _metric(name: str, header: str) -> Column:
    return Column(METRIC + name, header, lambda r: r.metrics.get(name),
                  lambda r: cell_text(r.metrics.get(name)),
                  lambda rs: cell_texts([r.metrics.get(name) for r in rs]))


def names_of(records: Iterable[RunRecord]) -> tuple[list[str], list[str]]:
    """The params and the metrics any of ``records`` has, each sorted."""
    params: set[str] = set()
    metrics: set[str] = set()
    for record in records:
        params.update(record.params)
        metrics.update(record.metrics)
    return sorted(params), sorted(metrics)


class Columns:
    """The columns the runs of a store can be shown with."""

    def __init__(self, records: Sequence[RunRecord]) -> None:
        self.params, self.metrics = names_of(records)
        self._records = records  # varying() of these very runs needs no second look for names
        both = set(self.params) & set(self.metrics)
        taken = set(BUILTINS) | both

        def header(prefix: str, name: str) -> str:
            return prefix + name if name in taken else name

        self.by_key: dict[str, Column] = dict(BUILTINS)
        for name in self.params:
            self.by_key[PARAM + name] = _param(name, header(PARAM, name))
        for name in self.metrics:
            self.by_key[METRIC + name] = _metric(name, header(METRIC, name))

    def resolve(self, name: str) -> list[Column]:
        """The column(s) ``name`` means: one, or every match of a pattern; else a UsageError."""
        name = name.strip()
        if name in BUILTINS:
            return [BUILTINS[name]]
        if any(c in name for c in "*?["):
            found = [c for key, c in self.by_key.items()
                     if c.kind != "builtin" and (fnmatch.fnmatchcase(key, name)
                                                 or fnmatch.fnmatchcase(c.name, name))]
            if not found:
                raise UsageError(f"no param or metric matches {_quoted(name)}; {self._hint()}")
            return found
        if name.startswith((PARAM, METRIC)) and name in self.by_key:
            return [self.by_key[name]]
        matches = [c for c in (self.by_key.get(PARAM + name), self.by_key.get(METRIC + name)) if c]
        if len(matches) == 2:
            raise UsageError(f"{_quoted(name)} is both a param and a metric; write params.{name} "
                             f"or metrics.{name}.")
        if not matches:
            raise UsageError(f"no column {_quoted(name)} in the listed runs; {self._hint()}")
        return matches

    def resolve_all(self, names: Iterable[str]) -> list[Column]:
        """``--columns a,b -c c``: every named column once, in order."""
        chosen: dict[str, Column] = {}
        for group in names:
            for name in group.split(","):
                if name.strip():
                    for column in self.resolve(name):
                        chosen.setdefault(column.key, column)
        return list(chosen.values())

    def _hint(self) -> str:
        def listed(names: list[str]) -> str:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            return shown or "none"

        return (f"the columns are {', '.join(BUILTINS)}, params ({listed(self.params)}) and "
                f"metrics ({listed(self.metrics)}).")

    def varying(self, records: Sequence[RunRecord]) -> list[Column]:
        """The params, then the metrics, whose values differ across ``records`` (a value one run
        has and another lacks differs too; 1, 1.0 and True differ)."""
        params, metrics = (self.params, self.metrics) if records is self._records else names_of(records)
        found = []
        for prefix, names, field in ((PARAM, params, "params"), (METRIC, metrics, "metrics")):
            for name in names:
                values = [r.params.get(name) for r in records] if field == "params" else \
                    [r.metrics.get(name) for r in records]
                if _differs(values):
                    found.append(self.by_key[prefix + name])
        return found

    def default(self, records: Sequence[RunRecord], limit: int = AUTO_COLUMNS) -> tuple[list[Column], int]:
        """The columns ``runs`` shows unless told: the built-in ones with the varying params and
        metrics (at most ``limit`` of them) before the command; and how many were left out."""
        varying = self.varying(records)
        return ([BUILTINS[k] for k in DEFAULT_BEFORE] + varying[:limit]
                + [BUILTINS[k] for k in DEFAULT_AFTER], max(0, len(varying) - limit))


def _differs(values: Sequence[Any]) -> bool:
    """Whether two of ``values`` differ in value or type; stops at the first that does (a
    varying column is known from its first rows, and lists or dicts need no hashing)."""
    if not values:
        return False
    first = values[0]
    kind = type(first)
    return any(v is not first and (type(v) is not kind or v != first) for v in values)


def _identity(value: Any) -> tuple[str, Any]:
    """A value with its type: 1 and True and 1.0 are different values of a param."""
    return (type(value).__name__, value)


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


# --- --where ----------------------------------------------------------------------------------------

OPERATORS = ("==", "!=", "<=", ">=", "=", "<", ">", "~")
_WHERE = re.compile(r"^\s*([^\s<>=!~]+)\s*(==|!=|<=|>=|=|<|>|~)\s*(.*?)\s*$", re.DOTALL)
_ORDERING = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
             ">=": lambda a, b: a >= b}


@dataclass(frozen=True)
class Condition:
    """``NAME OP VALUE``: ``acc>0.9``, ``status=failed``, ``name~baseline`` (contains)."""

    text: str
    column: Column
    op: str
    value: str

    def __call__(self, record: RunRecord) -> bool:
        return compare(self.column.value(record), self.op, self.value)


def parse_where(text: str, columns: Columns) -> Condition:
    """One ``--where`` condition; a malformed one is a UsageError that shows the form."""
    match = _WHERE.match(text)
    value = match.group(3) if match else ""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    elif value[:1] in ("<", ">", "=", "!", "~"):
        match = None  # acc>>0.9, acc=<1
    if match is None or not value:
        raise UsageError(f"--where {_quoted(text)} is not NAME OP VALUE (OP one of "
                         f"{', '.join(OPERATORS)}; ~ means contains); e.g. --where 'acc>0.9'.")
    found = columns.resolve(match.group(1))
    if len(found) != 1:
        raise UsageError(f"--where {_quoted(text)} names {len(found)} columns; a pattern cannot "
                         "be compared, name one column.")
    op = "==" if match.group(2) == "=" else match.group(2)
    return Condition(text, found[0], op, value)


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if not (isinstance(value, float) and math.isnan(value)) else None


def _parse_number(text: str) -> int | float | None:
    try:
        return int(text) if re.fullmatch(r"[+-]?\d{1,4000}", text) else float(text)
    except ValueError:
        return None


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}  # how metrics keep them


def compare(value: Any, op: str, wanted: str) -> bool:
    """Whether a cell ``value`` satisfies ``op wanted``. Numbers compare as numbers (a huge
    integer exactly; a metric's "nan" matches no comparison, "inf" is above every number),
    booleans with true/false, text as text; text is never ordered against a number, and a run
    without the value never matches, not even ``!=``."""
    if value is None:
        return False
    if op == "~":
        return wanted in cell_text(value, width=10**9)
    if isinstance(value, str) and value in _NON_FINITE and _parse_number(wanted) is not None:
        value = _NON_FINITE[value]
        if math.isnan(value):
            return op == "!="
    number, threshold = _as_number(value), _parse_number(wanted)
    if number is not None and threshold is not None:
        left: Any = number
        right: Any = threshold
    elif isinstance(value, bool):
        if wanted.lower() not in ("true", "false"):
            return op == "!="
        left, right = value, wanted.lower() == "true"
    else:
        if number is not None or (threshold is not None and op in _ORDERING):
            return op == "!="  # a number against text, text ordered against a number
        left, right = str(value), wanted
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if isinstance(left, bool):
        return False
    return bool(_ORDERING[op](left, right))


# --- sorting, the tree, CSV ---------------------------------------------------------------------------


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before booleans before text; a huge integer compares exactly."""
    number = _as_number(value)
    if number is not None:
        return (0, number)
    if isinstance(value, bool):
        return (1, value)
    return (2, str(value))


def sort_records(records: Sequence[RunRecord], column: Column, descending: bool = False) -> list[RunRecord]:
    """``records`` by ``column``; runs without a value come last either way, in their order."""
    present = [r for r in records if column.value(r) is not None]
    missing = [r for r in records if column.value(r) is None]
    return sorted(present, key=lambda r: sort_key(column.value(r)), reverse=descending) + missing


def tree_order(records: Sequence[RunRecord]) -> list[tuple[str, RunRecord]]:
    """Every run once, each under its ``--parent``, siblings in the order given; with the prefix
    that draws the tree (``├─ ``...). A run whose parent is not listed is a root."""
    listed = {r.id for r in records}
    children: dict[str, list[RunRecord]] = {}
    roots = []
    for record in records:
        if record.parent and record.parent in listed and record.parent != record.id:
            children.setdefault(record.parent, []).append(record)
        else:
            roots.append(record)
    out: list[tuple[str, RunRecord]] = []
    seen: set[str] = set()
    # (record, the prefix of its own line, the prefix its children's lines continue); a stack,
    # not recursion: a chain of thousands of runs derived one from another is as deep as it gets
    stack = [(r, "", "") for r in reversed(roots)]
    while stack:
        record, prefix, indent = stack.pop()
        if record.id in seen:
            continue
        seen.add(record.id)
        out.append((prefix, record))
        kids = children.get(record.id, [])
        for index in range(len(kids) - 1, -1, -1):
            last = index == len(kids) - 1
            stack.append((kids[index], indent + ("└─ " if last else "├─ "),
                          indent + ("   " if last else "│  ")))
    out += [("", r) for r in records if r.id not in seen]  # a cycle (hand-made records) still lists
    return out


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_csv(records: Sequence[RunRecord], columns: Sequence[Column]) -> str:
    """One header line of column keys, then one line per run with the raw values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in columns])
    for record in records:
        writer.writerow([csv_value(c.value(record)) for c in columns])
    return out.getvalue()


def csv_columns(columns: Sequence[Column]) -> list[Column]:
    """The CSV's columns: the table's, with ``dev`` beside ``status`` (a text cell says "(dev)")."""
    keys = [c.key for c in columns]
    if "status" in keys and "dev" not in keys:
        at = keys.index("status") + 1
        return [*columns[:at], BUILTINS["dev"], *columns[at:]]
    return list(columns)


# --- the terminal table -------------------------------------------------------------------------------


def render_text(records: Sequence[RunRecord], columns: Sequence[Column], *, tree: bool = False) -> str:
    """The table: columns two spaces apart. Without ``tree``, each repeat group's listed runs are
    one line (the group's id, its status counts, the mean of each metric) and a line of its
    metrics' mean ± SEM under it, as ``nixrepro runs`` has always shown groups.

    The cells are made column by column and the lines by one format each (nixrepro.present
    .table_lines): 10,000 runs are drawn in a few tens of milliseconds."""
    from .groups import format_mean, groups_of, metric_summaries
    from .present import table_lines

    header = [c.header for c in columns]
    if tree:
        order = tree_order(records)
        listed = [r for _, r in order]
        cells = [c.cells(listed) for c in columns]
        for at, column in enumerate(columns):
            if column.key == "id":
                cells[at] = [prefix + text for (prefix, _), text in zip(order, cells[at], strict=True)]
        return "\n".join(table_lines(header, list(zip(*cells, strict=True))))
    plain = [r for r in records if r.group is None]
    rows: list[tuple[str, ...]] = list(zip(*[c.cells(plain) for c in columns], strict=True)) \
        if plain else []
    if len(plain) == len(records):
        return "\n".join(table_lines(header, rows))
    groups = groups_of(records)
    merged: list[tuple[str, ...]] = []
    notes: dict[int, str] = {}
    shown: set[str] = set()
    next_plain = iter(rows)
    for record in records:
        if record.group is None:
            merged.append(next(next_plain))
            continue
        if record.group in shown:
            continue
        shown.add(record.group)
        runs = groups[record.group].runs
        summaries = metric_summaries([r for r in runs if r.status == "succeeded"])
        merged.append(tuple(_group_cell(c, record.group, runs, summaries) for c in columns))
        if summaries:
            notes[len(merged) - 1] = "    " + ", ".join(f"{k} {format_mean(s)}" for k, s in summaries.items())
    lines = table_lines(header, merged)
    out = [lines[0]]
    for index, line in enumerate(lines[1:]):
        out.append(line)
        if index in notes:
            out.append(notes[index])
    return "\n".join(out)


def _group_cell(column: Column, group: str, runs: Sequence[RunRecord], summaries: dict[str, Any]) -> str:
    first = runs[0]
    if column.key == "id":
        return group[:9]
    if column.key == "status":
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        detail = "" if set(counts) == {"succeeded"} else ", ".join(f"{n} {s}" for s, n in counts.items())
        return f"group x{len(runs)}" + (f" ({detail})" if detail else "")
    if column.key == "duration":
        return human_duration(sum(r.duration_s or 0 for r in runs))
    if column.key == "started":
        return column.text(first)
    if column.kind == "metric":
        summary = summaries.get(column.name)
        return f"{summary.mean:.4g}" if summary is not None else "-"
    values = {_identity(column.value(r)) for r in runs}
    return column.text(first) if len(values) == 1 else "*"
