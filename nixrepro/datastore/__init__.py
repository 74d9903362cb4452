"""Versioned data stores: one interface, two backends (``s3://bucket/key`` and ``file:///dir/name``).

Both keep every version of an object: each put makes a new version id, old versions stay
readable. Every object carries the sha256 of its bytes and a kind: a ``file``, or a ``manifest``,
the JSON list of a directory's files with their version ids, so that one manifest version pins a
whole directory (docs/data.md).

The file backend keeps the versions of ``/dir/name`` under ``/dir/.nixrepro-versions/name/``: a
read-only copy per version and a small JSON of its metadata, written after the copy so that a
version is visible only when complete. Version ids sort by time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..config import DataConfig
from ..errors import NixreproError, UsageError

Kind = Literal["file", "manifest"]
VERSIONS_DIR = ".nixrepro-versions"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


class DataStoreError(NixreproError):
    """A data store refused or failed an operation (missing bucket, key, version...)."""


class DataStoreUnreachable(DataStoreError):
    """The store cannot be reached right now; outputs wait in the pending queue (`nixrepro sync`)."""


class NoSuchObject(DataStoreError):
    """Nothing was ever stored at this URI."""


class DataIntegrityError(DataStoreError):
    """Downloaded bytes did not hash to the recorded sha256."""


@dataclass(frozen=True)
class DataURI:
    """``s3://bucket/key`` or ``file:///absolute/path``; validated when parsed."""

    scheme: Literal["s3", "file"]
    bucket: str  # "" for file://
    key: str  # the S3 key, or the absolute path for file://

    @classmethod
    def parse(cls, text: str) -> DataURI:
        if text.startswith("s3://"):
            bucket, _, key = text[5:].partition("/")
            if not _BUCKET.fullmatch(bucket):
                raise UsageError(f"{text}: {bucket!r} is not a valid S3 bucket name; use s3://bucket/key.")
            if key.startswith("/"):
                raise UsageError(f"{text}: the key is an absolute path; write s3://{bucket}/{key.lstrip('/')}.")
            _check_segments(text, key)
            return cls("s3", bucket, key.rstrip("/"))
        if text.startswith("file://"):
            path = text[7:]
            if not path.startswith("/"):
                raise UsageError(f"{text}: a file URI needs an absolute path, as in file:///data/train.csv.")
            if not path.strip("/"):
                # a store at / would keep its versions in /.nixrepro-versions and `ls` would walk
                # the whole file system
                raise UsageError(f"{text} is the file system root, not a store; name a directory, as "
                                 "in file:///data/train.csv.")
            _check_segments(text, path.strip("/"))
            return cls("file", "", "/" + path.strip("/"))
        raise UsageError(f"{text!r} is not a data URI; use s3://bucket/key or file:///dir/name.")

    def require_object(self) -> DataURI:
        """This URI, if it names an object (a bucket alone is a prefix for `data ls` only)."""
        if not self.key:
            raise UsageError(f"{self} names a bucket, not an object; add the key, as in "
                             f"s3://{self.bucket}/train.csv.")
        return self

    @property
    def store(self) -> str:
        """The store this object lives in, as the cache index names it."""
        return f"s3://{self.bucket}" if self.scheme == "s3" else "file://"

    def child(self, relative: str) -> DataURI:
        _check_segments(f"{self}/{relative}", relative)
        joined = f"{self.key}/{relative}" if self.key else relative
        return DataURI(self.scheme, self.bucket, joined)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else f"file://{self.key}"


@dataclass(frozen=True)
class DataRef:
    """``URI`` or ``URI@VERSION`` as a user types it."""

    uri: str
    version_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> DataRef:
        # A version id never contains "/", a key may contain "@": split only at a last "@"
        # whose tail has no "/". A trailing "@" means the latest version, so that a key holding
        # "@" can be named exactly (s3://b/a@b@); Data.resolve_ref also tries the whole text
        # as a key when its tail is no version.
        uri, sep, version = text.rpartition("@")
        if sep and uri and "/" not in version and "://" in uri:
            return cls(uri, version or None)
        if "://" not in text:
            raise UsageError(
                f"{text!r} is not a data URI; give s3://bucket/key or file:///dir/key, "
                "optionally with @VERSION."
            )
        return cls(text)

    def __str__(self) -> str:
        if self.version_id:
            return f"{self.uri}@{self.version_id}"
        # a key holding "@" gets the trailing "@" (latest), so that it parses back to itself
        return f"{self.uri}@" if "@" in self.uri.partition("://")[2] else self.uri



def _check_segments(text: str, key: str) -> None:
    parts = key.split("/") if key else []
    if any(part in ("..", ".") for part in parts):
        raise UsageError(f"{text}: '..' and '.' are not allowed in a data key; name the object directly.")
    if any(part == "" for part in parts[:-1]):
        raise UsageError(f"{text}: the key has an empty path segment ('//'); remove it.")
    if VERSIONS_DIR in parts:  # the file store's own version directories: never a key
        raise UsageError(f"{text}: {VERSIONS_DIR} is where nixrepro keeps versions, not a key; "
                         "name the object itself.")


@dataclass(frozen=True)
class ObjectVersion:
    uri: str
    version_id: str
    sha256: str | None  # None only for objects written by other tools
    size: int
    kind: Kind = "file"
    modified: str | None = None  # ISO 8601
    latest: bool = False


class DataStore(Protocol):
    """What every backend does. ``version_id=None`` means the latest version."""

    def put_file(self, uri: DataURI, path: Path, sha256: str, kind: Kind = "file") -> ObjectVersion: ...

    def head(self, uri: DataURI, version_id: str | None = None) -> ObjectVersion: ...

    def download(self, uri: DataURI, version_id: str, dest: Path) -> None: ...

    def versions(self, uri: DataURI) -> list[ObjectVersion]: ...

    def listing(self, uri: DataURI) -> list[ObjectVersion]: ...


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

    def download(self, uri: DataURI, version_id: str, dest: Path) -> None:
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


def open_store(uri: DataURI, settings: DataConfig) -> DataStore:
    if uri.scheme == "file":
        return FileStore()
    from .s3 import S3Store  # boto3 is imported only when an s3:// URI is used

    store: DataStore = S3Store(settings)
    return store
