"""nixrepro: reproducible ML experiment runs, pinned by Nix.

The names here are the in-experiment API and stay import-light (no click, boto3 or wandb), so a
training script pays nothing for ``import nixrepro``. The library lives in the submodules:
``nixrepro.runner.run``, ``nixrepro.runstore.RunStore``, ``nixrepro.record.RunRecord``...
"""

from .experiment import log, params, run_dir, run_id, seed, seed_everything

__version__ = "0.1.0"
__all__ = ["__version__", "log", "params", "run_dir", "run_id", "seed", "seed_everything"]
