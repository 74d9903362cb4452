"""The out path a stage's flake reference evaluates to, kept so that ``pipeline status`` and a cached
``pipeline run`` need no ``nix build`` when nothing the evaluation reads has changed.

What Nix 2.8 itself keeps: its evaluation cache (``~/.cache/nix/eval-cache-v2``, libcmd's
openEvalCache) is keyed by the flake's fingerprint, the store path of its source, its subdir,
revCount, lastModified and the lock file (LockedFlake::getFingerprint), and used whenever
evaluation is pure. But to reach it every ``nix build`` fetches the flake first (git to find out
whether the tree is clean and which commit it is, the fetcher cache for the source, every locked
input) and then asks the store whether the outputs are valid: 40-70 ms of processes before
nixrepro has read a run. Nothing it offers answers "what does ``.#env`` build to" without that.

So nixrepro keeps its own entry per flake reference, keyed by everything that evaluation reads,
as Nix 2.8 reads it (src/libexpr/flake/flakeref.cc, src/libfetchers/git.cc, src/nix/main.cc,
src/libstore/globals.cc):

* the flake's source. Only a tree that Nix finds clean is cached, by Nix's own test (``git diff
  HEAD --quiet --ignore-submodules``: untracked files do not count, as Nix copies none of them):
  Nix then fetches the commit HEAD is on (``git rev-parse --abbrev-ref HEAD``, which git keeps
  unambiguous, resolved again), so the commit fixes the tree, flake.nix, flake.lock,
  ``self.rev``, ``revCount`` and ``lastModified``. Whether ``.git/shallow`` exists is
  in the key (Nix adds ``shallow=1`` for it, and there is no revCount then). A reference is
  cached only when Nix reads it as this repository's git flake: a path (``.``, ``./sub``, an
  absolute path) with no query, to a directory holding flake.nix, whose nearest ``.git`` upwards
  is the repository's. ``path:``, ``git+file:``, registry names and remote flakes are asked of nix
  every time.
* its inputs. An entry is written only when ``nix flake metadata`` of the same commit says that
  Nix locks the flake to exactly the committed flake.lock (no input added or re-resolved, which
  Nix does without writing the file when the new input is not locked) and every input in it is
  locked by Nix's rules (nixrepro.lock): the inputs are then fetched by rev or narHash.
* the evaluator and its settings. Evaluation is pure under ``nix build`` (main.cc sets pure-eval
  after reading the configuration; a configuration that names pure-eval is not cached, whichever
  Nix reads it), so it reads no environment variable and no file outside the flake and its
  inputs; the attribute's system and every other setting come from the nix binary (path, size,
  mtime, version) and its configuration: ``$NIX_CONF_DIR/nix.conf``, the user's files
  (``$NIX_USER_CONF_FILES``, else ``nix/nix.conf`` under ``$XDG_CONFIG_HOME`` or ``~/.config``
  and each of ``$XDG_CONFIG_DIRS``) with what they include, and ``$NIX_CONFIG``, whose contents
  are in the key, with every ``NIX_*`` variable. A store other than the local one (or its daemon)
  is not cached.

An entry names a store path; one that no longer exists (collected) is a miss, and nix builds it
again. What is left out, as Nix's own evaluation cache leaves it out: an import from a derivation
whose builder is not deterministic, collected and built again with other contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..codec import canonical_sha256
from ..errors import NixreproError
from ..fsutil import atomic_write, keep_newest
from ..git import GitRepo
from ..lock import FlakeLock
from ..nix import FlakeRef, Nix
from ..proc import which

CACHE_VERSION = 1
CACHE_KEEP = 256  # entries kept (each a few hundred bytes); a dropped one costs one nix build
NIX_CONF_DIR = "/etc/nix"  # where Nix's builds (Debian's nix-bin, the installers) look by default
# Nix 2.8's reading of a path flake reference (flakeref.cc): `fnRegex` segments, no scheme.
_SEGMENT = r"[0-9a-zA-Z\-._~!$&'\"()*+,;=]+"
_PATH_REF = re.compile(rf"/?{_SEGMENT}(?:/{_SEGMENT})*/?")
_LOCAL_STORES = ("", "auto", "daemon", "local")
_MAX_INCLUDES = 16


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nixrepro" / "flake-envs"


def key(repo: GitRepo, commit: str, ref: str, nix: Nix, nix_version: str) -> dict[str, Any] | None:
    """What the evaluation of ``ref`` (built in ``repo.root``, whose HEAD is ``commit``) depends
    on; None when nixrepro cannot tell (a tree Nix finds dirty, a flake that is not this
    repository's, a configuration it does not follow): then nix is asked every time."""
    if _flake_dir(repo.root, FlakeRef.parse(ref).source) is None or not clean(repo):
        return None
    env = nix.env if nix.env is not None else os.environ
    config = _config(env)
    if config is None:
        return None
    binary = which(nix.executable, env)
    try:
        real = os.path.realpath(binary) if binary else None
        st = os.stat(real) if real else None
    except OSError:
        return None
    if real is None or st is None:
        return None
    return {
        "version": CACHE_VERSION,
        "root": str(repo.root),
        "ref": ref,
        "commit": commit,
        "shallow": os.path.exists(repo.root / ".git" / "shallow"),
        "nix": [real, st.st_size, st.st_mtime_ns, nix_version],
        "env": {name: value for name, value in sorted(env.items())
                if name.startswith(("NIX_", "_NIX_")) or name in ("HOME", "XDG_CONFIG_HOME",
                                                                   "XDG_CONFIG_DIRS")},
        "config": config,
    }


def lookup(parts: dict[str, Any]) -> str | None:
    """The out path kept under ``parts``, if it is still in the store."""
    digest = canonical_sha256(parts)
    try:
        entry = json.loads((cache_dir() / digest).read_text())
        out = entry["out"]
        if entry["key"] != parts or not isinstance(out, str) or not out.startswith("/"):
            return None
        os.lstat(out)  # collected: a miss, and nix builds it again
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return out


def remember(parts: dict[str, Any], out: str) -> None:
    """Keep ``out`` under ``parts``; a cache that cannot be written only costs a build next time."""
    path = cache_dir() / canonical_sha256(parts)
    with contextlib.suppress(OSError):
        atomic_write(path, json.dumps({"key": parts, "out": out}, sort_keys=True) + "\n")
        keep_newest(path.parent, CACHE_KEEP)


def clean(repo: GitRepo) -> bool:
    """Nix 2.8's test of a local git flake (libfetchers/git.cc): clean, it fetches HEAD's commit."""
    try:
        return repo.call("diff", "HEAD", "--quiet", "--ignore-submodules", "--", check=False).returncode == 0
    except NixreproError:
        return False


def locked_to_commit(repo: GitRepo, commit: str, ref: str, nix: Nix) -> bool:
    """Whether Nix evaluates ``ref`` at the snapshot's commit with exactly the committed flake.lock,
    every input of it locked (``nix flake metadata``: the lock Nix computes, and the revision)."""
    source = FlakeRef.parse(ref).source
    try:
        meta = json.loads(nix.run(["flake", "metadata", "--json", "--no-update-lock-file",
                                   "--no-write-lock-file", source], cwd=repo.root))
        flake_dir = _flake_dir(repo.root, source)
        if flake_dir is None or meta.get("revision") != commit:
            return False
        rel = os.path.relpath(flake_dir, repo.root)
        committed = repo.show_file(commit, "flake.lock" if rel == "." else f"{rel}/flake.lock")
        locks = meta["locks"]
        if committed is None:  # no lock file: only a flake without inputs is locked by it
            return not locks["nodes"][locks["root"]].get("inputs") and len(locks["nodes"]) == 1
        if json.loads(committed) != locks:
            return False
        return all(found.locked for found in FlakeLock.parse(committed).inputs.values())
    except (NixreproError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _flake_dir(root: Path, source: str) -> Path | None:
    """The directory of a path flake reference that Nix reads as the git flake of ``root``."""
    if not source.startswith((".", "/")) or _PATH_REF.fullmatch(source) is None:
        return None
    path = Path(os.path.normpath(os.path.join(root, source)))  # Nix's absPath: ".." lexically
    if path.is_symlink() or not (path / "flake.nix").is_file():
        return None
    for directory in (path, *path.parents):
        if (directory / ".git").exists():
            return path if directory == root else None
    return None


def _config(env: Mapping[str, str]) -> list[Any] | None:
    """Every configuration Nix 2.8 reads (loadConfFile), in its order, with its contents; None
    when one cannot be read or sets what nixrepro does not follow (pure-eval, another store)."""
    conf_dir = env.get("NIX_CONF_DIR") or NIX_CONF_DIR
    files = [os.path.join(conf_dir, "nix.conf")]
    if "NIX_USER_CONF_FILES" in env:
        user = env["NIX_USER_CONF_FILES"].split(":")
    else:
        home = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", ""), ".config")
        dirs = [home, *(env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")]
        user = [os.path.join(d, "nix", "nix.conf") for d in dirs]
    files += reversed(user)  # applied last to first
    seen: list[Any] = []
    for file in files:
        if not _read_conf(file, seen, 0):
            return None
    text = env.get("NIX_CONFIG")
    seen.append(["NIX_CONFIG", text])
    if text is not None and not _settings_followed(text):
        return None
    if env.get("NIX_REMOTE", "") not in _LOCAL_STORES:
        return None
    return seen


def _read_conf(file: str, seen: list[Any], depth: int) -> bool:
    try:
        data = Path(file).read_bytes()
    except FileNotFoundError:
        seen.append([file, None])
        return True
    except OSError:
        return False
    seen.append([file, hashlib.sha256(data).hexdigest()])
    text = data.decode(errors="replace")
    if not _settings_followed(text):
        return False
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if len(tokens) == 2 and tokens[0] in ("include", "!include"):
            if depth >= _MAX_INCLUDES:
                return False
            if not _read_conf(os.path.join(os.path.dirname(file), tokens[1]), seen, depth + 1):
                return False
    return True


def _settings_followed(text: str) -> bool:
    """No pure-eval setting, and no store but the local one."""
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if len(tokens) < 2 or tokens[1] != "=":
            continue
        name = tokens[0].removeprefix("extra-")
        if name == "pure-eval":
            return False
        if name == "store" and (tokens[2:] or [""])[0] not in _LOCAL_STORES:
            return False
    return True

