"""The remote run store's object layer: the few operations every object store offers, by scheme.

A remote run store (``[runs] remote`` in nixrepro.toml, docs/teams.md) is a prefix of an object
store that several machines write runs into. This package knows nothing of runs: it stores bytes
under keys (``runs/<id>/record.json``), and :mod:`nixrepro.remote.store` lays runs out on top.

Every backend keeps one promise that the run store's immutability rests on: :meth:`put_if_absent`
never replaces an object. ``file://`` writes a temporary file and hard-links it to its name
(``link`` fails when the name exists: atomic on a local disk and on NFS); ``s3://`` sends
``If-None-Match: *``, which S3 (since 2024) and SeaweedFS refuse with 412 when the key exists. A
service that ignores the header is found out once, when the store is created (a probe object put
twice), and then gets a HEAD before each write instead (``conditional_writes`` False; the window
between the two is open only to two writers of the same key, which distinct run ids never are).

Backends are modules of this package, found by scheme in :data:`BACKENDS` and imported on first
use, so botocore is loaded only for an ``s3://`` remote.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import NoSuchKey as NoSuchKey  # the remote store's errors, importable from here
from ..errors import RemoteConflict as RemoteConflict
from ..errors import RemoteError as RemoteError
from ..errors import RemoteIntegrityError as RemoteIntegrityError
from ..errors import RemoteUnreachable as RemoteUnreachable
from ..errors import UsageError
from ..redact import scrub_url

if TYPE_CHECKING:
    from ..config import DataConfig

# scheme -> the module of this package that implements it
BACKENDS: dict[str, str] = {"file": "file", "s3": "s3"}
EXAMPLES = "s3://bucket/prefix or file:///shared/dir"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class RemoteURL:
    """``s3://bucket/prefix`` or ``file:///absolute/dir``, validated when parsed."""

    scheme: str  # a key of BACKENDS
    bucket: str  # "" for file://
    prefix: str  # the key prefix in the bucket (no slash at either end), or the directory

    @classmethod
    def parse(cls, text: str) -> RemoteURL:
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in BACKENDS:
            raise UsageError(f"{scrub_url(text)!r} is not a remote run store; use {EXAMPLES}.")
        _check_no_secrets(scheme, rest)
        if scheme == "s3":
            bucket, _, prefix = rest.partition("/")
            if not _BUCKET.fullmatch(bucket):
                raise UsageError(f"{text}: {bucket!r} is not a valid S3 bucket name; use {EXAMPLES}.")
            _check_segments(text, prefix.strip("/"))
            return cls("s3", bucket, prefix.strip("/"))
        if not rest.startswith("/") or not rest.strip("/"):
            raise UsageError(f"{text}: a file remote needs an absolute directory other than /, "
                             "as in file:///shared/runs.")
        _check_segments(text, rest.strip("/"))
        return cls("file", "", "/" + rest.strip("/"))

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.prefix}"
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _check_no_secrets(scheme: str, rest: str) -> None:
    """A run store URL names a place, nothing more: credentials (``user:password@``) or a query
    (``?token=...``) in it would reach every message, record and tracker that names the store.
    The refusal quotes neither."""
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        raise UsageError(f"a {scheme}:// remote run store URL carries no credentials (the "
                         "'user:password@' part); give them through the AWS variables or profile, "
                         f"never in the URL; use {EXAMPLES}.")
    for mark, what in (("?", "query"), ("#", "fragment")):
        if mark in rest:
            shown = f"{scheme}://{rest.split(mark, 1)[0]}"
            raise UsageError(f"{shown}: a remote run store URL has no {what} ('{mark}...'); remove "
                             "it (credentials come from the AWS variables or profile, never from "
                             "the URL).")


def _check_segments(text: str, path: str) -> None:
    parts = path.split("/") if path else []
    if any(part in ("", ".", "..") for part in parts):
        raise UsageError(f"{text}: empty, '.' and '..' path segments are not allowed; name the "
                         "directory or prefix directly.")


class TooLarge(RemoteError):
    """An object bigger than its reader takes (a record, an index entry, a page): never read."""

    def __init__(self, key: str, size: int) -> None:
        super().__init__(f"{key} is {size} bytes, more than it may be")
        self.key = key
        self.size = size


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix, '/'-separated
    size: int
    sha256: str | None = None  # where the store keeps it with the object (S3 metadata)


class ObjectStore(Protocol):
    """Bytes under keys, relative to the remote's prefix. Every failure is a :class:`RemoteError`
    (:class:`RemoteUnreachable` when the store cannot be reached) in one sentence."""

    url: RemoteURL
    conditional_writes: bool  # put_if_absent is one atomic request (else a HEAD, then the write)

    def put_if_absent(self, key: str, data: bytes | Path, sha256: str) -> bool:
        """Store ``data`` (bytes or a file) under ``key`` unless an object is there already; True
        when written, False when another object was there (left as it was). ``sha256``: of data."""

    def get(self, key: str, limit: int | None = None) -> bytes:
        """The object's bytes; :class:`NoSuchKey` when there is none, :class:`TooLarge` when it
        holds more than ``limit`` bytes (nothing that big is read into memory)."""

    def get_file(self, key: str, dest: Path) -> str:
        """Write the object to the new file ``dest``, in pieces (a log may be bigger than memory);
        returns the sha256 of what was written. :class:`NoSuchKey` when there is none; an error
        of the local disk is the OSError itself."""

    def digest(self, key: str) -> str:
        """The sha256 of the object's bytes, read in pieces; :class:`NoSuchKey` when there is none."""

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size (and sha256 where kept), None when there is none."""

    def list(self, prefix: str, limit: int | None = None) -> list[ObjectInfo]:
        """The objects whose keys start with ``prefix`` (``runs/3f`` matches ``runs/3f9a.../x``):
        all of them, or the first ``limit`` found."""

    def repair(self, key: str, data: bytes | Path, sha256: str) -> None:
        """Replace the object under ``key``, which is a broken copy of ``data``: its kept sha256
        is ``sha256`` but its size is not data's (a writer killed mid-write). Never called for
        any other object."""

    def delete(self, key: str) -> None:
        """Remove the object if it is there (only the run store's derived index objects are ever
        deleted: never a run's)."""


def open_objects(url: RemoteURL, settings: DataConfig) -> ObjectStore:
    """The backend for ``url`` (imported on first use)."""
    module = importlib.import_module(f"{__name__}.{BACKENDS[url.scheme]}")
    store: ObjectStore = module.open_objects(url, settings)
    return store
