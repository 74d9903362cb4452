"""flake.lock, read from the file itself as Nix reads it: recording a run never needs the network.

The rules are Nix's own (src/libflake/lockfile.cc, call-flake.nix, src/libfetchers/*.cc):

* versions 5 to 7 are read; a missing version counts as 0 and, like anything below 5 or above 7,
  is refused. Version 5 keeps ``narHash``/``lastModified`` in a node's ``info``, which Nix merges
  into ``locked``.
* ``nodes`` keyed by node name, ``root`` names the root node; a node's ``inputs`` map an input name
  to a node name or to a *follows* path (input names walked from the root, recursively, a cycle
  refused). An empty path is the root flake itself, not an input of its own.
* a node is locked when its fetcher says so: git and mercurial need a ``rev``; github, gitlab and
  sourcehut a ``rev`` and a ``narHash``; path, tarball and file a ``narHash``; indirect never.

Inputs are keyed in the record by input path. Every root input is recorded under its own name,
also when it follows another root input (``nixpkgs`` following ``nixpkgs-unstable``); a deeper node
under its shortest input path from the root (``devenv/git-hooks``), which stays stable when nix
renumbers node names (``nixpkgs_2``) between lock revisions.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from .codec import frozen
from .errors import LockError
from .redact import scrub_url

SUPPORTED_VERSIONS = (5, 6, 7)
# Attributes of ``locked`` that say *which* tree it is (checked apart) or are metadata about it;
# every other attribute changes what is fetched and so belongs in the input's url.
_IDENTITY_ATTRS = frozenset({"type", "narHash", "lastModified", "lastModifiedDate", "revCount",
                             "owner", "repo", "rev", "url", "path", "id", "__final"})
_FORGES = ("github", "gitlab", "sourcehut")
_STRING_ATTRS = frozenset({"type", "rev", "narHash", "url", "owner", "repo", "ref", "path", "host",
                           "dir", "id", "dirtyRev", "dirtyShortRev"})
# Far beyond any real lock (the deepest of 34 public ones: 11), well within Python's stack.
_MAX_FOLLOWS = 200


@frozen
class LockedInput:
    """One locked flake input, as recorded in ``environment.inputs.<name>``."""

    type: str
    url: str
    rev: str | None
    narHash: str | None
    lastModified: int | None
    owner: str | None = None
    repo: str | None = None
    ref: str | None = None
    flake: bool = True
    node: str = ""
    # Nix's own rule (see the module docstring); None in records made before nixrepro checked it
    locked: bool | None = None
    # fetched from this machine's file system (path:, git+file:): another machine cannot fetch it
    local: bool = False
    follows: str | None = None  # for a root input that follows another: the input path it follows
    # set when the evaluated input was not the locked one (`--override-input`, recorded with --dev):
    # rev/narHash/lastModified are then those that were evaluated
    overridden: bool = False

    @property
    def pinned(self) -> bool:
        """Locked by Nix's rules and fetchable from elsewhere: the record pins it for anyone."""
        return self.locked is not False and not self.local


@frozen
class FlakeLock:
    sha256: str
    version: int
    inputs: dict[str, LockedInput]

    @classmethod
    def read(cls, path: Path) -> FlakeLock:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LockError(f"cannot read {path} ({exc.strerror}); run `nix flake lock`.") from None
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: bytes, source: str = "flake.lock") -> FlakeLock:
        try:
            doc = json.loads(data, parse_constant=_no_constant)
            # a lone surrogate (\ud800) is JSON that Nix's parser refuses: not text
            json.dumps(doc, ensure_ascii=False).encode()
        except (ValueError, UnicodeError) as exc:  # JSONDecodeError and NaN are ValueErrors
            raise LockError(f"{source} is not valid JSON ({exc}); run `nix flake lock`.") from None
        except RecursionError:
            raise LockError(f"{source} is nested too deeply to be a flake.lock; run "
                            "`nix flake lock`.") from None
        if not isinstance(doc, dict):
            raise LockError(f"{source} is not a JSON object; regenerate it with `nix flake lock`.")
        version = doc.get("version", 0)  # as Nix: json.value("version", 0)
        if type(version) is not int or version not in SUPPORTED_VERSIONS:
            raise LockError(
                f"{source} has lock version {version!r}, which Nix and nixrepro do not read "
                f"(known: {', '.join(map(str, SUPPORTED_VERSIONS))}); relock it with "
                "`nix flake lock` under a current nix."
            )
        return cls(sha256=hashlib.sha256(data).hexdigest(), version=version,
                   inputs=_Graph(doc, source).inputs())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _Unresolvable(Exception):
    """A follows path that cannot be walked (a cycle, or a name that is not there). Nix loads such
    a lock and fails only when that input is evaluated, so it is marked, not refused."""


def _unresolvable(follows: str, problem: str) -> LockedInput:
    return LockedInput(type="follows", url=f"follows:{follows}", rev=None, narHash=None,
                       lastModified=None, locked=False, follows=follows, node=f"({problem})")


