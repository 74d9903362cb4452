"""How a :class:`~nixrepro.diff.RunDiff` reads in a terminal: the verdict first, then one section
per kind of difference, each shown only when it differs (``all=True`` shows every one)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .diff import SECTIONS, FieldChange, RunDiff, changed_metrics, section_differs
from .present import human_bytes, human_duration

_COLORS = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}
_TITLES = {"code": "code", "inputs": "flake inputs", "environment": "environment", "host": "host",
           "params": "params", "seed": "seed", "data": "data versions", "metrics": "metrics",
           "outcome": "outcome"}


class _Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str) -> str:
        return f"\x1b[{_COLORS[style]}m{text}\x1b[0m" if self.color else text

    def change(self, old: str, new: str) -> str:
        return f"{self(old, 'red')} -> {self(new, 'green')}"


def render_text(diff: RunDiff, all: bool = False, color: bool = False) -> str:
    """The diff as terminal text; ANSI colours when ``color``."""
    style = _Style(color)
    a, b = diff.a, diff.b
    verdict_style = {"identical": "green", "same-recipe-different-bits": "yellow"}.get(
        diff.verdict, "red")
    lines = [style(diff.verdict_text, verdict_style) + _verdict_detail(diff)]
    for label, record in (("A", a), ("B", b)):
        lines.append(f"  {label} {record.id}" + (f" ({record.name})" if record.name else "")
                     + f"  {record.started_at[:19].replace('T', ' ')}")
    for section in SECTIONS:
        if not (all or section_differs(diff, section)):
            continue
        body = _RENDERERS[section](diff, style)
        lines.append("")
        lines.append(style(_TITLES[section], "bold"))
        lines.extend(f"  {line}" for line in body or ["(same)"])
    if diff.determinism and (all or section_differs(diff, "metrics")):
        lines.append("")
        if not (a.deterministic or b.deterministic):  # the common case: one line, not two
            notes = ["neither run was recorded with --deterministic, so part of a difference in "
                     "their metrics may be chance; compare repeats (--repeat N) instead."]
        else:
            notes = diff.determinism
        lines.extend(style(f"note: {note}", "yellow") for note in notes)
    return "\n".join(lines)


def _verdict_detail(diff: RunDiff) -> str:
    env = diff.environment
    if diff.verdict == "identical":
        return f" (closure {env.old_closure_hash[:16]}, {env.old_paths} paths)"
    if diff.verdict == "same-recipe-different-bits":
        n = len(env.different_bits)
        return (f": the same {env.old_paths} store paths, {n} with different contents "
                "(a non-reproducible build or tampering)")
    parts = []
    if env.packages:
        parts.append(f"{len(env.packages)} package{'s' if len(env.packages) != 1 else ''} changed")
    if env.rebuilt:
        parts.append(f"{len(env.rebuilt)} rebuilt at the same version")
    if env.different_bits:
        parts.append(f"{len(env.different_bits)} with different bits")
    return f": {', '.join(parts)}" if parts else ""


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _fields(changes: list[FieldChange], style: _Style, width: int = 14) -> list[str]:
    return [f"{c.field:<{width}} {style.change(_show(c.old), _show(c.new))}" for c in changes]


def _code(diff: RunDiff, style: _Style) -> list[str]:
    code = diff.code
    lines = [f"{'commit':<14} " + (style.change(code.old_commit[:12], code.new_commit[:12])
                                  if code.old_commit != code.new_commit else code.old_commit[:12])]
    lines += _fields([c for c in code.changes if c.field != "commit"], style)
    if code.commits_between is not None:
        lines.append(f"{len(code.commits_between)} commit"
                     f"{'s' if len(code.commits_between) != 1 else ''} between:")
        lines += [f"  {entry}" for entry in code.commits_between[:20]]
        if len(code.commits_between) > 20:
            lines.append(f"  ... and {len(code.commits_between) - 20} more")
    elif code.old_commit != code.new_commit:
        lines.append(style("(a commit is not in this repository: no log or diff stat)", "dim"))
    if code.diff_stat:
        lines += code.diff_stat.splitlines()
    return lines


def _when(timestamp: Any) -> str:
    if not isinstance(timestamp, int):
        return _show(timestamp)
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d")


def _inputs(diff: RunDiff, style: _Style) -> list[str]:
    lines = []
    for change in diff.inputs:
        if change.status == "added":
            lines.append(style(f"+ {change.name}  {change.url}", "green"))
        elif change.status == "removed":
            lines.append(style(f"- {change.name}  {change.url}", "red"))
        else:
            lines.append(f"{change.name}")
            for c in change.changes:
                if c.field == "lastModified":
                    old, new = _when(c.old), _when(c.new)
                elif c.field == "rev":
                    old, new = _show(c.old)[:12], _show(c.new)[:12]
                else:
                    old, new = _show(c.old), _show(c.new)
                lines.append(f"  {c.field:<12} {style.change(old, new)}")
    return lines


def _environment(diff: RunDiff, style: _Style) -> list[str]:
    env = diff.environment
    lines = [
        f"{'closure':<14} "
        + (style.change(env.old_closure_hash[:16], env.new_closure_hash[:16])
           if env.old_closure_hash != env.new_closure_hash else env.old_closure_hash[:16])
        + f"  ({env.old_paths} -> {env.new_paths} paths, "
        f"{human_bytes(env.old_size)} -> {human_bytes(env.new_size)})"
    ]
    lines += _fields([c for c in env.changes if c.field != "closure_hash"], style)
    for pkg in env.packages:
        delta = _size_delta(pkg.size_delta)
        if pkg.status == "added":
            lines.append(style(f"+ {pkg.name} {_show(pkg.new_versions)}", "green") + f"  {delta}")
        elif pkg.status == "removed":
            lines.append(style(f"- {pkg.name} {_show(pkg.old_versions)}", "red") + f"  {delta}")
        else:
            lines.append(f"  {pkg.name}: "
                         + style.change(_versions(pkg.old_versions), _versions(pkg.new_versions))
                         + f"  {delta}")
    if env.rebuilt:
        lines.append("same version, rebuilt:")
        for item in env.rebuilt:
            version = item.version or "(no version)"
            lines.append(f"  {item.name} {version}  ({item.reason})")
    if env.different_bits:
        lines.append(style("same store path, different contents "
                           "(a non-reproducible build or tampering):", "yellow"))
        for bits in env.different_bits:
            lines.append(f"  {bits.path}")
            lines.append(f"    narHash {style.change(bits.old_nar_hash, bits.new_nar_hash)}")
    return lines


def _versions(versions: list[str]) -> str:
    return ", ".join(v or "(none)" for v in versions) or "(none)"


def _size_delta(delta: int) -> str:
    sign = "+" if delta >= 0 else "-"
    return f"{sign}{human_bytes(abs(delta))}"


def _host(diff: RunDiff, style: _Style) -> list[str]:
    return _fields(diff.host, style)


def _params(diff: RunDiff, style: _Style) -> list[str]:
    return _fields(diff.params, style)


def _seed(diff: RunDiff, style: _Style) -> list[str]:
    if not diff.seed:
        return [f"{'seed':<14} {_show(diff.a.seed)}"]
    return _fields(diff.seed, style)


def _data(diff: RunDiff, style: _Style) -> list[str]:
    lines = []
    for change in diff.data:
        mark = {"added": "+ ", "removed": "- ", "changed": "  "}[change.status]
        lines.append(f"{mark}{change.direction} {change.uri}")
        for c in change.changes:
            lines.append(f"    {c.field:<12} {style.change(_show(c.old), _show(c.new))}")
    return lines


def _metrics(diff: RunDiff, style: _Style) -> list[str]:
    changed = {m.name for m in changed_metrics(diff)}
    lines = []
    for m in diff.metrics:
        text = f"{m.name:<14} {style.change(_show(m.old), _show(m.new))}" if m.name in changed \
            else f"{m.name:<14} {_show(m.new)}"
        if m.name in changed and m.delta is not None:
            text += f"  {m.delta:+.6g}"
            if m.relative is not None:
                text += f" ({m.relative:+.2%})"
        lines.append(text)
    return lines


def _outcome(diff: RunDiff, style: _Style) -> list[str]:
    lines = []
    for c in diff.outcome:
        if c.field == "duration_s":
            old, new = human_duration(c.old), human_duration(c.new)
        else:
            old, new = _show(c.old), _show(c.new)
        lines.append(f"{c.field:<14} {style.change(old, new)}")
    if not lines:
        lines.append(f"{'status':<14} {diff.a.status}")
    return lines


_RENDERERS = {"code": _code, "inputs": _inputs, "environment": _environment, "host": _host,
              "params": _params, "seed": _seed, "data": _data, "metrics": _metrics,
              "outcome": _outcome}
