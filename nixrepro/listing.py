"""The run store's listing index: every run's summary in one file, so that listing 10,000 runs
reads one file and stats 10,000 records, instead of reading and hashing 10,000 summary.json.

    .nixrepro/summaries.json    the compacted index, three lines: a header {"schema", "layout",
                                "sha256"} (of the other two lines), the order (each run's id, the
                                stat key of its record.json and its start time) and the rows
    .nixrepro/summaries.jsonl   rows added since, one line each: "<sha256 of the row> <row>"

A row is a run's summary (the record without its closure, what summary.json holds) with the
(size, mtime, ctime) of the record.json it was made from, statted before the summary was read. It
is used only while record.json still has that key (any write of the record moves its ctime, which
only the kernel sets) and only while its checksum holds (a hand edit of the index, or a torn
line, is read past). A row made within a second of its record's ctime is racy, as git's index
entries can be: a rewrite in the same tick of the clock could keep the key, so the record's first
bytes (record_sha256, summary_sha256) are compared as well until a listing a second later finds
them still equal. Otherwise RunStore.summary lists the run from summary.json or record.json,
checking the record's own hashes as before, and a new row is appended. So every row was made from
a summary tied to a record whose hashes held, and the index shows what ``verify`` would: it is a
cache, and deleting it costs one slower listing.

The order line alone answers ``@latest`` (the rows are parsed only by a listing that needs them).
In the rows, what repeats across runs (the host, the environment, the code, the data...) is stored
once, and the environment variables as the changes from the values most runs had. The rows were
checked by the codec when they were made and are built as they are (nixrepro.codec.trusted) while
the checksum holds; ``layout`` is a hash of the record types' fields: an index made by a nixrepro
with other fields is not read.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import re
import stat
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Any

from . import codec
from .fsutil import append_line, atomic_write
from .record import RecordError, RunRecord, read_head

INDEX_FILE = "summaries.json"
JOURNAL_FILE = "summaries.jsonl"
LOCK_FILE = "summaries.lock"
SCHEMA = "nixrepro.summaries/2"
# A compaction rewrites the whole index: done when the journal holds more than this many rows or
# a 64th of the index, so that it costs about as much again as the listings it saves.
COMPACT_AT = 64
RACY_NS = 1_000_000_000

StatKey = tuple[int, int, int]
NAMES = tuple(f.name for f in dataclasses.fields(RunRecord))


def _record_type(hint: Any) -> Any:
    """The record type a field holds (``X`` for ``X`` or ``X | None``), or None."""
    for option in (hint, *typing.get_args(hint)):
        if isinstance(option, type) and dataclasses.is_dataclass(option):
            return option
    return None


@functools.cache
def _hints() -> dict[str, Any]:
    return codec.field_types(RunRecord)


@functools.cache
def shared() -> tuple[str, ...]:
    """The record's fields that hold objects, which repeat across runs: stored once, built once."""
    return tuple(name for name in NAMES if _record_type(_hints()[name]) is not None)


@functools.cache
def layout() -> str:
    """A hash of every record type's fields and their annotations, in order: rows of another
    layout are not read. The types a field names are found in its module, without evaluating the
    annotations (typing.get_type_hints of 20 classes is 10 ms at every listing)."""
    seen: dict[str, list[tuple[str, str]]] = {}
    todo: list[Any] = [RunRecord]
    while todo:
        cls = todo.pop()
        if cls.__qualname__ in seen:
            continue
        table = [(f.name, str(f.type)) for f in dataclasses.fields(cls)]
        seen[cls.__qualname__] = table
        names = vars(sys.modules[cls.__module__])
        for _, annotation in table:
            for word in _WORD.findall(annotation):
                found = names.get(word)
                if isinstance(found, type) and dataclasses.is_dataclass(found):
                    todo.append(found)
    return hashlib.sha256(json.dumps(sorted(seen.items())).encode()).hexdigest()


_WORD = re.compile(r"[A-Za-z_]\w*")


