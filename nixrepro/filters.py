"""The filters of ``nixrepro runs`` (local and ``--remote``) and of the viewer's runs page.

:class:`RunFilter` holds what ``--status``, ``--name``, ``--tag``, ``--commit``, ``--since``,
``--user`` and ``--host`` asked for, each checked when parsed (a bad value is one UsageError
sentence with the remedy) and then applied to summaries, which hold every field it reads (a
remote listing entry too: nixrepro.remote.index.listing_entry keeps the host's user, name and
scheduler facts).

``--name`` matches a part of the name in any case, or with ``*``, ``?`` or ``[`` the whole name as
a shell pattern. ``--host`` matches where a run ran: the host name, and inside a scheduler the
Kubernetes node, or any node of the Slurm job's node list (``gpu-[01-04]``, expanded).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .errors import UsageError
from .record import STATUSES as STATUSES  # the statuses --status takes, importable from here
from .record import RunRecord

_AGE = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_HEX = re.compile(r"^[0-9a-fA-F]{1,64}$")
_PATTERN = re.compile(r"[*?\[]")
MAX_NODES = 100_000  # a Slurm node list is not expanded beyond this many names


@dataclass(frozen=True)
class RunFilter:
    """Which runs to list; every field unset lists them all."""

    status: str | None = None
    name: str | None = None  # lowercased
    tags: tuple[str, ...] = ()
    commit: str | None = None  # a lowercase hex prefix
    since: dt.datetime | None = None  # aware
    user: str | None = None
    host: str | None = None  # lowercased

    @classmethod
    def parse(cls, *, status: str | None = None, name: str | None = None, tags: Sequence[str] = (),
              commit: str | None = None, since: str | None = None, user: str | None = None,
              host: str | None = None, now: dt.datetime | None = None) -> RunFilter:
        """The filter the options ask for; a value that cannot match as meant is a UsageError."""
        if status is not None and status not in STATUSES:
            raise UsageError(f"--status {_quoted(status)} is not a run status; give one of "
                             f"{', '.join(STATUSES)}.")
        for option, value in (("--name", name), ("--user", user), ("--host", host),
                              *(("--tag", tag) for tag in tags)):
            if value is not None and not value.strip():
                raise UsageError(f"{option} is empty; give the text to match, e.g. {option} "
                                 f"{_EXAMPLES[option]}.")
        if commit is not None and not _HEX.match(commit.strip()):
            raise UsageError(f"--commit {_quoted(commit)} is not the start of a commit id; give its "
                             "first hex digits (e.g. --commit 3f9a2c1), or --commit $(git rev-parse "
                             "BRANCH) for a branch.")
        return cls(status=status, name=name.strip().lower() if name else None,
                   tags=tuple(tag.strip() for tag in tags),
                   commit=commit.strip().lower() if commit else None,
                   since=parse_since(since, now) if since is not None else None,
                   user=user.strip() if user else None, host=host.strip().lower() if host else None)

    @property
    def active(self) -> bool:
        return any((self.status, self.name, self.tags, self.commit, self.since, self.user, self.host))

    def __call__(self, record: RunRecord) -> bool:
        if self.status is not None and record.status != self.status:
            return False
        if self.name is not None and not _text_matches(self.name, (record.name or "").lower()):
            return False
        if self.tags and not all(tag in record.tags for tag in self.tags):
            return False
        if self.commit is not None and not record.code.commit.startswith(self.commit):
            return False
        if self.since is not None and not _started_since(record.started_at, self.since):
            return False
        if self.user is not None and not _whole_matches(self.user, record.host.user):
            return False
        return self.host is None or any(_whole_matches(self.host, where.lower())
                                        for where in hosts_of(record))

    def apply(self, records: Sequence[RunRecord]) -> list[RunRecord]:
        return [r for r in records if self(r)] if self.active else list(records)


_EXAMPLES = {"--name": "baseline", "--user": "alice", "--host": "gpu-01", "--tag": "sweep"}


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _text_matches(wanted: str, text: str) -> bool:
    """A part of ``text``, or the whole of it as a shell pattern."""
    if _PATTERN.search(wanted):
        return fnmatch.fnmatchcase(text, wanted)
    return wanted in text


def _whole_matches(wanted: str, text: str) -> bool:
    """All of ``text``, or the whole of it as a shell pattern (a user or host is not matched in
    part: ``--host gpu-1`` must not list gpu-10)."""
    if _PATTERN.search(wanted):
        return fnmatch.fnmatchcase(text, wanted)
    return text == wanted


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: a date (local midnight), an ISO time (local unless it has an offset or Z) or
    an age (``90s``, ``30m``, ``3h``, ``2d``, ``1w`` before ``now``), as an aware datetime."""
    age = _AGE.match(text)
    if age:
        moment = now or dt.datetime.now(dt.timezone.utc)
        try:
            return moment - dt.timedelta(seconds=int(age.group(1)) * _UNITS[age.group(2)])
        except OverflowError:
            raise UsageError(f"--since {_quoted(text)} reaches before the year 1; give a "
                             "shorter age.") from None
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {_quoted(text)} is not a date, a time or an age; give e.g. --since "
                         "2026-11-22, --since 2026-11-22T13:00 or --since 2d (s, m, h, d or w).") from None
    return when if when.tzinfo is not None else when.astimezone()


def _started_since(started_at: str, since: dt.datetime) -> bool:
    try:
        started = dt.datetime.fromisoformat(started_at)
    except ValueError:
        return False
    if started.tzinfo is None:
        started = started.astimezone()
    return started >= since


def hosts_of(record: RunRecord) -> Iterator[str]:
    """The names of where the run ran: its host name, the Kubernetes node, the Slurm job's nodes."""
    host = record.host
    if host.hostname:
        yield host.hostname
    if host.kubernetes is not None:
        if host.kubernetes.pod:
            yield host.kubernetes.pod
        if host.kubernetes.node:
            yield host.kubernetes.node
    if host.slurm is not None and host.slurm.node_list:
        yield from slurm_nodes(host.slurm.node_list)


def slurm_nodes(node_list: str) -> list[str]:
    """Slurm's compressed host list as names: ``gpu-[01-03,07],cpu1`` is gpu-01, gpu-02, gpu-03,
    gpu-07 and cpu1 (zero padding kept, several bracket groups multiplied). One that does not
    parse, or that would make more than :data:`MAX_NODES` names, is kept as written."""
    names: list[str] = []
    for item in _split_top(node_list):
        expanded = _expand(item)
        if expanded is None or len(names) + len(expanded) > MAX_NODES:
            names.append(item)
        else:
            names.extend(expanded)
    return names


def _split_top(text: str) -> list[str]:
    """``a[1-2],b`` -> ``a[1-2]``, ``b``: commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand(item: str) -> list[str] | None:
    match = re.match(r"^([^\[\]]*)\[([^\[\]]*)\](.*)$", item)
    if match is None:
        return None if "[" in item or "]" in item else [item]
    head, ranges, rest = match.groups()
    tails = _expand(rest)
    if tails is None:
        return None
    numbers: list[str] = []
    for part in ranges.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return None
        width = len(low)
        last = int(high) if high else int(low)
        if last - int(low) > MAX_NODES:
            return None
        numbers += [f"{n:0{width}d}" for n in range(int(low), last + 1)]
    if len(numbers) * len(tails) > MAX_NODES:
        return None
    return [f"{head}{number}{tail}" for number in numbers for tail in tails]
