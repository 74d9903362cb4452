"""Versioned data from inside an experiment: ``nixrepro.data.input`` and ``nixrepro.data.output``.

    import nixrepro.data
    train = nixrepro.data.input("s3://ml-data/train.csv")          # a read-only path in the cache
    nixrepro.data.output("model.pt", "s3://ml-data/models/model.pt")

Each call is recorded in the run's ``data.inputs`` / ``data.outputs`` (uri, version id, sha256,
size). Under ``nixrepro reproduce`` the runner passes the recorded versions as pins, and
``input`` returns exactly those even when newer ones exist. An output the store cannot take now
(S3 unreachable) stays in the local cache, is recorded as pending, and ``nixrepro sync`` uploads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import datalog
from .experiment import run_dir

if TYPE_CHECKING:
    from .datastore.ops import Data
    from .record import DataVersion

SETTINGS_VARIABLE = "NIXREPRO_DATA_CONFIG"  # the [data] section, as JSON, set by `nixrepro run`
_data: list[Data] = []


def _ops() -> Data:
    """One Data per process, configured like the run that started it (or the project's config)."""
    if not _data:
        from .config import DataConfig
        from .datastore.ops import Data, project_settings

        raw = os.environ.get(SETTINGS_VARIABLE)
        settings = DataConfig(**json.loads(raw)) if raw else project_settings()
        _data.append(Data(settings))
    return _data[0]


def pins() -> dict[str, str]:
    """uri -> version id the runner pinned (``reproduce``); empty in a normal run."""
    raw = os.environ.get(datalog.PINS_VARIABLE)
    return {str(k): str(v) for k, v in json.loads(raw).items()} if raw else {}


def input(uri: str, version: str | None = None) -> Path:  # shadows the builtin here only
    """The data at ``uri`` (latest now, or ``version``, or the runner's pin), as a read-only path."""
    pinned = pins().get(uri, version)
    fetched = _ops().fetch(uri, pinned)
    directory = run_dir()
    if directory is not None:
        datalog.append(directory, "input", fetched.version)
    return fetched.path


def output(local: str | Path, uri: str) -> DataVersion:
    """Store ``local`` (a file or a directory) as a new version of ``uri`` and record it.

    If the store cannot take it now, the bytes are kept in the local cache, the output is recorded
    as pending, and ``nixrepro sync`` uploads it later: nothing is lost.
    """
    from .datastore import DataStoreError

    path, directory = Path(local), run_dir()
    try:
        version = _ops().put(path, uri).version
    except DataStoreError as exc:  # unreachable, or refusing: either way the bytes are kept
        import sys

        version = _ops().keep_pending(path, uri, directory)
        print(f"nixrepro: warning: {exc} {uri} is kept locally as pending; `nixrepro sync` "
              "uploads it.", file=sys.stderr)
    if directory is not None:
        datalog.append(directory, "output", version)
    return version
