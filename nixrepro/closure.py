"""A Nix closure: the store paths an environment needs, each with its NAR hash, and one hash of all.

The closure hash (DESIGN.md) is the sha256, in hex, of the lines ``"<store path> <narHash>\\n"``
for every path of the closure, sorted by path, narHash in SRI form. Anyone can recompute it:

    nix path-info -r --json ENV | jq -r '.[] | "\\(.path) \\(.narHash)"' | LC_ALL=C sort | sha256sum

(nix >= 2.19 prints an object keyed by path: use ``to_entries[] | "\\(.key) \\(.value.narHash)"``.)

``nix path-info --json`` changed shape between Nix versions; :func:`parse_path_info` reads all of
them (see tests/fixtures/nix-json).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import NixreproError

DEFAULT_STORE_DIR = "/nix/store"
_NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


class PathInfoParseError(NixreproError):
    """`nix path-info --json` printed something this version of nixrepro cannot read."""


@dataclass(frozen=True)
class StorePathInfo:
    """One store path of a closure, as recorded in ``environment.closure[]``."""

    path: str
    narHash: str
    narSize: int

    @property
    def name(self) -> str:
        """The part after the hash: ``python3-3.11.9`` for ``/nix/store/<hash>-python3-3.11.9``."""
        base = self.path.rsplit("/", 1)[-1]
        return base.split("-", 1)[1] if "-" in base else base


@dataclass(frozen=True)
class Closure:
    """The full runtime closure of an environment."""

    paths: tuple[StorePathInfo, ...]

    @classmethod
    def of(cls, infos: Iterable[StorePathInfo]) -> Closure:
        return cls(tuple(sorted(infos, key=lambda info: info.path)))

    @property
    def hash(self) -> str:
        return closure_hash(self.paths)

    @property
    def nar_size(self) -> int:
        return sum(info.narSize for info in self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def closure_hash(infos: Iterable[StorePathInfo]) -> str:
    """sha256 hex of ``"<path> <narHash>\\n"`` lines sorted by path (DESIGN.md)."""
    lines = sorted(f"{info.path} {normalize_nar_hash(info.narHash)}\n" for info in infos)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def nix32_decode(text: str) -> bytes:
    """Decode Nix's base-32 (its own alphabet, least significant digit last)."""
    length = len(text) * 5 // 8
    out = bytearray(length)
    for n, char in enumerate(reversed(text)):
        digit = _NIX32_ALPHABET.index(char)
        bit = n * 5
        i, j = divmod(bit, 8)
        out[i] |= (digit << j) & 0xFF
        if i + 1 < length:
            out[i + 1] |= digit >> (8 - j)
        elif digit >> (8 - j):
            raise ValueError(f"invalid nix32 hash {text!r}")
    return bytes(out)


def normalize_nar_hash(value: str) -> str:
    """Return a sha256 NAR hash in SRI form, whatever form Nix printed it in.

    Accepts ``sha256-<base64>`` (SRI), ``sha256:<nix32>`` (narinfo files, old nix), ``sha256:<hex>``
    and ``sha256:<base64>``; anything that is not 32 bytes of digest is refused, as nix does.
    """
    if value.startswith("sha256-"):
        algo, digest, encodings = "sha256", value[len("sha256-"):], ("base64",)
    else:
        algo, sep, digest = value.partition(":")
        if algo != "sha256" or not sep:
            raise PathInfoParseError(f"unsupported NAR hash {value!r}: only sha256 is known.")
        encodings = {64: ("hex",), 52: ("nix32",)}.get(len(digest), ("base64",))
    try:
        raw = _decode(digest, encodings[0])
    except (ValueError, binascii.Error) as exc:
        raise PathInfoParseError(f"malformed NAR hash {value!r}.") from exc
    if len(raw) != 32:
        raise PathInfoParseError(f"NAR hash {value!r} has the wrong length for sha256.")
    return "sha256-" + base64.b64encode(raw).decode()


def _decode(digest: str, encoding: str) -> bytes:
    if encoding == "hex":
        return bytes.fromhex(digest)
    if encoding == "nix32":
        return nix32_decode(digest)
    return base64.b64decode(digest, validate=True)


def parse_path_info(text: str) -> tuple[list[StorePathInfo], list[str]]:
    """Parse ``nix path-info --json`` output of any Nix version.

    Returns ``(valid paths, invalid paths)``. Shapes handled:

    * nix < 2.19: a list of objects with a ``path`` key; invalid ones have ``"valid": false``;
    * nix 2.19 - 2.32 (and ``--json-format 1``): an object keyed by full store path, ``null`` for
      an invalid path;
    * ``--json-format 2|3``: ``{"version": N, "storeDir": ..., "info": {<base name>: {...}}}``.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PathInfoParseError(f"`nix path-info --json` printed invalid JSON: {exc}.") from exc

    entries: list[tuple[str, Any]]
    store_dir = DEFAULT_STORE_DIR
    if isinstance(doc, list):
        if not all(isinstance(item, dict) for item in doc):
            raise PathInfoParseError("`nix path-info --json` printed a list with non-objects in it.")
        entries = [(item.get("path", ""), item) for item in doc]
    elif isinstance(doc, dict) and isinstance(doc.get("info"), dict):
        store_dir = doc.get("storeDir") or store_dir
        entries = list(doc["info"].items())
    elif isinstance(doc, dict):
        entries = [(key, value) for key, value in doc.items() if key.startswith("/")]
    else:
        raise PathInfoParseError("`nix path-info --json` printed neither a list nor an object.")

    valid: list[StorePathInfo] = []
    invalid: list[str] = []
    for key, item in entries:
        path = key if key.startswith("/") else f"{store_dir}/{key}"
        if item is None or not isinstance(item, Mapping) or item.get("valid") is False:
            invalid.append(path)
            continue
        try:
            valid.append(
                StorePathInfo(
                    path=path,
                    narHash=normalize_nar_hash(str(item["narHash"])),
                    narSize=int(item.get("narSize") or 0),
                )
            )
        except KeyError as exc:
            raise PathInfoParseError(f"path-info entry for {path} has no {exc}.") from exc
    return valid, invalid
