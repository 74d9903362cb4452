"""The one codec: the record's, the config's and the archive list's dataclasses to plain data and
back, and the one canonical JSON.

* :func:`frozen` is the class decorator of those types: a frozen dataclass (``dataclasses.fields``,
  ``replace``, ``asdict`` and ``is_dataclass`` work on it, mypy checks it as one) whose ``__init__``,
  ``__eq__``, ``__hash__`` and ``__repr__`` are the shared functions below, reading the class's field
  table. ``@dataclass`` instead writes those methods as source text and compiles them for each
  class: about 0.5 ms a class, 20 ms for the 40 classes a ``nixrepro run`` imports. Nothing here
  compiles code.
* :func:`encode` turns a value into plain data (dicts in field order, lists, scalars);
  :func:`decode` turns plain data into a value of a given class, strictly: a key that is not a
  field, a missing required field, a value of another JSON type is a :class:`CodecError` naming the
  path (``host.gpus[1].uuid``). The field types come from the class's annotations, read once per
  class on first use into a plan of checks (closures, not code). The :class:`Dialect` says what the
  document's language allows: JSON (records, archives.json) keeps numbers as written; TOML (the
  config) turns an integer given for a float into a float and refuses nan, inf and NUL characters.
* :func:`canonical_json` is the canonical JSON (sorted keys, no whitespace, UTF-8, strict: a NaN is
  the string it is written as) that record_sha256, summary_sha256 and a directory manifest are
  sha256 of; :func:`document_json` the same document as written to disk.

Type forms :func:`decode` reads: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any`` (taken as
it is), ``Literal[...]``, ``X | None``, unions whose members differ in JSON type (``str | list[str]``,
the record's ``Scalar``), ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and dataclasses. A field
with ``metadata={"codec": "skip"}`` is neither read nor written (``Config.source``).

The package's modules, each one concept: :mod:`.fields` (``frozen``), :mod:`.hints` (the
field-type grammar), :mod:`.strict` (strict decoding, and ``trusted``), :mod:`.canonical`
(encoding, the canonical JSON, ``no_gc``). Callers import the names below from ``nixrepro.codec``;
the decoding ones load :mod:`.strict` and :mod:`.hints` on first use, so that defining the
record's types costs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .canonical import (
    Encoded,
    canonical_json,
    canonical_sha256,
    document_bytes,
    document_json,
    document_pieces,
    encode,
    field_names,
    no_gc,
    strict_json,
)
from .fields import frozen, replace

if TYPE_CHECKING:
    from .hints import field_types
    from .strict import JSON, TOML, CodecError, Converter, Dialect, converter, decode, kind_name, trusted

_LAZY = {"field_types": "hints", "JSON": "strict", "TOML": "strict", "CodecError": "strict",
         "Converter": "strict", "Dialect": "strict", "converter": "strict", "decode": "strict",
         "kind_name": "strict", "trusted": "strict"}


def __getattr__(name: str) -> Any:
    """The decoding names, imported from their module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "JSON",
    "TOML",
    "CodecError",
    "Converter",
    "Dialect",
    "Encoded",
    "canonical_json",
    "canonical_sha256",
    "converter",
    "decode",
    "document_bytes",
    "document_json",
    "document_pieces",
    "encode",
    "field_names",
    "field_types",
    "frozen",
    "kind_name",
    "no_gc",
    "replace",
    "strict_json",
    "trusted",
]
