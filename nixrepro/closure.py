"""A Nix closure: the store paths an environment needs, each with its NAR hash, and one hash of all.

The closure hash (docs/record.md, docs/architecture.md) is the sha256, in hex, of the lines
``"<store path> <narHash>\\n"`` for every path of the closure, sorted by path (C locale), narHash
in SRI form. Anyone can recompute it with ``nix path-info`` and ``jq``: README.md, "The closure
hash: check it without nixrepro", gives the line for each Nix version, and tests/test_closure.py
runs those lines.

``nix path-info --json`` changed shape between Nix versions; :func:`parse_path_info` reads every
shape Nix has printed (see tests/fixtures/nix-json) and refuses any other, so that a new Nix can
never yield an empty closure and the hash of nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import Any

from . import codec
from .codec import frozen
from .errors import PathInfoParseError
from .fsutil import atomic_write, keep_newest

DEFAULT_STORE_DIR = "/nix/store"
_NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


@frozen
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


class StorePaths(list[StorePathInfo]):
    """A closure's store paths as a record holds them (``environment.closure``), with their JSON
    made once (nixrepro.codec.Encoded): a run saves its record as it starts and as it ends, and a
    20,000-path closure is 3 MB of JSON. Never changed once made, as the closure it is."""

    __slots__ = ("_encoded",)

    def __init__(self, infos: Iterable[StorePathInfo] = (), encoded: codec.Encoded | None = None) -> None:
        super().__init__(infos)
        self._encoded = encoded

    def __codec_encoded__(self) -> codec.Encoded:
        if self._encoded is None or len(self._encoded) != len(self):
            self._encoded = codec.Encoded(codec.encode(list(self)))
        return self._encoded


@frozen
class Closure:
    """The full runtime closure of an environment."""

    paths: tuple[StorePathInfo, ...]
    known_hash: str | None = field(default=None, compare=False, repr=False)  # from the cache
    encoded: codec.Encoded | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, infos: Iterable[StorePathInfo]) -> Closure:
        return cls(tuple(sorted(infos, key=lambda info: info.path)))

    @property
    def hash(self) -> str:
        return self.known_hash or closure_hash(self.paths)

    def store_paths(self) -> StorePaths:
        """The paths as a record's ``environment.closure``, with their JSON made at most once."""
        return StorePaths(self.paths, self.encoded)

    @property
    def nar_size(self) -> int:
        return sum(info.narSize for info in self.paths)

    def __len__(self) -> int:
        return len(self.paths)


# --- the closure cache ------------------------------------------------------------------------------
#
# A valid store path's closure and NAR hashes never change while it stays valid: Nix deletes a
# path only after every path that refers to it, and the one way to get other bits under the same
# name, deleting the path and building it again, makes a new file with another inode and ctime.
# So the closure of an environment is kept, keyed by its path's (device, inode, ctime) and by the
# nix and the store it came from, and `nixrepro run` asks `nix path-info` only for a new
# environment (0.1 s at 2,000 paths, 0.7 s at 20,000). --verify-contents still re-hashes the files.

CACHE_VERSION = 1


def cache_file(env_path: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    name = hashlib.sha256(env_path.encode()).hexdigest()[:32]
    return Path(base) / "nixrepro" / "closures" / f"{name}.json"


def _identity(env_path: str, nix_version: str | None) -> list[Any] | None:
    """What the cached closure of ``env_path`` was made under; None: the path is not there."""
    try:
        st = os.lstat(env_path)
    except OSError:
        return None
    return [env_path, st.st_dev, st.st_ino, st.st_ctime_ns, nix_version or "",
            *(os.environ.get(name, "") for name in ("NIX_REMOTE", "NIX_CONFIG", "NIX_STORE_DIR",
                                                    "NIX_STATE_DIR"))]


def cached_closure(env_path: str, nix_version: str | None, ask: Callable[[], Closure]) -> Closure:
    """The closure of ``env_path``: from the cache when it was made from this very path, else
    ``ask()`` (nix) and kept. A cache that cannot be read or written only costs the nix call."""
    identity = _identity(env_path, nix_version)
    path = cache_file(env_path)
    if identity is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, codec.CodecError):
            head, canonical, document = path.read_bytes().split(b"\n", 2)
            header = json.loads(head)
            if header["version"] == CACHE_VERSION and header["identity"] == identity and \
                    header["sha256"] == hashlib.sha256(canonical + b"\n" + document).hexdigest():
                plain = json.loads(document)
                paths = codec.decode(list[StorePathInfo], plain)
                texts = {"canonical": canonical.decode(), "document": document.decode()}
                return Closure(tuple(paths), str(header["hash"]), codec.Encoded(plain, texts))
    closure = ask()
    if identity is None:
        return closure
    encoded = closure.store_paths().__codec_encoded__()
    closure = Closure(closure.paths, closure.hash, encoded)
    body = encoded.text("canonical").encode() + b"\n" + encoded.text("document").encode()
    header = json.dumps({"version": CACHE_VERSION, "identity": identity, "hash": closure.known_hash,
                         "sha256": hashlib.sha256(body).hexdigest()})
    with contextlib.suppress(OSError):
        atomic_write(path, header.encode() + b"\n" + body)
        keep_newest(path.parent, CACHE_KEEP)
    return closure