class _Graph:
    """The lock's nodes and edges, checked the way Nix checks them when it loads the file."""

    def __init__(self, doc: dict[str, Any], source: str) -> None:
        self.source = source
        nodes = doc.get("nodes")
        root = doc.get("root", "root")
        if not isinstance(nodes, dict) or not all(isinstance(n, dict) for n in nodes.values()):
            raise LockError(f"{source} has no \"nodes\" object of objects; regenerate it with "
                            "`nix flake lock`.")
        if not isinstance(root, str) or root not in nodes:
            raise LockError(f"{source} names the root node {root!r}, which is not in its nodes; "
                            "regenerate it with `nix flake lock`.")
        self.nodes: dict[str, dict[str, Any]] = nodes
        self.root = root
        # follows path -> node, or the problem; a path being resolved maps to None (a cycle)
        self._follows: dict[tuple[str, ...], str | _Unresolvable | None] = {}

    def edges(self, node: str) -> dict[str, Any]:
        edges = self.nodes[node].get("inputs", {})
        if not isinstance(edges, dict):
            raise self._bad(f"node {node!r} has inputs that are not an object")
        return edges

    def _bad(self, problem: str) -> LockError:
        return LockError(f"{self.source} is malformed: {problem}; regenerate it with "
                         "`nix flake lock`.")

    def target(self, edge: Any) -> str:
        """The node an edge leads to: a node name, or a follows path walked from the root."""
        if isinstance(edge, str):
            return self._node(edge)
        if not isinstance(edge, list) or not all(isinstance(name, str) for name in edge):
            raise self._bad(f"the input edge {edge!r} is neither a node name nor a follows path")
        return self._follow(tuple(edge))

    def _node(self, name: str) -> str:
        if name not in self.nodes:
            raise self._bad(f"it references the missing node {name!r}")
        if name == self.root:
            raise self._bad("an input leads back to the root node (a cycle)")
        return name

    def _follow(self, path: tuple[str, ...]) -> str:
        """Resolve a follows path, and every follows path met on the way, each once.

        Iterative, with an explicit stack: a chain of follows can be thousands of steps long, and
        follows that share sub-paths must not be walked afresh (that doubles the work per level).
        A path met again while it is being resolved is a cycle.
        """
        stack: list[list[Any]] = []  # [path, node reached, position in path]

        def push(sub: tuple[str, ...]) -> str | None:
            if sub not in self._follows:
                self._follows[sub] = None
                stack.append([sub, self.root, 0])
                return None
            known = self._follows[sub]
            if known is None:
                raise _Unresolvable(f"its follows form a cycle through {'/'.join(sub)!r}")
            if isinstance(known, _Unresolvable):
                raise known
            return known

        try:
            found = push(path)
            while stack:
                frame = stack[-1]
                sub, node, position = frame
                if position == len(sub):
                    stack.pop()
                    self._follows[sub] = found = node
                    if stack:
                        stack[-1][1], stack[-1][2] = node, stack[-1][2] + 1
                    continue
                edges = self.edges(node)
                if sub[position] not in edges:
                    where = "/".join(sub[:position]) or "the root"
                    raise _Unresolvable(f"the follows path {'/'.join(sub)!r} leads nowhere ({where} "
                                        f"has no input {sub[position]!r})")
                edge = edges[sub[position]]
                if isinstance(edge, str):
                    frame[1], frame[2] = self._node(edge), position + 1
                elif isinstance(edge, list) and all(isinstance(name, str) for name in edge):
                    reached = push(tuple(edge))
                    if reached is not None:
                        frame[1], frame[2] = reached, position + 1
                else:
                    raise self._bad(f"the input edge {edge!r} is neither a node name nor a "
                                    "follows path")
        except _Unresolvable as exc:
            for frame in stack:
                self._follows[frame[0]] = exc
            raise
        assert found is not None
        return found

    def inputs(self) -> dict[str, LockedInput]:
        recorded: dict[str, LockedInput] = {}
        seen: set[str] = set()
        # Root inputs first, each under its own name, whatever it follows.
        for name, edge in sorted(self.edges(self.root).items()):
            if edge == []:
                continue  # follows "": the root flake itself, nothing to fetch
            follows = "/".join(edge) if isinstance(edge, list) else None
            try:
                node = self.target(edge)
            except _Unresolvable as exc:
                recorded[name] = _unresolvable(follows or "", str(exc))
                continue
            recorded[name] = _locked(node, self.nodes[node], self.source, follows)
            seen.add(node)
        # Then every other node reachable from them, under its shortest input path.
        queue: deque[tuple[str, str]] = deque(
            (self.target(edge), name) for name, edge in sorted(self.edges(self.root).items())
            if edge != [] and not isinstance(edge, list))
        expanded: set[str] = set()
        while queue:  # breadth first, so the first path found is the shortest
            node, prefix = queue.popleft()
            if node in expanded:
                continue
            expanded.add(node)
            for name, edge in sorted(self.edges(node).items()):
                if edge == []:
                    continue
                try:
                    child = self.target(edge)
                except _Unresolvable:
                    continue  # as in Nix: an error only if that input is ever evaluated
                if child not in seen:
                    seen.add(child)
                    recorded[f"{prefix}/{name}"] = _locked(child, self.nodes[child], self.source)
                if not isinstance(edge, list):
                    queue.append((child, f"{prefix}/{name}"))
        return recorded


