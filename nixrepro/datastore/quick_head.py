"""One S3 HEAD request without botocore, for where botocore's imports would be most of the work.

``nixrepro data put`` of an unchanged directory, and a run's ``--input`` of a version already
cached, need one answer from the store: the latest version of a key (or a version's metadata).
botocore spends 0.2-0.4 s importing before it asks. This module signs that one request itself
(AWS Signature Version 4, stdlib only) where the credentials are plain keys, and gives up (None)
on anything else, for botocore to do as before:

* credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) when no [data]
  profile is set, or a profile's static keys in the shared credentials file whose config names no
  role, SSO, credential process or web identity; anything else (and no credentials) is botocore's;
* addressing: path style on an endpoint given by [data] endpoint_url or AWS_ENDPOINT_URL(_S3);
  AWS's own endpoint for the region, virtual-hosted, for a bucket without dots;
* no proxy in the environment (botocore reads it; a plain socket does not); AWS_CA_BUNDLE is used;
* an answer other than 200 (404, 403, a redirect, a server error), or any error, is botocore's
  to ask again and explain, so that every message stays as the S3 backend words it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from ..config import DataConfig

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TIMEOUT_S = 5
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_NOT_STATIC = ("role_arn", "source_profile", "credential_process", "sso_session", "sso_start_url",
               "sso_account_id", "web_identity_token_file", "credential_source")


class Head(NamedTuple):
    version_id: str
    size: int
    metadata: dict[str, str]  # x-amz-meta-*, names in lower case (as botocore gives them)
    modified: str | None  # ISO 8601, as botocore's LastModified.isoformat()


class Keys(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None


class QuickHead:
    """Signed HEAD requests to one S3 endpoint with one set of static keys."""

    def __init__(self, keys: Keys, region: str, endpoint: str | None) -> None:
        self.keys, self.region, self.endpoint = keys, region, endpoint

    @classmethod
    def configure(cls, settings: DataConfig) -> QuickHead | None:
        """The quick path for these settings, None where botocore must do it."""
        if any(os.environ.get(name) for name in _PROXIES):
            return None
        profile = settings.profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
        keys = None if settings.profile else _environment_keys()
        region = settings.region or os.environ.get("AWS_DEFAULT_REGION")
        # the config file only where the environment does not say it all (configparser: 5 ms)
        config = None if keys is not None and region else \
            _profile_section(_config_file(), profile or "default", config=True)
        if keys is None:
            if config is not None and any(name in config for name in _NOT_STATIC):
                return None
            credentials = _profile_section(_credentials_file(), profile or "default", config=False)
            if credentials is None or any(name in credentials for name in _NOT_STATIC):
                return None
            access, secret = credentials.get("aws_access_key_id"), credentials.get("aws_secret_access_key")
            if not access or not secret:
                return None
            keys = Keys(access, secret, credentials.get("aws_session_token"))
        region = region or (config or {}).get("region") or os.environ.get("AWS_REGION") or "us-east-1"
        endpoint = (settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        return cls(keys, region, endpoint)

    def head(self, bucket: str, key: str, version_id: str | None) -> Head | None:
        """The object's (or version's) headers; None for anything but a plain 200."""
        try:
            return self._head(bucket, key, version_id)
        except (OSError, ValueError, UnicodeError):
            return None

    def _head(self, bucket: str, key: str, version_id: str | None) -> Head | None:
        path = "/" + quote(key, safe="/-_.~")
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            scheme, host = parts.scheme, parts.netloc
            path = parts.path.rstrip("/") + "/" + quote(bucket, safe="-_.~") + path
        elif "." in bucket:
            return None  # virtual-hosted over https cannot name it; path style is botocore's call
        else:
            scheme, host = "https", f"{bucket}.s3.{self.region}.amazonaws.com"
        if scheme not in ("http", "https") or "@" in host:
            return None
        query = f"versionId={quote(version_id, safe='-_.~')}" if version_id else ""
        status, headers = _exchange(scheme, host, path + (f"?{query}" if query else ""),
                                    self._signed(host, path, query))
        if status != 200:
            return None
        version, size = headers.get("x-amz-version-id"), headers.get("content-length")
        if version is None or size is None:
            return None
        metadata = {name[len("x-amz-meta-"):]: value for name, value in headers.items()
                    if name.startswith("x-amz-meta-")}
        return Head(version, int(size), metadata, _iso(headers.get("last-modified")))

    def _signed(self, host: str, path: str, query: str) -> dict[str, str]:
        """The headers of a SigV4-signed HEAD (docs.aws.amazon.com/AmazonS3/latest/API/
        sig-v4-header-based-auth.html): the canonical request, the string to sign, the key."""
        now = dt.datetime.now(dt.timezone.utc)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
        if self.keys.token:
            headers["x-amz-security-token"] = self.keys.token
        names = sorted(headers)
        canonical = "\n".join(["HEAD", path, query, *(f"{name}:{headers[name]}" for name in names), "",
                               ";".join(names), EMPTY_SHA256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = f"AWS4{self.keys.secret_key}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.keys.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return headers


def _exchange(scheme: str, host: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """One HEAD request on its own connection: (status, headers with names in lower case).

    A socket, not http.client: http.client imports the email package (15-20 ms), and a HEAD
    answer is a status line and headers, no body."""
    import socket

    name, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
    address = name.strip("[]")
    connection = socket.create_connection(
        (address, int(port) if port else (443 if scheme == "https" else 80)), timeout=TIMEOUT_S)
    try:
        if scheme == "https":
            import ssl

            context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            connection = context.wrap_socket(connection, server_hostname=address)
        lines = [f"HEAD {target} HTTP/1.1", *(f"{key}: {value}" for key, value in headers.items()),
                 "Connection: close", "", ""]
        connection.sendall("\r\n".join(lines).encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            if not chunk or len(answer) > 1 << 20:
                raise ValueError("the answer ended, or never did, before its headers")
            answer += chunk
    finally:
        connection.close()
    status_line, *header_lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP answer: {status_line!r}")
    found: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or name[:1] in (" ", "\t"):
            raise ValueError("a header line that is not NAME: VALUE")
        found[name.strip().lower()] = value.strip()
    return int(status), found


def _environment_keys() -> Keys | None:
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return Keys(access, secret, os.environ.get("AWS_SESSION_TOKEN") or None) if access and secret else None


def _credentials_file() -> Path:
    return Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")


def _config_file() -> Path:
    return Path(os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")


def _profile_section(path: Path, profile: str, *, config: bool) -> dict[str, str] | None:
    """The profile's keys in an AWS ini file (``[profile NAME]`` in the config file but for
    default); None when the file or the section is not there or cannot be read."""
    import configparser

    parser = configparser.RawConfigParser()
    try:
        if not parser.read(path):
            return None
    except (configparser.Error, UnicodeDecodeError):
        return None
    name = f"profile {profile}" if config and profile != "default" else profile
    return dict(parser[name]) if parser.has_section(name) else None


_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def _iso(http_date: str | None) -> str | None:
    """``Tue, 01 Dec 2026 13:00:00 GMT`` (RFC 9110's date) as ISO 8601 in UTC, as botocore's
    LastModified.isoformat() writes it; by hand: email.utils is another 10 ms of imports."""
    try:
        _, day, month, year, clock, zone = (http_date or "").split()
        hour, minute, second = (int(part) for part in clock.split(":"))
        if zone != "GMT":
            return None
        return dt.datetime(int(year), _MONTHS[month], int(day), hour, minute, second,
                           tzinfo=dt.timezone.utc).isoformat()
    except (ValueError, KeyError):
        return None
