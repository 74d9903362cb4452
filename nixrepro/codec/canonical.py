"""Encoding to plain data and the one canonical JSON of :mod:`nixrepro.codec`.

* :func:`encode` turns a value into plain data (dicts in field order, lists, scalars).
* :class:`Encoded` is a list of plain data that keeps its JSON texts once made (a closure).
* :func:`canonical_json` is the canonical JSON that record_sha256, summary_sha256 and a directory
  manifest are sha256 of; :func:`document_json` the same document as written to disk.
* :func:`no_gc` pauses the cyclic garbage collector while many objects are made at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .fields import _MISSING, _SCALARS, _skipped

_NAMES: dict[type, tuple[str, ...] | None] = {}


def field_names(cls: type) -> tuple[str, ...] | None:
    """The fields :func:`encode` writes, in order; None for a class that is not a dataclass."""
    names = _NAMES.get(cls, _MISSING)
    if names is _MISSING:
        spec = cls.__dict__.get("__codec__")
        if spec is not None and not any(_skipped(f) for f in cls.__dict__["__dataclass_fields__"].values()):
            names = spec.names
        elif dataclasses.is_dataclass(cls):
            names = tuple(f.name for f in dataclasses.fields(cls) if not _skipped(f))
        else:
            names = None
        _NAMES[cls] = names
    return names  # type: ignore[no-any-return]



def encode(value: Any) -> Any:
    """Dataclasses to dicts (in field order), tuples to lists, recursively; scalars as they are.
    What ``dataclasses.asdict`` does, without its deep copies (a closure is 8,000 scalars)."""
    cls = type(value)
    if cls in _SCALARS or value is None:
        return value
    names = field_names(cls)
    if names is not None:
        values = value.__dict__
        plain = {}
        for name in names:
            item = values[name]
            # scalars inline: a 2,000-path closure is 6,000 of them, each a call otherwise
            plain[name] = item if item is None or type(item) in _SCALARS else encode(item)
        return plain
    if cls is list or cls is tuple:
        return [item if item is None or type(item) in _SCALARS else encode(item) for item in value]
    if cls is dict:
        return {key: item if item is None or type(item) in _SCALARS else encode(item)
                for key, item in value.items()}
    encoded = getattr(cls, "__codec_encoded__", None)  # a value that keeps its own encoding
    if encoded is not None:
        return encoded(value)
    if isinstance(value, Mapping):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(item) for item in value]
    return value


class Encoded(list):  # type: ignore[type-arg]
    """A list of plain data that keeps its JSON texts once made: a record saved twice (as its run
    starts and as it ends) serialises its 2,000-path closure once, and :func:`canonical_json` and
    :func:`document_json` put the text in place instead of encoding the list again. Never
    changed after it is made (it is the closure of a store path, which never changes)."""

    __slots__ = ("_data", "_texts")

    def __init__(self, items: Iterable[Any] = (), texts: dict[str, str] | None = None) -> None:
        super().__init__(items)
        self._texts: dict[str, str] = dict(texts or {})
        self._data: dict[str, bytes] = {}

    def text(self, form: str) -> str:
        """The list as :func:`canonical_json` (``"canonical"``) or :func:`document_json`
        (``"document"``) writes it."""
        found = self._texts.get(form)
        if found is None:
            found = self._texts[form] = json.dumps(list(self), allow_nan=False, **_FORMS[form])
        return found

    def data(self, form: str) -> bytes:
        """:meth:`text` in UTF-8."""
        found = self._data.get(form)
        if found is None:
            found = self._data[form] = self.text(form).encode()
        return found



@contextlib.contextmanager
def no_gc(keep: bool = False) -> Iterator[None]:
    """The cyclic garbage collector paused while many objects are made at once (a 20,000-path
    closure, a listing of 10,000 runs): none of them is in a cycle, and the collections their
    allocation sets off cost a third again of the decoding.

    ``keep``: what was made is kept as long as the process (the listing's rows, cached per store):
    it is moved out of the collector's sight (gc.freeze), or every later collection would walk
    its million objects again (~0.1 s each, several per command that prints 10,000 rows). They
    are still freed when nothing refers to them; only a cycle among them would outlive it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if keep:
            gc.freeze()
        if enabled:
            gc.enable()


# --- the canonical JSON ---------------------------------------------------------------------------


_FORMS: dict[str, dict[str, Any]] = {
    "canonical": {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False},
    "document": {"sort_keys": True, "ensure_ascii": False},
}
# What stands in for an Encoded list while the rest of a document is encoded: a NUL and a token
# no run can know, so that no string of the document (an argument, a metric) can be taken for it.
_STAND_IN = f"\x00encoded-{os.urandom(8).hex()}-"


def canonical_json(doc: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; strict: a NaN is hashed as the string it is written as,
    so that the hash of a document agrees with the hash of the file it was written to."""
    return b"".join(_pieces(doc, "canonical"))


def canonical_sha256(doc: Any) -> str:
    """sha256 hex of :func:`canonical_json`, without joining a 3 MB closure into one string."""
    digest = hashlib.sha256()
    for piece in _pieces(doc, "canonical"):
        digest.update(piece)
    return digest.hexdigest()


def document_json(doc: Any) -> str:
    """A document as written to disk: compact JSON with sorted keys (json's C encoder: a 2,000-path
    closure costs milliseconds, not 100 ms). ``jq .`` pretty-prints it. Strict, as
    :func:`canonical_json` is."""
    return b"".join(_pieces(doc, "document")).decode() + "\n"


def document_bytes(doc: Any) -> bytes:
    """:func:`document_json` as the bytes written."""
    return b"".join((*_pieces(doc, "document"), b"\n"))


def document_pieces(doc: Any) -> list[bytes]:
    """:func:`document_bytes` as pieces to join (or write) once: a 3 MB closure is not copied
    into each string on the way."""
    return [*_pieces(doc, "document"), b"\n"]


def _pieces(doc: Any, form: str) -> list[bytes]:
    """``doc`` in ``form`` as UTF-8 pieces: each :class:`Encoded` list of its first two levels is
    its own kept text, the rest is encoded around it."""
    found: list[Encoded] = []
    text = strict_json(_stand_ins(doc, found, 2), **_FORMS[form])
    if not found:
        return [text.encode()]
    pieces = []
    for index, encoded in enumerate(found):
        before, _, text = text.partition(json.dumps(f"{_STAND_IN}{index}\x00"))
        pieces += [before.encode(), encoded.data(form)]
    pieces.append(text.encode())
    return pieces


def _stand_ins(value: Any, found: list[Encoded], depth: int) -> Any:
    if type(value) is Encoded and len(value) > 64:
        found.append(value)
        return f"{_STAND_IN}{len(found) - 1}\x00"
    if depth and type(value) is dict:
        replaced = {key: _stand_ins(item, found, depth - 1) for key, item in value.items()}
        return replaced if found else value
    return value


def strict_json(doc: Any, **options: Any) -> str:
    """json.dumps that never writes NaN or Infinity, which jq and most parsers refuse: the first
    try is the fast C encoder; only a document that holds one is walked and converted."""
    try:
        text = json.dumps(doc, allow_nan=False, **options)
    except ValueError:
        text = json.dumps(_finite(doc), allow_nan=False, **options)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            # An argument or file name that was not UTF-8 reaches Python as lone surrogates
            # (surrogateescape); JSON's own escape (\udcff) keeps it, and reads back the same.
            text = text.encode("utf-8", "backslashreplace").decode()
    return text


_INF = float("inf")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not -_INF < value < _INF:
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
