"""Run the experiment's process: tee its output, forward signals, report how it ended.

The child gets its own process group. When nixrepro owns the terminal, that group is made the
terminal's foreground group (as a shell does), so Ctrl-C reaches the experiment exactly once and
a debugger in the experiment can still read the keyboard. Signals sent to nixrepro itself
(SIGINT, SIGTERM, SIGHUP) are forwarded to the child's group; nixrepro then waits for the child to
finish so the record is always completed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from .redact import Redactor

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
INTERRUPTING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
# How long to keep reading output after the child exits (a daemonised grandchild may hold it open).
DRAIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None  # None when killed by a signal
    signal: str | None  # "SIGTERM" ...
    duration_s: float
    received: str | None  # a signal nixrepro itself received and forwarded

    @property
    def status(self) -> str:
        if self.exit_code == 0:
            return "succeeded"
        died_of = signal.Signals[self.signal] if self.signal else None
        if died_of in INTERRUPTING or self.exit_code == 130 or self.received:
            return "interrupted"
        return "failed"

    @property
    def shell_exit_code(self) -> int:
        """What nixrepro exits with: the child's code, or 128 + signal number like a shell."""
        if self.exit_code is not None:
            return self.exit_code
        return 128 + int(signal.Signals[self.signal]) if self.signal else 1


def supervise(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout_log: Path,
    stderr_log: Path,
    redactor: Redactor,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> Outcome:
    """Run ``argv`` to completion; raises FileNotFoundError/PermissionError if it cannot start."""
    term_out = stdout if stdout is not None else sys.stdout.buffer
    term_err = stderr if stderr is not None else sys.stderr.buffer
    started = time.monotonic()
    received: list[int] = []
    with open(stdout_log, "ab") as out_log, open(stderr_log, "ab") as err_log:
        child = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=os.setpgrp,
        )
        assert child.stdout is not None and child.stderr is not None
        tees = [
            _tee(child.stdout, term_out, redactor.writer(out_log)),
            _tee(child.stderr, term_err, redactor.writer(err_log)),
        ]
        with _foreground(child.pid), _forwarding(child.pid, received):
            returncode = child.wait()
        drain_until = time.monotonic() + DRAIN_TIMEOUT_S  # one budget for both streams
        for tee in tees:
            tee.join(max(0.0, drain_until - time.monotonic()))
    duration = time.monotonic() - started
    return Outcome(
        exit_code=returncode if returncode >= 0 else None,
        signal=signal.Signals(-returncode).name if returncode < 0 else None,
        duration_s=round(duration, 6),
        received=signal.Signals(received[0]).name if received else None,
    )


def _tee(source: IO[bytes], terminal: BinaryIO, log: Any) -> threading.Thread:
    def pump() -> None:
        fd = source.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            log.write(chunk)
            with contextlib.suppress(OSError, ValueError):  # a closed terminal must not stop the log
                terminal.write(chunk)
                terminal.flush()
        log.close()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _forwarding(pid: int, received: list[int]) -> Iterator[None]:
    """Forward SIGINT/SIGTERM/SIGHUP to the child's process group while it runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _foreground(pid: int) -> Iterator[None]:
    """Give the terminal to the child's group while it runs, if nixrepro holds the terminal."""
    fd = _terminal_fd()
    if fd is None:
        yield
        return
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        try:
            os.tcsetpgrp(fd, pid)
        except OSError:
            fd = None
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.tcsetpgrp(fd, os.getpgrp())
        signal.signal(signal.SIGTTOU, old)


def _terminal_fd() -> int | None:
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        fd = sys.stdin.fileno()
        if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except (OSError, ValueError, AttributeError):
        pass
    return None
