"""flake.lock, read from the file itself: recording a run never needs the network or a fetch.

Lock version 7: ``nodes`` keyed by node name, ``root`` names the root node, a node's ``inputs``
map an input name to a node name or to a *follows* path (a list of input names from the root;
an empty list follows nothing). Inputs are keyed in the record by their shortest input path from
the root (``nixpkgs``, ``devenv/git-hooks``), which stays stable when nix renumbers node names
(``nixpkgs_2``) between lock revisions.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NixreproError

SUPPORTED_VERSIONS = (5, 6, 7)


class LockError(NixreproError):
    """flake.lock is malformed or of an unknown version."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class FlakeLock:
    sha256: str
    version: int
    inputs: dict[str, LockedInput]

    @classmethod
    def read(cls, path: Path) -> FlakeLock:
        return cls.parse(path.read_bytes(), source=str(path))

    @classmethod
    def parse(cls, data: bytes, source: str = "flake.lock") -> FlakeLock:
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LockError(f"{source} is not valid JSON ({exc}); run `nix flake lock`.") from exc
        version = doc.get("version") if isinstance(doc, dict) else None
        if version in SUPPORTED_VERSIONS and not isinstance(doc.get("nodes"), dict):
            raise LockError(f"{source} has no \"nodes\" object; regenerate it with `nix flake lock`.")
        if version not in SUPPORTED_VERSIONS:
            raise LockError(
                f"{source} has lock version {version!r}, which nixrepro cannot read "
                f"(known: {', '.join(map(str, SUPPORTED_VERSIONS))}); relock with a current nix."
            )
        return cls(
            sha256=hashlib.sha256(data).hexdigest(),
            version=int(version),
            inputs=_locked_inputs(doc),
        )


def _resolve(doc: dict[str, Any], target: str | list[str]) -> str | None:
    """Node name an input points to; follows paths are walked from the root."""
    if isinstance(target, str):
        return target
    node = doc.get("root", "root")
    for name in target:
        edge = doc["nodes"].get(node, {}).get("inputs", {}).get(name)
        if edge is None:
            return None
        resolved = _resolve(doc, edge)
        if resolved is None:
            return None
        node = resolved
    return node if target else None  # an empty follows list means "follows nothing"


def _locked_inputs(doc: dict[str, Any]) -> dict[str, LockedInput]:
    nodes: dict[str, Any] = doc["nodes"]
    root = doc.get("root", "root")
    seen: dict[str, str] = {}  # node name -> shortest input path
    queue: deque[tuple[str, str]] = deque([(root, "")])
    while queue:  # breadth first, so the first path found is the shortest
        node, prefix = queue.popleft()
        for name, target in sorted(nodes.get(node, {}).get("inputs", {}).items()):
            child = _resolve(doc, target)
            if child is None or child in seen or child == root:
                continue
            path = f"{prefix}/{name}" if prefix else name
            seen[child] = path
            queue.append((child, path))
    return {path: _locked(node, nodes[node]) for node, path in seen.items() if node in nodes}


def _locked(node_name: str, node: dict[str, Any]) -> LockedInput:
    locked: dict[str, Any] = node.get("locked") or {}
    original: dict[str, Any] = node.get("original") or {}
    kind = str(locked.get("type", "unknown"))
    return LockedInput(
        type=kind,
        url=_url(kind, locked),
        rev=locked.get("rev"),
        narHash=locked.get("narHash"),
        lastModified=locked.get("lastModified"),
        owner=locked.get("owner"),
        repo=locked.get("repo"),
        ref=original.get("ref") or locked.get("ref"),
        flake=bool(node.get("flake", True)),
        node=node_name,
    )


def _url(kind: str, locked: dict[str, Any]) -> str:
    """A readable flake reference for the locked input (what nix would print)."""
    if kind in ("github", "gitlab", "sourcehut"):
        url = f"{kind}:{locked.get('owner')}/{locked.get('repo')}"
        return url + (f"/{locked['rev']}" if locked.get("rev") else "")
    if kind in ("path", "indirect"):
        return f"{kind}:{locked.get('path') or locked.get('id', '')}"
    url = str(locked.get("url", ""))
    if kind == "git" and not url.startswith("git+"):
        url = f"git+{url}"
    return url
