"""The facts of a build, written by the flake's ``lib.mkExperiment`` at evaluation time.

``nix run .#experiment`` runs ``nixrepro run --facts <file> --env <env> -- <command>``; the facts
file says which commit, flake.lock and nixpkgs the environment was built from. Before the command
starts they are checked against the work tree, so a stale build (made from another commit, a
dirty tree or another flake.lock) is refused instead of recorded under the wrong identity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import RefusedError, UsageError
from .record import BuildFacts

SCHEMA = "nixrepro.facts/1"


def read(path: Path) -> BuildFacts:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the build facts {path} ({exc}); run `nix run .#experiment` "
                         "again to rebuild them.") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a nixrepro facts file (schema {SCHEMA}); it is written by "
                         "lib.mkExperiment.")
    config: dict[str, Any] = doc.get("nixpkgsConfig") or {}
    return BuildFacts(
        rev=doc.get("rev"),
        nar_hash=doc.get("narHash"),
        flake_lock_sha256=doc.get("flakeLockSha256"),
        env=str(doc.get("env", "")),
        system=str(doc.get("system", "")),
        nixpkgs_rev=doc.get("nixpkgsRev"),
        cuda_support=bool(config.get("cudaSupport", False)),
        cuda_capabilities=[str(c) for c in config.get("cudaCapabilities") or []],
        allow_unfree=bool(config.get("allowUnfree", False)),
    )


def check(facts: BuildFacts, *, head: str, flake_lock: Path | None, env_path: str, dev: bool) -> None:
    """Refuse a build that does not describe this checkout (one sentence, with the remedy)."""
    if facts.rev is None and not dev:
        raise RefusedError(
            "this environment was built from a dirty tree (the flake has no rev); commit your "
            "changes and run `nix run .#experiment` again, or pass --dev (NIXREPRO_DEV=1)."
        )
    if facts.flake_lock_sha256 is not None and flake_lock is not None:
        on_disk = hashlib.sha256(flake_lock.read_bytes()).hexdigest()
        if on_disk != facts.flake_lock_sha256:
            raise RefusedError(
                f"flake.lock changed since this environment was built (sha256 {on_disk[:12]}, built "
                f"with {facts.flake_lock_sha256[:12]}); run `nix run .#experiment` again."
            )
    if facts.rev is not None and facts.rev != head:
        raise RefusedError(
            f"this environment was built from commit {facts.rev[:12]} but the checkout is at "
            f"{head[:12]}; run `nix run .#experiment` again."
        )
    if facts.env and env_path and facts.env != env_path:
        raise RefusedError(
            f"the facts describe the environment {facts.env}, not {env_path}; run "
            "`nix run .#experiment` again."
        )
