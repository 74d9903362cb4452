"""The worker thread of a tracker's sink: the observer's calls return at once, its library waits.

A tracker's library blocks: its import, its service or server starting the run, each call a round
trip. So a sink (nixrepro.trackers.mlflow, nixrepro.trackers.wandb) is a :class:`WorkerSink`: at
``started`` one thread of its own starts the tracker's run and then sends the metric points that
``logged`` queues, in the order they were logged, while the run goes on. The sink's ``ended`` first
calls :meth:`WorkerSink._all_sent`, which returns once that thread has sent what was queued and
ended, and then finishes the tracker's run; its ``abandoned`` (nixrepro gone before the run's end)
calls :meth:`WorkerSink._send_the_rest`, which does not raise, and ends the run as failed.

A failure on that thread is kept, not raised there: the sink's ``_fail`` remembers it, the next
``logged`` (or the ``ended``) raises it as :class:`TrackerError`, and the observer machinery drops
the sink (nixrepro.trackers.Observers). The thread then sends nothing more.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TrackerError
from ..metrics import MetricPoint

if TYPE_CHECKING:  # the sinks' modules stay light: made before the run path is imported
    from ..record import RunRecord


class WorkerSink(ABC):
    """A run observer whose tracker's run is started, and sent the metric points, on one thread."""

    name: str  # the observer's name, in warnings and the record, and its thread's (nixrepro-<name>)
    shown: str  # the tracker as its failures name it ("MLflow could not start: ...")

    def __init__(self) -> None:
        self._points: queue.SimpleQueue[MetricPoint | None] = queue.SimpleQueue()  # None: no more
        self._worker: threading.Thread | None = None
        self._error: str | None = None  # set by _fail: the thread has stopped, the sink is failed
        self._running = False  # _start returned: the tracker's run exists

    # --- what a sink gives (_start and _send are called on the worker thread only) ---------------

    @abstractmethod
    def _start(self, record: RunRecord) -> None:
        """Start the tracker's run (raise if it cannot: the points are then never sent)."""

    @abstractmethod
    def _send(self, points: list[MetricPoint]) -> None:
        """Send these points, in this order: all that were waiting when the last send returned."""

    @abstractmethod
    def _fail(self, what: str, exc: BaseException) -> None:
        """Remember the failure in ``_error`` (``what``: describe(exc)), and tidy up after it."""

    # --- RunObserver --------------------------------------------------------------------------

    def started(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None:
        self._worker = threading.Thread(target=self._work, args=(record,), daemon=True,
                                        name=f"nixrepro-{self.name}")
        self._worker.start()
        return None  # the tracker's run id goes into the record once the run exists (ended)

    def logged(self, point: MetricPoint) -> None:
        if self._error is not None:
            raise TrackerError(self._error)
        self._points.put(point)

    def _send_the_rest(self) -> None:
        """No more points: returns once the worker has sent those still queued (or failed)."""
        self._points.put(None)
        if self._worker is not None:
            self._worker.join()

    def _all_sent(self) -> None:
        """``ended``'s first step: :meth:`_send_the_rest`, then TrackerError if the worker failed
        or never started the tracker's run (nothing to finish)."""
        self._send_the_rest()
        if self._error is not None or not self._running:
            raise TrackerError(self._error or f"{self.shown} never started")

    # --- the worker thread ----------------------------------------------------------------------

    def _work(self, record: RunRecord) -> None:
        try:
            self._start(record)
        except Exception as exc:
            self._fail(f"{self.shown} could not start", exc)
            return
        self._running = True
        for points in self._waiting():
            try:
                self._send(points)
            except Exception as exc:
                self._fail(f"{self.shown} stopped during the run", exc)
                return

    def _waiting(self) -> Iterator[list[MetricPoint]]:
        """The points as they come, each time all that are waiting (MLflow sends them as one
        batch), until the end of the points."""
        while True:
            batch = [self._points.get()]
            while True:
                try:
                    batch.append(self._points.get_nowait())
                except queue.Empty:
                    break
            points = [point for point in batch if point is not None]
            if points:
                yield points
            if None in batch:
                return
