"""``--deterministic``: the environment variables that pin what Python, cuBLAS and BLAS threads
leave to chance, the file ``nixrepro.seed_everything()`` leaves behind, and the note ``diff`` and
``reproduce`` print about a run that was not deterministic. Documented in docs/repeats.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .record import RunRecord, Seeded

DETERMINISTIC_VARIABLE = "NIXREPRO_DETERMINISTIC"  # "1": seed_everything() also asks torch for it
SEEDED_FILE = "seeded.json"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# cuBLAS picks reduction orders per workspace; a fixed workspace makes its results repeatable
# (https://docs.nvidia.com/cuda/cublas/#results-reproducibility).
CUBLAS_WORKSPACE = ":4096:8"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def deterministic_env(seed: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables ``--deterministic`` sets in the command's environment.

    Thread counts change the order of floating-point reductions, so they are fixed and recorded:
    a value the user already set is kept, otherwise the number of CPUs this process may use.
    """
    threads = str(usable_cpus())
    env = {
        DETERMINISTIC_VARIABLE: "1",
        "PYTHONHASHSEED": str(seed),
        "CUBLAS_WORKSPACE_CONFIG": environ.get("CUBLAS_WORKSPACE_CONFIG") or CUBLAS_WORKSPACE,
    }
    for name in THREAD_VARIABLES:
        env[name] = environ.get(name) or threads
    return env


def write_seeded(run_dir: Path, seeded: Seeded) -> None:
    """Called inside the experiment; plain json so that ``import nixrepro`` stays light."""
    body = {"seed": seeded.seed, "libraries": seeded.libraries,
            "deterministic_algorithms": seeded.deterministic_algorithms}
    tmp = run_dir / f".{SEEDED_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(body, sort_keys=True) + "\n")
    os.replace(tmp, run_dir / SEEDED_FILE)


def read_seeded(run_dir: Path) -> Seeded | None:
    """What the experiment seeded, or None when it never called ``seed_everything()``."""
    try:
        doc = json.loads((run_dir / SEEDED_FILE).read_bytes())
        return Seeded(seed=int(doc["seed"]), libraries=[str(x) for x in doc.get("libraries", [])],
                      deterministic_algorithms=bool(doc.get("deterministic_algorithms", False)))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def determinism_note(record: RunRecord) -> str | None:
    """One sentence when ``record`` was not run deterministically (for ``diff`` and ``reproduce``)."""
    run = f"run {record.short_id}"
    if not record.deterministic:
        return (f"{run} was not deterministic (recorded without --deterministic), so part of a "
                "difference in its metrics may be chance; compare repeats (--repeat N) instead.")
    if record.seeded is None:
        return (f"{run} ran with --deterministic but never called nixrepro.seed_everything(), so "
                "nixrepro did not seed random, numpy or torch in it.")
    if "torch" in record.seeded.libraries and not record.seeded.deterministic_algorithms:
        return f"{run} seeded torch without torch.use_deterministic_algorithms(True)."
    return None
