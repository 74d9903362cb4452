"""Trackers: the dashboards a run also goes to, registered by kind; and the observers they are.

A tracker is one module of this package, registered in :data:`TRACKERS` by its kind, the name of
its ``[trackers.<kind>]`` table in nixrepro.toml. It is imported only when that table is there
(``import nixrepro`` and a run without trackers import neither it nor its library), and it has:

* ``Settings``: a frozen dataclass of the table's keys, validated from its type hints when the
  config is read, like every section (nixrepro.config); a ``check()`` method may return
  ``(key, problem)`` for what types cannot say;
* ``make(settings, context) -> RunObserver | None``: the observer for one run (None: it is
  disabled); made fresh for every run, in a process of its own (nixrepro.trackers.host), where it
  starts its library's import at once, overlapping the run's preflight;
* optionally ``enabled(settings, environ) -> bool``: False when the run should not start it at all
  (W&B's ``mode = "disabled"`` or WANDB_MODE=disabled);
* optionally ``sync(store_root, dry_run) -> (done, failed)``: a step of ``nixrepro sync``.

:func:`from_config` makes the observers of every configured tracker for one run; every command
that records a run (run, run --repeat, pipeline run, reproduce) passes them on.

Like sacred's observers they fail in isolation: an observer that raises is reported with one
warning (its secrets scrubbed) and dropped for the rest of the run; the local record stays complete
either way. An observer may return a small dict from ``started``/``ended`` that is kept in the
record under ``trackers.<name>`` (a tracker's run id and URL, say). At the end every observer is
told first (``ending``, when it has one) and waited for after, so the trackers finish their runs
at the same time; a signal while they do stops them (``stop``). Documented in docs/trackers.md.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from ..metrics import METRICS_FILE, MetricPoint, parse_point

if TYPE_CHECKING:
    from ..config import Config
    from ..record import RunRecord

# kind -> module; a new tracker is one module here and one line in this table
TRACKERS: dict[str, str] = {
    "mlflow": "nixrepro.trackers.mlflow",
    "wandb": "nixrepro.trackers.wandb",
}


def known_kinds() -> str:
    """The registered kinds, for messages: "mlflow and wandb"."""
    kinds = sorted(TRACKERS)
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]


def tracker_module(kind: str) -> ModuleType:
    """The module of tracker ``kind`` (imported now if it was not); KeyError for an unknown kind."""
    return importlib.import_module(TRACKERS[kind])


def settings_class(kind: str) -> type:
    """The dataclass of ``[trackers.<kind>]``."""
    cls: type = tracker_module(kind).Settings
    return cls


def _note(message: str) -> None:
    sys.stderr.write(f"nixrepro: {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class TrackerContext:
    """What a tracker's ``open`` gets besides its settings."""

    repo_root: Path  # the git root: a tracker's default project or experiment is its name
    store_root: Path  # the run store (.nixrepro): where a tracker keeps anything local
    environ: Mapping[str, str]  # the tracker's own variables (WANDB_MODE, MLFLOW_TRACKING_URI...)
    note: Callable[[str], None] = _note  # one line to the user (not a warning: nothing failed)
    remote: str | None = None  # [runs] remote: where the run's record is pushed (the provenance)
    secret_names: tuple[str, ...] = ()  # [secrets] extra_names: more variables to scrub


TrackerFactory = Callable[[], Sequence["RunObserver"]]


def from_config(
    config: Config, repo_root: Path, store_root: Path, *, environ: Mapping[str, str] | None = None,
    in_process: bool = False,
) -> list[RunObserver]:
    """The observers of one run: one per ``[trackers.<kind>]`` in ``config`` that is enabled.

    Call it once per run (a repeat group or a pipeline calls it for each of its runs): an observer
    follows one run. Each tracker runs in a process of its own (nixrepro.trackers.host), started
    now; ``in_process``: the trackers' own observers, in this process. Only the configured
    trackers' modules are imported, and their libraries only by the tracker.
    """
    context = TrackerContext(repo_root, store_root, os.environ if environ is None else environ,
                             remote=config.runs.remote,
                             secret_names=tuple(config.secrets.extra_names))
    observers: list[RunObserver] = []
    for kind, settings in config.trackers.items():
        module = tracker_module(kind)
        enabled = getattr(module, "enabled", None)
        if enabled is not None and not enabled(settings, context.environ):
            continue
        if in_process:
            observer = module.make(settings, context)
        else:
            from .host import HostedObserver

            observer = HostedObserver(kind, settings, context)
        if observer is not None:
            observers.append(observer)
    return observers


PROBE_TIMEOUT_S = 2.0