CACHE_KEEP = 64  # closures kept (a 20,000-path one is 6 MB); the oldest written go first



def closure_hash(infos: Iterable[StorePathInfo]) -> str:
    """sha256 hex of ``"<path> <narHash>\\n"`` lines sorted by path (docs/record.md)."""
    lines = sorted(f"{info.path} {normalize_nar_hash(info.narHash)}\n" for info in infos)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def nix32_encode(data: bytes) -> str:
    """Nix's base-32 (libutil's ``Base32`` / ``Nix32``): its alphabet, least significant last."""
    length = (len(data) * 8 - 1) // 5 + 1
    digits = []
    for n in range(length - 1, -1, -1):
        i, j = divmod(n * 5, 8)
        value = data[i] >> j | ((data[i + 1] << (8 - j)) if i + 1 < len(data) else 0)
        digits.append(_NIX32_ALPHABET[value & 0x1F])
    return "".join(digits)


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


# --- which JSON nixrepro asks for, and reading what nix printed -------------------------------------

# `--json-format` arrived in Nix 2.33 (2.33.0 accepts 1 or 2, 2.35 adds 3); without it 2.33+ warn
# that it will become an error. Format 2 is the oldest structured one and has everything the
# closure needs (format 3 changes only the signatures).
JSON_FORMAT = 2
_JSON_FORMAT_SINCE = (2, 33)
# Lix numbers its releases from 2.90 on; it forked before `--json-format` and rejects the flag.
_LIX_VERSIONS = ((2, 90), (3, 0))
_ENVELOPE_VERSIONS = (2, 3)
# A store path's base name: 32 nix32 digits, a dash, a name of the characters Nix allows.
_BASE_NAME = re.compile(r"[0123456789abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+\-._?=]+")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(.*)")


def json_format_args(nix_version: str | None) -> list[str]:
    """The ``--json-format`` arguments for ``nix path-info --json`` of this Nix (as :meth:`Nix.version`
    says it); none when the version is unknown or predates the flag, which every Nix then reads.
    """
    match = _VERSION.fullmatch(nix_version or "")
    if match is None:
        return []
    release = (int(match[1]), int(match[2]))
    # 2.33.0's own pre-releases may predate the flag; 2.34.0pre and later all have it.
    prerelease = "pre" in match[4] and release == _JSON_FORMAT_SINCE and int(match[3] or 0) == 0
    if release < _JSON_FORMAT_SINCE or prerelease or _LIX_VERSIONS[0] <= release < _LIX_VERSIONS[1]:
        return []
    return ["--json-format", str(JSON_FORMAT)]


def parse_path_info(text: str, nix_version: str | None = None) -> tuple[list[StorePathInfo], list[str]]:
    """Parse ``nix path-info --json`` output of any Nix version; refuse any shape Nix never printed.

    Returns ``(valid paths, invalid paths)``; ``nix_version`` only names the Nix in errors. Shapes:

    * nix 2.4 - 2.18 (and Lix): a list of objects with a ``path`` key; an invalid one has
      ``"valid": false``;
    * nix 2.19 - 2.32, and 2.33+ without ``--json-format`` or with ``--json-format 1``: an object
      keyed by full store path, ``null`` for an invalid path (2.33+ add ``"version": 1`` and
      ``"storeDir"`` inside each entry);
    * ``--json-format 2|3``: ``{"version": N, "storeDir": ..., "info": {<base name>: {...}}}``.

    Every entry must have a store path and a narHash, and there must be at least one entry: an
    unknown shape raises :class:`PathInfoParseError`, never yields an empty closure.
    """
    refuse = _Refusal(nix_version)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PathInfoParseError(
            f"`nix path-info --json` of {refuse.nix} printed invalid JSON ({exc}); check that nothing "
            "else writes to its stdout, or report it."
        ) from exc

    entries = _entries(doc, refuse)
    if not entries:
        raise refuse("no store paths at all")
    valid: list[StorePathInfo] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for path, item, version in entries:
        if path in seen:
            raise refuse(f"{path} twice")
        seen.add(path)
        info = _entry(path, item, version, refuse)
        if info is None:
            invalid.append(path)
        else:
            valid.append(info)
    return valid, invalid


