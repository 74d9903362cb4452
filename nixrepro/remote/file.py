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
import os
import secrets
import shutil
from pathlib import Path

from ..config import DataConfig
from . import NoSuchKey, ObjectInfo, RemoteError, RemoteUnreachable, RemoteURL

# what a share that went away looks like (NFS, a mount point gone stale)
_AWAY = {errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH,
         errno.ENOTCONN, errno.ENODEV}


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

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            self._check_root()
            raise NoSuchKey(f"{self.url} has no {key}.") from None
        except OSError as exc:
            raise self._error(exc, f"read {key}") from None

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
        base = self.root / folder if folder else self.root
        found: list[ObjectInfo] = []
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return found
        except OSError as exc:
            raise self._error(exc, f"list {prefix}") from None
        try:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.startswith(start):
                    continue  # temporary files of writes in progress (or left by a crash)
                key = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir(follow_symlinks=False):
                    found.extend(self.list(key + "/", None if limit is None else limit - len(found)))
                elif entry.is_file(follow_symlinks=False):
                    found.append(ObjectInfo(key, entry.stat().st_size))
                if limit is not None and len(found) >= limit:
                    return found[:limit]
        except FileNotFoundError:
            pass  # removed while listed (an index entry folded into a page)
        except OSError as exc:
            raise self._error(exc, f"list {prefix}") from None
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
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return RemoteError(f"no permission to {what} in the remote run store {self.url} "
                               f"({reason}); ask for write access to {self.root}, or use another "
                               "remote.")
        return RemoteError(f"cannot {what} in the remote run store {self.url} ({reason}); check "
                           f"{self.root}.")
