"""The local run store: ``.nixrepro/`` at the git root, one directory per run.

    .nixrepro/
      .gitignore            "*": the store never makes the work tree dirty
      runs/<id>/
        record.json         the run record (written atomically at start and at end)
        summary.json        the record without its closure, for listing (derived; rebuilt if stale)
        stdout.log, stderr.log, metrics.jsonl, code.patch (dev runs)
        lock                held (flock) by the recorder for the life of the run
        gcroot              a Nix GC root for the run's environment

A run whose record says ``running`` but whose lock nobody holds lost its recorder (kill -9, power
cut): reading it marks it ``crashed`` and keeps the metrics it had logged.

Listing runs must not parse every closure: a record with a 2,000-path closure is ~400 KB and takes
~15 ms to build, so 1,000 runs would take 15 s to list. ``summary.json`` holds the record without
the closure and the (size, mtime) of the record.json it was made from; a summary that does not
match its record (a crash between the two writes, a hand edit) is rebuilt from the record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunNotFoundError
from .fsutil import atomic_write
from .metrics import METRICS_FILE, last_values
from .record import RecordError, RunRecord, document_json

STORE_DIR = ".nixrepro"
RECORD_FILE = "record.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = "lock"
GC_ROOT = "gcroot"
_LATEST = re.compile(r"^@latest(?:~(\d+))?$")
GROUP_PREFIX = "g"  # a repeat group id (nixrepro.groups); run ids are pure hex


def is_group_ref(ref: str) -> bool:
    """Whether ``ref`` names a repeat group rather than a run."""
    return ref.startswith(GROUP_PREFIX)


@dataclass(frozen=True)
class RunStore:
    root: Path

    @classmethod
    def for_repo(cls, repo_root: Path) -> RunStore:
        return cls(repo_root / STORE_DIR)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def ensure(self) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            atomic_write(ignore, "# nixrepro's run store: never part of the work tree\n*\n")

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def new_run_dir(self) -> tuple[str, Path]:
        """A fresh, unique run id and its (new, empty) directory; safe under concurrency."""
        self.ensure()
        while True:
            run_id = secrets.token_hex(6)
            path = self.run_dir(run_id)
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return run_id, path

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        """Hold the run's lock: while held, the run is alive. Released by the kernel on death."""
        fd = os.open(self.run_dir(run_id) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self, record: RunRecord) -> None:
        """Write the record, then its summary (both atomically)."""
        doc = record.to_dict()
        path = self.run_dir(record.id) / RECORD_FILE
        atomic_write(path, document_json(doc))
        self._write_summary(path, doc, path.stat())

    def _write_summary(self, record_path: Path, doc: dict[str, Any], st: os.stat_result) -> None:
        """``st``: the record.json ``doc`` was read from (or written to), statted before reading,
        so that a record rewritten meanwhile leaves this summary stale, never wrongly fresh."""
        summary = {"record": [st.st_size, st.st_mtime_ns], "summary": _without_closure(doc)}
        atomic_write(record_path.with_name(SUMMARY_FILE), document_json(summary))

    def load(self, run_id: str) -> RunRecord:
        """The run's record; a dead ``running`` run is marked ``crashed`` (and saved so)."""
        record = self._read(run_id)
        if record.status == "running":
            record = self._detect_crash(record)
        return record

    def _read(self, run_id: str) -> RunRecord:
        return RunRecord.from_dict(self._read_doc(run_id))

    def _read_doc(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / RECORD_FILE
        try:
            doc: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise RunNotFoundError(f"run {run_id} has no record at {path}.") from exc
        except ValueError as exc:
            raise RecordError(f"{path} is not valid JSON ({exc}).") from exc
        return doc

    def _detect_crash(self, record: RunRecord) -> RunRecord:
        if record.recorder.hostname != os.uname().nodename:
            return record  # another host's lock is not visible from here
        fd = os.open(self.run_dir(record.id) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return record  # the recorder is alive
            current = self._read(record.id)  # re-read under the lock: it may just have ended
            if current.status != "running":
                return current
            crashed = current.replace(
                status="crashed",
                metrics=last_values(self.run_dir(record.id) / METRICS_FILE),
            )
            self.save(crashed)
            return crashed
        finally:
            os.close(fd)

    def ids(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return [p.name for p in self.runs_dir.iterdir() if (p / RECORD_FILE).is_file()]

    def records(self) -> list[RunRecord]:
        """Every run, newest first, complete. Unreadable records are skipped, not fatal."""
        found = []
        for run_id in self.ids():
            try:
                found.append(self.load(run_id))
            except RecordError:
                continue
        return _newest_first(found)

    def summaries(self) -> list[RunRecord]:
        """Every run, newest first, *without its closure* (``environment.closure`` is empty; the
        closure hash is there): what listing, groups, lineage and pipelines need, read fast."""
        found = []
        for run_id in self.ids():
            try:
                found.append(self.summary(run_id))
            except RecordError:
                continue
        return _newest_first(found)

    def summary(self, run_id: str) -> RunRecord:
        """The run's record without its closure, from summary.json when it matches record.json."""
        record_path = self.run_dir(run_id) / RECORD_FILE
        st: os.stat_result | None = None
        try:
            st = record_path.stat()
            doc = json.loads(record_path.with_name(SUMMARY_FILE).read_bytes())
            if doc["record"] == [st.st_size, st.st_mtime_ns]:
                record = RunRecord.from_dict(doc["summary"])
                if record.status != "running":
                    return record
        except (OSError, ValueError, KeyError, TypeError, RecordError):
            pass  # missing, stale or unreadable: rebuilt from the record below
        doc = self._read_doc(run_id)
        record = RunRecord.from_dict(_without_closure(doc))  # not 1000s of closure paths built
        if record.status == "running":  # a dead recorder's run becomes crashed (and is saved so)
            full = self._detect_crash(RunRecord.from_dict(doc))
            return full.replace(environment=dataclasses.replace(full.environment, closure=[]))
        if st is not None:
            with contextlib.suppress(OSError):  # a read-only store still lists, only slower
                self._write_summary(record_path, doc, st)
        return record

    def latest(self, back: int = 0) -> RunRecord:
        """The newest run (``back`` = 1: the one before it...), complete."""
        ordered = self.summaries()
        if back >= len(ordered):
            raise RunNotFoundError(
                f"there are only {len(ordered)} runs in {self.root}; "
                "`nixrepro runs` lists them."
            )
        return self.load(ordered[back].id)

    def resolve(self, ref: str) -> RunRecord:
        """A run by full id, unique id prefix, ``@latest`` or ``@latest~N``."""
        match = _LATEST.match(ref)
        if match:
            return self.latest(int(match.group(1) or 0))
        ids = self.ids()
        if ref in ids:
            return self.load(ref)
        matches = [run_id for run_id in ids if run_id.startswith(ref)] if ref else []
        if not matches:
            raise RunNotFoundError(
                f"no run matches {ref!r} in {self.root}; `nixrepro runs` lists the runs."
            )
        if len(matches) > 1:
            shown = ", ".join(sorted(matches)[:5])
            raise RunNotFoundError(
                f"{ref!r} matches {len(matches)} runs ({shown}); give more characters of the id."
            )
        return self.load(matches[0])

    def gc_roots(self) -> list[tuple[str, Path]]:
        """(run id, link) for every run whose environment is pinned against garbage collection."""
        return [
            (run_id, self.run_dir(run_id) / GC_ROOT)
            for run_id in sorted(self.ids())
            if (self.run_dir(run_id) / GC_ROOT).is_symlink()
        ]


def _newest_first(records: list[RunRecord]) -> list[RunRecord]:
    return sorted(records, key=lambda r: (r.started_at, r.id), reverse=True)


def _without_closure(doc: dict[str, Any]) -> dict[str, Any]:
    """The record document with an empty closure (a malformed one as it is, for from_dict to refuse)."""
    environment = doc.get("environment") if isinstance(doc, dict) else None
    if not isinstance(environment, dict):
        return doc
    return {**doc, "environment": {**environment, "closure": []}}
