from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NIX_CONFIG, Project, make_project
from tests.s3server import S3Server


@pytest.fixture(scope="session", autouse=True)
def _nix_offline() -> Iterator[None]:
    """Real nix, offline: no substituters, no build users (root without a daemon)."""
    old = os.environ.get("NIX_CONFIG")
    os.environ["NIX_CONFIG"] = NIX_CONFIG
    yield
    if old is None:
        os.environ.pop("NIX_CONFIG", None)
    else:
        os.environ["NIX_CONFIG"] = old


@pytest.fixture(scope="session", autouse=True)
def _private_xdg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The data cache (XDG_CACHE_HOME) and the project's signing key (XDG_CONFIG_HOME) of the tests
    are theirs, never the user's: a real key there would sign the tests' records."""
    names = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME")
    old = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ[name] = str(tmp_path_factory.mktemp(name.lower()))
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def has_nix() -> None:
    if shutil.which("nix") is None:
        pytest.fail("nix is not installed; the README's test command installs nix-bin")


@pytest.fixture
def project(tmp_path: Path, has_nix: None) -> Project:
    """A committed flake project whose env is built and valid in the store."""
    proj = make_project(tmp_path, label=f"env-{tmp_path.name[-12:]}")
    proj.build_env()
    return proj


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real SeaweedFS S3 server for the whole session (see tests/s3server.py)."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh bucket with versioning enabled."""
    return s3_server.new_bucket()
