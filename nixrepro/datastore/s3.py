"""The one module that talks to S3 (botocore, imported lazily: only s3:// URIs pay for it).

Endpoint, region and credentials come from ``[data]`` or the standard AWS chain (AWS_PROFILE,
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, ~/.aws). botocore's errors become one-sentence
:class:`DataStoreError` messages that never contain a credential: :func:`botocore_call` sorts them,
for this store and for the remote run store (nixrepro.remote.s3), and each words its own.

Transfers: small objects are one ``put_object``; large ones a multipart upload whose parts go up
in parallel, so that the version id comes back from CompleteMultipartUpload (boto3's transfer
manager does not return it). Large downloads are parallel ranged GETs written in place.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..config import DataConfig
from ..errors import UsageError
from ..redact import scrub_url
from . import (
    DataStoreError,
    DataStoreUnreachable,
    DataURI,
    Kind,
    NoSuchObject,
    ObjectVersion,
    check_segments,
    quick_head,
)

# Measured on loopback SeaweedFS with 2 cores (bench/data.py): uploads, 10 parts in flight beat
# more threads (which only contend for the GIL), and the client's CPU is boto3's whatever the part
# size (0.6 s for 0.25 GiB), so what is left to win is the server's work per request: a file is
# cut into about one part per thread, 8 to 32 MiB (256 MiB: 10 parts, not 32; at most 10 parts of
# 32 MiB are held in memory). Downloads: fewer, bigger ranges win (1 GiB: 705 MB/s with 8 MiB
# ranges, 1,090 MB/s with 64 MiB; boto3's default 420), one range per thread, 8 to 64 MiB.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_MIN = 8 * 1024 * 1024
PART_MAX = 32 * 1024 * 1024
UPLOAD_THREADS = 10
RANGE_MIN = 8 * 1024 * 1024
RANGE_MAX = 64 * 1024 * 1024
THREADS = 10  # download ranges in flight
POOL = 32  # connections: also many small objects put at once (dataops)
SHA_KEY = "sha256"  # x-amz-meta-sha256
KIND_KEY = "nixrepro-kind"
T = TypeVar("T")
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                     "ExpiredToken", "403"}


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def parse_location(text: str, rest: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ("bucket", "key"); checked here, before botocore is imported."""
    bucket, _, key = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise UsageError(f"{text}: {bucket!r} is not a valid S3 bucket name; use s3://bucket/key.")
    if key.startswith("/"):
        raise UsageError(f"{text}: the key is an absolute path; write s3://{bucket}/{key.lstrip('/')}.")
    check_segments(text, key)
    return bucket, key.rstrip("/")


def open_backend(settings: DataConfig) -> S3Store:
    return S3Store(settings)


