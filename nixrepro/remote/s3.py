"""The ``s3://`` remote: objects in a bucket under a prefix, through the botocore client of
:mod:`nixrepro.datastore.s3` (same endpoint, region and credential chain as ``[data]``).

``put_if_absent`` is a ``PutObject`` with ``If-None-Match: *`` (botocore's ``IfNoneMatch``): S3
refuses it with 412 Precondition Failed when the key exists, and with 409 when another conditional
write of the key is in flight (retried). SeaweedFS honours it too (tests/test_remote.py checks it).
Where a service ignores the header, :meth:`probe_conditional_writes` finds that out once, when the
store is created, and writes are then preceded by a HEAD (nixrepro.remote).

Each object carries the sha256 of its bytes as ``x-amz-meta-sha256``, so that pushing a run again
compares a HEAD, not a download. botocore's errors become one sentence naming the remedy, sorted
as the data store's are (nixrepro.datastore.s3.botocore_call); none quotes a credential, and the
endpoint is scrubbed of any password in its URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..config import DataConfig
from ..datastore.s3 import botocore_call, error_code, make_client, shown_endpoint
from . import NoSuchKey, ObjectInfo, RemoteError, RemoteUnreachable, RemoteURL, TooLarge

T = TypeVar("T")
SHA_KEY = "sha256"  # x-amz-meta-sha256, as the data store keeps it
PROBE = ".nixrepro-probe-"  # nixrepro.remote.store.PROBE: not an object that makes a prefix taken
MAX_PUT = 5 * 1024**3  # one PutObject; a run's log beyond 5 GiB is refused with a sentence
CHUNK = 1024 * 1024  # an object read in pieces (get_file, digest)
READ_TIMEOUT = 15  # seconds without a byte from the server before a request is given up
_WRONG_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                      "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}
_NO_CONDITIONS = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}


def open_objects(url: RemoteURL, settings: DataConfig) -> S3Objects:
    return S3Objects(url, settings)


class S3Objects:
    def __init__(self, url: RemoteURL, settings: DataConfig) -> None:
        self.url = url
        self.settings = settings
        # two attempts, not the data store's three, and 15 s of silence, not 60, before one is
        # given up: a push at a run's end that cannot reach the remote (or whose server accepts
        # connections and then says nothing) should give up quickly and leave the run in the queue
        # for `nixrepro sync` (60 s: a stalled server held a run's end for 3 minutes)
        self.client = make_client(settings, retries=2, read_timeout=READ_TIMEOUT)
        self.conditional_writes = True
        self._bucket_checked = False
        self._lock = threading.Lock()

    # --- the ObjectStore interface ------------------------------------------------------------

    def put_if_absent(self, key: str, data: bytes | Path, sha256: str) -> bool:
        full = self._key(key)
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        if size > MAX_PUT:
            raise RemoteError(f"{key} is {size} bytes, more than one S3 PUT takes (5 GiB); it is "
                              "kept locally only.")
        for _attempt in range(4):
            if not self.conditional_writes and self.head(key) is not None:
                return False
            conditions = {"IfNoneMatch": "*"} if self.conditional_writes else {}
            try:
                if isinstance(data, Path):
                    with open(data, "rb") as body:
                        self._put(full, body, sha256, conditions, f"write {key}")
                else:
                    self._put(full, data, sha256, conditions, f"write {key}")
                return True
            except _Precondition:
                return False
            except _InFlight:
                continue  # another conditional write of this key was in flight: ask again
            except _Unsupported:
                self.conditional_writes = False  # a HEAD before each write from now on
        if self.head(key) is not None:
            return False
        raise RemoteError(f"S3 kept answering that another write of {key} is in progress in the "
                          f"remote run store {self.url}; retry (`nixrepro sync`).")

    def get(self, key: str, limit: int | None = None) -> bytes:
        def read() -> bytes:
            reply = self.client.get_object(Bucket=self.url.bucket, Key=self._key(key))
            size = int(reply.get("ContentLength") or 0)
            if limit is not None and size > limit:
                reply["Body"].close()
                raise TooLarge(key, size)
            data: bytes = reply["Body"].read()
            return data

        return self._call(f"read {key}", read, missing=key)

    def get_file(self, key: str, dest: Path) -> str:
        with open(dest, "xb") as out:  # the local side's errors (a full disk) are the caller's
            return self._stream(key, out.write)

    def digest(self, key: str) -> str:
        return self._stream(key, None)

    def _stream(self, key: str, write: Callable[[bytes], object] | None) -> str:
        def read() -> str:
            reply = self.client.get_object(Bucket=self.url.bucket, Key=self._key(key))
            digest = hashlib.sha256()
            for chunk in reply["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
                if write is not None:
                    write(chunk)
            return digest.hexdigest()

        return self._call(f"read {key}", read, missing=key)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            reply = self._call(f"read {key}", lambda: self.client.head_object(
                Bucket=self.url.bucket, Key=self._key(key)), missing=key)
        except NoSuchKey:
            return None
        return ObjectInfo(key, int(reply["ContentLength"]), reply.get("Metadata", {}).get(SHA_KEY))

    def list(self, prefix: str, limit: int | None = None) -> list[ObjectInfo]:
        base = self._key("")
        paginator = self.client.get_paginator("list_objects_v2")
        options = {"PaginationConfig": {"MaxItems": limit, "PageSize": min(limit, 1000)}} if limit else {}

        def pages() -> list[Any]:
            return list(paginator.paginate(Bucket=self.url.bucket, Prefix=base + prefix, **options))

        found = []
        for page in self._call(f"list {prefix or 'the prefix'}", pages):
            for item in page.get("Contents", []):
                found.append(ObjectInfo(item["Key"][len(base):], int(item["Size"])))
        return found

    def repair(self, key: str, data: bytes | Path, sha256: str) -> None:
        # unconditional: any other writer of this key writes these same bytes (their sha256 is
        # the one the broken copy carries)
        if isinstance(data, Path):
            with open(data, "rb") as body:
                self._put(self._key(key), body, sha256, {}, f"write {key}")
        else:
            self._put(self._key(key), data, sha256, {}, f"write {key}")

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.client.delete_object(
            Bucket=self.url.bucket, Key=self._key(key)))

    # --- creating a store -----------------------------------------------------------------------

    def probe_conditional_writes(self) -> bool:
        """Whether the service refuses a second ``If-None-Match: *`` write of one key (one probe
        object, written twice and deleted): a service that ignores the header would overwrite."""
        key = f"{PROBE}{secrets.token_hex(8)}"
        full = self._key(key)
        try:
            self._put(full, b"1", None, {"IfNoneMatch": "*"}, "write a probe object")
        except _Unsupported:
            return False
        try:
            self._put(full, b"2", None, {"IfNoneMatch": "*"}, "write a probe object")
            honoured = False
        except (_Precondition, _InFlight):
            honoured = True
        except _Unsupported:
            honoured = False
        with contextlib.suppress(RemoteError):  # a store that lets us write but not delete
            self.delete(key)  # keeps one 1-byte probe
        return honoured

    # --- helpers --------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self.url.prefix}/{key}" if self.url.prefix else key

    def _put(self, full: str, body: Any, sha256: str | None, conditions: dict[str, str],
             what: str) -> None:
        from botocore.exceptions import ClientError

        metadata = {SHA_KEY: sha256} if sha256 else {}

        def put() -> None:
            try:
                self.client.put_object(Bucket=self.url.bucket, Key=full, Body=body,
                                       Metadata=metadata, **conditions)
            except ClientError as exc:
                code, status = error_code(exc)
                if conditions and (code == "PreconditionFailed" or status == 412):
                    raise _Precondition() from None
                if conditions and (code == "ConditionalRequestConflict" or status == 409):
                    raise _InFlight() from None
                if conditions and (code in _NO_CONDITIONS or status == 501):
                    raise _Unsupported() from None
                raise

        self._call(what, put)

    def _call(self, what: str, call: Callable[[], T], missing: str | None = None) -> T:
        """One botocore call; its errors become one sentence naming the problem and the remedy
        (put_if_absent's _Precondition, _InFlight and _Unsupported pass through)."""
        return botocore_call(
            call,
            refused=lambda code, status: self._refused(code, status, what, missing),
            unreachable=lambda error: RemoteUnreachable(
                f"cannot reach S3 at {self._endpoint()} to {what} in the remote run store {self.url} "
                f"({error}); check the network and [runs] endpoint_url, then retry."),
            no_credentials=lambda: RemoteError(
                f"no AWS credentials for the remote run store {self.url}; set AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or [data] profile in nixrepro.toml."),
            failed=lambda error: RemoteError(
                f"S3 failed to {what} in the remote run store {self.url} ({error}); retry, or "
                "check the endpoint and credentials."))

    def _refused(self, code: str, status: int, what: str, missing: str | None) -> RemoteError:
        if missing is not None and code in ("NoSuchKey", "404", "NotFound") and self._bucket_exists():
            return NoSuchKey(f"{self.url} has no {missing}.")
        if status >= 500:  # the service is there but failing (starting, overloaded): retry
            return RemoteUnreachable(
                f"S3 at {self._endpoint()} failed to {what} in the remote run store {self.url} "
                f"({code or status}, a server error); retry later.")
        return RemoteError(self._explain(code, status, what))

    def _explain(self, code: str, status: int, what: str) -> str:
        bucket = self.url.bucket
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and not self._bucket_exists()):
            return (f"the remote run store {self.url} does not exist: there is no bucket {bucket} at "
                    f"{self._endpoint()}; create it (`aws s3 mb s3://{bucket}`) or fix [runs] remote "
                    "in nixrepro.toml.")
        if code in _WRONG_CREDENTIALS:
            return (f"S3 at {self._endpoint()} refused the credentials for the remote run store "
                    f"{self.url} ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                    "AWS_PROFILE.")
        if code in _DENIED or status == 403:
            shown = code if code not in ("403", "Forbidden") else "403 Forbidden"
            return (f"the credentials have no permission to {what} in the remote run store "
                    f"{self.url} ({shown}); ask for s3:GetObject, s3:PutObject and s3:ListBucket "
                    f"on bucket {bucket}, or use credentials that have them.")
        return (f"S3 refused to {what} in the remote run store {self.url} "
                f"({code or status or 'unknown error'}); check the bucket and its permissions.")

    def _bucket_exists(self) -> bool:
        """Whether the bucket is there (a HEAD's 404 has no body: a missing bucket looks like a
        missing key). Asked once; a bucket that exists does not go away mid-command."""
        with self._lock:
            if self._bucket_checked:
                return True
        try:
            self.client.head_bucket(Bucket=self.url.bucket)
        except Exception as exc:
            from botocore.exceptions import ClientError

            # another refusal (403...) is explained by the call that failed
            return not (isinstance(exc, ClientError)
                        and error_code(exc)[0] in ("404", "NoSuchBucket", "NotFound"))
        with self._lock:
            self._bucket_checked = True
        return True

    def _endpoint(self) -> str:
        return shown_endpoint(self.settings)


class _Precondition(Exception):
    """412: the key exists (a conditional write refused)."""


class _InFlight(Exception):
    """409: another conditional write of the key is in progress."""


class _Unsupported(Exception):
    """The service does not take If-None-Match on PutObject."""
