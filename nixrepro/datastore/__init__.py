"""Versioned data stores: one interface, one backend module per URI scheme.

Every backend keeps every version of an object: each put makes a new version id, old versions
stay readable. Every object carries the sha256 of its bytes and a kind: a ``file``, or a
``manifest``, the JSON list of a directory's files with their version ids, so that one manifest
version pins a whole directory (docs/data.md).

A backend is a module of this package named in :data:`BACKENDS` by its scheme. It defines
``parse_location(text, rest) -> (bucket, key)`` (validating what follows ``scheme://``) and
``open_backend(settings) -> DataStore``. It is imported only when a URI of its scheme is used, so
``s3://`` alone pays for botocore. Adding a backend (``gs://``, say) is one module and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, Protocol

from ..config import DataConfig
from ..errors import DataIntegrityError as DataIntegrityError  # the data-store errors, re-exported
from ..errors import DataStoreError as DataStoreError
from ..errors import DataStoreUnreachable as DataStoreUnreachable
from ..errors import NoSuchObject as NoSuchObject
from ..errors import UsageError

Kind = Literal["file", "manifest"]
VERSIONS_DIR = ".nixrepro-versions"
# scheme -> the module of this package that implements it
BACKENDS: dict[str, str] = {"file": "file", "s3": "s3"}


@dataclass(frozen=True)
class DataURI:
    """``s3://bucket/key`` or ``file:///absolute/path``; validated when parsed."""

    scheme: str  # a key of BACKENDS
    bucket: str  # the bucket, or "" where the backend has none (file://)
    key: str  # the key in the bucket, or the absolute path for file://

    @classmethod
    def parse(cls, text: str) -> DataURI:
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in BACKENDS:
            raise UsageError(f"{text!r} is not a data URI; use {_EXAMPLES}.")
        bucket, key = backend(scheme).parse_location(text, rest)
        return cls(scheme, bucket, key)

    def require_object(self) -> DataURI:
        """This URI, if it names an object (a bucket alone is a prefix for `data ls` only)."""
        if not self.key:
            raise UsageError(f"{self} names a bucket, not an object; add the key, as in "
                             f"s3://{self.bucket}/train.csv.")
        return self

    @property
    def store(self) -> str:
        """The store this object lives in, as the cache index names it."""
        return f"{self.scheme}://{self.bucket}"

    def child(self, relative: str) -> DataURI:
        check_segments(f"{self}/{relative}", relative)
        joined = f"{self.key}/{relative}" if self.key else relative
        return DataURI(self.scheme, self.bucket, joined)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.bucket else f"{self.scheme}://{self.key}"


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



def check_segments(text: str, key: str) -> None:
    """Refuse ``.`` and ``..`` path segments, which stores would resolve differently."""
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

    def download(self, uri: DataURI, version_id: str, dest: Path, size: int | None = None) -> None:
        """Write the version's bytes to ``dest``; ``size``, when known, spares a HEAD."""

    def versions(self, uri: DataURI) -> list[ObjectVersion]: ...

    def listing(self, uri: DataURI) -> list[ObjectVersion]: ...


_EXAMPLES = "s3://bucket/key or file:///dir/name"


def backend(scheme: str) -> ModuleType:
    """The module implementing ``scheme`` (imported on first use)."""
    return importlib.import_module(f"{__name__}.{BACKENDS[scheme]}")


def open_store(uri: DataURI, settings: DataConfig) -> DataStore:
    """The store that keeps ``uri``'s objects."""
    store: DataStore = backend(uri.scheme).open_backend(settings)
    return store
