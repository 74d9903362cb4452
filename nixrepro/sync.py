"""``nixrepro sync``: upload what a run kept locally because it could not reach a server.

A list of steps, each ``(name, step)`` where ``step(store_root, dry_run)`` returns what it uploaded
(or would upload) as short lines. W&B runs kept offline are one step; pending data outputs can be
another, appended to :data:`STEPS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import wandb_sink

SyncStep = Callable[[Path, bool], list[str]]


def _wandb_step(store_root: Path, dry_run: bool) -> list[str]:
    return [str(p.relative_to(store_root.parent))
            for p in wandb_sink.sync_offline_runs(store_root, dry_run=dry_run)]


def _data_step(store_root: Path, dry_run: bool) -> list[str]:
    from .dataops import Data, project_settings

    return Data(project_settings()).sync_pending(dry_run=dry_run)


# Data first: a W&B run that references an output should find it uploaded.
STEPS: list[tuple[str, SyncStep]] = [("data", _data_step), ("wandb", _wandb_step)]


@dataclass(frozen=True)
class StepResult:
    name: str
    items: list[str]


def sync(store_root: Path, dry_run: bool = False) -> list[StepResult]:
    """Run every sync step in order; the first that fails raises (the others' work stays done)."""
    return [StepResult(name, step(store_root, dry_run)) for name, step in STEPS]