class Listing:
    """The index of one run store, read once per process and re-validated at each listing."""

    _open: typing.ClassVar[dict[Path, Listing]] = {}
    _guard = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        # run id -> (stat key, start time, racy hashes or None): the order line and the journal
        self.order: dict[str, tuple[StatKey, str, tuple[str, str] | None]] = {}
        self.records: dict[str, RunRecord] = {}  # built rows, by run id
        self.body: bytes | None = None  # the compacted rows, parsed when a listing needs them
        self.compacted = 0  # rows in the compacted index
        self.journal = 0  # rows in the journal
        self.loaded: tuple[int, ...] | None = None  # the index files' stat when read

    @classmethod
    def of(cls, root: Path) -> Listing:
        with cls._guard:
            found = cls._open.get(root)
            if found is None:
                found = cls._open[root] = cls(root)
            return found

    # --- reading -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the index files again if another process changed them since."""
        key = _files_key(self.root)
        if key == self.loaded:
            return
        self._clear()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError):
            self._read_order()
        with contextlib.suppress(OSError):
            self._read_journal()
        self.loaded = key

    def _read_order(self) -> None:
        raw = (self.root / INDEX_FILE).read_bytes()
        head, _, rest = raw.partition(b"\n")
        header = json.loads(head)
        if header.get("schema") != SCHEMA or header.get("layout") != layout() or \
                header.get("sha256") != hashlib.sha256(rest).hexdigest():
            return  # another nixrepro's, or edited: rebuilt from the records
        order_line, _, self.body = rest.partition(b"\n")
        order = json.loads(order_line)
        racy = order["racy"]
        self.order = {run_id: ((size, mtime, ctime), started, _pair(racy.get(run_id)))
                      for run_id, size, mtime, ctime, started in order["runs"]}
        self.compacted = len(self.order)

    def _read_journal(self) -> None:
        with codec.no_gc():
            self._read_lines((self.root / JOURNAL_FILE).read_bytes().splitlines())

    def _read_lines(self, lines: list[bytes]) -> None:
        for line in lines:
            digest, _, text = line.partition(b" ")
            if hashlib.sha256(text).hexdigest().encode() != digest:
                continue  # a torn last line, or an edit
            try:
                row = json.loads(text)
                if row["layout"] != layout():
                    continue
                record = RunRecord.from_dict(row["summary"])
                size, mtime, ctime = row["key"]
            except (ValueError, KeyError, TypeError, RecordError):
                continue
            racy = (record.record_sha256, record.summary_sha256) if row["racy"] else None
            self.order[row["id"]] = ((size, mtime, ctime), record.started_at, racy)
            self.records[row["id"]] = record
            self.journal += 1

    def _rows(self) -> None:
        """Build the compacted rows (the first time a listing needs more than the order)."""
        body, self.body = self.body, None
        if body is None:
            return
        with contextlib.suppress(ValueError, KeyError, TypeError, IndexError, AttributeError), \
                codec.no_gc():
            doc = json.loads(body)
            objects = {name: [codec.trusted(_hints()[name], value) for value in values]
                       for name, values in doc["shared"].items()}
            bases = doc["env"]
            names = doc["names"]
            new = object.__new__
            for row in doc["runs"]:
                values = dict(zip(names, row, strict=True))
                if values["id"] in self.records:
                    continue  # the journal's newer row
                for name in shared():
                    values[name] = objects[name][values[name]]
                base, changed, removed = values["env_vars"]
                env = {**bases[base], **changed}
                for name in removed:
                    del env[name]
                values["env_vars"] = env
                record: Any = new(RunRecord)
                record.__dict__.update(values)
                self.records[record.id] = record

    def _current(self, run_id: str, key: StatKey, record_path: str) -> bool:
        """Whether the index holds a row of the run made from the record.json of this stat key.

        A racy row's record is also read (its first bytes) for the two hashes it must still have;
        once the clock has moved a second past the record's ctime, its stat key alone will do.
        """
        entry = self.order.get(run_id)
        if entry is None or entry[0] != key:
            return False
        if entry[2] is not None:
            if read_head(Path(record_path)) != entry[2]:
                return False
            if time.time_ns() - key[2] >= RACY_NS:
                self.order[run_id] = (key, entry[1], None)
        return True

    def scan(self, runs: str, names: list[str], record_file: str, records: bool) -> tuple[
            list[tuple[str, str, RunRecord | None]], list[tuple[str, StatKey]], dict[str, StatKey]]:
        """Stat each run's record.json (before it is read) and look it up: (start time, run id,
        summary or None) of the runs the index holds current rows of, (run id, stat key) of the
        others, and every run's stat key. One loop with its names local: it runs 10,000 times."""
        if records:
            self._rows()
        order, built, stat_of, regular = self.order, self.records, os.stat, stat.S_ISREG
        found: list[tuple[str, str, RunRecord | None]] = []
        missing: list[tuple[str, StatKey]] = []
        listed: dict[str, StatKey] = {}
        for run_id in names:
            path = f"{runs}/{run_id}/{record_file}"
            try:
                st = stat_of(path)
            except OSError:
                continue
            if not regular(st.st_mode):
                continue
            key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            listed[run_id] = key
            entry = order.get(run_id)
            if entry is not None and entry[0] == key and (entry[2] is None or
                                                          self._current(run_id, key, path)):
                if not records:
                    found.append((entry[1], run_id, None))
                    continue
                record = built.get(run_id)
                if record is not None:
                    found.append((entry[1], run_id, record))
                    continue
            missing.append((run_id, key))
        return found, missing, listed

    # --- writing -------------------------------------------------------------------------------

    def add(self, made: list[tuple[str, StatKey, RunRecord]], listed: dict[str, StatKey]) -> None:
        """Note the summaries made in this listing; compact when the journal has grown.

        ``listed``: every run of this listing and its record's stat key (what a compaction keeps).
        A store that cannot be written (read only, a full disk) is listed as slowly as before.
        """
        if not made:
            return
        with contextlib.suppress(OSError):
            lines = []
            now = time.time_ns()
            for run_id, key, record in made:
                racy = now - key[2] < RACY_NS
                text = json.dumps({"id": run_id, "key": list(key), "racy": racy, "layout": layout(),
                                   "summary": codec.encode(record)}, separators=(",", ":"))
                lines.append(f"{hashlib.sha256(text.encode()).hexdigest()} {text}\n")
                hashes = (record.record_sha256, record.summary_sha256) if racy else None
                self.order[run_id] = (key, record.started_at, hashes)
                self.records[run_id] = record
            append_line(self.root / JOURNAL_FILE, "".join(lines))
            self.journal += len(made)
            if self.journal > max(COMPACT_AT, self.compacted // 64):
                self._compact(listed)
            self.loaded = _files_key(self.root)

    def _compact(self, listed: dict[str, StatKey]) -> None:
        """Rewrite the index with every row that is still current, and empty the journal; one
        process at a time (another one compacting is left to it)."""
        with open(self.root / LOCK_FILE, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            self._rows()
            kept = [(run_id, key) for run_id, key in listed.items()
                    if run_id in self.records and self.order.get(run_id, (None,))[0] == key]
            encoded = [codec.encode(self.records[run_id]) for run_id, _ in kept]
            bases, envs = _environments([values["env_vars"] for values in encoded])
            seen: dict[str, dict[str, int]] = {name: {} for name in shared()}
            docs: dict[str, list[Any]] = {name: [] for name in shared()}
            rows = []
            for values, env in zip(encoded, envs, strict=True):
                for name in shared():
                    values[name] = _intern(values[name], seen[name], docs[name])
                values["env_vars"] = env
                rows.append([values[name] for name in NAMES])
            order = {"runs": [[run_id, *key, self.order[run_id][1]] for run_id, key in kept],
                     "racy": {run_id: self.order[run_id][2] for run_id, _ in kept
                              if self.order[run_id][2] is not None}}
            rest = (_compact_json(order) + b"\n"
                    + _compact_json({"names": NAMES, "shared": docs, "env": bases, "runs": rows}))
            header = json.dumps({"schema": SCHEMA, "layout": layout(),
                                 "sha256": hashlib.sha256(rest).hexdigest()})
            atomic_write(self.root / INDEX_FILE, header.encode() + b"\n" + rest)
            atomic_write(self.root / JOURNAL_FILE, b"")
            self.compacted, self.journal = len(kept), 0


def _pair(value: Any) -> tuple[str, str] | None:
    return (str(value[0]), str(value[1])) if value else None


def _compact_json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _intern(value: Any, seen: dict[str, int], docs: list[Any]) -> int:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    index = seen.get(text)
    if index is None:
        index = seen[text] = len(docs)
        docs.append(value)
    return index


def _environments(envs: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[list[Any]]]:
    """The runs' environment variables as one base (each variable's most common value) and, per
    run, [0, what it set otherwise, what it did not set]: most of 60 variables are the same."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for env in envs:
        for name, value in env.items():
            counts[name][value] += 1
    half = len(envs) / 2
    base = {name: values.most_common(1)[0][0] for name, values in counts.items()
            if values.most_common(1)[0][1] > half}
    rows = []
    for env in envs:
        changed = {name: value for name, value in env.items() if base.get(name) != value}
        removed = [name for name in base if name not in env]
        rows.append([0, changed, removed])
    return [base], rows


def _files_key(root: Path) -> tuple[int, ...]:
    """What changes when either index file is written (by this process or another)."""
    key: list[int] = []
    for name in (INDEX_FILE, JOURNAL_FILE):
        try:
            st = os.stat(root / name)
        except FileNotFoundError:
            key += [0, 0, 0]
            continue
        key += [st.st_ino, st.st_size, st.st_mtime_ns]
    return tuple(key)
