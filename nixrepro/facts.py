"""The facts of a build, written by the flake's ``lib.mkExperiment`` at evaluation time.

``nix run .#experiment`` runs ``nixrepro run --facts <file> --env <env> -- <command>``; the facts
file says which source, flake.lock, inputs and nixpkgs the environment was built from. Before the
command starts they are checked against the work tree and flake.lock, so a stale build (made from
another commit, a dirty tree or another flake.lock) or an input that is not the locked one
(``--override-input``) is refused instead of recorded under the wrong identity.

Where the build came from decides what it is compared with (:func:`origin`):

* a git flake with a rev that is HEAD, or a path: flake (which has no rev, dirty or not): the
  checkout, whose state the record describes;
* a git flake without a rev: a dirty tree (refused unless --dev);
* a rev the checkout's repository does not have: a flake run by reference
  (``nix run github:org/repo#experiment``); its code is that rev, never the cwd's HEAD, and its
  inputs come from the flake.lock it was built with (carried in the facts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .codec import frozen
from .errors import RefusedError, UsageError
from .lock import FlakeLock, LockedInput
from .record import BuildFacts, EvaluatedInput

SCHEMA = "nixrepro.facts/1"
Origin = Literal["checkout", "flake"]


@frozen
class FactsFile:
    """The facts, and the flake.lock the build was evaluated with (None: the flake has none)."""

    facts: BuildFacts
    lock: FlakeLock | None


def read(path: Path) -> FactsFile:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"cannot read the build facts {path} ({type(exc).__name__}: {exc}); run "
                         "`nix run .#experiment` again to rebuild them.") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a nixrepro facts file (schema {SCHEMA}); it is written by "
                         "lib.mkExperiment.")
    field = _Fields(doc, path)
    config = _Fields(field.object("nixpkgsConfig"), path, "nixpkgsConfig.")
    inputs = {name: _Fields(value, path, f"inputs.{name}.") if isinstance(value, dict)
              else field.wrong(f"inputs.{name}", "an object")
              for name, value in sorted(field.object("inputs").items())}
    facts = BuildFacts(
        rev=field.text("rev"),
        nar_hash=field.text("narHash"),
        flake_lock_sha256=field.text("flakeLockSha256"),
        env=field.text("env") or "",
        system=field.text("system") or "",
        nixpkgs_rev=field.text("nixpkgsRev"),
        cuda_support=config.flag("cudaSupport"),
        cuda_capabilities=config.texts("cudaCapabilities"),
        allow_unfree=config.flag("allowUnfree"),
        git=field.flag("git") if "git" in doc else None,
        dirty_rev=field.text("dirtyRev"),
        last_modified=field.integer("lastModified"),
        nixpkgs_nar_hash=field.text("nixpkgsNarHash"),
        inputs={name: EvaluatedInput(rev=value.text("rev"), narHash=value.text("narHash"))
                for name, value in inputs.items()},
    )
    lock_text = field.text("flakeLock")
    lock = None
    if lock_text is not None:
        try:
            data = lock_text.encode()
        except UnicodeError:
            raise UsageError(f"{path} carries a flake.lock that is not text; run "
                             "`nix run .#experiment` again.") from None
        lock = FlakeLock.parse(data, source=f"the flake.lock recorded in {path}")
        if facts.flake_lock_sha256 not in (None, lock.sha256):
            raise UsageError(f"{path} carries a flake.lock whose sha256 is not its "
                             "flakeLockSha256; run `nix run .#experiment` again.")
    return FactsFile(facts, lock)


class _Fields:
    """Typed reads of one JSON object of the facts: a wrong type is one sentence naming it."""

    def __init__(self, doc: dict[str, Any], path: Path, prefix: str = "") -> None:
        self.doc, self.path, self.prefix = doc, path, prefix

    def wrong(self, name: str, wanted: str) -> Any:
        raise UsageError(f"{self.path} is not a valid facts file: {self.prefix}{name} is not "
                         f"{wanted}; run `nix run .#experiment` again to rebuild it.")

    def _get(self, name: str, types: tuple[type, ...], wanted: str) -> Any:
        value = self.doc.get(name)
        if value is not None and (not isinstance(value, types) or
                                  (isinstance(value, bool) and bool not in types)):
            self.wrong(name, wanted)
        return value

    def text(self, name: str) -> str | None:
        value: str | None = self._get(name, (str,), "a string or null")
        return value

    def integer(self, name: str) -> int | None:
        value: int | None = self._get(name, (int,), "an integer or null")
        return value

    def flag(self, name: str) -> bool:
        return bool(self._get(name, (bool,), "true or false"))

    def object(self, name: str) -> dict[str, Any]:
        value: dict[str, Any] | None = self._get(name, (dict,), "an object")
        return value or {}

    def texts(self, name: str) -> list[str]:
        value = self._get(name, (list,), "a list of strings") or []
        if not all(isinstance(item, str) for item in value):
            self.wrong(name, "a list of strings")
        return list(value)


def origin(facts: BuildFacts, *, head: str, has_commit: bool) -> Origin:
    """Whether the build is of this checkout, or of a flake run by reference from elsewhere.

    ``has_commit``: the checkout's repository has the commit ``facts.rev`` (only asked when the
    rev is not HEAD).
    """
    if facts.rev is None or facts.rev == head or has_commit:
        return "checkout"
    return "flake"


def lock_written_by_nix() -> RefusedError:
    """The refusal for a flake that had no flake.lock: `nix run` wrote one and `git add -N`-ed it,
    so the tree is dirty and the build has no rev."""
    return RefusedError(
        "nix wrote flake.lock during this run (the flake had no lock file yet), so the build is "
        "not of a commit; commit it: `git add flake.lock && git commit -m 'lock inputs'`, then "
        "`nix run .#experiment` again."
    )


def check(facts: BuildFacts, *, head: str, flake_lock: Path | None, env_path: str, dev: bool) -> None:
    """Refuse a build that does not describe this checkout (one sentence, with the remedy)."""
    if facts.rev is None and facts.git is not False and not dev:
        # A path: flake has no rev however clean it is; a git one has none when it was dirty (the
        # runner has refused a dirty tree already, so it was committed since) or when the lock nix
        # used is not flake.lock's bytes (Nix then evaluates the flake as dirty).
        raise RefusedError(
            "this environment was built without a rev although the work tree is clean: either "
            "from a dirty tree since committed, or with a lock that is not the committed "
            "flake.lock (--override-input, --update-input, --no-write-lock-file); run "
            "`nix run .#experiment` again without those flags (if nix says it did not write a "
            "modified lock file, run `nix flake lock` and commit flake.lock first)."
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
            f"{head[:12]}; run `nix run .#experiment` again (or check out {facts.rev[:12]} to "
            "record a run of that commit)."
        )
    check_env(facts, env_path)


def check_env(facts: BuildFacts, env_path: str) -> None:
    if facts.env and env_path and facts.env != env_path:
        raise RefusedError(
            f"the facts describe the environment {facts.env}, not {env_path}; run "
            "`nix run .#experiment` again."
        )


def evaluated_inputs(facts: BuildFacts, locked: Mapping[str, LockedInput], *,
                     dev: bool) -> dict[str, LockedInput]:
    """The inputs as they were evaluated: flake.lock's, refused (or, with --dev, marked
    ``overridden``) where an input the build used is not the one flake.lock pins."""
    result = dict(locked)
    for name, seen in facts.inputs.items():
        pinned = locked.get(name)
        if pinned is None or seen.narHash is None or _same(pinned, seen):
            continue
        if not dev:
            raise RefusedError(
                f"the flake input {name!r} that was evaluated ({_identity(seen.rev, seen.narHash)}) "
                f"is not the one flake.lock pins ({_identity(pinned.rev, pinned.narHash)}), as with "
                f"--override-input; lock it instead (`nix flake lock --override-input {name} REF`) "
                "and commit flake.lock, or pass --dev to record it as a development run."
            )
        result[name] = dataclasses.replace(pinned, rev=seen.rev, narHash=seen.narHash,
                                           lastModified=None, overridden=True)
    _check_nixpkgs(facts, result, dev)
    return result


def _same(pinned: LockedInput, seen: EvaluatedInput) -> bool:
    return pinned.narHash == seen.narHash and (seen.rev is None or pinned.rev in (None, seen.rev))


def _check_nixpkgs(facts: BuildFacts, inputs: Mapping[str, LockedInput], dev: bool) -> None:
    """The nixpkgs the env was built with must be one of the flake's inputs (by rev or narHash)."""
    if facts.nixpkgs_rev is None and facts.nixpkgs_nar_hash is None:
        return
    for inp in inputs.values():
        if (facts.nixpkgs_rev is not None and inp.rev == facts.nixpkgs_rev) or (
                facts.nixpkgs_nar_hash is not None and inp.narHash == facts.nixpkgs_nar_hash):
            return
    if not dev:
        raise RefusedError(
            f"the nixpkgs this environment was built with "
            f"({_identity(facts.nixpkgs_rev, facts.nixpkgs_nar_hash)}) is none of the inputs "
            "flake.lock pins; pass mkExperiment the nixpkgs input of the flake "
            "(`inherit nixpkgs;`), or pass --dev to record it as a development run."
        )


def _identity(rev: str | None, nar_hash: str | None) -> str:
    return f"rev {rev[:12]}" if rev else f"narHash {nar_hash}"
