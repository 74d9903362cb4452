"""nixrepro: reproducible ML experiment runs, pinned by Nix.

The names here are the in-experiment API and stay import-light (no click, boto3 or wandb), so a
training script pays nothing for ``import nixrepro``. They load on first use (PEP 562), so the
CLI, which needs none of them, does not pay for them either. The library lives in the
submodules: ``nixrepro.runner.run``, ``nixrepro.runstore.RunStore``, ``nixrepro.record.RunRecord``...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "log", "params", "run_dir", "run_id", "seed", "seed_everything"]

if TYPE_CHECKING:
    from .experiment import log, params, run_dir, run_id, seed, seed_everything


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from . import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'nixrepro' has no attribute {name!r}")
