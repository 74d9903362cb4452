"""A tracker in a process of its own: nixrepro's run and the tracker's library never share an
interpreter.

:class:`HostedObserver` is what :func:`nixrepro.trackers.from_config` returns for each tracker: it
starts ``python -m nixrepro.trackers.host`` at once, and that process makes the tracker's own
observer (``make(settings, context)``), which starts importing its library. Measured on the 2-core
machines here (bench/tracking.py), in nixrepro's process the library's import competed with the
run path for the interpreter lock (nixrepro's own ~0.15 s of Python while wandb's 0.7 s or mlflow's
1.5 s import ran), and freeing its modules at exit cost 0.2 s (wandb) to 1 s (mlflow) after the
run was recorded; in a process of its own the import runs on the other core, and the process ends
with ``os._exit`` once the tracker's run is finished and its exit hooks have run.

The protocol is JSON lines: the parent writes ``started`` (the record, the run directory),
``logged`` (a metric point) and ``ended`` (the final record) to the child's stdin, and waits only
for ``ended``'s reply, on a pipe of its own (the child's stdout goes to nixrepro's stderr, so a
library's chatter never reaches a ``--json`` output). ``started`` does not wait: what the
tracker's ``started`` returns is kept in the record with ``ended``'s. A failure in the child at any
point (its tracker raising, the process dying) is the :class:`TrackerError` the observer machinery
turns into one warning; the child is then told to stop. The child runs in a session of its own, so
Ctrl-C at the terminal reaches the experiment, not the tracker, which nixrepro still ends.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import TrackerError
from ..metrics import MetricPoint

if TYPE_CHECKING:
    from ..record import RunRecord
    from . import TrackerContext

_PATHS = ("repo_root", "store_root")  # the context's Path fields


class HostedObserver:
    """The parent's side: a RunObserver whose tracker runs in ``python -m nixrepro.trackers.host``."""

    def __init__(self, kind: str, settings: Any, context: TrackerContext) -> None:
        self.name = kind
        plain = {f.name: getattr(context, f.name) for f in dataclasses.fields(context)
                 if f.name not in ("environ", "note")}
        hello = {"kind": kind, "settings": dataclasses.asdict(settings),
                 "context": {key: str(value) if key in _PATHS else value
                             for key, value in plain.items()}}
        self._replies: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._error: str | None = None
        self._started: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stdin: IO[bytes] | None = None
        self._finalizer: Any
        try:
            read_end, write_end = os.pipe()
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", __name__, str(write_end)], stdin=subprocess.PIPE,
                    stdout=_stderr_fd(), pass_fds=(write_end,), start_new_session=True,
                    env=None if context.environ is os.environ else dict(context.environ))
            finally:
                os.close(write_end)
        except OSError as exc:  # no process to be had: the first call reports it, as one warning
            self._error = f"its process could not start ({exc.strerror or exc})"
            self._finalizer = weakref.finalize(self, lambda: None)
            return
        self._stdin = self._proc.stdin
        threading.Thread(target=self._read, args=(os.fdopen(read_end, "rb"),), daemon=True,
                         name=f"nixrepro-{kind}-replies").start()
        self._finalizer = weakref.finalize(self, _stop, self._proc)
        self._send(hello)

    # --- RunObserver --------------------------------------------------------------------------

    def started(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None:
        self._send({"op": "started", "record": record.to_dict(), "run_dir": str(run_dir)})
        return None  # what the tracker's started says is kept with ended's (no wait here)

    def logged(self, point: MetricPoint) -> None:
        self._send({"op": "logged", "time": point.time, "step": point.step,
                    "metrics": point.metrics})

    def ended(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None:
        self._send({"op": "ended", "record": record.to_dict(), "run_dir": str(run_dir)})
        reply = self._replies.get()
        self._close()
        if "error" in reply:
            raise TrackerError(reply["error"])
        info = {**self._started, **(reply.get("info") or {})}
        return info or None

    # --- the pipes ----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._error is not None:
            self._close()
            raise TrackerError(self._error)
        line = json.dumps(message, allow_nan=False).encode() + b"\n"
        with self._lock:
            try:
                if self._stdin is None:
                    raise BrokenPipeError
                self._stdin.write(line)
                self._stdin.flush()
            except (BrokenPipeError, ValueError):  # the process is gone; the reader says why
                self._stdin = None
        if self._stdin is None and message.get("op") != "ended":
            self._wait_for_reason()
            raise TrackerError(self._error or f"its process ended ({self._proc.poll()})")

    def _read(self, replies: IO[bytes]) -> None:
        with replies:
            for raw in replies:
                reply = json.loads(raw)
                if reply.get("op") == "ended":
                    self._replies.put(reply)
                elif "error" in reply:  # from started or logged: the next call reports it
                    self._error = reply["error"]
                elif reply.get("info"):
                    self._started = reply["info"]
        code = self._proc.wait()
        self._error = self._error or f"its process ended (exit status {code}) before the run did"
        self._replies.put({"op": "ended", "error": self._error})

    def _wait_for_reason(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)

    def _close(self) -> None:
        with self._lock:
            stdin, self._stdin = self._stdin, None
        if stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()
        self._finalizer()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Tell the child there is no more (it stops at end of input) and wait for it: it exits
    without the interpreter's teardown, so this is short."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr (pytest, CliRunner)
        return subprocess.DEVNULL


# --- the child: python -m nixrepro.trackers.host REPLY_FD ---------------------------------------


def serve(reply_fd: int) -> None:
    """Make the tracker's observer and hand it what the parent writes, until ``ended`` or EOF."""
    from . import TrackerContext, tracker_module

    replies = os.fdopen(reply_fd, "w", buffering=1)

    def reply(**message: Any) -> None:
        replies.write(json.dumps(message, default=str) + "\n")
        replies.flush()

    hello = json.loads(sys.stdin.buffer.readline() or b"null")
    if hello is None:
        return
    module = tracker_module(hello["kind"])
    fields: dict[str, Any] = {key: Path(value) if key in _PATHS else value
                              for key, value in hello["context"].items()}
    context = TrackerContext(**fields, environ=os.environ)
    try:
        observer = module.make(module.Settings(**hello["settings"]), context)
    except Exception as exc:
        reply(op="started", error=_describe(exc))
        return
    if observer is None:
        reply(op="ended", info=None)
        return
    for raw in sys.stdin.buffer:
        message = json.loads(raw)
        op = message["op"]
        try:
            if op == "logged":
                observer.logged(MetricPoint(message["time"], message["step"], message["metrics"]))
            elif op == "started":
                info = observer.started(*_record_and_dir(message))
                if info:
                    reply(op="started", info=info)
            elif op == "ended":
                reply(op="ended", info=observer.ended(*_record_and_dir(message)))
                return
        except Exception as exc:
            reply(op=op, error=_describe(exc))
            return


def _record_and_dir(message: dict[str, Any]) -> tuple[RunRecord, Path]:
    from ..record import RunRecord

    return RunRecord.from_dict(message["record"]), Path(message["run_dir"])


def _describe(exc: BaseException) -> str:
    from . import describe

    return describe(exc)


def main() -> None:
    try:
        serve(int(sys.argv[1]))
    finally:
        # The tracker's run is finished (or abandoned): its library's exit hooks run (W&B's
        # service teardown), and the process ends without freeing every module it imported.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
        os._exit(0)


if __name__ == "__main__":
    main()
