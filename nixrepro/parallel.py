"""Run a few blocking calls (subprocesses, mostly) at the same time, without a thread pool import.

The run path starts git, nix and nvidia-smi; overlapping them is most of what keeps
``nixrepro run`` overhead low (bench/run_overhead.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """``fn(*args)`` started in a thread now; :meth:`result` waits and re-raises its exception."""

    def __init__(self, fn: Callable[..., T], *args: object) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._call, args=(fn, args), daemon=True)
        self._thread.start()

    def _call(self, fn: Callable[..., T], args: tuple[object, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
