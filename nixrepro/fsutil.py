"""Small file-system helpers: every file nixrepro writes goes through :func:`atomic_write`, every
log it appends to (metrics, data log) through :func:`append_line`."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    # what tempfile.mkstemp does, without importing tempfile (and shutil, bz2, lzma: ~5 ms of a run)
    while True:
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """sha256 of a file at OpenSSL's speed: hashlib is OpenSSL, fed 1 MiB at a time from one
    reused buffer (no per-block allocation)."""
    import hashlib  # here, not at the top, as tempfile above

    digest = hashlib.sha256()
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


def append_line(path: Path, line: str) -> None:
    """Append one ``\\n``-terminated line with a single O_APPEND write.

    Several processes (an experiment and its workers) may append to the same log: a single write
    of a whole line is never interleaved with another, and a reader sees complete lines, or a
    torn last line only if the writer was killed mid-write.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new directory under ``parent`` for files that are renamed into place whole (a pull, a
    copy out of an archive). Its name holds this host and process, so that the next one made
    here removes those whose process is gone (:func:`clear_abandoned`: a kill -9 runs no
    ``finally``) and leaves alone those in progress, here or on another host sharing the store."""
    import secrets

    parent.mkdir(parents=True, exist_ok=True)
    clear_abandoned(parent)
    path = parent / f"{prefix}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def clear_abandoned(parent: Path) -> None:
    """Remove the staging directories of ``parent`` made on this host by a process that is gone."""
    import re
    import shutil

    mine = re.compile(rf".+-{_host_tag()}-(\d+)-[0-9a-f]+")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        found = mine.fullmatch(entry.name)
        if found is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
            continue  # its process is still there (or a process with its pid: kept either way)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except (PermissionError, OverflowError):
            continue  # another user's process; a pid too large to be one: not ours to judge


def _host_tag() -> str:
    import hashlib
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def keep_newest(directory: Path, keep: int) -> None:
    """Remove all but the ``keep`` files of ``directory`` written last (a cache's entries: one
    dropped only costs the work of making it again)."""
    import contextlib

    entries = list(os.scandir(directory))
    if len(entries) <= keep:
        return
    entries.sort(key=lambda entry: entry.stat().st_mtime_ns)
    for entry in entries[:-keep]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
