"""``nixrepro sync``: upload what a run kept locally because it could not reach a server.

A list of steps, each ``(name, step)`` where ``step(store_root, dry_run)`` returns what it uploaded
(or would upload) and what failed, as short lines. Pending data outputs are one step, runs waiting
for the remote run store another (nixrepro.remote.pending), W&B runs kept offline a third. A
step that fails as a whole, or an item that fails, never stops the others:
every result is reported, and the CLI exits 1 if anything failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NixreproError
from .trackers import sync_steps as tracker_steps

SyncStep = Callable[[Path, bool], tuple[list[str], list[str]]]


def _data_step(store_root: Path, dry_run: bool) -> tuple[list[str], list[str]]:
    from .datastore.ops import Data, project_settings

    report = Data(project_settings()).sync_pending(dry_run=dry_run)
    return report.done, report.failed


def _runs_step(store_root: Path, dry_run: bool) -> tuple[list[str], list[str]]:
    from .remote.pending import sync_step

    return sync_step(store_root, dry_run)


# Data first: a W&B run that references an output should find it uploaded, and a run whose output
# was pending is pushed to the remote run store only once its record holds the output's version.
# Then each tracker that keeps runs offline (W&B: `wandb sync`), found in the tracker registry.
STEPS: list[tuple[str, SyncStep]] = [("data", _data_step), ("runs", _runs_step), *tracker_steps()]


@dataclass(frozen=True)
class StepResult:
    name: str
    items: list[str]
    failed: list[str] = field(default_factory=list)  # items that could not be uploaded, with why
    error: NixreproError | None = None  # the step failed as a whole


def sync(store_root: Path, dry_run: bool = False) -> list[StepResult]:
    """Run every sync step in order; a failing step is recorded in its result, never raised."""
    results = []
    for name, step in STEPS:
        try:
            items, failed = step(store_root, dry_run)
        except NixreproError as exc:
            results.append(StepResult(name, [], [], exc))
            continue
        results.append(StepResult(name, items, failed))
    return results


def discard(items: list[str]) -> list[str]:
    """``sync --discard``: drop pending data items by id or URI (their runs keep them pending)."""
    from .datastore.ops import Data, project_settings

    data = Data(project_settings())
    return [line for item in items for line in data.discard_pending(item)]
