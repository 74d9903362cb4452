"""The ``file://`` remote: a shared directory (NFS, a mounted share, a USB disk) holding objects as
files, ``<dir>/<key>``.

A write never replaces a file: the bytes go to a hidden temporary file beside the target, which is
then hard-linked to its name. ``link(2)`` fails with EEXIST when the name exists, atomically, on
local file systems and on NFS alike, so two machines writing the same key leave exactly one of
the two, whole. Objects are made read-only (0444) as a reminder that runs are immutable.

The directory must exist: a share that is not mounted must not silently become a directory on
the local disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..config import DataConfig
from . import NoSuchKey, ObjectInfo, RemoteError, RemoteUnreachable, RemoteURL, TooLarge

# what a share that went away looks like (NFS, a mount point gone stale)
_AWAY = {errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH,
         errno.ENOTCONN, errno.ENODEV}
_FULL = {errno.ENOSPC, errno.EDQUOT}
CHUNK = 1024 * 1024


def open_objects(url: RemoteURL, settings: DataConfig) -> FileObjects:
    return FileObjects(url)


class FileObjects:
    conditional_writes = True

    def __init__(self, url: RemoteURL) -> None:
        self.url = url
        self.root = Path(url.prefix)

    def put_if_absent(self, key: str, data: bytes | Path, sha256: str) -> bool:
        target = self._path(key)
        self._check_root()
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, Path):
                shutil.copyfile(data, tmp)
            else:
                tmp.write_bytes(data)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        except OSError as exc:
            raise self._error(exc, f"write {key}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str, limit: int | None = None) -> bytes:
        with self._open(key) as handle:
            size = os.fstat(handle.fileno()).st_size
            if limit is not None and size > limit:
                raise TooLarge(key, size)
            try:
                return handle.read()
            except OSError as exc:
                raise self._error(exc, f"read {key}") from None

    def get_file(self, key: str, dest: Path) -> str:
        with self._open(key) as source, open(dest, "xb") as out:  # the local side's errors are the caller's
            return self._copy(key, source, out.write)

    def digest(self, key: str) -> str:
        with self._open(key) as source:
            return self._copy(key, source, None)

    def _copy(self, key: str, source: BinaryIO, write: Callable[[bytes], object] | None) -> str:
        digest = hashlib.sha256()
        while True:
            try:
                chunk = source.read(CHUNK)
            except OSError as exc:
                raise self._error(exc, f"read {key}") from None
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
            if write is not None:
                write(chunk)

    def _open(self, key: str) -> BinaryIO:
        """The object's file, open for reading. Only a regular file is an object: a FIFO (whose
        open would wait for a writer forever) or a device (/dev/zero, never ending) put in the
        share is refused, never read."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self._check_root()
            raise NoSuchKey(f"{self.url} has no {key}.") from None
        except OSError as exc:
            raise self._error(exc, f"read {key}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RemoteError(f"{key} in the remote run store {self.url} is not a file, so it is not "
                              f"an object nixrepro wrote; remove it from {self.root}.")
        return os.fdopen(fd, "rb")

    def head(self, key: str) -> ObjectInfo | None:
        try:
            return ObjectInfo(key, self._path(key).stat().st_size)
        except FileNotFoundError:
            self._check_root()
            return None
        except OSError as exc:
            raise self._error(exc, f"read {key}") from None

    def list(self, prefix: str, limit: int | None = None) -> list[ObjectInfo]:
        self._check_root()
        folder, _, start = prefix.rpartition("/")
        found: list[ObjectInfo] = []
        todo = [(folder, start)]  # directories to read, deepest last (no recursion: a share may
        while todo:               # hold a tree deeper than Python's stack)
            folder, start = todo.pop()
            base = self.root / folder if folder else self.root
            try:
                entries = list(os.scandir(base))
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while listed
            except OSError as exc:
                raise self._error(exc, f"list {prefix}") from None
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.startswith(start):
                    continue  # temporary files of writes in progress (or left by a crash)
                key = f"{folder}/{entry.name}" if folder else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append((key, ""))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # this one removed while listed (folded into a page): not the rest
                except OSError as exc:
                    raise self._error(exc, f"list {prefix}") from None
                found.append(ObjectInfo(key, size))
                if limit is not None and len(found) >= limit:
                    return found
        return found

    def repair(self, key: str, data: bytes | Path, sha256: str) -> None:
        # (a linked file is never partial; this keeps the protocol whole for a copy made by hand)
        target = self._path(key)
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            if isinstance(data, Path):
                shutil.copyfile(data, tmp)
            else:
                tmp.write_bytes(data)
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        except OSError as exc:
            raise self._error(exc, f"write {key}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise self._error(exc, f"delete {key}") from None

    def _path(self, key: str) -> Path:
        return self.root / key

    def _check_root(self) -> None:
        try:
            if self.root.is_dir():
                return
        except OSError as exc:
            raise self._error(exc, "open the directory") from None
        raise RemoteError(
            f"the remote run store {self.url} does not exist ({self.root} is not a directory); "
            "create it or mount the share, or fix [runs] remote in nixrepro.toml."
        )

    def _error(self, exc: OSError, what: str) -> RemoteError:
        reason = exc.strerror or str(exc)
        if exc.errno in _AWAY:
            return RemoteUnreachable(f"cannot reach the remote run store {self.url} to {what} "
                                     f"({reason}); check the share is mounted, then retry.")
        if exc.errno in _FULL:
            return RemoteError(f"the remote run store {self.url} is full: cannot {what} "
                               f"({reason}); free space on {self.root} (or raise the quota), "
                               "then retry (`nixrepro sync` pushes what waits).")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return RemoteError(f"no permission to {what} in the remote run store {self.url} "
                               f"({reason}); ask for write access to {self.root}, or use another "
                               "remote.")
        return RemoteError(f"cannot {what} in the remote run store {self.url} ({reason}); check "
                           f"{self.root}.")
