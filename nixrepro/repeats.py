"""``nixrepro run --repeat N``: N recorded runs of one command, seeds derived from the base seed.

Repeat ``i`` (0-based) runs with seed ``base + i``, where the base is ``--seed`` (0 when not given),
so two groups started with the same base seed use the same seeds, pairing their runs. The runs
share a group id (:mod:`nixrepro.groups`); each is a complete run of its own, checked and
recorded like any other. The first repeat that does not succeed stops the group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from .config import Config
from .errors import UsageError
from .groups import new_group_id
from .nix import Nix
from .observers import RunObserver
from .record import RunRecord
from .runner import RunRequest, run


def repeat_seed(base: int | None, index: int) -> int:
    return (base or 0) + index


def run_repeated(
    request: RunRequest,
    count: int,
    config: Config | None = None,
    nix: Nix | None = None,
    observers: Callable[[], Sequence[RunObserver]] = tuple,
    on_run: Callable[[RunRecord], None] = lambda record: None,
) -> list[RunRecord]:
    """Run ``request`` ``count`` times as one group; ``observers()`` makes each run's trackers."""
    if count < 1:
        raise UsageError(f"--repeat needs a positive count, not {count}.")
    group = new_group_id()
    records: list[RunRecord] = []
    for index in range(count):
        one = dataclasses.replace(request, seed=repeat_seed(request.seed, index), group=group,
                                  repeat_index=index)
        record = run(one, config, nix, observers=observers())
        records.append(record)
        on_run(record)
        if record.status != "succeeded":
            break
    return records
