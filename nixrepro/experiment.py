"""The in-experiment API: what a training script imports. Deliberately tiny and import-light.

    import nixrepro
    params = nixrepro.params()            # the -p key=value of `nixrepro run`
    nixrepro.log({"loss": 0.3}, step=10)  # appended to the run's metrics.jsonl
    nixrepro.seed_everything()            # random / numpy / torch from the run's --seed

Outside a recorded run (no NIXREPRO_RUN_DIR) ``log`` does nothing but warn once, so the same
script also runs by hand.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .fsutil import append_line
from .metrics import METRICS_FILE

_warned: list[bool] = []  # a mutable flag, not config: "warn once" per process
_log_failed: list[bool] = []  # "warn once" that metrics could not be written


def run_id() -> str | None:
    """The id of the run this process belongs to, or None outside ``nixrepro run``."""
    return os.environ.get("NIXREPRO_RUN_ID")


def run_dir() -> Path | None:
    value = os.environ.get("NIXREPRO_RUN_DIR")
    return Path(value) if value else None


def params() -> dict[str, Any]:
    """The run's params (``-p key=value``), typed; empty outside a run."""
    raw = os.environ.get("NIXREPRO_PARAMS")
    return dict(json.loads(raw)) if raw else {}


def seed() -> int | None:
    """The run's ``--seed`` (for a repeat: this repeat's seed), or None."""
    raw = os.environ.get("NIXREPRO_SEED")
    return int(raw) if raw else None


run_seed = seed  # the name seed_everything() uses, where its own argument is called seed


def log(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Record metric values (numbers, bools or short strings), optionally at a training step."""
    directory = run_dir()
    if directory is None:
        if not _warned:
            _warned.append(True)
            print("nixrepro: not inside `nixrepro run`; metrics are not recorded", file=sys.stderr)
        return
    values = {str(key): _plain(value) for key, value in metrics.items()}
    line = json.dumps({"time": time.time(), "step": step, "metrics": values}) + "\n"
    try:
        append_line(directory / METRICS_FILE, line)
    except OSError as exc:  # the run directory vanished, a full disk: the experiment goes on
        if not _log_failed:
            _log_failed.append(True)
            print(f"nixrepro: warning: metrics cannot be written to {directory / METRICS_FILE} "
                  f"({exc.strerror or exc}); they are not recorded, the experiment goes on",
                  file=sys.stderr)


def _plain(value: Any) -> Any:
    """numpy / torch scalars become Python numbers; NaN and inf become strings JSON can hold."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return float(value)


def seed_everything(seed: int | None = None) -> int:
    """Seed ``random``, and numpy and torch when they are installed; returns the seed used.

    The seed is ``seed``, else the run's ``--seed``, else 0. Under ``nixrepro run --deterministic``
    torch is also switched to deterministic algorithms (and cuDNN autotuning off). What was seeded
    is written to the run directory and lands in the record's ``seeded``.
    """
    import importlib.util
    import random

    from .determinism import DETERMINISTIC_VARIABLE, write_seeded
    from .record import Seeded

    chosen = seed if seed is not None else (run_seed() if run_seed() is not None else 0)
    assert chosen is not None
    deterministic = os.environ.get(DETERMINISTIC_VARIABLE) == "1"
    random.seed(chosen)
    libraries = ["random"]
    if importlib.util.find_spec("numpy") is not None:
        import numpy

        numpy.random.seed(chosen % 2**32)  # numpy's legacy global generator takes 32 bits
        libraries.append("numpy")
    torch_deterministic = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(chosen)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(chosen)
        if deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            torch_deterministic = True
        libraries.append("torch")
    directory = run_dir()
    if directory is not None:
        write_seeded(directory, Seeded(seed=chosen, libraries=libraries,
                                       deterministic_algorithms=torch_deterministic))
    return chosen
