"""Data for commands that are not Python: ``nixrepro run --input URI[@VERSION] --output LOCAL=URI``.

Inputs are fetched through the cache before the command starts (one that cannot be fetched
refuses the run, nothing recorded); the command finds them through NIXREPRO_INPUTS, a JSON object
uri -> read-only local path. Outputs are stored after the command ends, whatever its exit code;
an output the store cannot take now is kept in the cache as pending for ``nixrepro sync``.
Both are recorded exactly as ``nixrepro.data.input`` / ``output`` record them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import datalog
from .config import DataConfig
from .errors import UsageError

if TYPE_CHECKING:
    from .dataops import Fetched

INPUTS_VARIABLE = "NIXREPRO_INPUTS"


def split_output(text: str) -> tuple[str, str]:
    local, sep, uri = text.partition("=")
    if not sep or not local or "://" not in uri:
        raise UsageError(f"--output {text!r} is not LOCAL=URI; write it as --output model.pt=s3://bucket/model.pt.")
    return local, uri


def check_flags(inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Refuse malformed --input/--output before anything runs."""
    if not inputs and not outputs:
        return
    from .datastore import DataRef, DataURI

    for text in inputs:
        DataURI.parse(DataRef.parse(text).uri)
    for text in outputs:
        DataURI.parse(split_output(text)[1])


def fetch_inputs(inputs: Sequence[str], settings: DataConfig, pins: dict[str, str]) -> list[Fetched]:
    if not inputs:
        return []
    from .dataops import Data
    from .datastore import DataRef

    data = Data(settings)
    fetched = []
    for text in inputs:
        ref = DataRef.parse(text)
        fetched.append(data.fetch(ref.uri, pins.get(ref.uri, ref.version_id)))
    return fetched


def expose_inputs(fetched: Sequence[Fetched], run_dir: Path, env: dict[str, str]) -> None:
    if not fetched:
        return
    for item in fetched:
        datalog.append(run_dir, "input", item.version)
    env[INPUTS_VARIABLE] = json.dumps({item.version.uri: str(item.path) for item in fetched})


def store_outputs(outputs: Sequence[str], cwd: Path, settings: DataConfig, run_dir: Path,
                  warn: Callable[[str], None]) -> None:
    from .dataops import Data
    from .datastore import DataStoreError

    data = Data(settings)
    for text in outputs:
        local, uri = split_output(text)
        path = cwd / local
        if not path.exists():
            warn(f"--output {local} was not written by the command; nothing stored for {uri}.")
            continue
        try:
            version = data.put(path, uri).version
        except DataStoreError as exc:
            version = data.keep_pending(path, uri, run_dir)
            warn(f"{exc} {uri} is kept locally as pending; `nixrepro sync` uploads it.")
        datalog.append(run_dir, "output", version)