def _locked(name: str, node: dict[str, Any], source: str, follows: str | None = None) -> LockedInput:
    locked = node.get("locked")
    if not isinstance(locked, dict) or not isinstance(locked.get("type"), str):
        raise LockError(f"{source} is malformed: node {name!r} has no \"locked\" attribute with a "
                        "type; regenerate it with `nix flake lock`.")
    info = node.get("info")
    if isinstance(info, dict):  # lock version 5: Nix merges "info" into "locked"
        locked = {**locked, **info}
    original = node.get("original")
    if not isinstance(original, dict):
        original = {}
    for attr, value in locked.items():
        if not _attr_type_ok(attr, value):
            raise LockError(f"{source} is malformed: node {name!r} has a locked {attr} of type "
                            f"{type(value).__name__}; regenerate it with `nix flake lock`.")
    if not isinstance(node.get("flake", True), bool):
        raise LockError(f"{source} is malformed: node {name!r} has a \"flake\" that is not true or "
                        "false; regenerate it with `nix flake lock`.")
    kind = str(locked["type"])
    rev = locked.get("rev")
    nar_hash = locked.get("narHash")
    return LockedInput(
        type=kind,
        url=scrub_url(flake_url(locked)),  # a token in a locked url is no part of its identity
        rev=rev,
        narHash=nar_hash,
        lastModified=locked.get("lastModified"),
        owner=locked.get("owner"),
        repo=locked.get("repo"),
        ref=_text(original.get("ref")) or locked.get("ref"),
        flake=bool(node.get("flake", True)),
        node=name,
        locked=_is_locked(kind, rev, nar_hash),
        local=_is_local(kind, locked, node),
        follows=follows,
    )


def _attr_type_ok(attr: str, value: Any) -> bool:
    """Nix's fetcher attributes are strings, integers or booleans (libfetchers/attrs.cc), and the
    fetchers insist on the type of the ones they read."""
    if attr in ("lastModified", "revCount"):
        return isinstance(value, int) and not isinstance(value, bool)
    if attr in _STRING_ATTRS:
        return isinstance(value, str)
    return isinstance(value, (str, int, bool))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _is_locked(kind: str, rev: Any, nar_hash: Any) -> bool:
    """Input::isLocked of each fetcher (libfetchers: git.cc, github.cc, path.cc, tarball.cc...)."""
    if kind in ("git", "hg", "mercurial"):
        return bool(rev)
    if kind in _FORGES:
        return bool(rev) and bool(nar_hash)
    if kind in ("path", "tarball", "file"):
        return bool(nar_hash)
    return False  # indirect (a registry name) and unknown kinds are never locked


def _is_local(kind: str, locked: dict[str, Any], node: dict[str, Any]) -> bool:
    """Fetched from this machine: a path input (relative ones live in their parent flake) or a
    git/tarball url on the local file system."""
    if kind == "path" or "parent" in node:
        return True
    url = str(locked.get("url", ""))
    return url.startswith(("file:", "/"))


def flake_url(locked: dict[str, Any]) -> str:
    """The locked input as a flake reference, the way Nix writes one (``github:o/r/<rev>``,
    ``git+https://host/x?ref=main&rev=...``), keeping every attribute that changes what is fetched
    (``host``, ``dir``, ``submodules``, ``lfs``, ``exportIgnore``, ``allRefs``, ``ref``, ...)."""
    kind = str(locked.get("type", "unknown"))
    extra = {k: v for k, v in locked.items() if k not in _IDENTITY_ATTRS}
    if kind in _FORGES:
        base = f"{kind}:{locked.get('owner')}/{locked.get('repo')}"
        if locked.get("rev"):
            base += f"/{locked['rev']}"
        elif extra.get("ref"):
            base += f"/{extra.pop('ref')}"
    elif kind == "path":
        base = f"path:{locked.get('path', '')}"
    elif kind == "indirect":
        base = f"flake:{locked.get('id', '')}"
    else:  # a url: its own query and the attributes merge, sorted, as Nix's ParsedURL does
        url, _, query = str(locked.get("url", "")).partition("?")
        prefix = {"git": "git+", "hg": "hg+", "mercurial": "hg+"}.get(kind, "")
        base = url if not prefix or url.startswith(prefix) else prefix + url
        extra = {**dict(parse_qsl(query, keep_blank_values=True)), **extra}
        if kind in ("git", "hg", "mercurial") and locked.get("rev"):
            extra["rev"] = locked["rev"]
    if not extra:
        return base
    return base + "?" + "&".join(f"{k}={quote(_attr(v), safe='/:@')}" for k, v in sorted(extra.items()))


def _attr(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
