"""Everything nixrepro asks of the ``nix`` command line, and nothing else talks to nix.

Feature flags are added here, once, so the user's nix.conf need not enable flakes. JSON that nix
prints is parsed into dataclasses at this boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from . import proc
from .closure import (
    Closure,
    StorePathInfo,
    json_format_args,
    nix32_encode,
    parse_path_info,
)
from .codec import frozen
from .errors import NixCommandError, PathInfoParseError, RefusedError
from .fsutil import atomic_write

NIX_FEATURES = ("--extra-experimental-features", "nix-command flakes")
_INSTALL_HINT = "install Nix (Debian: `apt-get install nix-bin`) or put it on PATH"


@frozen
class FlakeRef:
    """An installable as nix reads it, ``SOURCE#ATTR``: the flake and the output in it.

    The one parser of flake references: ``FlakeRef.parse(".#env")`` -> source ".", attr "env".
    """

    source: str  # ".", "./sub", "/abs", "path:/abs", "git+file:///abs?rev=...", "github:owner/repo"
    attr: str | None  # None: no "#" (nix then builds the flake's default package)

    @classmethod
    def parse(cls, text: str) -> FlakeRef:
        source, sep, attr = text.partition("#")
        return cls(source, attr if sep else None)

    @property
    def local_path(self) -> str | None:
        """The flake's directory on this file system as written (".", "sub", "/abs"), without a
        ``path:``/``git+file:`` scheme or query; None for a flake fetched from elsewhere (github:...)."""
        source = self.source
        if source.startswith("path:"):
            return source[len("path:"):].split("?", 1)[0] or "."
        if source.startswith("git+file:"):
            return source[len("git+file:"):].removeprefix("//").split("?", 1)[0] or "."
        if ":" in source:
            return None
        return source or "."


def _replace_symlink(path: Path, target: str) -> None:
    """``path`` -> ``target``, atomically (a reader sees the old link or the new one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _version_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nixrepro" / "nix-version.json"


@frozen
class Nix:
    """A handle on the ``nix`` CLI. ``env`` overrides the process environment (tests, NIX_CONFIG)."""

    executable: str = "nix"
    env: Mapping[str, str] | None = None
    progress: TextIO | None = None  # where builds report as they go (the CLI: stderr); None: quiet

    def run(self, args: Sequence[str], *, cwd: Path | None = None, input: str | None = None,
            builds: bool = False) -> str:
        """Run ``nix <args>`` with flakes enabled; return stdout or raise NixCommandError.

        ``builds``: this call may build, so nix's messages also go to ``progress``.
        """
        argv = [self.executable, *NIX_FEATURES, *args]
        result = proc.run(
            argv, error=NixCommandError, cwd=cwd, env=self.env, input=input,
            missing_hint=_INSTALL_HINT, stream_stderr=self.progress if builds else None,
        )
        return result.stdout

    def run_legacy(self, tool: str, args: Sequence[str]) -> str:
        """Run one of the classic ``nix-store``/``nix-build`` tools that sit beside ``nix``."""
        exe = str(Path(self.executable).with_name(tool)) if "/" in self.executable else tool
        return proc.run(
            [exe, *args], error=NixCommandError, env=self.env, missing_hint=_INSTALL_HINT
        ).stdout

    def version(self) -> str:
        """The Nix version: ``2.8.0`` for ``nix (Nix) 2.8.0``.

        The last version in the line, because a distribution names its own first:
        ``nix (Determinate Nix 3.4.1) 2.28.2`` is Nix 2.28.2.
        """
        binary = proc.which(self.executable, self.env)
        try:  # keyed by the binary itself: an upgrade (another path, size or mtime) asks again
            real = os.path.realpath(binary) if binary else None
            st = os.stat(real) if real else None
        except OSError:
            real = st = None
        key = f"{real}:{st.st_size}:{st.st_mtime_ns}" if real and st else None
        cache = _version_cache()
        if key is not None:
            try:
                known = json.loads(cache.read_text())
                if isinstance(known, dict) and isinstance(known.get(key), str):
                    return str(known[key])  # a stat and a read: `nix --version` costs 20 ms a run
            except (OSError, ValueError):
                pass
        out = self.run(["--version"]).strip()
        found = re.findall(r"\d+\.\d+[\w.+-]*", out)
        version = found[-1] if found else out
        if key is not None:
            with contextlib.suppress(OSError):  # a read-only home only costs the call next time
                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(cache, json.dumps({key: version}) + "\n")
        return version

    def closure(self, store_path: str, nix_version: str | None = None) -> Closure:
        """The runtime closure of ``store_path`` with NAR hashes; refuses a path not in the store.

        ``nix_version`` (what :meth:`version` returned) picks ``--json-format`` where that Nix has
        it; it is a parameter, not a ``nix --version`` of its own, so callers that already ask for
        the version in parallel add no subprocess. Without it the call has no ``--json-format``,
        which every Nix so far still answers (2.33+ with a warning, captured).
        """
        args = ["path-info", "--recursive", "--json", *json_format_args(nix_version), store_path]
        try:
            out = self.run(args)
        except NixCommandError as exc:
            if "is not valid" in exc.stderr or "does not exist" in exc.stderr:
                raise RefusedError(
                    f"{store_path} is not a valid path in the Nix store; build it first "
                    "(`nix build`) or pass the output of a build with --env."
                ) from exc
            raise
        valid, invalid = parse_path_info(out, nix_version)
        if invalid:
            raise RefusedError(
                f"{invalid[0]} is not a valid path in the Nix store; build it first "
                "(`nix build`) or pass the output of a build with --env."
            )
        # nix resolves a path inside a store path (or a link to one) to that store path: the
        # closure would then not be the closure of the path recorded as the environment.
        if not any(info.path == store_path for info in valid):
            raise RefusedError(
                f"{store_path} is not in its own closure (`nix path-info` answered for "
                f"{valid[0].path}); pass the store path itself (/nix/store/<hash>-<name>), not a path in it."
            )
        return Closure.of(valid)

    def build(self, installable: str, *, cwd: Path | None = None) -> str:
        """Build a flake output without a ``result`` link; return its (first) output path."""
        out = self.run(["build", "--no-link", "--json", installable], cwd=cwd, builds=True)
        built = json.loads(out)
        outputs = built[0]["outputs"] if built else {}
        if not outputs:
            raise RefusedError(f"`nix build {installable}` produced no output path.")
        return str(outputs.get("out") or next(iter(outputs.values())))

    def path_infos(
        self, paths: Sequence[str], nix_version: str | None = None
    ) -> tuple[list[StorePathInfo], list[str]]:
        """``(valid, invalid)`` for exactly ``paths`` (not their closure); missing paths are invalid.

        ``nix_version`` as for :meth:`closure`. Every path asked about must be answered for: a
        path left out would otherwise be neither missing nor present, and pass a check unseen.
        """
        if not paths:
            return [], []
        out = self.run(["path-info", "--json", *json_format_args(nix_version), *paths])
        valid, invalid = parse_path_info(out, nix_version)
        answered = {info.path for info in valid} | set(invalid)
        unanswered = [path for path in paths if path not in answered]
        if unanswered:
            who = f"nix {nix_version}" if nix_version else "the installed nix"
            raise PathInfoParseError(
                f"`nix path-info --json` of {who} did not answer for {unanswered[0]} "
                f"({len(unanswered)} of {len(paths)} paths left out); upgrade nixrepro or report it."
            )
        return valid, invalid

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
        """Make ``link`` an (indirect) GC root for ``store_path``.

        What ``nix-store --add-root --indirect`` writes (LocalStore::addIndirectRoot): ``link`` ->
        the store path, and ``<state>/gcroots/auto/<nix32 sha1 of link>`` -> ``link``, which is how
        the collector finds it. Written directly, without a nix process (0.1 s a run), where that
        directory is writable (root, a single-user install); through nix elsewhere (the daemon).
        """
        link.parent.mkdir(parents=True, exist_ok=True)
        link = Path(os.path.abspath(link))
        state = Path(os.environ.get("NIX_STATE_DIR") or "/nix/var/nix")
        auto = state / "gcroots" / "auto"
        name = nix32_encode(hashlib.sha1(str(link).encode()).digest())
        try:
            _replace_symlink(link, store_path)
            _replace_symlink(auto / name, str(link))
        except OSError:  # not ours to write: ask nix (and its daemon) for the same two links
            self.run(["build", "--out-link", str(link), store_path])

    # --- binary caches: archive and rebuild ---------------------------------------------------------

    def copy_to(self, store_url: str, paths: Sequence[str]) -> None:
        """``nix copy --to STORE_URL`` of ``paths`` and their closures (present ones are skipped).

        A ``.drv`` given to ``nix copy`` means its outputs; ``--derivation`` copies the file itself.
        """
        drvs = [p for p in paths if p.endswith(".drv")]
        others = [p for p in paths if not p.endswith(".drv")]
        if others:
            self.run(["copy", "--to", store_url, *others])
        if drvs:
            self.run(["copy", "--derivation", "--to", store_url, *drvs])

    def flake_archive(self, store_url: str, flake_ref: str) -> None:
        """Copy the flake's source and every locked input's source to ``store_url``."""
        self.run(["flake", "archive", "--no-update-lock-file", "--to", store_url, flake_ref])

    def generate_secret_key(self, key_name: str) -> str:
        return self.run(["key", "generate-secret", "--key-name", key_name])

    def public_key(self, secret_key: str) -> str:
        return self.run(["key", "convert-secret-to-public"], input=secret_key).strip()

    def deriver(self, store_path: str) -> str | None:
        """The .drv that built ``store_path``, when nix knows it and it is still in the store."""
        out = self.run_legacy("nix-store", ["--query", "--deriver", store_path]).strip()
        if not out.endswith(".drv") or not Path(out).exists():
            return None
        return out

    def build_closure(self, drv: str) -> list[str]:
        """Everything needed to build ``drv`` again: its requisites with their outputs."""
        return self.run_legacy(
            "nix-store", ["--query", "--requisites", "--include-outputs", drv]
        ).split()

    def build_with_options(
        self, installable: str, options: Mapping[str, str], *, cwd: Path | None = None
    ) -> str:
        """``nix build`` that never rewrites flake.lock, with ``--option NAME VALUE`` settings."""
        args = ["build", "--no-link", "--json", "--no-update-lock-file"]
        for name, value in options.items():
            args += ["--option", name, value]
        built = json.loads(self.run([*args, installable], cwd=cwd, builds=True))
        # a store path as installable prints {"path": ...}; a derivation {"outputs": {...}}
        outputs = (built[0].get("outputs") or {"out": built[0].get("path")}) if built else {}
        if not outputs:
            raise RefusedError(f"`nix build {installable}` produced no output path.")
        return str(outputs.get("out") or next(iter(outputs.values())))

    def source_path(self, nar_hash: str, name: str = "source") -> str:
        """The store path a flake input with this NAR hash is fetched to."""
        return self.run_legacy(
            "nix-store", ["--print-fixed-path", "--recursive", "sha256", nar_hash, name]
        ).strip()
