"""Data for commands that are not Python: ``nixrepro run --input URI[@VERSION] --output LOCAL=URI``.

Inputs are fetched through the cache before the command starts (one that cannot be fetched
refuses the run, nothing recorded); the command finds them through NIXREPRO_INPUTS, a JSON object
uri -> read-only local path. Outputs are stored after the command ends, whatever its exit code;
an output the store cannot take now is kept in the cache as pending for ``nixrepro sync``.
Both are recorded exactly as ``nixrepro.data.input`` / ``output`` record them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import datalog, rundir
from ..config import DataConfig
from ..errors import UsageError
from ..record import OutputResult
from ..supervise import Interrupted, StopSignals
from . import VERSIONS_DIR, DataStoreError

if TYPE_CHECKING:
    from .ops import Data, Fetched

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
    from . import DataRef, DataURI

    for text in inputs:
        DataURI.parse(DataRef.parse(text).uri)
    for text in outputs:
        DataURI.parse(split_output(text)[1])


def fetch_inputs(inputs: Sequence[str], settings: DataConfig, pins: dict[str, str]) -> list[Fetched]:
    if not inputs:
        return []
    from . import DataRef
    from .ops import Data

    data = Data(settings)
    fetched = []
    for text in inputs:
        ref = DataRef.parse(text)
        # a key holding '@' (s3://b/a@b) is pinned under its whole text, which parses as URI@VERSION
        pin = pins.get(text) or pins.get(ref.uri, ref.version_id)
        fetched.append(data.fetch(ref.uri if text not in pins else text, pin))
    return fetched


def expose_inputs(fetched: Sequence[Fetched], run_dir: Path, env: dict[str, str]) -> None:
    if not fetched:
        return
    for item in fetched:
        datalog.append(run_dir, "input", item.version)
    env[INPUTS_VARIABLE] = json.dumps({item.version.uri: str(item.path) for item in fetched})


def declare_outputs(outputs: Sequence[str], run_dir: Path) -> None:
    """Note every --output as waiting before the command starts: a crashed run still lists it."""
    for text in outputs:
        local, uri = split_output(text)
        rundir.note_output(run_dir, OutputResult(uri, local, "waiting"))


def store_outputs(outputs: Sequence[str], cwd: Path, settings: DataConfig, run_dir: Path,
                  warn: Callable[[str], None], stops: StopSignals | None = None) -> None:
    """Store each output, or keep it pending, or say why neither was possible; never raises.

    What became of each output goes to the run directory (nixrepro.rundir), whatever fails: the
    record is written after this, so no error here may cost the run its outcome. A signal stops
    the upload in progress; that output and the ones after it are then kept in the local cache
    for ``nixrepro sync`` (a copy, no network), and a second signal stops that too.
    """
    from .ops import Data

    stops = stops or StopSignals()
    data = Data(settings)
    for text in outputs:
        local, uri = split_output(text)
        result = _store_one(data, cwd / local, local, uri, run_dir, stops)
        _note(run_dir, result)
        if result.state != "stored":
            warn(f"--output {local}: {result.reason}.")


def _store_one(data: Data, path: Path, local: str, uri: str, run_dir: Path,
               stops: StopSignals) -> OutputResult:
    problem = unstorable(path, local)
    if problem is not None:
        state = "missing" if problem.endswith("was not written by the command") else "failed"
        return OutputResult(uri, local, state, f"{problem}; nothing was stored for {uri}")
    keep = f"it is still at {local}: `nixrepro data put {local} {uri}` stores it"
    _note(run_dir, OutputResult(uri, local, "storing"))
    why: str
    if len(stops.received) == 0:
        try:
            version = stops.interruptible(lambda: data.put(path, uri).version)
        except KeyboardInterrupt as exc:
            why = f"the upload was interrupted ({_signal_name(exc)})"
        except DataStoreError as exc:  # the store is unreachable or refuses: keep the bytes
            why = str(exc).rstrip(".")
        except Exception as exc:  # anything else (unreadable files, a full cache): say what
            return OutputResult(uri, local, "failed", f"it could not be stored ({_describe(exc)}); {keep}")
        else:
            datalog.append(run_dir, "output", version)
            return OutputResult(uri, local, "stored")
    else:
        why = f"nixrepro was asked to stop ({_signal_name(None, stops)}) before its upload"
    if len(stops.received) > 1:
        return OutputResult(uri, local, "failed", f"{why}, and asked again to stop; {keep}")
    try:
        version = stops.interruptible(lambda: data.keep_pending(path, uri, run_dir))
    except KeyboardInterrupt as exc:
        return OutputResult(uri, local, "failed",
                            f"{why}, and keeping it locally was interrupted ({_signal_name(exc)}); {keep}")
    except Exception as exc:
        return OutputResult(uri, local, "failed",
                            f"{why}, and it could not be kept locally ({_describe(exc)}); {keep}")
    datalog.append(run_dir, "output", version)
    return OutputResult(uri, local, "pending",
                        f"{why}; it is kept locally as pending: `nixrepro sync` uploads it")


def _note(run_dir: Path, result: OutputResult) -> None:
    """Note an output's state; a run directory that cannot take the line (a full disk) must not
    stop the others from being stored (the warning still says what became of it)."""
    with contextlib.suppress(OSError):
        rundir.note_output(run_dir, result)


def unstorable(path: Path, local: str) -> str | None:
    """Why ``path`` cannot be stored as a version, without ever opening it (a FIFO would block
    the recorder forever), or None. A directory is walked once, links followed, loops found."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return f"{local} was not written by the command"
    except OSError as exc:
        return f"{local} cannot be read ({_describe(exc)})"
    if stat.S_ISLNK(st.st_mode):
        try:
            st = path.stat()
        except OSError as exc:
            kind = "a symlink loop" if exc.errno == errno.ELOOP else "a symlink to nothing"
            return f"{local} is {kind} (it points to {os.readlink(path)!r}); point it at the data"
    if stat.S_ISREG(st.st_mode):
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"{local} is {_kind(st.st_mode)}, not a file or a directory"
    return _tree_problem(path, local, {(st.st_dev, st.st_ino)})


def _tree_problem(directory: Path, local: str, ancestors: set[tuple[int, int]]) -> str | None:
    """A loop or an unreadable entry under ``directory``, or an empty tree; iterative depth."""
    files = 0
    stack: list[tuple[Path, str, set[tuple[int, int]]]] = [(directory, local, ancestors)]
    while stack:
        here, shown, seen = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            return f"{shown} cannot be read ({_describe(exc)})"
        for entry in entries:
            name = f"{shown}/{entry.name}"
            try:
                st = os.stat(entry.path)  # links followed, as the upload follows them
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return f"{name} is a symlink loop; remove it"
                continue  # a dangling link holds no data; the upload skips it too
            if stat.S_ISDIR(st.st_mode):
                if entry.name == VERSIONS_DIR:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    return f"{name} is a symlink loop (it leads back to a directory above it); remove it"
                stack.append((Path(entry.path), name, seen | {(st.st_dev, st.st_ino)}))
            elif stat.S_ISREG(st.st_mode):
                files += 1
    return None if files else f"{local} is a directory with no files in it"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).rstrip(".") or type(exc).__name__


def _signal_name(exc: BaseException | None, stops: StopSignals | None = None) -> str:
    if isinstance(exc, Interrupted):
        return str(exc)
    if stops is not None and stops.first:
        return stops.first
    return "SIGINT"
