"""The run store as the viewer reads it: never written, and listed from a cache.

:class:`ReadOnlyStore` is the run store with every write taken out: a stale summary.json is read
past, not rebuilt, and a ``running`` run whose recorder is gone is shown ``crashed`` (as the
next ``nixrepro runs`` will save it) without its record being touched. :class:`RunIndex` keeps
each run's summary until its record.json changes (size, mtime or ctime), so a page over 10,000
runs costs 10,000 ``stat`` calls, not 10,000 JSON documents; the first listing comes from the
store's listing index (nixrepro.listing), read and never written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from ..errors import NixreproError, RecordError, RunNotFoundError
from ..record import RunRecord
from ..runstore import LOCK_FILE, RECORD_FILE, RunStore, is_group_ref


class ReadOnlyStore(RunStore):
    """A RunStore that reads only. Every method that would write refuses or does nothing."""

    def ensure(self) -> None:
        raise PermissionError("the viewer never writes to the run store")

    def save(self, record: RunRecord) -> None:
        raise PermissionError("the viewer never writes to the run store")

    def sign(self, run_id: str, secret_key: str) -> None:
        raise PermissionError("the viewer never writes to the run store")

    def _write_summary(self, record_path: Path, doc: dict[str, Any], st: os.stat_result) -> None:
        return  # a stale summary is rebuilt by the next `nixrepro runs`, not by a viewer

    def _detect_crash(self, record: RunRecord) -> RunRecord:
        """A dead recorder's run as ``crashed``, folded as crash detection folds it, not saved."""
        if record.recorder.hostname != os.uname().nodename:
            return record
        run_dir = self.run_dir(record.id)
        try:
            fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return record  # the recorder is alive
            from ..rundir import fold

            return fold(record, run_dir).replace(status="crashed")
        finally:
            if fd >= 0:
                os.close(fd)


StatKey = tuple[int, int, int]


def _stat_keys(runs_dir: Path) -> dict[str, StatKey]:
    """Each run directory's record.json (size, mtime, ctime): one scandir and a stat per run, with
    plain strings (pathlib's objects cost more than the stat itself over 10,000 runs)."""
    keys: dict[str, StatKey] = {}
    try:
        entries = list(os.scandir(runs_dir))
    except (FileNotFoundError, NotADirectoryError):
        return keys
    for entry in entries:
        try:
            st = os.stat(entry.path + "/" + RECORD_FILE)
        except OSError:
            continue
        keys[entry.name] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return keys


class Runs(Protocol):
    """What the pages read runs from: the local store (:class:`RunIndex`) or a remote one
    (nixrepro.ui.remote.RemoteRuns)."""

    @property
    def root(self) -> Path:
        """The project's local store root (its parent is the git checkout the diff reads)."""

    @property
    def label(self) -> str | None:
        """What the runs page says it lists, where that is not the local store."""

    def summaries(self) -> list[RunRecord]:
        """Every run's summary, newest first."""

    def has(self, run_id: str) -> bool:
        """Whether a run of exactly this id is there."""

    def load(self, run_id: str) -> RunRecord:
        """The complete record (with its closure)."""

    def resolve(self, ref: str) -> RunRecord:
        """A run by id, prefix or @latest; complete."""

    def resolve_many(self, refs: list[str]) -> list[RunRecord]:
        """Runs and repeat groups, each run once, in order; complete."""

    def run_dir(self, run_id: str) -> Path:
        """The directory of the run's logs and metrics."""


class RunIndex:
    """Every run's summary, newest first, re-read only where a record changed. Thread-safe."""

    label = None  # the local store: the runs page says nothing more

    def __init__(self, root: Path) -> None:
        self.store = ReadOnlyStore(root)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[StatKey, RunRecord]] = {}
        self._listing: tuple[dict[str, StatKey], list[RunRecord]] | None = None

    @property
    def root(self) -> Path:
        return self.store.root

    def summaries(self) -> list[RunRecord]:
        with self._lock:
            keys = _stat_keys(self.store.runs_dir)
            if (self._listing is not None and self._listing[0] == keys
                    and all(r.status != "running" for r in self._listing[1])):
                return self._listing[1]
            if not self._cache:  # the first listing: from the store's listing index, read only
                for record in self.store.summaries():
                    key = keys.get(record.id)
                    if key is not None and record.status != "running":
                        # keyed by the stat taken before: a record rewritten since is read again
                        self._cache[record.id] = (key, record)
            found: list[RunRecord] = []
            for run_id, key in keys.items():
                cached = self._cache.get(run_id)
                if cached is not None and cached[0] == key and cached[1].status != "running":
                    found.append(cached[1])
                    continue
                try:
                    record = self.store.summary(run_id)
                except (RecordError, RunNotFoundError):
                    continue  # (warned about once, as every listing does)
                self._cache[run_id] = (key, record)
                found.append(record)
            ordered = sorted(found, key=lambda r: (r.started_at, r.id), reverse=True)
            self._listing = (keys, ordered)
            return ordered

    def has(self, run_id: str) -> bool:
        """Whether the store holds a run of exactly this id (its record.json exists)."""
        return (self.store.run_dir(run_id) / RECORD_FILE).is_file()

    def by_id(self) -> dict[str, RunRecord]:
        return {r.id: r for r in self.summaries()}

    def load(self, run_id: str) -> RunRecord:
        """The complete record (with its closure) of a listed run."""
        return self.store.load(run_id)

    def resolve(self, ref: str) -> RunRecord:
        """A run by id, prefix or @latest, as the CLI resolves it; complete."""
        return self.store.resolve(ref)

    def resolve_many(self, refs: list[str]) -> list[RunRecord]:
        """Runs and repeat groups (g...: every run of the group), each once, in order; complete."""
        from ..groups import resolve_group

        found: dict[str, RunRecord] = {}
        for ref in refs:
            if is_group_ref(ref):
                for run in resolve_group(self.store, ref).runs:
                    found.setdefault(run.id, self.load(run.id))
            else:
                record = self.resolve(ref)
                found.setdefault(record.id, record)
        return list(found.values())

    def run_dir(self, run_id: str) -> Path:
        if not self.has(run_id):
            raise RunNotFoundError(f"no run {run_id!r} in {self.root}.")
        return self.store.run_dir(run_id)


def tail(path: Path, max_bytes: int = 64 * 1024, max_lines: int = 200) -> str | None:
    """The last lines of a log (None: there is no such file), decoded leniently."""
    try:
        with open(path, "rb") as handle:
            with contextlib.suppress(OSError):
                handle.seek(-max_bytes, os.SEEK_END)
            data = handle.read(max_bytes)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NixreproError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])
