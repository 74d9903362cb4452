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
for ``ended``'s reply, on a pipe of its own, at most ``NIXREPRO_TRACKER_TIMEOUT`` seconds (60) from
the run's end; a tracker still busy then (a server that accepts and never answers, an import that
hangs) is stopped, as it is at once when a signal (a second Ctrl-C, SIGTERM) comes while nixrepro
waits. What the child sends is UTF-8 (a lone surrogate of a non-UTF-8 argument is a ``?``), so no
tracker refuses a run for its bytes. ``started`` does not wait: what the tracker's ``started``
returns is kept in the record with ``ended``'s. The tracker's notes come back on the reply pipe and
are printed by nixrepro; whatever its library prints goes to ``.nixrepro/trackers/<kind>.log``,
never to the terminal (a flood, a library's logged traceback). A failure in the child at any point
(its tracker raising, the process dying) is the :class:`TrackerError` the observer machinery turns
into one warning; the child is then told to stop. The child runs in a session of its own, so
Ctrl-C at the terminal reaches the experiment, not the tracker, which nixrepro still ends; if
nixrepro goes away without ending it (killed, or the tracker dropped), the child ends the tracker's
run as failed (``abandoned``) and exits within ``ABANDON_S``, never left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import TrackerError
from ..metrics import MetricPoint

if TYPE_CHECKING:
    from ..record import RunRecord
    from . import TrackerContext

_PATHS = ("repo_root", "store_root")  # the context's Path fields
TIMEOUT_VARIABLE = "NIXREPRO_TRACKER_TIMEOUT"
ENDED_TIMEOUT_S = 60.0  # what a tracker gets, from the run's end, to finish its run
ABANDON_S = 10.0  # the child, once nixrepro is gone or done with it: to end the run and exit
STOP_WAIT_S = ABANDON_S + 5  # the parent, for the child to exit once told there is no more
WATCH_INTERVAL_S = 0.5  # the child looks for its parent this often
LOG_DIR = "trackers"  # .nixrepro/trackers/<kind>.log: what a tracker's process prints
LOG_MAX = 1 << 20  # a log bigger than this is moved to <kind>.log.1 when the next one starts


def ended_timeout(environ: Mapping[str, str]) -> float:
    """``NIXREPRO_TRACKER_TIMEOUT`` seconds, when it is a positive number; else 60."""
    try:
        value = float(environ.get(TIMEOUT_VARIABLE, ""))
    except ValueError:
        return ENDED_TIMEOUT_S
    return value if math.isfinite(value) and value > 0 else ENDED_TIMEOUT_S


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
        self._note = context.note
        self._timeout = ended_timeout(context.environ)
        self._deadline: float | None = None
        self._log = context.store_root / LOG_DIR / f"{kind}.log"
        with contextlib.suppress(ValueError):
            self._log = self._log.relative_to(context.repo_root)
        self._finalizer: Any
        self._secret_names = context.secret_names
        LogTail.recover(context.store_root / LOG_DIR / f"{kind}.log", context.secret_names)
        log = _open_log(context.store_root, kind)
        tail = None if log is None else LogTail.begin(Path(log.name), context.secret_names)
        try:
            read_end, write_end = os.pipe()
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", __name__, str(write_end)], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL if log is None else log, stderr=subprocess.STDOUT,
                    pass_fds=(write_end,), start_new_session=True,
                    env=None if context.environ is os.environ else dict(context.environ))
            except OSError:
                os.close(read_end)
                raise
            finally:
                os.close(write_end)
        except OSError as exc:  # no process to be had: the first call reports it, as one warning
            self._error = f"its process could not start ({exc.strerror or exc})"
            self._finalizer = weakref.finalize(self, lambda: None)
            if tail is not None:
                tail.scrub()
            return
        finally:
            if log is not None:
                log.close()
        self._stdin = self._proc.stdin
        threading.Thread(target=self._read, args=(os.fdopen(read_end, "rb"),), daemon=True,
                         name=f"nixrepro-{kind}-replies").start()
        self._finalizer = weakref.finalize(self, _stop, self._proc, tail)
        with contextlib.suppress(TrackerError):  # gone already: the first call reports why
            self._send(hello)

    # --- RunObserver --------------------------------------------------------------------------

    def started(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None:
        self._send({"op": "started", "record": record.to_dict(), "run_dir": str(run_dir)})
        return None  # what the tracker's started says is kept with ended's (no wait here)

    def logged(self, point: MetricPoint) -> None:
        when = point.time
        if not isinstance(when, (int, float)) or not math.isfinite(when):
            when = 0.0  # a writer's NaN or 1e999: the tracker stamps it itself
        try:
            line = _encode({"op": "logged", "time": when, "step": point.step,
                            "metrics": point.metrics})
        except (ValueError, TypeError, RecursionError):  # not JSON: the local record keeps it
            return
        self._send_line(line, "logged")

    def ending(self, record: RunRecord, run_dir: Path) -> None:
        """The run has ended: the tracker is told now, and :meth:`ended` waits for it."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self._timeout
            self._send({"op": "ended", "record": record.to_dict(), "run_dir": str(run_dir)})

    def ended(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None:
        self.ending(record, run_dir)
        assert self._deadline is not None
        try:
            reply = self._replies.get(timeout=max(0.0, self._deadline - time.monotonic()))
        except queue.Empty:
            self.stop()
            raise TrackerError(
                f"it did not finish its run within {self._timeout:g} s of the run's end "
                f"({TIMEOUT_VARIABLE} gives it longer); its process was stopped") from None
        except BaseException:  # a signal while it finishes (StopSignals): stopped, not waited for
            self.stop()
            raise
        self._close()
        if "error" in reply:
            raise TrackerError(str(reply["error"]))
        info = {**self._started, **(reply.get("info") or {})}
        return info or None

    def stop(self) -> None:
        """Stop the tracker's process (and whatever it started) now."""
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            _kill(proc)
        self._close()

    # --- the pipes ----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._error is not None:
            self._close()
            raise TrackerError(self._error)
        self._send_line(_encode(message), str(message.get("op")))

    def _send_line(self, line: bytes, op: str) -> None:
        if self._error is not None:
            self._close()
            raise TrackerError(self._error)
        with self._lock:
            try:
                if self._stdin is None:
                    raise BrokenPipeError
                self._stdin.write(line)
                self._stdin.flush()
            except (BrokenPipeError, ValueError):  # the process is gone; the reader says why
                self._stdin = None
        if self._stdin is None and op != "ended":
            self._wait_for_reason()
            raise TrackerError(self._error or f"its process ended ({self._proc.poll()})")

    def _read(self, replies: IO[bytes]) -> None:
        try:
            with replies:
                for raw in replies:
                    try:
                        reply = json.loads(raw)
                    except ValueError:  # a line cut short by the process's death
                        continue
                    if not isinstance(reply, dict):
                        continue
                    if "note" in reply:  # one line to the user, from the tracker
                        from . import scrub

                        self._note(scrub(str(reply["note"]), self._secret_names))
                    elif reply.get("op") == "ended":
                        self._replies.put(reply)
                    elif "error" in reply:  # from started or logged: the next call reports it
                        self._error = str(reply["error"])
                    elif isinstance(reply.get("info"), dict):
                        self._started = reply["info"]
        finally:
            code = self._proc.wait()
            if self._error is None:
                said = "" if code < 0 else f"; what it printed is in {self._log}"
                self._error = f"its process ended (exit status {code}) before the run did{said}"
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


def _encode(message: dict[str, Any]) -> bytes:
    """One line of the protocol, in UTF-8: a lone surrogate (a non-UTF-8 byte of an argument, a
    file name or a metric, as Python decodes them) is a ``?``, which every tracker takes."""
    return (json.dumps(message, ensure_ascii=False) + "\n").encode("utf-8", "replace")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's session (its own process group): the tracker and what it started."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _stop(proc: subprocess.Popen[bytes], tail: LogTail | None = None) -> None:
    """Tell the child there is no more (it stops at end of input) and wait for it: it exits
    without the interpreter's teardown, within ABANDON_S; one that does not is killed. Then what
    it printed is scrubbed."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        _kill(proc)
    if tail is not None:
        tail.scrub()


@dataclasses.dataclass
class LogTail:
    """What one tracker process appends to its log, from ``start``: scrubbed of the run's secrets
    once the process has ended (a library may print its tracking URI, password included, or a
    token). ``<kind>.log.scrub`` holds ``start`` meanwhile, so that a nixrepro killed before it
    scrubbed has the next one do it."""

    path: Path
    start: int
    secret_names: tuple[str, ...]

    @classmethod
    def recover(cls, path: Path, secret_names: tuple[str, ...]) -> None:
        """Scrub what a process whose nixrepro was killed printed (before the log is moved aside)."""
        with contextlib.suppress(OSError, ValueError):
            cls(path, int(path.with_name(path.name + ".scrub").read_text()), secret_names).scrub()

    @classmethod
    def begin(cls, path: Path, secret_names: tuple[str, ...]) -> LogTail:
        start = path.stat().st_size if path.exists() else 0
        with contextlib.suppress(OSError):
            path.with_name(path.name + ".scrub").write_text(f"{start}\n")
        return cls(path, start, secret_names)

    def scrub(self) -> None:
        from ..redact import Redactor

        marker = self.path.with_name(self.path.name + ".scrub")
        try:
            with open(self.path, "r+b") as log:
                log.seek(self.start)
                printed = log.read()
                clean = Redactor.from_env(os.environ, self.secret_names).scrub_bytes(printed)
                if clean != printed:
                    log.seek(self.start)
                    log.write(clean)
                    log.truncate()
        except OSError:
            return  # kept for the next one (a full disk): the marker stays
        with contextlib.suppress(OSError):
            marker.unlink()


def _open_log(store_root: Path, kind: str) -> IO[bytes] | None:
    """``.nixrepro/trackers/<kind>.log``, appended to (the one before moved aside once it is over
    LOG_MAX); None where it cannot be written (the child's output is then dropped)."""
    directory = store_root / LOG_DIR
    path = directory / f"{kind}.log"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        ignore = directory / ".gitignore"  # ignored even before the run store has its own
        if not ignore.exists():
            ignore.write_text("*\n")
        with contextlib.suppress(OSError):
            if path.stat().st_size > LOG_MAX:
                os.replace(path, path.with_name(path.name + ".1"))
        return open(path, "ab")
    except OSError:
        return None


# --- the child: python -m nixrepro.trackers.host REPLY_FD ---------------------------------------


def serve(reply_fd: int) -> None:
    """Make the tracker's observer and hand it what the parent writes, until ``ended`` or EOF."""
    import logging

    from . import TrackerContext, tracker_module

    logging.raiseExceptions = False  # a library's log on a full disk prints no traceback
    replies = os.fdopen(reply_fd, "w", buffering=1)
    lock = threading.Lock()

    def reply(**message: Any) -> None:
        line = json.dumps(message, default=str) + "\n"
        with lock:
            replies.write(line)
            replies.flush()

    def note(message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            reply(note=message)

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True,
                     name="nixrepro-parent").start()
    hello = json.loads(sys.stdin.buffer.readline() or b"null")
    if hello is None:
        return
    module = tracker_module(hello["kind"])
    fields: dict[str, Any] = {key: Path(value) if key in _PATHS else value
                              for key, value in hello["context"].items()}
    fields["secret_names"] = tuple(fields.get("secret_names") or ())
    context = TrackerContext(**fields, environ=os.environ, note=note)
    try:
        observer = module.make(module.Settings(**hello["settings"]), context)
    except Exception as exc:
        reply(op="started", error=_describe(exc))
        return
    if observer is None:
        reply(op="ended", info=None)
        return
    started = False
    for raw in sys.stdin.buffer:
        message = json.loads(raw)
        op = message["op"]
        try:
            if op == "logged":
                observer.logged(MetricPoint(message["time"], message["step"], message["metrics"]))
            elif op == "started":
                started = True
                info = observer.started(*_record_and_dir(message))
                if info:
                    reply(op="started", info=info)
            elif op == "ended":
                reply(op="ended", info=observer.ended(*_record_and_dir(message)))
                return
        except Exception as exc:
            reply(op=op, error=_describe(exc))
            return
    # The end of input before the run's end: nixrepro is gone (killed) or dropped this tracker.
    # Its run is ended as failed, not left running on the dashboard; main exits within ABANDON_S.
    abandoned: Callable[[], None] | None = getattr(observer, "abandoned", None)
    if started and abandoned is not None:
        _exit_within(ABANDON_S)
        with contextlib.suppress(Exception):
            abandoned()


def _watch_parent(parent: int) -> None:
    """nixrepro gone (its process killed while this one waits on its tracker): this one goes too,
    once it had ABANDON_S to end the tracker's run."""
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL_S)
    _exit_within(ABANDON_S)


def _exit_within(seconds: float) -> None:
    timer = threading.Timer(seconds, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


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
        # service teardown), at most ABANDON_S, and the process ends without freeing every module
        # it imported.
        _exit_within(ABANDON_S)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
        os._exit(0)


if __name__ == "__main__":
    main()
