"""``nixrepro init``: add nixrepro's config to an existing flake project.

New projects start from a template (``nix flake init -t <nixrepro>#minimal``); this is for a
project that already has its flake. It writes ``nixrepro.toml`` (every key optional, the rest
commented out with their defaults) and makes git ignore the run store and nix's ``result`` link.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import CONFIG_FILE
from .errors import UsageError
from .fsutil import atomic_write

IGNORED = (".nixrepro/", "result")


def config_text(flake: str) -> str:
    return f"""\
# nixrepro configuration. Every key is optional; docs: README.md and docs/.

[run]
flake = "{flake}"  # the environment `nixrepro run` builds when given neither --env nor --flake
# verify_contents = false  # also re-hash the closure's files before each run (nix store verify)

# [secrets]
# extra_names = ["HF_TOKEN"]  # more variable names to redact, beyond KEY/SECRET/TOKEN/PASSWORD/...

# [tracker]  # a W&B run per recorded run (docs/wandb.md)
# kind = "wandb"
# project = "my-project"
# mode = "offline"

# [archive]  # where `nixrepro archive` keeps environments (docs/diff.md)
# to = "file:///srv/nix-archive"
"""


@dataclass(frozen=True)
class Scaffolded:
    written: list[Path]  # files created or changed; the user commits them


def init_project(root: Path, flake: str = ".#env", force: bool = False) -> Scaffolded:
    """Write nixrepro.toml and the .gitignore entries into the flake project at ``root``."""
    if not (root / "flake.nix").is_file():
        raise UsageError(
            f"{root} has no flake.nix; start from a template instead: "
            "`nix flake init -t <nixrepro flake>#minimal`."
        )
    config = root / CONFIG_FILE
    if config.exists() and not force:
        raise UsageError(f"{config} already exists; edit it, or pass --force to overwrite it.")
    atomic_write(config, config_text(flake))
    written = [config]
    gitignore = root / ".gitignore"
    present = gitignore.read_text().splitlines() if gitignore.exists() else []
    missing = [entry for entry in IGNORED if entry not in present and f"/{entry}" not in present]
    if missing:
        text = "\n".join(present)
        atomic_write(gitignore, (text + "\n" if text else "") + "\n".join(missing) + "\n")
        written.append(gitignore)
    return Scaffolded(written)
