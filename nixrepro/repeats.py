"""``nixrepro run --repeat N``: N recorded runs of one command, seeds derived from the base seed.

Repeat ``i`` (0-based) runs with seed ``base + i``, where the base is ``--seed`` (0 when not given),
so two groups started with the same base seed use the same seeds, pairing their runs. The runs
share a group id (:mod:`nixrepro.groups`); each is a complete run of its own, checked and
recorded like any other. The first repeat that does not succeed stops the group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .config import Config
from .errors import UsageError
from .groups import new_group_id
from .nix import Nix
from .record import RunRecord
from .runner import RunRequest, run
from .trackers import TrackerFactory

SEED_MAX = 2**32 - 1  # PYTHONHASHSEED's range is 0..SEED_MAX: a Python child refuses any other


def repeat_seed(base: int | None, index: int) -> int:
    return (base or 0) + index


def check_seeds(base: int | None, count: int) -> None:
    """Refuse, before anything runs, a group whose seeds leave 0..SEED_MAX (the last repeat of
    ``--seed 4294967295 --repeat 2`` would die at Python's start-up, after the first was recorded)."""
    if count > SEED_MAX + 1:
        raise UsageError(f"--repeat {count} is more runs than there are seeds (0..{SEED_MAX}, the "
                         "range PYTHONHASHSEED takes); give a smaller count.")
    first, last = repeat_seed(base, 0), repeat_seed(base, count - 1)
    if first < 0 or last > SEED_MAX:
        seeds = f"seed {first} is" if count == 1 else f"seeds {first}..{last} are"
        raise UsageError(f"{seeds} outside 0..{SEED_MAX}, the range PYTHONHASHSEED takes; "
                         f"give a --seed from 0 to {SEED_MAX - count + 1}.")


def run_repeated(
    request: RunRequest,
    count: int,
    config: Config | None = None,
    nix: Nix | None = None,
    observers: TrackerFactory = tuple,
    on_run: Callable[[RunRecord], None] = lambda record: None,
) -> list[RunRecord]:
    """Run ``request`` ``count`` times as one group; ``observers()`` makes each run's trackers
    (``lambda: nixrepro.trackers.from_config(...)``: an observer follows one run)."""
    if count < 1:
        raise UsageError(f"--repeat needs a positive count, not {count}.")
    check_seeds(request.seed, count)
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
