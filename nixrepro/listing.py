"""The run store's listing index: every run's summary in one file, so that listing 10,000 runs
reads one file and stats 10,000 records, instead of reading and hashing 10,000 summary.json.

    .nixrepro/summaries.json    the compacted index: a header line {"schema", "layout", "sha256"},
                                then the body the sha256 is of
    .nixrepro/summaries.jsonl   rows added since, one line each: "<sha256 of the row> <row>"

A row is a run's summary (the record without its closure, what summary.json holds) with the
(size, mtime, ctime) of the record.json it was made from, statted before the summary was read. It
is used only while record.json still has that key (any write of the record moves its ctime, which
only the kernel sets) and only while its checksum holds (a hand edit of the index, or a torn
line, is read past). Otherwise RunStore.summary lists the run from summary.json or record.json,
checking the record's own hashes as before, and a new row is appended. So every row was made from
a summary tied to a record whose hashes held, and the index shows what ``verify`` would: it is a
cache, and deleting it costs one slower listing.

What repeats across runs (the host, the environment, the code, the command, the data, the
stage..., and the environment variables other than the run's own NIXREPRO_* ones) is stored once in
the compacted index and decoded once per process, strictly (nixrepro.codec); a row's own values
were checked when it was made and are used as they are while its checksum holds. ``layout`` is a
hash of the record types' fields: an index made by a nixrepro with other fields is rebuilt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
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
SCHEMA = "nixrepro.summaries/1"
# A compaction rewrites the whole index: done when the journal holds more than this many rows or
# a 64th of the index, so that it costs about as much again as the listings it saves.
COMPACT_AT = 64
OWN_VARIABLES = "NIXREPRO_"  # the environment variables each run sets for itself (run id, dir...)

StatKey = tuple[int, int, int]
# A row: the stat key of the record.json it was made from, the summary, and whether it is racy
# (made less than RACY_NS after that record was written: see Listing.get).
Row = tuple[StatKey, RunRecord, bool]
RACY_NS = 1_000_000_000
_HINTS = typing.get_type_hints(RunRecord)


def _record_type(hint: Any) -> Any:
    """The record type a field holds (``X`` for ``X`` or ``X | None``), or None."""
    for option in (hint, *typing.get_args(hint)):
        if isinstance(option, type) and dataclasses.is_dataclass(option):
            return option
    return None


# the record's fields that hold objects, which repeat across runs: stored once, decoded once
SHARED = tuple(name for name, hint in _HINTS.items() if _record_type(hint) is not None)


@functools.cache
def layout() -> str:
    """A hash of every record type's fields, in order: rows of another layout are not read."""
    seen: dict[str, list[str]] = {}
    todo: list[Any] = [RunRecord]
    while todo:
        cls = todo.pop()
        if cls.__name__ in seen:
            continue
        seen[cls.__name__] = [f.name for f in dataclasses.fields(cls)]
        for hint in typing.get_type_hints(cls).values():
            todo.extend(found for arg in (hint, *typing.get_args(hint))
                        if (found := _record_type(arg)) is not None)
    return hashlib.sha256(json.dumps(sorted(seen.items())).encode()).hexdigest()


