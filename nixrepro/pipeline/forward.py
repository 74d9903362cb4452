"""Forward the signals that stop nixrepro to the processes it started from worker threads.

``nixrepro run`` forwards SIGINT/SIGTERM/SIGHUP to its command itself (supervise.py), but Python
lets only the main thread set signal handlers, and a pipeline runs its stages from worker threads.
So the pipeline's main thread holds the handlers and forwards to its own child processes, found in
/proc (or ``ps`` where there is none): a stage command leads its own process group (supervise
starts it so), and the whole group gets the signal, as under ``nixrepro run``; any other child
(a ``nix build`` of a stage's environment, git) gets it directly.

A child that starts after the signal (a worker was between its last check and starting the
command) gets it when :meth:`SignalForwarder.reforward` next runs, so nothing outlives the pipeline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalForwarder:
    """While :meth:`installed`, the stopping signals are recorded and forwarded, never fatal."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.stopping = threading.Event()
        self._sent: set[int] = set()  # children that already got the latest signal
        self._foreign: set[int] = set()  # children from before it was installed: not its to stop
        self._lock = threading.Lock()

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.received[0]).name if self.received else None

    @property
    def exit_code(self) -> int | None:
        """128 + the first signal received, as a shell reports a job that died of it."""
        return 128 + self.received[0] if self.received else None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread can hold handlers; a library caller keeps its own
            return
        self.received.clear()
        self.stopping.clear()
        self._sent.clear()
        self._foreign = {pid for pid, _ in _children(os.getpid())}
        previous = {sig: signal.signal(sig, self._handle) for sig in FORWARDED}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        self.stopping.set()
        with self._lock:
            self._sent.clear()  # a second Ctrl-C goes to every child again, as it would at a shell
        self.reforward()

    def reforward(self) -> None:
        """Send the latest signal to every child that has not had it yet."""
        if not self.received:
            return
        signum = self.received[-1]
        for pid, pgid in _children(os.getpid()):
            with self._lock:
                if pid in self._sent or pid in self._foreign:
                    continue
                self._sent.add(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pgid == pid:
                    os.killpg(pid, signum)
                else:
                    os.kill(pid, signum)


def _children(parent: int) -> list[tuple[int, int]]:
    """(pid, process group) of each live child of ``parent``."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return _children_from_ps(parent)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[1]) == parent:
            found.append((int(entry.name), int(fields[2])))
    return found


def _children_from_ps(parent: int) -> list[tuple[int, int]]:
    try:
        listing = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid=,stat="], capture_output=True,
                                 text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == str(parent) and not parts[3].startswith("Z"):
            found.append((int(parts[0]), int(parts[2])))
    return found
