"""The local data cache: content-addressed objects, an index, a stat cache and the pending queue.

- ``objects/ab/abcdef...``: one read-only file per sha256. A pinned version is downloaded once.
- ``index.sqlite`` (WAL, so several processes can use it at once):
  ``versions`` (store, key, version id) -> sha256, size, kind: a version already seen needs no
  request to know its hash, and none to fetch it when its object is here;
  ``stat`` (path) -> (device, inode, size, mtime_ns, sha256): a file whose stat is unchanged is not
  re-hashed, so re-putting an unchanged 20,000-file directory reads no file;
  ``trees`` (directory) -> a snapshot of its files' stats and hashes, one row per directory, so
  that re-putting 20,000 unchanged files costs one row read, not 20,000;
  ``manifests`` (store, key, version id) -> the digest of a directory manifest's (path, sha256)
  list, so an unchanged directory is recognised without downloading its manifest;
  ``pending``: outputs a run produced while the store was unreachable, kept here (their bytes in
  ``objects/``) until ``nixrepro sync`` uploads them; ``uploaded``: how far each one's upload got
  (per file of a directory), so that a sync killed half-way makes no second version of anything.
- ``locks/``: ``objects.lock`` (shared while a pending item is being kept, exclusive while
  ``prune`` deletes) and one ``pending-<id>.lock`` per item being uploaded (concurrent syncs
  upload it once). flock locks die with their process, so kill -9 never leaves one held.

An object is checked against its name before it is served: the ``stat`` row of its path is the
proof of an earlier check (same inode, size and mtime_ns: not re-read), anything else is re-hashed
and a corrupt object is evicted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fsutil import sha256_file as sha256_file  # re-exported for callers of datacache
from . import DataIntegrityError, DataStoreError

HASH_THREADS = 4
SCHEMA_VERSION = 1  # PRAGMA user_version of a cache whose tables are made; raise it with _SCHEMA
_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
  store TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT NOT NULL,
  sha256 TEXT NOT NULL, size INTEGER NOT NULL, kind TEXT NOT NULL,
  PRIMARY KEY (store, key, version_id));
CREATE TABLE IF NOT EXISTS stat (
  path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
CREATE TABLE IF NOT EXISTS trees (
  root TEXT PRIMARY KEY, snapshot BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (
  store TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT NOT NULL, digest TEXT NOT NULL,
  PRIMARY KEY (store, key, version_id));
CREATE TABLE IF NOT EXISTS pending (
  id INTEGER PRIMARY KEY AUTOINCREMENT, uri TEXT NOT NULL, sha256 TEXT NOT NULL,
  size INTEGER NOT NULL, kind TEXT NOT NULL, run_dir TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploaded (
  pending_id INTEGER NOT NULL, rel TEXT NOT NULL, version_id TEXT, size INTEGER,
  PRIMARY KEY (pending_id, rel));
"""


@dataclass(frozen=True)
class Pending:
    id: int
    uri: str
    sha256: str
    size: int
    kind: str
    run_dir: str | None


@dataclass(frozen=True)
class CacheCheck:
    checked: int
    corrupt: list[str]  # sha256 of objects whose bytes no longer match; removed


class DataCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError, PermissionError) as exc:
            raise DataStoreError(f"the data cache {root} cannot be used ({exc.strerror}); point "
                                 "[data] cache_dir in nixrepro.toml at a directory.") from None
        self.db = _SerialConnection(sqlite3.connect(root / "index.sqlite", timeout=60,
                                                    isolation_level=None, check_same_thread=False))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # the schema once per cache, not at every open: executescript commits (80 ms on a busy disk)
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self.db.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")

    # --- objects --------------------------------------------------------------------------------

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.object_path(sha256).is_file()

    def add_file(self, path: Path, sha256: str) -> Path:
        """Copy ``path`` in as object ``sha256`` (read-only); returns the object's path."""
        target = self.checked_object(sha256)  # a corrupt copy already here is replaced
        if target is not None:
            return target
        tmp = self.temp_path(sha256)
        shutil.copyfile(path, tmp)
        return self.commit_temp(tmp, sha256)

    def add_bytes(self, data: bytes) -> tuple[str, Path]:
        """Keep ``data`` as an object (a manifest); returns its sha256 and the object's path."""
        sha256 = hashlib.sha256(data).hexdigest()
        tmp = self.temp_path(sha256)
        tmp.write_bytes(data)
        return sha256, self.commit_temp(tmp, sha256)

    def temp_path(self, sha256: str) -> Path:
        """A private temporary file next to the object it will become (same file system)."""
        target = self.object_path(sha256)
        target.parent.mkdir(exist_ok=True)
        return target.parent / f".{sha256}.{os.getpid()}.{time.monotonic_ns()}.tmp"

    def commit_temp(self, tmp: Path, sha256: str) -> Path:
        """Check that ``tmp`` hashes to ``sha256`` and make it the read-only object."""
        actual = sha256_file(tmp)
        if actual != sha256:
            tmp.unlink(missing_ok=True)
            raise DataIntegrityError(f"the bytes hash to {actual[:12]}, not {sha256[:12]}")
        os.chmod(tmp, 0o444)
        target = self.object_path(sha256)
        target.parent.mkdir(exist_ok=True)  # staged elsewhere when the sha was not known beforehand
        os.replace(tmp, target)  # atomic; a concurrent writer of the same object wrote the same bytes
        self._prove([(target, sha256)])  # just hashed: the next serve needs no re-read
        return target

    def checked_object(self, sha256: str) -> Path | None:
        """The object ``sha256`` if it is here and its bytes are still those; a corrupt one is
        evicted (None: fetch it again). Cheap when unchanged since its last check (one stat)."""
        path = self.object_path(sha256)
        if not path.is_file():
            return None
        if self.corrupt_files({path: sha256}):
            path.unlink(missing_ok=True)
            return None
        return path

    def corrupt_files(self, expected: dict[Path, str]) -> list[Path]:
        """The files whose bytes do not hash to the expected sha256 (a missing file counts).
        A file whose stat matches its last check's is not read again (the stat table's proof)."""
        present = {path: sha for path, sha in expected.items() if path.is_file()}
        try:
            hashes = self.hash_files(list(present))
        except OSError:  # one vanished or became unreadable between the check and the read
            hashes = {}
            for path in present:
                with contextlib.suppress(OSError):
                    hashes[path] = sha256_file(path)
        return [path for path, sha in expected.items() if hashes.get(path) != sha]

    def _prove(self, checked: list[tuple[Path, str]]) -> None:
        rows = []
        for path, sha in checked:
            st = path.stat()
            rows.append((str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha))
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO stat VALUES (?, ?, ?, ?, ?, ?)", rows)

    # --- the version index ----------------------------------------------------------------------

    def known(self, store: str, key: str, version_id: str) -> tuple[str, int, str] | None:
        row = self.db.execute(
            "SELECT sha256, size, kind FROM versions WHERE store=? AND key=? AND version_id=?",
            (store, key, version_id),
        ).fetchone()
        return (str(row[0]), int(row[1]), str(row[2])) if row else None

    def remember(self, store: str, key: str, version_id: str, sha256: str, size: int, kind: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                        (store, key, version_id, sha256, size, kind))

    def remember_many(self, rows: Iterable[tuple[str, str, str, str, int, str]]) -> None:
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?)", rows)

    # --- hashing with the stat cache ------------------------------------------------------------

    def hash_files(self, paths: list[Path]) -> dict[Path, str]:
        """sha256 of each file; unchanged files (same dev, inode, size, mtime_ns) are not read."""
        stats = {path: path.stat() for path in paths}
        cached = self._stat_rows([str(p) for p in paths])
        result: dict[Path, str] = {}
        misses: list[Path] = []
        for path, st in stats.items():
            row = cached.get(str(path))
            if row and row[:4] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
                result[path] = row[4]
            else:
                misses.append(path)
        if misses:
            with ThreadPoolExecutor(HASH_THREADS) as pool:  # hashlib releases the GIL on big reads
                hashed = dict(zip(misses, pool.map(sha256_file, misses), strict=True))
            result.update(hashed)
            with self._transaction():
                self.db.executemany(
                    "INSERT OR REPLACE INTO stat VALUES (?, ?, ?, ?, ?, ?)",
                    [(str(p), stats[p].st_dev, stats[p].st_ino, stats[p].st_size, stats[p].st_mtime_ns,
                      hashed[p]) for p in misses],
                )
        return result

    def hash_tree(self, root: Path, entries: dict[str, tuple[str, os.stat_result]]) -> dict[str, str]:
        """sha256 of every file of a directory (relative path -> (path, stat)); unchanged files
        (same dev, inode, size, mtime_ns as in the directory's last snapshot) are not read."""
        import marshal  # a snapshot of 20,000 entries loads in milliseconds

        row = self.db.execute("SELECT snapshot FROM trees WHERE root=?", (str(root),)).fetchone()
        before: dict[str, tuple[int, int, int, int, str]] = marshal.loads(row[0]) if row else {}
        result: dict[str, str] = {}
        misses: list[str] = []
        for rel, (_path, st) in entries.items():
            known = before.get(rel)
            if known is not None and known == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, known[4]):
                result[rel] = known[4]
            else:
                misses.append(rel)
        if misses or len(before) != len(entries):
            with ThreadPoolExecutor(HASH_THREADS) as pool:
                result.update(zip(misses, pool.map(lambda r: sha256_file(Path(entries[r][0])), misses),
                                  strict=True))
            snapshot = {rel: (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, result[rel])
                        for rel, (_path, st) in entries.items()}
            self.db.execute("INSERT OR REPLACE INTO trees VALUES (?, ?)",
                            (str(root), marshal.dumps(snapshot)))
        return result

    def manifest_digest(self, store: str, key: str, version_id: str) -> str | None:
        row = self.db.execute("SELECT digest FROM manifests WHERE store=? AND key=? AND version_id=?",
                              (store, key, version_id)).fetchone()
        return str(row[0]) if row else None

    def remember_manifest(self, store: str, key: str, version_id: str, digest: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?)",
                        (store, key, version_id, digest))

    def _stat_rows(self, paths: list[str]) -> dict[str, tuple[int, int, int, int, str]]:
        if len(paths) > 200:  # one scan beats thousands of lookups
            common = os.path.commonpath(paths)
            rows = self.db.execute("SELECT * FROM stat WHERE path >= ? AND path < ?",
                                   (common, common + "\uffff")).fetchall()
        else:
            marks = ",".join("?" * len(paths))
            rows = self.db.execute(f"SELECT * FROM stat WHERE path IN ({marks})", paths).fetchall()
        return {str(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4]), str(r[5])) for r in rows}

    # --- pending uploads ------------------------------------------------------------------------

    def add_pending(self, uri: str, sha256: str, size: int, kind: str, run_dir: Path | None) -> int:
        cursor = self.db.execute(
            "INSERT INTO pending (uri, sha256, size, kind, run_dir, created) VALUES (?, ?, ?, ?, ?, ?)",
            (uri, sha256, size, kind, str(run_dir) if run_dir else None, time.time()),
        )
        return int(cursor.lastrowid or 0)

    def pending(self) -> list[Pending]:
        rows = self.db.execute("SELECT id, uri, sha256, size, kind, run_dir FROM pending ORDER BY id")
        return [Pending(int(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), r[5]) for r in rows]

    def pending_item(self, pending_id: int) -> Pending | None:
        return next((p for p in self.pending() if p.id == pending_id), None)

    def done_pending(self, pending_id: int) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM pending WHERE id=?", (pending_id,))
            self.db.execute("DELETE FROM uploaded WHERE pending_id=?", (pending_id,))
        with contextlib.suppress(OSError):  # safe: a sync re-reads the row once it holds the lock
            (self.root / "locks" / f"pending-{pending_id}.lock").unlink()

    def uploads(self, pending_id: int) -> dict[str, tuple[str | None, int | None]]:
        """How far an item's upload got: rel ("" for the item itself) -> (version id, size); a
        version id of None marks an upload that was started and may or may not have finished."""
        rows = self.db.execute("SELECT rel, version_id, size FROM uploaded WHERE pending_id=?",
                               (pending_id,))
        return {str(r[0]): (r[1], r[2]) for r in rows}

    def note_upload(self, pending_id: int, rel: str, version_id: str | None, size: int | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO uploaded VALUES (?, ?, ?, ?)",
                        (pending_id, rel, version_id, size))

    @contextlib.contextmanager
    def item_lock(self, pending_id: int) -> Iterator[bool]:
        """Hold the upload lock of one pending item; yields False if another process holds it."""
        with self._flock(f"pending-{pending_id}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
            yield held

    @contextlib.contextmanager
    def keeping(self) -> Iterator[None]:
        """Held while objects are added for a pending item: a concurrent prune waits for it, so
        it never deletes an object whose pending row is not written yet."""
        with self._flock("objects.lock", fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[bool]:
        directory = self.root / "locks"
        directory.mkdir(exist_ok=True)
        with open(directory / name, "a") as handle:
            try:
                fcntl.flock(handle, mode)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- maintenance ----------------------------------------------------------------------------

    def _objects(self) -> Iterator[Path]:
        for directory in self.objects.iterdir():
            if directory.is_dir():
                yield from (p for p in directory.iterdir() if not p.name.startswith("."))

    def verify(self) -> CacheCheck:
        """Re-hash every object; a corrupt one is removed (it is fetched again when needed)."""
        checked, corrupt = 0, []
        for path in self._objects():
            checked += 1
            if sha256_file(path) != path.name:
                corrupt.append(path.name)
                path.unlink()
        return CacheCheck(checked, corrupt)

    def prune(self) -> tuple[int, int]:
        """Remove every object no pending item needs; returns (files, bytes) removed.

        A pending directory needs its manifest and every file the manifest lists; one whose
        manifest cannot be read would lose files it needs, so nothing is pruned then."""
        with self._flock("objects.lock", fcntl.LOCK_EX):
            keep = self._needed_by_pending()
            count = size = 0
            for path in list(self._objects()):
                if path.name not in keep:
                    with contextlib.suppress(FileNotFoundError):  # another prune took it
                        size += path.stat().st_size
                        path.unlink()
                        count += 1
            return count, size

    def _needed_by_pending(self) -> set[str]:
        keep: set[str] = set()
        for item in self.pending():
            keep.add(item.sha256)
            if item.kind != "manifest":
                continue
            try:
                files = json.loads(self.object_path(item.sha256).read_bytes())["files"]
                keep.update(str(entry["sha256"]) for entry in files.values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise DataStoreError(
                    f"the manifest of pending output #{item.id} ({item.uri}) cannot be read from the "
                    "cache, so the files it needs are unknown; nothing was pruned; drop the item with "
                    f"`nixrepro sync --discard {item.id}`, then prune again."
                ) from None
        return keep

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _SerialConnection:
    """One sqlite connection shared by the cache's threads (a directory is fetched by a pool):
    every statement, and every transaction as a whole, holds the lock, so two threads never nest
    a BEGIN or write into each other's transaction. Results are read before the lock is let go."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.lock = threading.RLock()

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> _Rows:
        with self.lock:
            cursor = self.connection.execute(sql, tuple(parameters))
            return _Rows(cursor.fetchall(), cursor.lastrowid)

    def executemany(self, sql: str, rows: Iterable[Any]) -> None:
        with self.lock:
            self.connection.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        with self.lock:
            self.connection.executescript(script)


@dataclass
class _Rows:
    rows: list[Any]
    lastrowid: int | None

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


class _Transaction:
    def __init__(self, db: _SerialConnection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.lock.acquire()  # held until COMMIT: the other threads wait, not nest
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.db.lock.release()
            raise

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.db.lock.release()
