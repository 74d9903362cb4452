"""Everything nixrepro asks of the ``nix`` command line, and nothing else talks to nix.

Feature flags are added here, once, so the user's nix.conf need not enable flakes. JSON that nix
prints is parsed into dataclasses at this boundary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import proc
from .closure import Closure, parse_path_info
from .errors import NixCommandError, RefusedError

NIX_FEATURES = ("--extra-experimental-features", "nix-command flakes")
_INSTALL_HINT = "install Nix (Debian: `apt-get install nix-bin`) or put it on PATH"


@dataclass(frozen=True)
class Nix:
    """A handle on the ``nix`` CLI. ``env`` overrides the process environment (tests, NIX_CONFIG)."""

    executable: str = "nix"
    env: Mapping[str, str] | None = None

    def run(self, args: Sequence[str], *, cwd: Path | None = None) -> str:
        """Run ``nix <args>`` with flakes enabled; return stdout or raise NixCommandError."""
        argv = [self.executable, *NIX_FEATURES, *args]
        result = proc.run(
            argv, error=NixCommandError, cwd=cwd, env=self.env, missing_hint=_INSTALL_HINT
        )
        return result.stdout

    def run_legacy(self, tool: str, args: Sequence[str]) -> str:
        """Run one of the classic ``nix-store``/``nix-build`` tools that sit beside ``nix``."""
        exe = str(Path(self.executable).with_name(tool)) if "/" in self.executable else tool
        return proc.run(
            [exe, *args], error=NixCommandError, env=self.env, missing_hint=_INSTALL_HINT
        ).stdout

    def version(self) -> str:
        """``2.8.0`` for ``nix (Nix) 2.8.0``."""
        out = self.run(["--version"]).strip()
        match = re.search(r"(\d+\.\d+[\w.+-]*)", out)
        return match.group(1) if match else out

    def closure(self, store_path: str) -> Closure:
        """The runtime closure of ``store_path`` with NAR hashes; refuses a path not in the store."""
        try:
            out = self.run(["path-info", "--recursive", "--json", store_path])
        except NixCommandError as exc:
            if "is not valid" in exc.stderr or "does not exist" in exc.stderr:
                raise RefusedError(
                    f"{store_path} is not a valid path in the Nix store; build it first "
                    "(`nix build`) or pass the output of a build with --env."
                ) from exc
            raise
        valid, invalid = parse_path_info(out)
        if invalid:
            raise RefusedError(
                f"{invalid[0]} is not a valid path in the Nix store; build it first "
                "(`nix build`) or pass the output of a build with --env."
            )
        return Closure.of(valid)

    def build(self, installable: str, *, cwd: Path | None = None) -> str:
        """Build a flake output without a ``result`` link; return its (first) output path."""
        out = self.run(["build", "--no-link", "--json", installable], cwd=cwd)
        built = json.loads(out)
        outputs = built[0]["outputs"] if built else {}
        if not outputs:
            raise RefusedError(f"`nix build {installable}` produced no output path.")
        return str(outputs.get("out") or next(iter(outputs.values())))

    def verify_contents(self, paths: Sequence[str]) -> list[str]:
        """Re-hash the contents of ``paths``; return the corrupted ones (empty when all match)."""
        if not paths:
            return []
        try:
            self.run(["store", "verify", "--no-trust", *paths])
            return []
        except NixCommandError as exc:
            corrupted = re.findall(r"path '([^']+)' was modified", exc.stderr)
            if corrupted or exc.returncode == 1:
                return corrupted or list(paths)
            raise

    def add_gc_root(self, store_path: str, link: Path) -> None:
        """Make ``link`` an (indirect) GC root for ``store_path``."""
        link.parent.mkdir(parents=True, exist_ok=True)
        self.run(["build", "--out-link", str(link), store_path])
