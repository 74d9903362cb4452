"""How records look in a terminal: the ``runs`` table and the ``show`` summary."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence

from .host import where as who_and_where
from .record import RunRecord

# Colour codes (SGR: ESC [ digits m, which diff writes itself) and every other control character
# except tab and newline.
_CONTROL = re.compile(r"\x1b\[[0-9;]*m|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` as a terminal may be given it: colour codes are kept, every other control
    character (the escape sequences that set a window title, move the cursor or clear the screen;
    BEL, backspace, carriage return) is written out as ``\\xNN``, so that a run's name, tags or
    params cannot drive the terminal of whoever lists them."""
    return _CONTROL.sub(lambda m: m[0] if len(m[0]) > 1 else f"\\x{ord(m[0]):02x}", text)


def human_bytes(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    # time.localtime of the timestamp: a third of what datetime.astimezone() costs, which the
    # table pays once per run (10,000 runs: 25 ms instead of 65)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dt.datetime.fromisoformat(iso).timestamp()))


def local_times(isos: Sequence[str | None]) -> list[str]:
    """:func:`local_time` of each. Times written with the offset this machine's zone has at that
    hour (a record made here, or in the same zone) are cut from the text itself; the offset is
    looked up once per hour of the records, not once per run."""
    shifts: dict[str, bool] = {}  # 'YYYY-MM-DDTHH' + offset -> whether the text is local time
    out = []
    for iso in isos:
        if not iso or len(iso) < 25 or iso[10] != "T" or iso[-3] != ":" or iso[-6] not in "+-":
            out.append(local_time(iso))
            continue
        key = iso[:13] + iso[-6:]
        local = shifts.get(key)
        if local is None:
            local = shifts[key] = _is_local_hour(key)
        out.append(iso[:10] + " " + iso[11:19] if local else local_time(iso))
    return out


def _is_local_hour(key: str) -> bool:
    """Whether the zone's offset is ``key``'s offset all through that hour."""
    try:
        start = dt.datetime.fromisoformat(key[:13] + ":00:00" + key[13:])
    except ValueError:
        return False
    offset = start.utcoffset()
    if offset is None:
        return False
    stamp = start.timestamp()
    wanted = int(offset.total_seconds())
    return time.localtime(stamp).tm_gmtoff == wanted == time.localtime(stamp + 3599).tm_gmtoff


def status_label(record: RunRecord) -> str:
    return record.status + (" (dev)" if record.dev else "")




NAME_WIDTH, COMMAND_WIDTH = 30, 50  # a 10 KB name must not push every row off the screen


def clip(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, one line; a cut is marked with an ellipsis."""
    line = " ".join(text.split()) if ("\n" in text or "\r" in text or "\t" in text) else text
    return line if len(line) <= width else line[: width - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart."""
    return "\n".join(table_lines(header, [tuple(map(str, row)) for row in rows]))


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """:func:`table`'s lines: each row is one ``str.format`` of a format made once from the
    widths, not a join of padded cells (10,000 rows of 12 columns: 25 ms instead of 190)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    widths = [max(len(name), max(map(len, cells), default=0))
              for name, cells in zip(header, columns, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [line.format(*header).rstrip(), *[line.format(*row).rstrip() for row in rows]]


def run_summary(record: RunRecord) -> str:
    env = record.environment
    host = record.host
    lines = [
        f"run {record.id}" + (f"  ({record.name})" if record.name else ""),
        f"  status     {status_label(record)}"
        + (f", exit code {record.exit_code}" if record.exit_code is not None else "")
        + (f", signal {record.signal}" if record.signal else ""),
    ]
    if record.dev:
        lines.append("  DEV RUN    made from a dirty tree; its diff is kept as code.patch")
    lines += [
        f"  started    {local_time(record.started_at)}   duration {human_duration(record.duration_s)}",
        f"  command    {' '.join(record.command.argv)}",
        f"  cwd        {record.command.cwd}",
        f"  code       {record.code.commit}"
        + (f" on {record.code.branch}" if record.code.branch else "")
        + (" (dirty)" if record.code.dirty else ""),
    ]
    if record.parent:
        lines.append(f"  parent     {record.parent}")
    if record.tags:
        lines.append(f"  tags       {', '.join(record.tags)}")
    if record.params:
        lines.append("  params     " + ", ".join(f"{k}={v!r}" for k, v in sorted(record.params.items())))
    if record.seed is not None:
        lines.append(f"  seed       {record.seed}" + (", deterministic" if record.deterministic else ""))
    if record.group:
        lines.append(f"  group      {record.group} (repeat {record.repeat_index})")
    lines += [
        f"  env        {env.env_path}",
        f"  closure    {env.closure_hash}  ({len(env.closure)} paths, "
        f"{human_bytes(sum(p.narSize for p in env.closure))})",
        f"  flake.lock {env.flake_lock_sha256 or '(no inputs)'}"
        + (f"  ({len(env.inputs)} inputs)" if env.inputs else ""),
    ]
    for name, inp in sorted(env.inputs.items()):
        rev = f" {inp.rev[:12]}" if inp.rev and inp.rev not in inp.url else ""
        marks = [m for m, on in (("follows " + (inp.follows or ""), inp.follows),
                                 ("not a flake", not inp.flake), ("UNLOCKED", inp.locked is False),
                                 ("local", inp.local), ("OVERRIDDEN", inp.overridden)) if on]
        lines.append(f"    {name:<20} {inp.url}{rev}" + (f"  ({', '.join(marks)})" if marks else ""))
    gpus = ", ".join(g.name for g in host.gpus) or "none"
    lines += [
        f"  where      {who_and_where(host)}",
        f"  host       {host.os}, kernel {host.kernel}, {host.arch}, {host.cpu_count} cpus, "
        f"{human_bytes(host.memory_bytes)}",
        f"  gpu        {gpus}"
        + (f"; driver {host.nvidia_driver}" if host.nvidia_driver else "")
        + (f", CUDA {host.cuda_driver}" if host.cuda_driver else ""),
        f"  nix        {env.nix_version} ({env.system})",
    ]
    if record.metrics:
        lines.append("  metrics    " + ", ".join(f"{k}={v}" for k, v in sorted(record.metrics.items())))
    for tracker, info in sorted(record.trackers.items()):
        where = info.get("url") or info.get("dir") or ""
        lines.append(f"  {tracker:<10} {where}" + (f" ({info['mode']})" if info.get("mode") else ""))
    return "\n".join(lines)
