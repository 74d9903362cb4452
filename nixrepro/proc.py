"""The one place that starts outside programs for the library (git, nix, nvidia-smi).

Always an argv list, never a shell. Each tool module (``nix``, ``git``) wraps :func:`run` and
chooses which error class a failure becomes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CommandError, ToolMissingError


def which(program: str, env: Mapping[str, str] | None = None) -> str | None:
    """Full path of ``program`` on PATH (of ``env`` when given), or None."""
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    return shutil.which(program, path=path)


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
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, capture its output as text, raise ``error`` on a non-zero exit.

    A program that is not installed raises :class:`ToolMissingError` with ``missing_hint``.
    """
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            raise
        raise ToolMissingError(
            f"`{argv[0]}` is not installed or not on PATH{'; ' + missing_hint if missing_hint else ''}."
        ) from exc
    if check and proc.returncode != 0:
        raise error(argv, proc.returncode, proc.stderr)
    return proc