class _Refusal:
    """Builds the one-sentence error for a shape nixrepro does not know, naming the Nix version."""

    def __init__(self, nix_version: str | None) -> None:
        self.nix = f"nix {nix_version}" if nix_version else "the installed nix"

    def __call__(self, what: str) -> PathInfoParseError:
        return PathInfoParseError(
            f"`nix path-info --json` of {self.nix} printed a shape nixrepro does not know ({what}); "
            "upgrade nixrepro or report it."
        )


# (full store path, its entry, the per-entry "version" this shape allows: None for none)
_Entry = tuple[str, Any, int | None]


def _entries(doc: Any, refuse: _Refusal) -> list[_Entry]:
    """The entries of whichever shape ``doc`` is, with full store paths."""
    if isinstance(doc, list):
        return [(_list_path(item, refuse), item, None) for item in doc]
    if not isinstance(doc, dict):
        raise refuse(f"{_json_type(doc)}, neither a list nor an object")
    if "version" in doc:
        return _envelope_entries(doc, refuse)
    for key in doc:
        # an envelope without its version, or a new one: never read as a closure of no paths
        if not _is_store_path(key):
            raise refuse(f"an object with the key {key!r}, neither a store path nor a known envelope")
    return [(key, value, 1) for key, value in doc.items()]


def _list_path(item: Any, refuse: _Refusal) -> str:
    if not isinstance(item, dict):
        raise refuse(f"a list holding {_json_type(item)}, not an object")
    path = item.get("path")
    if path is None:
        raise refuse("an entry without a store path")
    if not isinstance(path, str) or not _is_store_path(path):
        raise refuse(f"an entry whose path {path!r} is not a store path")
    return path


def _envelope_entries(doc: dict[str, Any], refuse: _Refusal) -> list[_Entry]:
    version = doc["version"]
    if type(version) is not int or version not in _ENVELOPE_VERSIONS:  # not True, not 2.0
        raise refuse(f"an envelope of version {version!r}, where nixrepro knows 2 and 3")
    store_dir, info = doc.get("storeDir"), doc.get("info")
    if not isinstance(store_dir, str) or not store_dir.startswith("/"):
        raise refuse(f"an envelope of version {version} whose storeDir is {store_dir!r}")
    if not isinstance(info, dict):
        raise refuse(f"an envelope of version {version} without an info object")
    entries: list[_Entry] = []
    for key, value in info.items():
        if not _BASE_NAME.fullmatch(key):
            raise refuse(f"an info key {key!r} that is not a store path base name")
        entries.append((f"{store_dir.rstrip('/')}/{key}", value, version))
    return entries


def _entry(path: str, item: Any, version: int | None, refuse: _Refusal) -> StorePathInfo | None:
    """The entry's StorePathInfo, or None for a path nix reports invalid."""
    if item is None:
        return None
    if not isinstance(item, dict):
        raise refuse(f"an entry for {path} that is {_json_type(item)}, not an object")
    if "version" in item and (type(item["version"]) is not int or item["version"] != version):
        raise refuse(f"an entry for {path} of version {item['version']!r}")
    valid = item.get("valid", True)
    if valid is False:
        return None
    if valid is not True:
        raise refuse(f"an entry for {path} whose valid is {valid!r}")
    nar_hash = item.get("narHash")
    if nar_hash is None:
        raise refuse(f"an entry for {path} without a narHash")
    if not isinstance(nar_hash, str):
        raise refuse(f"an entry for {path} whose narHash is {_json_type(nar_hash)}, not a string")
    nar_size = item.get("narSize")  # absent, or null from nix 2.23 on: unknown, counted as 0
    if nar_size is not None and (type(nar_size) is not int or nar_size < 0):  # not True, not 1.5
        raise refuse(f"an entry for {path} whose narSize is {nar_size!r}")
    try:
        sri = normalize_nar_hash(nar_hash)
    except PathInfoParseError as exc:
        raise refuse(f"an entry for {path} whose narHash {nar_hash!r} is not a sha256 NAR hash") from exc
    return StorePathInfo(path=path, narHash=sri, narSize=nar_size or 0)


def _is_store_path(text: str) -> bool:
    directory, _, base = text.rpartition("/")
    return directory.startswith("/") and bool(_BASE_NAME.fullmatch(base))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string", int: "a number", float: "a number", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)
