"""The run store's listing index: every run's summary in one file, so that listing 10,000 runs
reads one file and stats 10,000 records, instead of reading and hashing 10,000 summary.json.

    .nixrepro/summaries.json    the compacted index, lines of JSON: a header (the schema, the
                                layout and a sha256 of each part after it: see seal); the order
                                (each run's id, the stat key of its record.json and its start
                                time); the names of the row's fields; each row's refs into the
                                shared objects; the shared objects, a line per field; a line per
                                run
    .nixrepro/summaries.jsonl   rows added since, one line each: "<sha256 of the row> <row>"

A row is a run's summary (the record without its closure, what summary.json holds) with the
(size, mtime, ctime) of the record.json it was made from, statted before the summary was read. It
is used only while record.json still has that key (any write of the record moves its ctime, which
only the kernel sets) and only while its checksum holds (a torn line, or a hand edit that did
not recompute it, is read past; it is no seal: an edit that recomputes it is trusted). A row
made within a second of its record's ctime is racy, as git's index entries can be: a rewrite in
the same tick of the clock could keep the key, so the record's first bytes (record_sha256,
summary_sha256) are compared as well until a listing a second later finds them still equal.
Otherwise RunStore.summary lists the run from summary.json or record.json, checking the record's
own hashes as before, and a new row is appended. So every row was made from a summary tied to a
record whose hashes held, and the index shows what ``verify`` would: it is a cache, and deleting
it costs one slower listing.

The order line alone answers ``@latest``; one field of every run (the pipeline's stages, the
data lineage reads) parses only that field's refs and objects; one run, only its line; a listing
of every run, all of it. In the rows, what repeats across runs (the host, the environment, the
code, the data...) is stored once, and the environment variables as the changes from the values
most runs had. The rows were checked by the codec when they were made and are built as they are
(nixrepro.codec.trusted) while the checksum holds; ``layout`` is a hash of the record types'
fields: an index made by a nixrepro with other fields is not read.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import gc
import hashlib
import itertools
import json
import operator
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
SCHEMA = "nixrepro.summaries/4"
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
    """The index of one run store, read once per process and re-validated at each listing.

    Only what a listing asks for is parsed: the order line always; the shared objects of one field
    (:meth:`value`); the line of one run (:meth:`record`); all of it for a listing of every run.
    """

    _open: typing.ClassVar[dict[Path, Listing]] = {}
    _guard = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        # run id -> (stat key, start time, racy hashes or None): the order line and the journal
        self.order: dict[str, tuple[StatKey, str, tuple[str, str] | None]] = {}
        self.records: dict[str, RunRecord] = {}  # built rows and the journal's, by run id
        self.position: dict[str, int] = {}  # run id -> its row in the compacted index
        self.body: bytes | None = None  # the compacted index after its order, split on first use
        self.sums: dict[str, Any] = {}  # its header: the checksums of the order, the lines
        # before the rows (meta, refs, shared objects) and the rows, each checked on first use
        self.rows_checked = False
        self.lines: list[bytes] = []  # the body's lines: see _compact for what each holds
        self.meta: dict[str, Any] | None = None
        self.refs: list[list[int]] | None = None  # each row's index into each shared field
        self.objects: dict[str, list[Any]] = {}  # a shared field's objects, built
        self.compacted = 0  # rows in the compacted index
        self.journal = 0  # rows in the journal
        self.loaded: tuple[int, ...] | None = None  # the index files' stat when read
        self.scanned = 0  # the clock when the last scan began, before any record was read

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
        built = bool(self.records or self.objects)
        self._clear()
        if built:
            # the rows built from the files read before were moved out of the collector's sight
            # (codec.no_gc(keep=True)), and with them whatever garbage in cycles was pending then:
            # collected now, before the new rows are, so that a process that lists again after
            # the index changed (the viewer) does not keep that garbage for ever
            gc.unfreeze()
            gc.collect()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError, RecursionError):
            self._read_order()
        with contextlib.suppress(OSError):
            self._read_journal()
        self.loaded = key

    def _read_order(self) -> None:
        raw = (self.root / INDEX_FILE).read_bytes()
        head_end = raw.index(b"\n")  # offsets, not slices: the index is 10 MB at 10,000 runs
        header = json.loads(raw[:head_end])
        order_end = raw.index(b"\n", head_end + 1)
        if header.get("schema") != SCHEMA or header.get("layout") != layout() or \
                header.get("order") != _sha256(memoryview(raw)[head_end + 1:order_end]):
            return  # another nixrepro's, or edited: rebuilt from the records
        order = json.loads(raw[head_end + 1:order_end])
        self.body, self.sums = raw[order_end + 1:], header
        racy = order["racy"]
        runs = order["runs"]
        if not all(type(entry[0]) is str and type(entry[4]) is str for entry in runs):
            return  # sorted by start time and id: both strings, or the listing would fail
        self.order = {run_id: ((size, mtime, ctime), started, _pair(racy.get(run_id)))
                      for run_id, size, mtime, ctime, started in runs}
        self.position = {entry[0]: at for at, entry in enumerate(runs)}
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
                run_id, racy = row["id"], row["racy"]
                if type(run_id) is not str:
                    continue
            except (ValueError, KeyError, TypeError, RecordError, RecursionError):
                continue  # a line of another shape (its checksum recomputed): read past
            hashes = (record.record_sha256, record.summary_sha256) if racy else None
            self.order[run_id] = ((size, mtime, ctime), record.started_at, hashes)
            self.records[run_id] = record
            self.position.pop(run_id, None)  # the journal's row is the newer one
            self.journal += 1

    def _open_body(self) -> dict[str, Any]:
        """The body's lines and its meta line (the first time a listing needs more than the
        order), the lines before the rows checked against their checksum; a body that does not
        hold what its checksum promises is dropped, and its runs are read from their records."""
        if self.meta is None:
            if self.body is not None:
                try:
                    self.lines = self.body.split(b"\n")
                    meta = json.loads(self.lines[0])
                    first_row = 2 + len(meta["shared"])
                    if _sha256(b"\n".join(self.lines[:first_row])) == self.sums.get("sections"):
                        self.meta = meta
                    else:
                        self.position.clear()
                except (ValueError, KeyError, TypeError, RecursionError):
                    self.position.clear()
                self.body = None
            if self.meta is None:
                self.meta = {"shared": [], "names": [], "env": []}
        return self.meta

    def _shared(self, name: str) -> list[Any]:
        """The built objects of shared field ``name`` (every row's refs too), parsed once. Raises
        LookupError if the body does not hold what its checksum promised (a bug, never a user's
        edit): the listing then reads the runs from their records."""
        if name not in self.objects:
            try:
                meta = self._open_body()
                at = meta["shared"].index(name)
                with codec.no_gc(keep=True):
                    if self.refs is None:
                        self.refs = json.loads(self.lines[1])
                    hint = _hints()[name]
                    self.objects[name] = [codec.trusted(hint, value)
                                          for value in json.loads(self.lines[2 + at])]
            except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
                self.position.clear()
                raise LookupError("the listing index's shared objects do not parse") from None
        return self.objects[name]

    def values(self, run_ids: list[str], name: str) -> list[Any]:
        """Field ``name`` of each run's current row (a shared field: nothing else is parsed).
        Raises LookupError if the index has no row of one of them."""
        if name not in shared():
            self.build_all(run_ids)
            return [getattr(self.records[run_id], name) for run_id in run_ids]
        records, position = self.records, self.position
        objects: list[Any] | None = None
        refs: list[list[int]] = []
        at = 0
        found = []
        for run_id in run_ids:
            record = records.get(run_id)
            if record is not None:
                found.append(getattr(record, name))
                continue
            if objects is None:
                objects = self._shared(name)
                refs, at = self.refs or [], self._open_body()["shared"].index(name)
            try:
                found.append(objects[refs[position[run_id]][at]])
            except (TypeError, IndexError, KeyError):  # refs that are not a row's: as _build
                self.position.clear()
                raise LookupError("the listing index's refs do not parse") from None
        return found

    def record(self, run_id: str) -> RunRecord:
        """The run's current row, built (once). Raises LookupError if the index has none."""
        record = self.records.get(run_id)
        if record is None:
            self._build([run_id])
            record = self.records[run_id]
        return record

    def build_all(self, run_ids: list[str]) -> None:
        """Build the rows of every run of ``run_ids`` the index holds and has not built."""
        self._build([run_id for run_id in run_ids
                     if run_id not in self.records and run_id in self.position])

    def _build(self, run_ids: list[str]) -> None:
        if not run_ids:
            return
        try:
            meta = self._open_body()
            names, shared_names, bases = meta["names"], meta["shared"], meta["env"]
            objects = [self._shared(name) for name in shared_names]
            refs = self.refs or []
            lines, position, first = self.lines, self.position, 2 + len(shared_names)
            if not self.rows_checked:
                if _sha256(b"\n".join(lines[first:])) != self.sums.get("rows"):
                    raise ValueError("the rows do not hash to their checksum")
                self.rows_checked = True
            with codec.no_gc(keep=True):
                rows = json.loads(b"[" + b",".join(
                    lines[first + position[run_id]] for run_id in run_ids) + b"]")
                new, set_dict, pick = object.__new__, object.__setattr__, operator.getitem
                every, count, built = [*names, *shared_names], len(names), self.records
                for run_id, row in zip(run_ids, rows, strict=True):
                    if len(row) != count:
                        raise ValueError(f"a row of {len(row)} fields, not {count}")
                    # the row's own fields, then each shared field's object its refs point at
                    values = dict(zip(every, itertools.chain(
                        row, map(pick, objects, refs[position[run_id]])), strict=True))
                    base, changed, removed = values["env_vars"]
                    env = {**bases[base], **changed}
                    for name in removed:
                        del env[name]
                    values["env_vars"] = env
                    record: Any = new(RunRecord)
                    set_dict(record, "__dict__", values)
                    built[run_id] = record
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
            # a body that does not hold what its checksum promised (a bug, never a user's edit):
            # its runs are read from their records
            self.position.clear()
            raise LookupError("the listing index's rows do not parse") from None

    def _current(self, run_id: str, key: StatKey, record_path: str) -> bool:
        """Whether the index holds a row of the run made from the record.json of this stat key.

        A racy row's record is also read (its first bytes) for the two hashes it must still have;
        once the clock has moved a second past the record's ctime, its stat key alone will do.
        """
        entry = self.order.get(run_id)
        if entry is None or entry[0] != key:
            return False
        if entry[2] is not None:
            settled = time.time_ns() - key[2] >= RACY_NS  # the clock before the record is read
            if read_head(Path(record_path)) != entry[2]:
                return False
            if settled:
                self.order[run_id] = (key, entry[1], None)
        return True

    def scan(self, runs: str, names: list[str], record_file: str) -> tuple[
            list[tuple[str, str]], list[tuple[str, StatKey]], dict[str, StatKey]]:
        """Stat each run's record.json (before it is read) and look it up: (start time, run id)
        of the runs the index holds current rows of, (run id, stat key) of the others, and every
        run's stat key. One loop with its names local: it runs 10,000 times."""
        order, stat_of, regular = self.order, os.stat, stat.S_ISREG
        self.scanned = time.time_ns()
        found: list[tuple[str, str]] = []
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
                found.append((entry[1], run_id))
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
            # racy: the record changed within a second before it was read, which was after the
            # scan began, however long the listing took since (reading 10,000 records)
            now = self.scanned or time.time_ns()
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
            # only a compaction writes these two files, and this one holds the lock: a temporary
            # file of theirs is what a compaction killed mid-write left (10 MB at 10,000 runs)
            for name in (INDEX_FILE, JOURNAL_FILE):
                for left in self.root.glob(f".{name}.*.tmp"):
                    left.unlink(missing_ok=True)
            with contextlib.suppress(LookupError):
                self.build_all(list(listed))
            kept = [(run_id, key) for run_id, key in listed.items()
                    if run_id in self.records and self.order.get(run_id, (None,))[0] == key]
            encoded = [codec.encode(self.records[run_id]) for run_id, _ in kept]
            bases, envs = _environments([values["env_vars"] for values in encoded])
            names = shared()
            seen: dict[str, dict[str, int]] = {name: {} for name in names}
            docs: dict[str, list[Any]] = {name: [] for name in names}
            refs, rows = [], []
            own = [name for name in NAMES if name not in names]
            for values, env in zip(encoded, envs, strict=True):
                refs.append([_intern(values[name], seen[name], docs[name]) for name in names])
                values["env_vars"] = env
                rows.append(_compact_json([values[name] for name in own]))
            order = {"runs": [[run_id, *key, self.order[run_id][1]] for run_id, key in kept],
                     "racy": {run_id: self.order[run_id][2] for run_id, _ in kept
                              if self.order[run_id][2] is not None}}
            sections = [_compact_json({"names": own, "shared": names, "env": bases}),
                        _compact_json(refs), *(_compact_json(docs[name]) for name in names)]
            atomic_write(self.root / INDEX_FILE, seal([_compact_json(order), *sections, *rows]))
            atomic_write(self.root / JOURNAL_FILE, b"")
            self.position.clear()  # every row kept is built: the old body is not read again
            self.compacted, self.journal = len(kept), 0


def seal(lines: list[bytes]) -> bytes:
    """The compacted index of ``lines`` (the order, the meta line, the refs, the shared objects,
    the rows), under a header with the checksum of each part: a listing checks only the parts it
    reads (``@latest`` the order alone, a field of every run the lines before the rows)."""
    first_row = 3 + len(json.loads(lines[1])["shared"])
    header = {"schema": SCHEMA, "layout": layout(), "order": _sha256(lines[0]),
              "sections": _sha256(b"\n".join(lines[1:first_row])),
              "rows": _sha256(b"\n".join(lines[first_row:]))}
    return json.dumps(header).encode() + b"\n" + b"\n".join(lines)


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _pair(value: Any) -> tuple[str, str] | None:
    return (str(value[0]), str(value[1])) if value else None


def _compact_json(doc: Any) -> bytes:
    # a lone surrogate (an argument or file name that was not UTF-8) as JSON's own escape, which
    # reads back the same, as strict_json writes it in the record
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace")


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
