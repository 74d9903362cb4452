"""The local run store: ``.nixrepro/`` at the git root, one directory per run.

    .nixrepro/
      .gitignore            "*": the store never makes the work tree dirty
      summaries.json(l)     the listing index of every run's summary (nixrepro.listing; derived)
      runs/<id>/
        record.json         the run record (written atomically at start and at end)
        summary.json        the record without its closure, for listing (derived; rebuilt if stale)
        stdout.log, stderr.log, metrics.jsonl, code.patch (dev runs)
        lock                held (flock) by the recorder for the life of the run
        gcroot              a Nix GC root for the run's environment

A run whose record says ``running`` but whose lock nobody holds lost its recorder (kill -9, power
cut): reading it marks it ``crashed`` and keeps the metrics it had logged.

Listing runs must not parse every closure: a record with a 2,000-path closure is ~400 KB, so 1,000
runs would mean parsing 400 MB. ``summary.json`` holds the record without the closure, and a
listing must never show what ``verify`` would reject, so a summary is used only when it is tied to
its record by hashes the record itself holds: the record carries ``summary_sha256`` (the hash of
its summary, covered by record_sha256 and the signature) and writes it with record_sha256 in its
first bytes, so a listing reads 160 bytes of record.json, not 400 KB. A summary is used when

* its body hashes to the record's summary_sha256 and names the record's record_sha256 (an edited
  summary, however its own fields were recomputed, no longer does), and
* record.json's (size, mtime, ctime) are those it was made from: any change to the record since
  (ctime cannot be set back by hand) has the summary rebuilt, and rebuilding checks the record's
  own hashes, so a hand-edited record is left out of listings with a warning, as verify fails it.

Otherwise it is rebuilt from the record. A listing of 10,000 runs reading 10,000 summaries would
still take seconds, so :meth:`RunStore.summaries` reads each summary it has checked into the
listing index (nixrepro.listing says how a row stays tied to its record) and from then on stats
each record.json, reading only the records that changed.

When a run ends, its logs and metrics are hashed into the
record's ``files`` (:func:`file_hashes`) and, when the project's signing key exists, the record is
signed (nixrepro.signing) in ``record.sig`` beside it; both happen in :meth:`RunStore.save`, so
every path that saves a final record (a normal end, crash detection, ``sync``) does them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import operator
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NixreproError, RecordError, RunNotFoundError
from .fsutil import atomic_write, sha256_file
from .git import STORE_DIR as STORE_DIR  # .nixrepro
from .record import (
    RunRecord,
    document_json,
    read_head,
    record_file_bytes,
    record_sha256,
    summary_sha256,
    without_closure,
)

if TYPE_CHECKING:
    from .listing import Listing

RECORD_FILE = "record.json"
SUMMARY_FILE = "summary.json"
EVERY_FIELD = "*"  # RunStore._listed: the whole summary
_SUMMARY_FIELDS = frozenset(f.name for f in dataclasses.fields(RunRecord))
# The record's signature: beside the record, never in it, so that signing a record that ended
# unsigned (`nixrepro archive`) leaves its bytes as they were. {"record_sha256", "signature"}.
SIGNATURE_FILE = "record.sig"
LOCK_FILE = "lock"
GC_ROOT = "gcroot"
# The run's files a person or a listing relies on, hashed into the record when the run ends. Not
# data.jsonl or outputs.jsonl: `sync` appends to them later, and the record's data holds their
# content; not code.patch: code.diff_sha256 covers it from the start.
RUN_FILES = ("stdout.log", "stderr.log", "metrics.jsonl")
_LATEST = re.compile(r"^@latest(?:~(\d+))?$")
ID_BYTES = 12  # a run id is 24 hex digits (RunStore.new_run_dir says why)
GROUP_PREFIX = "g"  # a repeat group id (nixrepro.groups); run ids are pure hex


def is_group_ref(ref: str) -> bool:
    """Whether ``ref`` names a repeat group rather than a run."""
    return ref.startswith(GROUP_PREFIX)


@dataclass(frozen=True)
class RunStore:
    root: Path
    # the project's signing key, looked up once per store (a run's final record may be saved twice:
    # before and after its trackers end)
    _key: list[Any] = field(default_factory=list, compare=False, repr=False)
    # [runs] remote of the project, looked up once per store (nixrepro.remote: the team's store)
    _remote: list[str | None] = field(default_factory=list, compare=False, repr=False)
    # resolve() falls back to the remote run store, pulling what it finds (the command line's)
    pull: bool = field(default=False, compare=False)

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
            # 96 bits: among 10 million runs of a team's machines, the chance that two share an id
            # is about n^2/2^97 = 6e-16 (48 bits gave 16%); a collision would still be refused by the
            # remote run store, never merged. Older 12-digit ids read as before.
            run_id = secrets.token_hex(ID_BYTES)
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
        if self._remote_url():  # the run has ended (not by an exception): push it now
            from .remote.pending import push_ended

            push_ended(self, run_id)

    def save(self, record: RunRecord) -> None:
        """Write the record, then its summary (both atomically).

        A record that is no longer running gets its run's file hashes the first time it is saved
        (later saves, e.g. ``sync`` filling in an output, keep them: what the run wrote is fixed
        when it ends) and is signed when the project's signing key exists.
        """
        if record.status != "running" and record.files is None:
            record = record.replace(files=file_hashes(self.run_dir(record.id)))
        doc = record.to_dict()
        # a signature of the record this one replaces would only read as a bad one
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir(record.id) / SIGNATURE_FILE).unlink()
        self._write(record.id, doc)
        if record.status != "running":
            self._sign_project(record.id, doc["record_sha256"])
            if self._remote_url():
                from .remote.pending import enqueue

                enqueue(self, record.id)

    def sign(self, run_id: str, secret_key: str) -> None:
        """Sign the run's record as it is on disk (``nixrepro archive``); an edited one is refused."""
        from .signing import sign

        doc = self._read_doc(run_id)
        self._check_hashes(run_id, doc)
        self._write_signature(run_id, doc["record_sha256"], sign(secret_key, doc["record_sha256"]))

    def signature(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``record.sig`` as written, None when there is none (read by verify)."""
        path = self.run_dir(run_id) / SIGNATURE_FILE
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise RecordError(f"{path} is not valid JSON ({exc}).") from exc
        if not isinstance(doc, dict):
            raise RecordError(f"{path} is not a JSON object.")
        return doc

    def _write_signature(self, run_id: str, digest: str, signature: str) -> None:
        atomic_write(self.run_dir(run_id) / SIGNATURE_FILE,
                     document_json({"record_sha256": digest, "signature": signature}))

    def _sign_project(self, run_id: str, digest: str) -> None:
        """Sign with the project's key, if it has one. A key that cannot be used costs the
        signature, never the record (this runs as a run ends): it is one warning."""
        try:
            if not self._key:
                from . import config as config_module

                if not config_module.load(self.root.parent).archive.secret_key_file().exists():
                    self._key.append(None)  # the usual case: no key, nothing of archive imported
                else:
                    from .archive import project_key

                    self._key.append(project_key(self.root.parent))
            key = self._key[0]
            if key is not None:
                from .signing import sign

                self._write_signature(run_id, digest, sign(key.secret_file.read_text(), digest))
        except (NixreproError, OSError, UnicodeDecodeError) as exc:
            print(f"nixrepro: warning: run {run_id} is recorded unsigned: {exc}.", file=sys.stderr)

    def _remote_url(self) -> str | None:
        """``[runs] remote``, None without one; a config that cannot be read costs the push (one
        warning), never the record."""
        if not self._remote:
            from . import config as config_module

            try:
                self._remote.append(config_module.load(self.root.parent).runs.remote)
            except NixreproError as exc:
                print(f"nixrepro: warning: runs are not pushed to a remote run store: {exc}",
                      file=sys.stderr)
                self._remote.append(None)
        return self._remote[0]

    def _write(self, run_id: str, doc: dict[str, Any]) -> None:
        path = self.run_dir(run_id) / RECORD_FILE
        atomic_write(path, record_file_bytes(doc))
        if doc.get("status") != "running":  # a running run is listed from its record (crash check)
            self._write_summary(path, doc, path.stat())

    def _write_summary(self, record_path: Path, doc: dict[str, Any], st: os.stat_result) -> None:
        """``st``: the record.json ``doc`` was read from (or written to), statted before reading,
        so that a record rewritten meanwhile leaves this summary stale, never wrongly fresh."""
        summary = {"record": _stat_key(st), "summary": without_closure(doc)}
        atomic_write(record_path.with_name(SUMMARY_FILE), document_json(summary))

    def _check_hashes(self, run_id: str, doc: dict[str, Any]) -> None:
        """Refuse a record whose hashes do not match it: what ``verify`` fails, nothing lists."""
        if doc.get("record_sha256") != record_sha256(doc):
            raise RecordError(
                f"run {run_id}'s record.json does not hash to its record_sha256: it was edited "
                f"after it was written; `nixrepro verify {run_id}` shows the checks."
            )
        if "summary_sha256" in doc and doc["summary_sha256"] != summary_sha256(doc):
            raise RecordError(
                f"run {run_id}'s record.json does not hash to its summary_sha256: it was rewritten "
                f"by something other than nixrepro; `nixrepro verify {run_id}` shows the checks."
            )

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
        if not isinstance(doc, dict):
            raise RecordError(f"{path} is not a JSON object.")
        return doc

    def _detect_crash(self, record: RunRecord) -> RunRecord:
        if record.recorder.hostname != os.uname().nodename:
            return record  # another host's lock is not visible from here
        try:
            fd = os.open(self.run_dir(record.id) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a store that cannot be written: listed as recorded, until one that can
            return record
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return record  # the recorder is alive
            current = self._read(record.id)  # re-read under the lock: it may just have ended
            if current.status != "running":
                return current
            from .rundir import fold, release  # the one fold of a normal end: nothing is lost

            release(self.run_dir(record.id))  # the room the dead recorder held for its record
            crashed = fold(current, self.run_dir(record.id)).replace(status="crashed")
            with contextlib.suppress(OSError):  # a full disk: listed as it still is, until later
                self.save(crashed)
            # as saved (save adds the files' hashes and the record's own), or as it still is
            return self._read(record.id)
        finally:
            os.close(fd)

    def ids(self) -> list[str]:
        runs = str(self.runs_dir)
        return [name for name in self._names() if os.path.isfile(f"{runs}/{name}/{RECORD_FILE}")]

    def _names(self) -> list[str]:
        """The names in runs/ (a run directory, or anything else someone put there)."""
        try:
            return [entry.name for entry in os.scandir(self.runs_dir)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def records(self) -> list[RunRecord]:
        """Every run, newest first, complete. An unreadable record is skipped with a warning."""
        found = []
        for run_id in self.ids():
            try:
                found.append(self.load(run_id))
            except RecordError as exc:
                _warn_skipped(self.run_dir(run_id), exc)
        return _newest_first(found)

    def summaries(self) -> list[RunRecord]:
        """Every run, newest first, *without its closure* (``environment.closure`` is empty; the
        closure hash is there): what listing, groups, lineage and pipelines need, read fast.

        Read from the listing index (nixrepro.listing): a run whose record.json has the stat it
        had when its row was made is not read at all; any other is read by :meth:`summary` and
        added to the index. A record that cannot be read, has a wrong-typed field or fails its own
        hashes is left out with one warning naming it (once per process): one bad record never
        breaks the listing.
        """
        return _newest_first([record for _, _, record in self._listed(EVERY_FIELD)])

    def values(self, name: str) -> list[tuple[str, str, Any]]:
        """(start time, run id, the summary's field ``name``) of every run, newest first: what
        :meth:`summaries` would give, for a listing that needs one field of each run (lineage its
        data, the pipeline its stages). The index parses only that field for the runs it holds."""
        if name not in _SUMMARY_FIELDS:
            raise ValueError(f"a run record has no field {name!r}")
        return sorted(self._listed(name), key=operator.itemgetter(0, 1), reverse=True)

    def _listed(self, name: str | None) -> list[tuple[str, str, Any]]:
        """(start time, run id, X) of every run that lists: X is its summary (``name`` is
        EVERY_FIELD), one field of it, or None (the index's order line alone answers @latest)."""
        from .listing import Listing

        names = self._names()
        listing = Listing.of(self.root)
        made: list[tuple[str, tuple[int, int, int], RunRecord]] = []
        with listing.lock:
            listing.refresh()
            found, missing, listed = listing.scan(str(self.runs_dir), names, RECORD_FILE)
            try:
                results = self._from_index(listing, found, name)
            except LookupError:  # the index's rows could not be read: each run from its record
                results = []
                missing = [(run_id, listed[run_id]) for _, run_id in found] + missing
            for run_id, key in missing:  # not in the index, or changed since: read and checked
                try:
                    record = self.summary(run_id)
                except RecordError as exc:
                    _warn_skipped(self.run_dir(run_id), exc)
                    continue
                if record.status != "running":
                    made.append((run_id, key, record))
                value = record if name == EVERY_FIELD else None if name is None \
                    else getattr(record, name)
                results.append((record.started_at, run_id, value))
            if made and self._writable():
                listing.add(made, listed)
        return results

    @staticmethod
    def _from_index(listing: Listing, found: list[tuple[str, str]],
                    name: str | None) -> list[tuple[str, str, Any]]:
        if name is None:
            return [(started, run_id, None) for started, run_id in found]
        if name == EVERY_FIELD:
            listing.build_all([run_id for _, run_id in found])
            return [(started, run_id, listing.record(run_id)) for started, run_id in found]
        values = listing.values([run_id for _, run_id in found], name)
        return [(started, run_id, value) for (started, run_id), value in zip(found, values, strict=True)]

    def _writable(self) -> bool:
        """Whether this store may write its listing index (a read-only view's ensure() refuses)."""
        try:
            self.ensure()
        except OSError:
            return False
        return True

    def summary(self, run_id: str) -> RunRecord:
        """The run's record without its closure, from summary.json when it is tied to record.json
        (see the module docstring); otherwise rebuilt from record.json, whose hashes are checked."""
        record_path = self.run_dir(run_id) / RECORD_FILE
        st: os.stat_result | None = None
        try:
            st = record_path.stat()
            doc = json.loads(record_path.with_name(SUMMARY_FILE).read_bytes())
            body = doc["summary"]
            head = read_head(record_path)
            if (doc["record"] == _stat_key(st) and head is not None
                    and head == (body["record_sha256"], body["summary_sha256"])
                    and summary_sha256(body) == head[1]):
                record = RunRecord.from_dict(body)
                if record.status != "running":
                    return record
        except (OSError, ValueError, KeyError, TypeError, RecordError):
            pass  # missing, stale, edited or unreadable: rebuilt from the record below
        doc = self._read_doc(run_id)
        self._check_hashes(run_id, doc)
        record = RunRecord.from_dict(without_closure(doc))  # not 1000s of closure paths built
        if record.status == "running":  # a dead recorder's run becomes crashed (and is saved so)
            full = self._detect_crash(RunRecord.from_dict(doc))
            return full.replace(environment=dataclasses.replace(full.environment, closure=[]))
        if st is not None:
            with contextlib.suppress(OSError):  # a read-only store still lists, only slower
                self._write_summary(record_path, doc, st)
        return record

    def latest(self, back: int = 0) -> RunRecord:
        """The newest run (``back`` = 1: the one before it...), complete."""
        ordered = sorted(((started, run_id) for started, run_id, _ in self._listed(None)),
                         reverse=True)
        if not ordered:
            raise RunNotFoundError(f"no run is recorded in {self.root} yet; start one with "
                                   "`nixrepro run -- CMD`.")
        if back >= len(ordered):
            count = "there is only 1 run" if len(ordered) == 1 else f"there are only {len(ordered)} runs"
            raise RunNotFoundError(f"{count} in {self.root}; `nixrepro runs` lists them.")
        return self.load(ordered[back][1])

    def resolve(self, ref: str) -> RunRecord:
        """A run by full id, unique id prefix, ``@latest`` or ``@latest~N``."""
        match = _LATEST.match(ref)
        if match:
            back = match.group(1) or "0"
            if len(back) > 9:  # more runs back than any store holds (and int() of 5,000 digits fails)
                raise RunNotFoundError(f"@latest~{back[:12]}... is further back than any run store "
                                       "goes; `nixrepro runs` lists the runs.")
            return self.latest(int(back))
        runs = str(self.runs_dir)
        if ref and "/" not in ref and not ref.startswith(".") and \
                os.path.isfile(f"{runs}/{ref}/{RECORD_FILE}"):
            return self.load(ref)  # a whole id: no listing of the other runs
        matches = [name for name in self._names() if name.startswith(ref)
                   and os.path.isfile(f"{runs}/{name}/{RECORD_FILE}")] if ref else []
        if not matches and self.pull and ref and not ref.startswith("@"):
            from .remote.pending import resolve_remote

            found = resolve_remote(self, ref)  # None without a remote; pulled and verified
            if found is not None:
                return found
        if not matches:
            shown = ref if len(ref) <= 40 else ref[:40] + "..."
            hint = " (@latest~N counts back from the newest run, N >= 0)" if ref.startswith("@") else ""
            raise RunNotFoundError(
                f"no run matches {shown!r} in {self.root}{hint}; `nixrepro runs` lists the runs."
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


def _stat_key(st: os.stat_result) -> list[int]:
    """What changes whenever record.json is written: an edit that restores the mtime (touch -d)
    still moves the ctime, which only the kernel sets."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of each of the run's :data:`RUN_FILES` that exists, read in chunks (logs are large).

    RunStore.save calls it when it first saves a record that is no longer running; a runner that
    builds its final record itself needs nothing else: ``files`` is filled in there.
    """
    hashes = {}
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            hashes[name] = sha256_file(run_dir / name)
    return hashes


_warned: set[str] = set()


def _warn_skipped(run_dir: Path, exc: Exception) -> None:
    """One warning per bad record and process: a listing read by groups and lineage alike says
    it once, not once per reader."""
    if str(run_dir) in _warned:
        return
    _warned.add(str(run_dir))
    print(f"nixrepro: warning: {run_dir} is left out of the listing: {exc}", file=sys.stderr)