def reachable(base_url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host and port opens within ``timeout`` seconds (a
    tracker's own client would retry an unreachable server for minutes)."""
    import socket
    from urllib.parse import urlparse

    try:
        parsed = urlparse(base_url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:  # a port that is not a number
        return False
    if not parsed.hostname:
        return False
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def describe(exc: BaseException) -> str:
    """An exception as one short line (trackers' messages can span screens)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def attached_files(run_dir: Path) -> list[Path]:
    """The run's files a tracker keeps beside its run, those that exist: the record, the logs,
    the metrics, the data log and a dev run's patch."""
    from ..datalog import DATA_FILE
    from ..rundir import DEV_PATCH, STDERR_LOG, STDOUT_LOG
    from ..runstore import RECORD_FILE

    names = (RECORD_FILE, STDOUT_LOG, STDERR_LOG, METRICS_FILE, DATA_FILE, DEV_PATCH)
    return [run_dir / name for name in names if (run_dir / name).is_file()]


SyncStep = Callable[[Path, bool], tuple[list[str], list[str]]]


def sync_steps() -> list[tuple[str, SyncStep]]:
    """``(kind, sync)`` of every tracker that keeps runs to upload later (W&B offline)."""
    steps: list[tuple[str, SyncStep]] = []
    for kind in TRACKERS:
        step = getattr(tracker_module(kind), "sync", None)
        if step is not None:
            steps.append((kind, step))
    return steps


POLL_INTERVAL_S = 0.5


class RunObserver(Protocol):
    name: str

    def started(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None: ...

    def logged(self, point: MetricPoint) -> None: ...

    def ended(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None: ...


def scrub(text: str, secret_names: Iterable[str] = ()) -> str:
    """``text`` without the credentials of any URL in it and without the values of this
    process's secret-named variables (nixrepro.redact), ``[secrets] extra_names`` included: a
    tracker's message may quote its tracking URI, user and password included, or a token."""
    from ..redact import Redactor

    return Redactor.from_env(os.environ, secret_names).scrub(text)


class Observers:
    """Calls every live observer; one that raises is warned about and dropped."""

    def __init__(self, observers: Sequence[RunObserver], warn: Callable[[str], None],
                 scrubbed: Callable[[str], str] = scrub) -> None:
        self._live = list(observers)
        self._warn = warn
        self._scrub = scrubbed  # the run's own redactor: its command line's secrets too
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._live)

    def _drop(self, observer: RunObserver, reason: str) -> None:
        self._live.remove(observer)
        self._warn(self._scrub(f"{observer.name} failed and is dropped for this run ({reason}); "
                         "the local record is complete"))

    def _each(self, call: Callable[[RunObserver], dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
        info: dict[str, dict[str, Any]] = {}
        with self._lock:
            live = list(self._live)
            for index, observer in enumerate(live):
                try:
                    result = call(observer)
                except Exception as exc:  # isolation is the point: any failure drops the sink
                    self._drop(observer, str(exc))
                    continue
                except KeyboardInterrupt as exc:  # a signal (StopSignals): the rest are stopped
                    how = getattr(exc, "signum", None)
                    name = _signal_name(how) if isinstance(how, int) else "Ctrl-C"
                    for stopped in live[index:]:
                        stop = getattr(stopped, "stop", None)
                        if stop is not None:
                            stop()
                        self._drop(stopped, f"interrupted by {name} before it finished its run")
                    raise
                if result:
                    info[observer.name] = result
        return info

    def started(self, record: RunRecord, run_dir: Path) -> dict[str, dict[str, Any]]:
        return self._each(lambda o: o.started(record, run_dir))

    def logged(self, point: MetricPoint) -> None:
        self._each(lambda o: o.logged(point))

    def ended(self, record: RunRecord, run_dir: Path) -> dict[str, dict[str, Any]]:
        """Every observer is told first, then each is waited for: they finish at the same time."""
        self._each(lambda o: _ending(o, record, run_dir))
        return self._each(lambda o: o.ended(record, run_dir))


def _ending(observer: RunObserver, record: RunRecord, run_dir: Path) -> None:
    ending = getattr(observer, "ending", None)
    if ending is not None:
        ending(record, run_dir)


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class MetricsTail:
    """Follows a run's metrics.jsonl while it runs and hands each new point to the observers."""

    def __init__(self, run_dir: Path, observers: Observers) -> None:
        self._path = run_dir / METRICS_FILE
        self._observers = observers
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> MetricsTail:
        if self._observers:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        # whatever was logged at the very end, a last line without its newline too (the record
        # reads it: a writer in another language may not end the file with one)
        self._read_new(final=True)

    def _follow(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self._read_new()

    def _read_new(self, final: bool = False) -> None:
        if not self._observers:
            return
        try:
            with self._path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        # a line still being written waits for next time
        complete = data if final else data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for raw in complete.splitlines():
            point = parse_point(raw)
            if point is not None:
                self._observers.logged(point)
