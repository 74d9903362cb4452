"""Observers (sinks) see a run as it happens: start, each metric logged, end. W&B is one.

Like sacred's observers they fail in isolation: an observer that raises is reported with one
warning and dropped for the rest of the run; the local record stays complete either way.
An observer may return a small dict from ``started``/``ended`` that is kept in the record under
``trackers.<name>`` (a tracker's run id and URL, say).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..metrics import METRICS_FILE, MetricPoint, parse_point
from ..record import RunRecord

POLL_INTERVAL_S = 0.5


class RunObserver(Protocol):
    name: str

    def started(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None: ...

    def logged(self, point: MetricPoint) -> None: ...

    def ended(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None: ...


class Observers:
    """Calls every live observer; one that raises is warned about and dropped."""

    def __init__(self, observers: Sequence[RunObserver], warn: Callable[[str], None]) -> None:
        self._live = list(observers)
        self._warn = warn
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._live)

    def _each(self, call: Callable[[RunObserver], dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
        info: dict[str, dict[str, Any]] = {}
        with self._lock:
            for observer in list(self._live):
                try:
                    result = call(observer)
                except Exception as exc:  # isolation is the point: any failure drops the sink
                    self._live.remove(observer)
                    self._warn(f"{observer.name} failed and is dropped for this run ({exc}); "
                               "the local record is complete")
                    continue
                if result:
                    info[observer.name] = result
        return info

    def started(self, record: RunRecord, run_dir: Path) -> dict[str, dict[str, Any]]:
        return self._each(lambda o: o.started(record, run_dir))

    def logged(self, point: MetricPoint) -> None:
        self._each(lambda o: o.logged(point))

    def ended(self, record: RunRecord, run_dir: Path) -> dict[str, dict[str, Any]]:
        return self._each(lambda o: o.ended(record, run_dir))


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
        self._read_new()  # whatever was logged at the very end

    def _follow(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self._read_new()

    def _read_new(self) -> None:
        if not self._observers:
            return
        try:
            with self._path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for next time
        self._offset += len(complete)
        for raw in complete.splitlines():
            point = parse_point(raw)
            if point is not None:
                self._observers.logged(point)
