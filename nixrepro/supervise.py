"""Run the experiment's process: tee its output, forward signals, report how it ended.

The child gets its own process group. When nixrepro owns the terminal, that group is made the
terminal's foreground group (as a shell does), so Ctrl-C reaches the experiment exactly once and
a debugger in the experiment can still read the keyboard. Signals sent to nixrepro itself
(SIGINT, SIGTERM, SIGHUP) are forwarded to the child's group; nixrepro then waits for the child to
finish so the record is always completed.

Around the command (before it starts, and while its outputs are stored), :class:`StopSignals`
turns those signals into :class:`Interrupted` only where an interruption is safe (an upload), so
the final record is always written. A log that cannot be written (a full disk) stops the command
with a reason, instead of leaving it blocked on a full pipe that nobody reads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

from .codec import frozen
from .redact import Redactor

T = TypeVar("T")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
INTERRUPTING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
# How long to keep reading output after the child exits (a daemonised grandchild may hold it open).
DRAIN_TIMEOUT_S = 5.0
# The child in a process group of its own: Python 3.11's process_group calls setpgid(0, 0) in the
# child, as os.setpgrp does, without a preexec_fn, which makes subprocess fork the whole process
# instead of vfork (~3.8 ms instead of ~1.1 ms to start a command, measured with a run's modules
# imported).
_OWN_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp})


@frozen
class Outcome:
    exit_code: int | None  # None when killed by a signal
    signal: str | None  # "SIGTERM" ...
    duration_s: float
    received: str | None  # a signal nixrepro itself received and forwarded
    reason: str | None = None  # why nixrepro stopped the command itself (its log could not be kept)

    @property
    def status(self) -> str:
        if self.reason is not None:
            return "failed"
        if self.received:  # asked to stop: even a command that then exits 0 did not run to its end
            return "interrupted"
        if self.exit_code == 0:
            return "succeeded"
        died_of = signal.Signals[self.signal] if self.signal else None
        if died_of in INTERRUPTING or self.exit_code == 130:
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
    noted: Sequence[int] = (),
) -> Outcome:
    """Run ``argv`` to completion; raises FileNotFoundError/PermissionError if it cannot start.

    ``noted``: the signals nixrepro noted (StopSignals.received, a live list) up to the moment
    forwarding starts; one that came while the child was being started is forwarded to it then.
    """
    term_out = stdout if stdout is not None else sys.stdout.buffer
    term_err = stderr if stderr is not None else sys.stderr.buffer
    started = time.monotonic()
    received: list[int] = []
    failures: list[str] = []
    with open(stdout_log, "ab") as out_log, open(stderr_log, "ab") as err_log:
        child = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **_OWN_GROUP,
        )
        assert child.stdout is not None and child.stderr is not None

        def log_failed(log: Path, exc: OSError) -> None:
            if not failures:
                failures.append(f"nixrepro could not write {log.name} ({exc.strerror or exc}), so the "
                                "command was stopped: its output would have been lost; free space "
                                f"in {log.parent.parent} and run it again")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)

        tees = [
            _tee(child.stdout, term_out, redactor.writer(out_log),
                 lambda exc: log_failed(stdout_log, exc)),
            _tee(child.stderr, term_err, redactor.writer(err_log),
                 lambda exc: log_failed(stderr_log, exc)),
        ]
        with _foreground(child.pid), _forwarding(child.pid, received, noted):
            returncode = child.wait()
        drain_until = time.monotonic() + DRAIN_TIMEOUT_S  # one budget for both streams
        for tee in tees:
            tee.join(max(0.0, drain_until - time.monotonic()))
        for handle in (out_log, err_log):  # what a full disk kept in the buffer cannot be written
            try:
                handle.flush()
            except OSError:
                _discard_buffer(handle)
    duration = time.monotonic() - started
    return Outcome(
        exit_code=returncode if returncode >= 0 else None,
        signal=signal.Signals(-returncode).name if returncode < 0 else None,
        duration_s=round(duration, 6),
        # forwarded here, or (a worker thread, where the caller forwards) noted by the caller
        received=signal.Signals((received or list(noted))[0]).name if received or noted else None,
        reason=failures[0] if failures else None,
    )


def _discard_buffer(handle: BinaryIO) -> None:
    """Close ``handle`` without writing its buffer again (its ``with`` would raise ENOSPC)."""
    with contextlib.suppress(OSError):
        os.close(handle.fileno())
    with contextlib.suppress(OSError, ValueError):
        handle.close()


def _tee(source: IO[bytes], terminal: BinaryIO, log: Any,
         failed: Callable[[OSError], None]) -> threading.Thread:
    """Copy ``source`` to the terminal and the log until it ends. A log that cannot be written is
    reported once and dropped, and the pipe is still read to its end: a child blocked on a full
    pipe would never exit."""
    def pump() -> None:
        fd = source.fileno()
        logging = True
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            if logging:
                try:
                    log.write(chunk)
                except OSError as exc:
                    logging = False
                    failed(exc)
            with contextlib.suppress(OSError, ValueError):  # a closed terminal must not stop the log
                terminal.write(chunk)
                terminal.flush()
        if logging:
            try:
                log.close()
            except OSError as exc:
                failed(exc)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


class Interrupted(KeyboardInterrupt):
    """nixrepro was asked to stop (SIGINT, SIGTERM, SIGHUP) outside the command's own run.

    A KeyboardInterrupt, so that whatever stops on Ctrl-C stops on it; ``signum`` gives the CLI
    its exit code (128 + N, as a shell reports it).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP before the command starts and after it ends (nixrepro's own work).

    Every signal is noted (:attr:`received`); it raises :class:`Interrupted` only inside
    :meth:`interruptible` (an upload, a copy), never while the record is written, so the record
    is always completed. In another thread than the main one (pipeline stages) it installs
    nothing (signal handlers belong to the main thread) and reads the caller's list instead.
    """

    def __init__(self, received: list[int] | None = None) -> None:
        # a caller's list in another thread than the main one: the signals its handlers noted
        self.received: list[int] = received if received is not None else []
        self._interruptible = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in FORWARDED}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        if self._interruptible:
            self._interruptible = False  # one exception per section
            raise Interrupted(signum)

    @property
    def installed(self) -> bool:
        """Whether this holds the signal handlers (the main thread), so a signal is its to raise."""
        return bool(self._previous)

    @property
    def first(self) -> str | None:
        return signal.Signals(self.received[0]).name if self.received else None

    def interruptible(self, call: Callable[[], T]) -> T:
        """``call()``, stopped by the next signal (:class:`Interrupted`)."""
        self._interruptible = True
        try:
            return call()
        finally:
            self._interruptible = False

    def check(self) -> None:
        """Raise :class:`Interrupted` now if a signal came while nothing could be interrupted."""
        if self.received:
            raise Interrupted(self.received[0])


@contextlib.contextmanager
def _forwarding(pid: int, received: list[int], noted: Sequence[int] = ()) -> Iterator[None]:
    """Forward SIGINT/SIGTERM/SIGHUP to the child's process group while it runs, and the first
    signal of ``noted`` if one came before this handler was installed (while the child started)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        if noted and not received:  # checked after the handler is in place: none falls between
            forward(noted[0], None)
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