class Listing:
    """The index of one run store, loaded once per process and re-validated at each listing."""

    _open: typing.ClassVar[dict[Path, Listing]] = {}
    _guard = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows: dict[str, Row] = {}
        self.compacted = 0  # rows in the compacted index
        self.journal = 0  # rows in the journal
        self.loaded: tuple[int, ...] | None = None  # the index files' stat when read
        self.lock = threading.Lock()

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
        self.rows, self.compacted, self.journal = {}, 0, 0
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError,
                                 codec.CodecError):
            self._read_index()
        with contextlib.suppress(OSError):
            self._read_journal()
        self.loaded = key

    def _read_index(self) -> None:
        raw = (self.root / INDEX_FILE).read_bytes()
        head, _, body = raw.partition(b"\n")
        header = json.loads(head)
        if header.get("schema") != SCHEMA or header.get("layout") != layout() or \
                header.get("sha256") != hashlib.sha256(body).hexdigest():
            return  # another nixrepro's, or edited: rebuilt from the records
        doc = json.loads(body)
        shared = {name: [codec.decode(_type(name), value) for value in values]
                  for name, values in doc["shared"].items()}
        bases = [codec.decode(dict[str, str], value) for value in doc["env"]]
        new = object.__new__
        for run_id, size, mtime, ctime, racy, values in doc["runs"]:
            for name in SHARED:
                values[name] = shared[name][values[name]]
            base, own = values["env_vars"]
            values["env_vars"] = {**bases[base], **own}
            record = new(RunRecord)
            record.__dict__.update(values)
            self.rows[run_id] = ((size, mtime, ctime), record, racy)
        self.compacted = len(doc["runs"])

    def _read_journal(self) -> None:
        for line in (self.root / JOURNAL_FILE).read_bytes().splitlines():
            digest, _, text = line.partition(b" ")
            if hashlib.sha256(text).hexdigest().encode() != digest:
                continue  # a torn last line, or an edit
            try:
                row = json.loads(text)
                if row["layout"] != layout():
                    continue
                size, mtime, ctime = row["key"]
                self.rows[row["id"]] = ((size, mtime, ctime), RunRecord.from_dict(row["summary"]),
                                        bool(row["racy"]))
            except (ValueError, KeyError, TypeError, RecordError):
                continue
            self.journal += 1

    def get(self, run_id: str, key: StatKey, record_path: str) -> RunRecord | None:
        """The run's summary if the index holds one made from the record.json of this stat key.

        A racy row (made within RACY_NS of the record's ctime, e.g. a listing right after a run
        ended) could share its key with a rewrite in the same clock tick, as git's racy index
        entries can: its record's first bytes (record_sha256, summary_sha256) are compared too,
        until a listing a second later finds them still equal.
        """
        row = self.rows.get(run_id)
        if row is None or row[0] != key:
            return None
        if row[2]:
            record = row[1]
            if read_head(Path(record_path)) != (record.record_sha256, record.summary_sha256):
                return None
            if time.time_ns() - key[2] >= RACY_NS:
                self.rows[run_id] = (key, record, False)
        return row[1]

    # --- writing -------------------------------------------------------------------------------

    def add(self, made: list[tuple[str, StatKey, RunRecord]], listed: dict[str, StatKey]) -> None:
        """Note the summaries made in this listing; compact when the journal has grown.

        ``listed``: every run of this listing and its record's stat key (what a compaction keeps).
        A store that cannot be written (read only, a full disk) is listed as slowly as before.
        """
        if not made:
            return
        layout_hash = layout()
        with contextlib.suppress(OSError):
            lines = []
            now = time.time_ns()
            for run_id, key, record in made:
                racy = now - key[2] < RACY_NS
                text = json.dumps({"id": run_id, "key": list(key), "racy": racy, "layout": layout_hash,
                                   "summary": codec.encode(record)}, separators=(",", ":"))
                lines.append(f"{hashlib.sha256(text.encode()).hexdigest()} {text}\n")
                self.rows[run_id] = (key, record, racy)
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
            shared: dict[str, dict[str, int]] = {name: {} for name in SHARED}
            shared_docs: dict[str, list[Any]] = {name: [] for name in SHARED}
            bases: dict[str, int] = {}
            base_docs: list[dict[str, str]] = []
            runs = []
            for run_id, key in listed.items():
                row = self.rows.get(run_id)
                if row is None or row[0] != key:
                    continue
                values = codec.encode(row[1])
                for name in SHARED:
                    values[name] = _intern(values[name], shared[name], shared_docs[name])
                env = values["env_vars"]
                base = {k: v for k, v in env.items() if not k.startswith(OWN_VARIABLES)}
                own = {k: v for k, v in env.items() if k.startswith(OWN_VARIABLES)}
                values["env_vars"] = [_intern(base, bases, base_docs), own]
                runs.append([run_id, *key, row[2], values])
            body = json.dumps({"shared": shared_docs, "env": base_docs, "runs": runs},
                              separators=(",", ":"), ensure_ascii=False).encode()
            header = json.dumps({"schema": SCHEMA, "layout": layout(),
                                 "sha256": hashlib.sha256(body).hexdigest()})
            atomic_write(self.root / INDEX_FILE, header.encode() + b"\n" + body)
            atomic_write(self.root / JOURNAL_FILE, b"")
            self.compacted, self.journal = len(runs), 0


def _intern(value: Any, seen: dict[str, int], docs: list[Any]) -> int:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    index = seen.get(text)
    if index is None:
        index = seen[text] = len(docs)
        docs.append(value)
    return index


def _type(name: str) -> Any:
    return _HINTS[name]


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
