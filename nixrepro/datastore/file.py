"""The ``file://`` backend: a directory, with every version of an object kept beside it.

The versions of ``/dir/name`` live under ``/dir/.nixrepro-versions/name/``: a read-only copy per
version and a small JSON of its metadata, written after the copy so that a version is visible only
when complete. Version ids sort by time.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ..config import DataConfig
from ..errors import UsageError
from . import VERSIONS_DIR, DataStoreError, DataURI, Kind, NoSuchObject, ObjectVersion, check_segments


def parse_location(text: str, rest: str) -> tuple[str, str]:
    """``file:///abs/path`` -> ("", "/abs/path")."""
    path = rest
    if not path.startswith("/"):
        raise UsageError(f"{text}: a file URI needs an absolute path, as in file:///data/train.csv.")
    if not path.strip("/"):
        # a store at / would keep its versions in /.nixrepro-versions and `ls` would walk
        # the whole file system
        raise UsageError(f"{text} is the file system root, not a store; name a directory, as "
                         "in file:///data/train.csv.")
    check_segments(text, path.strip("/"))
    return "", "/" + path.strip("/")


def open_backend(settings: DataConfig) -> FileStore:
    return FileStore()


class FileStore:
    """The embedded default: versions kept next to the object, in a hidden directory."""

    def _dir(self, uri: DataURI) -> Path:
        path = Path(uri.key)
        return path.parent / VERSIONS_DIR / path.name

    def put_file(self, uri: DataURI, path: Path, sha256: str, kind: Kind = "file") -> ObjectVersion:
        directory = self._dir(uri)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            version_id = f"{time.time_ns():016x}{secrets.token_hex(3)}"
            tmp = directory / f".{version_id}.tmp"
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, directory / version_id)
            size = (directory / version_id).stat().st_size
            meta = {"sha256": sha256, "size": size, "kind": kind,
                    "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            meta_tmp = directory / f".{version_id}.json.tmp"
            meta_tmp.write_text(json.dumps(meta))
            os.replace(meta_tmp, directory / f"{version_id}.json")
        except OSError as exc:
            raise DataStoreError(
                f"cannot write {uri} ({exc.strerror}); check the directory's permissions."
            ) from exc
        return self.head(uri, version_id)

    def head(self, uri: DataURI, version_id: str | None = None) -> ObjectVersion:
        ids = self._ids(uri)
        if not ids:
            raise NoSuchObject(f"there is no object at {uri}; `nixrepro data ls` lists what is there.")
        chosen = version_id or ids[-1]
        if chosen not in ids:
            raise DataStoreError(
                f"{uri} has no version {chosen}; `nixrepro data versions {uri}` lists them."
            )
        return self._version(uri, chosen, latest=chosen == ids[-1])

    def download(self, uri: DataURI, version_id: str, dest: Path, size: int | None = None) -> None:
        try:
            shutil.copyfile(self._dir(uri) / version_id, dest)
        except FileNotFoundError as exc:
            raise DataStoreError(
                f"{uri} has no version {version_id}; `nixrepro data versions {uri}` lists them."
            ) from exc
        except OSError as exc:  # unreadable in the store, or no room in the cache
            raise DataStoreError(f"cannot copy {uri}@{version_id} ({exc.strerror}); check the store's "
                                 "permissions and the free space of the data cache.") from None

    def versions(self, uri: DataURI) -> list[ObjectVersion]:
        ids = self._ids(uri)
        return [self._version(uri, v, latest=v == ids[-1]) for v in reversed(ids)]

    def listing(self, uri: DataURI) -> list[ObjectVersion]:
        found = []
        for base in _walk_stores(Path(uri.key)):
            try:
                entries = sorted((base / VERSIONS_DIR).iterdir())
            except OSError as exc:
                raise DataStoreError(f"cannot list {base / VERSIONS_DIR} ({exc.strerror}); check its "
                                     "permissions.") from None
            for entry in entries:
                child = DataURI("file", "", str(base / entry.name))
                ids = self._ids(child)
                if ids:
                    found.append(self._version(child, ids[-1], latest=True))
        return found

    def _ids(self, uri: DataURI) -> list[str]:
        directory = self._dir(uri)
        if not directory.is_dir():
            return []
        try:
            return sorted(p.name[:-5] for p in directory.iterdir()
                          if p.name.endswith(".json") and not p.name.startswith("."))
        except OSError as exc:
            raise DataStoreError(f"cannot list the versions of {uri} ({exc.strerror}); check the "
                                 f"permissions of {directory}.") from None

    def _version(self, uri: DataURI, version_id: str, latest: bool) -> ObjectVersion:
        path = self._dir(uri) / f"{version_id}.json"
        try:
            meta = json.loads(path.read_bytes())
            sha, kind, modified = meta.get("sha256"), meta.get("kind", "file"), meta.get("modified")
            if not (sha is None or isinstance(sha, str)) or kind not in ("file", "manifest"):
                raise ValueError("wrong-typed fields")
            return ObjectVersion(str(uri), version_id, sha, int(meta["size"]), kind,
                                 modified if isinstance(modified, str) else None, latest)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            raise DataStoreError(
                f"the metadata of {uri}@{version_id} ({path}) is damaged ({reason}); restore it from "
                "a backup, or delete it and the version file next to it to drop that version."
            ) from None


def _walk_stores(root: Path) -> Iterator[Path]:
    """Every directory at or below ``root`` that holds versioned objects."""
    if not root.is_dir():
        return
    for directory, subdirs, _files in os.walk(root):
        if VERSIONS_DIR in subdirs:
            subdirs.remove(VERSIONS_DIR)
            yield Path(directory)
