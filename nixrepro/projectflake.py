"""The project's flake as ``nixrepro run`` checks it before anything is recorded: where it is
(:func:`project_flake_dir`), its flake.lock refused when missing, untracked or modified
(:func:`checked_lock`), and a warning for each input the record cannot pin for someone else
(:func:`unpinned_input_warnings`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import RefusedError
from .lock import FlakeLock, LockedInput
from .nix import FlakeRef

if TYPE_CHECKING:
    from .config import Config
    from .git import GitRepo
    from .runner import RunRequest


def unpinned_input_warnings(inputs: Mapping[str, LockedInput]) -> list[str]:
    """One sentence per input the record cannot pin for someone else: it must never look more
    pinned than it is."""
    warnings = []
    for name, inp in sorted(inputs.items()):
        if inp.locked is False:
            warnings.append(f"the flake input {name!r} ({inp.url}) is not locked (no rev or narHash "
                            "that Nix accepts as a pin); the record names it but cannot pin it.")
        elif inp.local:
            warnings.append(f"the flake input {name!r} ({inp.url}) is fetched from this machine's "
                            "file system; the record pins it, but another machine cannot fetch it.")
    return warnings


def project_flake_dir(repo: GitRepo, request: RunRequest, config: Config) -> Path | None:
    """The project's flake: the --flake path if local, else the nearest flake.nix up to the root."""
    ref = request.flake or (None if request.env_path else config.run.flake)
    if ref is not None:
        local = FlakeRef.parse(ref).local_path
        if local is not None and local.startswith(("/", ".")):
            candidate = (request.cwd / local).resolve()
            if (candidate / "flake.nix").is_file():
                return candidate
    here = request.cwd.resolve()
    root = repo.root.resolve()
    for directory in (here, *here.parents):
        if (directory / "flake.nix").is_file():
            return directory
        if directory == root:
            break
    return None


def checked_lock(
    flake_dir: Path | None, lock_rel: str | None, dev: bool, tracked: bool, dirty_paths: set[str]
) -> FlakeLock | None:
    """The project's flake.lock, refused when it is missing, untracked or modified."""
    if flake_dir is None or lock_rel is None:
        raise RefusedError(
            "no flake.nix between the working directory and the repository root; nixrepro pins "
            "the environment with a flake (start one with `nix flake init`)."
        )
    lock_file = flake_dir / "flake.lock"
    if not lock_file.is_file():
        if not re.search(r"\binputs\b", (flake_dir / "flake.nix").read_text(errors="replace")):
            return None  # a flake without inputs has nothing to lock (nix writes no file)
        raise RefusedError(
            f"{lock_rel} is missing, so the flake's inputs are not pinned; run `nix flake lock` "
            "and commit flake.lock."
        )
    if not dev:
        if not tracked:
            raise RefusedError(f"{lock_rel} is not tracked by git; `git add {lock_rel}` and commit it.")
        if lock_rel in dirty_paths:
            raise RefusedError(
                f"{lock_rel} has uncommitted changes; commit it, or restore it with "
                f"`git checkout {lock_rel}`."
            )
    return FlakeLock.read(lock_file)
