"""The one place that starts outside programs for the library (git, nix, nvidia-smi).

Always an argv list, never a shell. Each tool module (``nix``, ``git``) wraps :func:`run` and
chooses which error class a failure becomes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from .errors import CommandError, ToolMissingError


def which(program: str, env: Mapping[str, str] | None = None) -> str | None:
    """Full path of ``program`` on PATH (of ``env`` when given), or None."""
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    # shutil.which's search on POSIX, without importing shutil (bz2, lzma: ~3 ms of a run's start)
    if os.path.dirname(program):
        return program if _executable(program) else None
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory, program)
        if _executable(candidate):
            return candidate
    return None


def _executable(path: str) -> bool:
    return os.path.exists(path) and os.access(path, os.X_OK) and not os.path.isdir(path)


def run(
    argv: Sequence[str],
    *,
    error: type[CommandError] = CommandError,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    missing_hint: str = "",
    timeout: float | None = None,
    stream_stderr: TextIO | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, capture its output as text, raise ``error`` on a non-zero exit.

    ``stream_stderr``: also copy the program's stderr there line by line as it comes (a long
    ``nix build`` shows its progress instead of a silent wait); it is captured all the same.
    ``timeout`` applies to captured runs only: a streamed build runs as long as it takes.
    A program that is not installed raises :class:`ToolMissingError` with ``missing_hint``.
    """
    try:
        if stream_stderr is None:
            proc = subprocess.run(
                list(argv),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                input=input,
                capture_output=True,
                text=True,
                # bytes that are not UTF-8 (a file name, a patch) survive: .encode(errors=
                # "surrogateescape") gives them back exactly
                encoding="utf-8",
                errors="surrogateescape",
                check=False,
                timeout=timeout,
            )
        else:
            proc = _run_streaming(argv, cwd, env, input, stream_stderr)
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            raise
        raise ToolMissingError(
            f"`{argv[0]}` is not installed or not on PATH{'; ' + missing_hint if missing_hint else ''}."
        ) from exc
    if check and proc.returncode != 0:
        raise error(argv, proc.returncode, proc.stderr)
    return proc


def _run_streaming(argv: Sequence[str], cwd: Path | str | None, env: Mapping[str, str] | None,
                   input: str | None, stream: TextIO) -> subprocess.CompletedProcess[str]:
    import threading

    child = subprocess.Popen(
        list(argv), cwd=cwd, env=dict(env) if env is not None else None, text=True,
        encoding="utf-8", errors="surrogateescape",
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    errors: list[str] = []

    def copy_stderr() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            errors.append(line)
            stream.write(line)
            stream.flush()

    reader = threading.Thread(target=copy_stderr, daemon=True)
    reader.start()
    try:
        if input is not None:
            assert child.stdin is not None
            child.stdin.write(input)
            child.stdin.close()
        out = child.stdout.read()
        child.wait()
    except BaseException:  # Ctrl-C: the build stops with us
        child.kill()
        child.wait()
        raise
    finally:
        reader.join()
    return subprocess.CompletedProcess(list(argv), child.returncode, out, "".join(errors))