def part_size(size: int) -> int:
    """The part each upload request sends: about one per thread, 8 to 32 MiB, whole MiB."""
    mib = 1024 * 1024
    return max(PART_MIN, min(PART_MAX, -(-size // UPLOAD_THREADS // mib) * mib))


def range_size(size: int) -> int:
    """The byte range each download request asks for: about one per thread, 8 to 64 MiB."""
    return max(RANGE_MIN, min(RANGE_MAX, -(-size // THREADS)))


def make_client(settings: DataConfig, *, retries: int = 3, read_timeout: float = 60) -> Any:
    """An S3 client from botocore directly: boto3's session layer adds 0.1 s of imports and
    nothing used here (the multipart transfers are our own). ``read_timeout``: the seconds a
    request waits for the server's next bytes before it is given up (or retried)."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session(profile=settings.profile)
    return session.create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=Config(retries={"max_attempts": retries, "mode": "standard"}, connect_timeout=5,
                      read_timeout=read_timeout, max_pool_connections=POOL,
                      # botocore's default CRC32 of every body is redundant here: each object's
                      # sha256 is kept with it and checked on download, and SigV4 signs the
                      # payload over http (TLS guards it over https). Skipping it: +10-25%
                      # small objects per second on 2 cores.
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


def botocore_call(call: Callable[[], T], *, refused: Callable[[str, int], Exception],
                  unreachable: Callable[[str], Exception], no_credentials: Callable[[], Exception],
                  failed: Callable[[str], Exception]) -> T:
    """Run one botocore call; each way it fails becomes the caller's error, one sentence naming
    the problem and the remedy (botocore's own exception not chained to it).

    ``refused(code, status)``: the service answered no (its error code, its HTTP status or 0);
    ``unreachable(error)``: refused, reset, cut short, the store is away (botocore's error's class
    name); ``no_credentials()``: botocore found none; ``failed(error)``: any other botocore error.
    Anything else the call raises passes through as it is.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    try:
        return call()
    except ClientError as exc:
        raise refused(*error_code(exc)) from None
    # refused (EndpointConnectionError, a ConnectionError), reset, cut short
    except (HTTPClientError, IncompleteReadError, BotoConnectionError) as exc:
        raise unreachable(type(exc).__name__) from None
    except NoCredentialsError:
        raise no_credentials() from None
    except BotoCoreError as exc:
        raise failed(type(exc).__name__) from None


def error_code(exc: Any) -> tuple[str, int]:
    """A botocore ClientError's code ("NoSuchKey", "404"...) and HTTP status (0: none)."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return str(error.get("Code", "")), int(status)


def shown_endpoint(settings: DataConfig) -> str:
    """The endpoint as messages name it: a password in its URL never reaches them."""
    return scrub_url(settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                     or os.environ.get("AWS_ENDPOINT_URL") or "AWS")


class S3Store:
    def __init__(self, settings: DataConfig) -> None:
        self.settings = settings
        self._client: Any = None  # botocore's, made when a call needs it (0.2-0.4 s of imports)
        self._quick: quick_head.QuickHead | bool | None = False  # False: not yet looked for
        self._client_lock = threading.Lock()
        self._versioned: set[str] = set()
        self._lock = threading.Lock()
        self._completed_hook = False
        self._completed_versions: dict[tuple[str, str], Any] = {}

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = make_client(self.settings)
            return self._client

    # --- the DataStore interface --------------------------------------------------------------

    def put_file(self, uri: DataURI, path: Path, sha256: str, kind: Kind = "file") -> ObjectVersion:
        self._check_versioning(uri)
        size = path.stat().st_size
        metadata = {SHA_KEY: sha256, KIND_KEY: kind}
        if size < MULTIPART_THRESHOLD:
            with open(path, "rb") as body:
                reply = self._call(uri, lambda: self.client.put_object(
                    Bucket=uri.bucket, Key=uri.key, Body=body, Metadata=metadata))
        else:
            reply = self._multipart(uri, path, size, metadata)
        return ObjectVersion(str(uri), str(reply["VersionId"]), sha256, size, kind, latest=True)

    def head(self, uri: DataURI, version_id: str | None = None) -> ObjectVersion:
        # An answer without botocore where the credentials are plain keys (nixrepro.datastore.
        # quick_head): re-putting an unchanged directory is then one HEAD, not botocore's imports.
        if self._quick is False:
            self._quick = quick_head.QuickHead.configure(self.settings)
        if isinstance(self._quick, quick_head.QuickHead):
            found = self._quick.head(uri.bucket, uri.key, version_id)
            if found is not None:
                return ObjectVersion(str(uri), found.version_id, found.metadata.get(SHA_KEY), found.size,
                                     found.metadata.get(KIND_KEY, "file"),  # type: ignore[arg-type]
                                     found.modified, latest=version_id is None)
        extra = {"VersionId": version_id} if version_id else {}
        reply = self._call(uri, lambda: self.client.head_object(Bucket=uri.bucket, Key=uri.key, **extra),
                           version_id=version_id)
        meta = reply.get("Metadata", {})
        modified = reply.get("LastModified")
        return ObjectVersion(str(uri), str(reply.get("VersionId")), meta.get(SHA_KEY),
                             int(reply["ContentLength"]), meta.get(KIND_KEY, "file"),
                             modified.isoformat() if modified else None, latest=version_id is None)

    def download(self, uri: DataURI, version_id: str, dest: Path, size: int | None = None) -> None:
        if size is None:
            size = self.head(uri, version_id).size
        # The body is read inside _call: a server that dies mid-stream raises from the read, not
        # from get_object, and must become the same one-sentence "unreachable" error.
        if size < MULTIPART_THRESHOLD:
            def whole() -> None:
                reply = self.client.get_object(Bucket=uri.bucket, Key=uri.key, VersionId=version_id)
                with open(dest, "wb") as out:
                    for chunk in reply["Body"].iter_chunks(1024 * 1024):
                        out.write(chunk)

            self._call(uri, whole, version_id=version_id)
            return
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            step = range_size(size)

            def fetch(start: int) -> None:
                end = min(start + step, size) - 1

                def one_range() -> None:
                    reply = self.client.get_object(Bucket=uri.bucket, Key=uri.key, VersionId=version_id,
                                                   Range=f"bytes={start}-{end}")
                    offset = start
                    for chunk in reply["Body"].iter_chunks(1024 * 1024):
                        os.pwrite(fd, chunk, offset)
                        offset += len(chunk)
                    if offset != end + 1:
                        raise DataStoreUnreachable(f"S3 sent {offset - start} of {end + 1 - start} bytes "
                                                   f"of a range of {uri}; retry.")

                self._call(uri, one_range, version_id=version_id)

            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(fetch, range(0, size, step)))
        finally:
            os.close(fd)

    def versions(self, uri: DataURI) -> list[ObjectVersion]:
        found: list[ObjectVersion] = []
        paginator = self.client.get_paginator("list_object_versions")
        pages = self._call(uri, lambda: list(paginator.paginate(Bucket=uri.bucket, Prefix=uri.key)))
        for page in pages:
            for item in page.get("Versions", []):
                if item["Key"] == uri.key:
                    modified = item.get("LastModified")
                    found.append(ObjectVersion(str(uri), str(item["VersionId"]), None, int(item["Size"]),
                                               "file", modified.isoformat() if modified else None,
                                               bool(item.get("IsLatest"))))
        if not found:
            raise NoSuchObject(f"there is no object at {uri}; `nixrepro data ls` lists what is there.")
        found.sort(key=lambda v: (v.modified or "", v.latest), reverse=True)
        return [self._with_meta(uri, v) for v in found]

    def listing(self, uri: DataURI) -> list[ObjectVersion]:
        prefix = f"{uri.key}/" if uri.key else ""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(uri, lambda: list(paginator.paginate(Bucket=uri.bucket, Prefix=prefix)))
        found = []
        for page in pages:
            for item in page.get("Contents", []):
                modified = item.get("LastModified")
                found.append(ObjectVersion(f"s3://{uri.bucket}/{item['Key']}", "", None, int(item["Size"]),
                                           "file", modified.isoformat() if modified else None, True))
        return found

    # --- plain objects (the archive's mirror, nixrepro.archive_mirror) ---------------------------

    def put_object(self, uri: DataURI, path: Path) -> None:
        """Write ``path`` as the object ``uri``, replacing it: no versioning needed, no metadata
        (a binary cache's files are checked by nix, against their narinfo's hashes)."""
        with open(path, "rb") as body:
            self._call(uri, lambda: self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=body))

    def get_object(self, uri: DataURI, dest: Path) -> None:
        """Write the current bytes of ``uri`` to ``dest``; NoSuchObject when there is none."""
        def whole() -> None:
            reply = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
            with open(dest, "wb") as out:
                for chunk in reply["Body"].iter_chunks(1024 * 1024):
                    out.write(chunk)

        self._call(uri, whole)

    # --- helpers --------------------------------------------------------------------------------

    def _with_meta(self, uri: DataURI, version: ObjectVersion) -> ObjectVersion:
        full = self.head(uri, version.version_id)
        return ObjectVersion(version.uri, version.version_id, full.sha256, version.size, full.kind,
                             version.modified, version.latest)

    def _multipart(self, uri: DataURI, path: Path, size: int, metadata: dict[str, str]) -> Any:
        """A parallel multipart upload through s3transfer (as fast as boto3's best setting,
        bench/data.py); the version id comes from CompleteMultipartUpload's reply, caught on the
        client's event hook because s3transfer does not return it."""
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import S3Transfer, TransferConfig

        if not self._completed_hook:
            self.client.meta.events.register("after-call.s3.CompleteMultipartUpload", self._completed)
            self._completed_hook = True
        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=part_size(size),
                                max_concurrency=UPLOAD_THREADS)
        transfer = S3Transfer(self.client, config)
        try:
            self._call(uri, lambda: transfer.upload_file(str(path), uri.bucket, uri.key,
                                                         extra_args={"Metadata": metadata}))
        except S3UploadFailedError as exc:  # s3transfer's wrapper of a refused part
            raise DataStoreError(f"S3 refused the upload of {uri} ({str(exc).split(': ')[-1]}); "
                                 "retry, or check the bucket and credentials.") from None
        with self._lock:
            version_id = self._completed_versions.pop((uri.bucket, uri.key))
        return {"VersionId": version_id}

    def _completed(self, parsed: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self._completed_versions[(str(parsed.get("Bucket")), str(parsed.get("Key")))] = \
                parsed.get("VersionId")

    def _check_versioning(self, uri: DataURI) -> None:
        if uri.bucket in self._versioned:
            return
        reply = self._call(uri, lambda: self.client.get_bucket_versioning(Bucket=uri.bucket))
        if reply.get("Status") != "Enabled":
            endpoint = f" --endpoint-url {self._endpoint()}" if self._endpoint() != "AWS" else ""
            raise DataStoreError(
                f"bucket {uri.bucket} has no object versioning, so old versions would be lost; enable it "
                f"with `aws s3api put-bucket-versioning --bucket {uri.bucket} "
                f"--versioning-configuration Status=Enabled{endpoint}`."
            )
        self._versioned.add(uri.bucket)

    def _call(self, uri: DataURI, call: Callable[[], T], version_id: str | None = None) -> T:
        """Run one botocore call; its errors become one sentence naming the problem and the remedy."""
        return botocore_call(
            call,
            refused=lambda code, _status: self._refused(uri, code, version_id),
            # the store is away: an output is kept pending rather than failed
            unreachable=lambda error: DataStoreUnreachable(
                f"cannot reach S3 at {self._endpoint()} for {uri} ({error}); check the network "
                "and endpoint_url, then retry (`nixrepro sync` uploads what is pending)."),
            no_credentials=lambda: DataStoreError(
                f"no AWS credentials for {uri}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE, or [data] profile in nixrepro.toml."),
            failed=lambda error: DataStoreError(
                f"S3 failed for {uri} ({error}); retry, or check the endpoint and credentials."))

    def _refused(self, uri: DataURI, code: str, version_id: str | None) -> DataStoreError:
        if code in ("404", "NotFound") and not self._bucket_exists(uri.bucket):
            code = "NoSuchBucket"  # a HEAD has no body: a missing bucket is a bare 404 too
        missing = code in ("NoSuchKey", "404", "NotFound") and not version_id
        error = NoSuchObject if missing else DataStoreError
        return error(self._explain(uri, code, version_id))

    def _endpoint(self) -> str:
        return shown_endpoint(self.settings)

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self.client.head_bucket(Bucket=bucket)
            return True
        except Exception:
            return False

    @staticmethod
    def _explain(uri: DataURI, code: str, version_id: str | None) -> str:
        if code == "NoSuchBucket":
            return f"bucket {uri.bucket} does not exist; create it (with versioning) or fix the URI."
        if code in ("NoSuchVersion", "InvalidArgument") and version_id:
            return f"{uri} has no version {version_id}; `nixrepro data versions {uri}` lists them."
        if code in ("NoSuchKey", "404", "NotFound"):
            if version_id:
                return f"{uri} has no version {version_id}; `nixrepro data versions {uri}` lists them."
            return f"there is no object at {uri}; `nixrepro data ls` lists what is there."
        if code in _CREDENTIAL_CODES:
            return (f"S3 refused the credentials for bucket {uri.bucket} ({code}); check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE.")
        return f"S3 refused the request for {uri} ({code or 'unknown error'}); check the URI and permissions."
