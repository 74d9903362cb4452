"""The field-type grammar of :mod:`nixrepro.codec`: :func:`field_types` reads each field's
annotation by a small grammar instead of eval'ing it. Loaded with the strict decoding, on first
use: defining the record's types needs neither."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from typing import Any, Literal, Union

_FIELD_TYPES: dict[type, dict[str, Any]] = {}
_TOKEN = re.compile(r"\s*(?:([A-Za-z_][\w.]*)|('[^']*'|\"[^\"]*\")|(-?\d+)|(\.\.\.)|([\[\],|]))")
_BUILTIN_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "None": None,
                                  "list": list, "dict": dict, "tuple": tuple, "Any": Any,
                                  "Literal": Literal}


def field_types(cls: type) -> dict[str, Any]:
    """Each field's type, from its annotation (a string under ``from __future__ import
    annotations``), read by the grammar of the types this codec knows: names, ``X | Y``,
    ``list[X]``, ``dict[K, V]``, ``tuple[X, ...]`` and ``Literal[...]``, the names looked up in the
    class's module. typing.get_type_hints compiles each annotation instead: ~10 ms for a record's
    20 classes at every command that reads one. An annotation outside the grammar is read by
    typing.get_type_hints after all."""
    found = _FIELD_TYPES.get(cls)
    if found is None:
        names = vars(sys.modules[cls.__module__])
        try:
            found = {f.name: _annotation(f.type, names) if isinstance(f.type, str) else f.type
                     for f in dataclasses.fields(cls)}
        except (SyntaxError, KeyError):
            found = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = found
    return found


def _annotation(text: str, names: dict[str, Any]) -> Any:
    tokens = []
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None:
            raise SyntaxError(text)
        tokens.append(match)
        position = match.end()
    parsed, end = _parse_union(tokens, 0, names)
    if end != len(tokens):
        raise SyntaxError(text)
    return parsed


def _parse_union(tokens: list[re.Match[str]], at: int, names: dict[str, Any]) -> tuple[Any, int]:
    members = []
    while True:
        member, at = _term(tokens, at, names)
        members.append(member)
        if at < len(tokens) and tokens[at].group(5) == "|":
            at += 1
            continue
        break
    if len(members) == 1:
        return members[0], at
    return Union[tuple(members)], at  # noqa: UP007  (the typing object, made from values)


def _term(tokens: list[re.Match[str]], at: int, names: dict[str, Any]) -> tuple[Any, int]:
    if at >= len(tokens):
        raise SyntaxError("annotation ends early")
    token = tokens[at]
    if token.group(2) is not None:
        return token.group(2)[1:-1], at + 1  # a Literal's string
    if token.group(3) is not None:
        return int(token.group(3)), at + 1
    if token.group(4) is not None:
        return Ellipsis, at + 1
    name = token.group(1)
    if name is None:
        raise SyntaxError(token.group(0))
    value = _BUILTIN_TYPES[name] if name in _BUILTIN_TYPES else names[name]
    at += 1
    if at < len(tokens) and tokens[at].group(5) == "[":
        args = []
        at += 1
        while True:
            arg, at = _parse_union(tokens, at, names)
            args.append(arg)
            mark = tokens[at].group(5) if at < len(tokens) else None
            at += 1
            if mark == "]":
                break
            if mark != ",":
                raise SyntaxError("expected , or ]")
        value = value[tuple(args)] if len(args) > 1 else value[args[0]]
    return (type(None) if value is None else value), at
