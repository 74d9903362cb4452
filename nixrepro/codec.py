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
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import re
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_options: Any) -> Any:  # typing has it from 3.11 on: only mypy needs it
        return lambda decorator: decorator

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING
_FIELD = getattr(dataclasses, "_FIELD", None)  # what dataclasses.fields() keeps; see frozen()
_SCALARS = frozenset((str, int, float, bool))


# --- frozen: dataclasses without generated code ---------------------------------------------------


class _Spec:
    """A frozen class's field table, read by the shared methods below."""

    __slots__ = ("compare", "count", "defaults", "factories", "fieldset", "hashed", "names", "owner",
                 "post_init", "qualname", "shown")

    def __init__(self, cls: type, fields: list[dataclasses.Field[Any]]) -> None:
        self.owner, self.qualname = cls, cls.__qualname__
        self.names = tuple(f.name for f in fields)
        self.count = len(self.names)
        self.fieldset = frozenset(self.names)
        self.defaults = {f.name: f.default for f in fields if f.default is not _MISSING}
        self.factories: dict[str, Callable[[], Any]] = {
            f.name: f.default_factory for f in fields  # type: ignore[misc]
            if f.default_factory is not _MISSING}
        self.compare = _getter([f.name for f in fields if f.compare])
        self.hashed = _getter([f.name for f in fields if (f.compare if f.hash is None else f.hash)])
        self.shown = tuple(f.name for f in fields if f.repr)
        self.post_init = hasattr(cls, "__post_init__")


def _getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A tuple of these entries of an instance's __dict__ (itemgetter's speed, always a tuple)."""
    if len(names) == 1:
        name = names[0]
        return lambda values: (values[name],)
    if not names:
        return lambda values: ()
    getter: Callable[[dict[str, Any]], tuple[Any, ...]] = itemgetter(*names)
    return getter


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    spec: _Spec = self.__codec__
    if args:
        if len(args) > spec.count:
            raise TypeError(f"{spec.qualname}.__init__() takes {spec.count + 1} positional arguments "
                            f"but {len(args) + 1} were given")
        for name, value in zip(spec.names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{spec.qualname}.__init__() got multiple values for argument {name!r}")
            kwargs[name] = value
    values = self.__dict__
    for name in spec.names:
        if name in kwargs:
            values[name] = kwargs.pop(name)
        elif name in spec.defaults:
            values[name] = spec.defaults[name]
        elif name in spec.factories:
            values[name] = spec.factories[name]()
        else:
            raise TypeError(f"{spec.qualname}.__init__() missing 1 required argument: {name!r}")
    if kwargs:
        raise TypeError(f"{spec.qualname}.__init__() got an unexpected keyword argument "
                        f"{next(iter(kwargs))!r}")
    if spec.post_init:
        self.__post_init__()


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    compare = self.__codec__.compare
    return compare(self.__dict__) == compare(other.__dict__)


def _hash(self: Any) -> int:
    return hash(self.__codec__.hashed(self.__dict__))


def _repr(self: Any) -> str:
    values = self.__dict__
    shown = ", ".join(f"{name}={values[name]!r}" for name in self.__codec__.shown)
    return f"{type(self).__qualname__}({shown})"


def _setattr(self: Any, name: str, value: Any) -> None:
    spec: _Spec = self.__codec__
    if type(self) is spec.owner or name in spec.fieldset:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _delattr(self: Any, name: str) -> None:
    spec: _Spec = self.__codec__
    if type(self) is spec.owner or name in spec.fieldset:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)


_METHODS = {"__init__": _init, "__eq__": _eq, "__hash__": _hash, "__repr__": _repr,
            "__setattr__": _setattr, "__delattr__": _delattr}


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def frozen(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass, as ``@dataclass(frozen=True)`` would, without compiling
    its methods. Fields are the class's annotations in order, with defaults or
    ``dataclasses.field(...)`` as ``@dataclass`` reads them (no ``ClassVar``, ``InitVar`` or
    ``kw_only``: none of these types has one)."""
    if _FIELD is None:  # a Python whose dataclasses keeps fields another way: the compiled kind
        return dataclasses.dataclass(frozen=True)(cls)
    fields: dict[str, dataclasses.Field[Any]] = {}
    for base in cls.__mro__[-1:0:-1]:
        fields.update(getattr(base, "__dataclass_fields__", {}))
    # the class's own annotations, as @dataclass reads them (inspect.get_annotations is the same
    # dict, after importing inspect)
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        value = cls.__dict__.get(name, _MISSING)
        spec: dataclasses.Field[Any] = (
            value if isinstance(value, dataclasses.Field) else dataclasses.field(default=value))
        if spec.default is not _MISSING and type(spec.default).__hash__ is None:
            raise ValueError(f"mutable default {type(spec.default)} for field {name} is not allowed: "
                             "use default_factory")
        spec.name, spec.type, spec.kw_only = name, annotation, False
        spec._field_type = _FIELD  # type: ignore[attr-defined]  # what dataclasses.fields() keeps
        if spec.default is _MISSING:
            if name in cls.__dict__:
                delattr(cls, name)
        else:
            setattr(cls, name, spec.default)
        fields.pop(name, None)
        fields[name] = spec
    required_after_default = False
    for spec in fields.values():
        has_default = spec.default is not _MISSING or spec.default_factory is not _MISSING
        if required_after_default and not has_default:
            raise TypeError(f"non-default argument {spec.name!r} follows default argument")
        required_after_default |= has_default
    table = list(fields.values())
    cls.__dataclass_fields__ = fields  # type: ignore[attr-defined]
    cls.__codec__ = _Spec(cls, table)  # type: ignore[attr-defined]
    setattr(cls, "__match_args__", tuple(fields))  # noqa: B010  (mypy refuses the assignment)
    for name, method in _METHODS.items():
        if name not in cls.__dict__ or (name == "__hash__" and cls.__dict__[name] is None):
            setattr(cls, name, method)
    return cls


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` for a :func:`frozen` instance, without calling ``__init__`` again."""
    spec: _Spec | None = getattr(type(obj), "__codec__", None)
    if spec is None or spec.post_init:
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    for name in changes:
        if name not in spec.fieldset:
            raise TypeError(f"{spec.qualname}.__init__() got an unexpected keyword argument {name!r}")
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


# --- encode ---------------------------------------------------------------------------------------


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


def _skipped(spec: dataclasses.Field[Any]) -> bool:
    return spec.metadata.get("codec") == "skip"


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


# --- decode ---------------------------------------------------------------------------------------


class CodecError(ValueError):
    """Data that is not a value of the class asked for. ``path`` is where (``["host", "gpus", 1,
    "uuid"]``), grown as the error leaves each container; ``problem`` is what:

    * ``"type"``: ``value`` is not ``expected`` (``"a string"``);
    * ``"missing"``: the required field ``path[-1]`` is not there;
    * ``"unknown"``: ``path[-1]`` is not a field; ``known`` lists the fields;
    * ``"nul"``, ``"nonfinite"``: a string holding NUL, a nan or inf (TOML only).
    """

    def __init__(self, problem: str, value: Any = None, expected: str = "",
                 known: Iterable[str] = (), object_name: str = "an object") -> None:
        super().__init__(problem)
        self.problem, self.value, self.expected = problem, value, expected
        self.known = tuple(known)
        self.object_name = object_name
        self.path: list[str | int] = []

    def where(self, path: list[str | int] | None = None) -> str:
        """The path as written in messages: ``host.gpus[1].uuid``."""
        text = ""
        for part in self.path if path is None else path:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text

    def kind(self) -> str:
        """The JSON type of ``value`` in words: ``an integer``."""
        return kind_name(self.value, self.object_name)

    def __str__(self) -> str:
        where = self.where() or "the document"
        if self.problem == "missing":
            return f"{where} is missing"
        if self.problem == "unknown":
            return f"{where} is not a field (the fields here: {', '.join(self.known)})"
        if self.problem == "nul":
            return f"{where} holds a NUL character"
        if self.problem == "nonfinite":
            return f"{where} is {self.value!r}, it must be a finite number"
        return f"{where} is {self.kind()}, it must be {self.expected}"


def kind_name(value: Any, object_name: str = "an object") -> str:
    """A value's JSON type in words; ``object_name`` is what the language calls a mapping."""
    if isinstance(value, Mapping):
        return object_name
    return _KIND_NAMES.get(type(value), type(value).__name__)


_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", float: "a number",
                                bool: "a boolean", list: "a list", type(None): "null"}
_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


class Dialect:
    """What a document's language allows beyond JSON's types (see the module docstring)."""

    def __init__(self, name: str, *, object_name: str, strict_scalars: bool) -> None:
        self.name, self.object_name, self.strict_scalars = name, object_name, strict_scalars

    def __repr__(self) -> str:
        return f"Dialect({self.name!r})"


JSON = Dialect("json", object_name="an object", strict_scalars=False)
TOML = Dialect("toml", object_name="a table", strict_scalars=True)

Converter = Callable[[Any], Any]
_PLANS: dict[tuple[Any, Dialect], Converter] = {}


def decode(cls: type[T], data: Any, dialect: Dialect = JSON) -> T:
    """``data`` (from json.loads or tomllib) as a ``cls``; raises :class:`CodecError`."""
    built: T = converter(cls, dialect)(data)
    return built


def converter(hint: Any, dialect: Dialect = JSON) -> Converter:
    """The function that checks and converts data of type ``hint``; made once per type."""
    key = (hint, dialect)
    made = _PLANS.get(key)
    if made is None:
        made = _PLANS[key] = _make(hint, dialect)
    return made


def _identity(value: Any) -> Any:
    return value


# --- field types: the annotations read by a small grammar, not eval'd ------------------------------

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


def _make(hint: Any, dialect: Dialect) -> Converter:
    if hint in _SCALARS:
        return _scalar([hint], dialect)
    if hint is Any:
        return _identity
    if hint is None or hint is type(None):
        return _scalar([], dialect, nullable=True)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass(hint, dialect)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return _literal(args, dialect)
    if origin is Union or _is_union_type(origin):
        return _union(args, dialect)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return _sequence(converter(args[0], dialect), list if origin is list else tuple, dialect)
    if origin is dict and args and args[0] is str:
        return _mapping(converter(args[1], dialect), dialect)
    raise TypeError(f"the codec cannot read {hint!r}: give the field one of the types the "
                    "nixrepro.codec docstring lists")


def _is_union_type(origin: Any) -> bool:
    import types

    return origin is types.UnionType


def _expected(kinds: Iterable[type], nullable: bool = False) -> str:
    """``kinds`` in words, in the order the type names them: "an integer, a number or null"."""
    names = [_KIND_NAMES[kind] for kind in kinds]
    if nullable:
        names.append("null")
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _scalar(kinds: list[type], dialect: Dialect, nullable: bool = False) -> Converter:
    """A JSON scalar of one of ``kinds``; ``type()``, not isinstance: a boolean is no integer.
    A float field takes an integer (JSON has one kind of number): kept as written in JSON, so that
    a record hashes the same when read back; made a float in TOML."""
    accepted = set(kinds) | ({type(None)} if nullable else set())
    if float in kinds:
        accepted.add(int)
    accepted_kinds = frozenset(accepted)
    expected = _expected(kinds, nullable)
    object_name = dialect.object_name
    if not dialect.strict_scalars:
        def check(value: Any) -> Any:
            if type(value) not in accepted_kinds:
                raise CodecError("type", value, expected, object_name=object_name)
            return value
        return check
    to_float = float in kinds and int not in kinds

    def check_strict(value: Any) -> Any:
        kind = type(value)
        if kind not in accepted_kinds:
            raise CodecError("type", value, expected, object_name=object_name)
        if kind is str and "\x00" in value:
            raise CodecError("nul", value, object_name=object_name)
        if kind is float or (kind is int and to_float):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond a 64-bit float
                raise CodecError("nonfinite", value, object_name=object_name) from None
            if number - number != 0.0:  # nan or inf
                raise CodecError("nonfinite", value, object_name=object_name)
            return number
        return value
    return check_strict


def _literal(allowed: tuple[Any, ...], dialect: Dialect) -> Converter:
    members = frozenset(allowed)
    kinds = frozenset(type(member) for member in allowed)
    expected = "one of " + ", ".join(map(str, allowed))

    def literal(value: Any) -> Any:
        if type(value) not in kinds or value not in members:
            raise CodecError("type", value, expected, object_name=dialect.object_name)
        return value
    return literal


def _union(args: tuple[Any, ...], dialect: Dialect) -> Converter:
    """``X | None``, or members told apart by JSON type: each type of value goes to one member."""
    nullable = type(None) in args
    options = [arg for arg in args if arg is not type(None)]
    if len(options) == 1:
        inner = converter(options[0], dialect)

        def optional(value: Any) -> Any:
            return None if value is None else inner(value)
        return optional
    scalars = [arg for arg in options if arg in _SCALARS]
    by_kind: dict[type, Converter] = {}
    names: list[str] = []
    if scalars:
        check = _scalar(scalars, dialect, nullable)
        for kind in (*scalars, type(None)) if nullable else scalars:
            by_kind[kind] = check
        if float in scalars and int not in scalars:
            by_kind[int] = check
        names.extend(_KIND_NAMES[kind] for kind in scalars)
    for arg in options:
        if arg in scalars:
            continue
        origin = typing.get_origin(arg) or arg
        kind = list if origin in (list, tuple) else dict
        if kind in by_kind:
            raise TypeError(f"the codec cannot tell the members of {args!r} apart by JSON type")
        by_kind[kind] = converter(arg, dialect)
        item = typing.get_args(arg)
        plural = _PLURALS.get(item[0]) if kind is list and item else None
        names.append(f"a list of {plural}" if plural else ("a list" if kind is list else dialect.object_name))
    if nullable:
        by_kind.setdefault(type(None), _identity)
        names.append("null")
    expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]

    def union(value: Any) -> Any:
        kind = type(value)
        convert = by_kind.get(kind) or (by_kind.get(dict) if isinstance(value, dict) else None)
        if convert is None:
            raise CodecError("type", value, expected, object_name=dialect.object_name)
        return convert(value)
    return union


def _sequence(item: Converter, make: type, dialect: Dialect) -> Converter:
    flat = getattr(item, "flat", None)
    if flat is not None and make is list:
        return _flat_sequence(item, flat[0], flat[1], dialect)

    def sequence(value: Any) -> Any:
        if type(value) is not list:
            raise CodecError("type", value, "a list", object_name=dialect.object_name)
        if item is _identity:
            return make(value)
        converted = []
        for index, member in enumerate(value):  # a loop, not a comprehension: the index is named
            try:
                converted.append(item(member))
            except CodecError as exc:
                exc.path.insert(0, index)
                raise
        return converted if make is list else make(converted)
    return sequence


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while many objects are made at once (a 20,000-path
    closure, a listing of 10,000 runs): none of them is in a cycle, and the collections their
    allocation sets off cost a third again of the decoding."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _flat_sequence(build: Converter, cls: type, pairs: tuple[tuple[str, frozenset[type]], ...],
                   dialect: Dialect) -> Converter:
    """A list of objects whose fields are all JSON scalars (a closure's 2,000 store paths): each
    one that has exactly its fields, of their types, is made at once; any other goes through the
    full check, which names what is wrong (or fills in a default)."""
    names = frozenset(name for name, _ in pairs)
    three = pairs if len(pairs) == 3 else None
    new = object.__new__

    def sequence(value: Any) -> Any:
        if type(value) is not list:
            raise CodecError("type", value, "a list", object_name=dialect.object_name)
        if len(value) < 1000:
            return each(value)
        with no_gc():
            return each(value)

    def each(value: list[Any]) -> list[Any]:
        converted: list[Any] = []
        append = converted.append
        for index, doc in enumerate(value):
            if type(doc) is dict and doc.keys() == names:  # exactly its fields (one C compare)
                if three is not None:  # a store path: three checks inline, 40,000 times in a diff
                    (n0, k0), (n1, k1), (n2, k2) = three
                    fits = type(doc[n0]) in k0 and type(doc[n1]) in k1 and type(doc[n2]) in k2
                else:
                    fits = all(type(doc[name]) in kinds for name, kinds in pairs)
                if fits:
                    instance: Any = new(cls)
                    instance.__dict__.update(doc)
                    append(instance)
                    continue
            try:
                append(build(doc))
            except CodecError as exc:
                exc.path.insert(0, index)
                raise
        return converted
    return sequence


def _mapping(item: Converter, dialect: Dialect) -> Converter:
    object_name = dialect.object_name

    def mapping(value: Any) -> Any:
        if not isinstance(value, dict):
            raise CodecError("type", value, object_name, object_name=object_name)
        if item is _identity:
            return dict(value)
        converted = {}
        for key, member in value.items():
            try:
                converted[key] = item(member)
            except CodecError as exc:
                exc.path.insert(0, key)
                raise
        return converted
    return mapping


def _dataclass(cls: type, dialect: Dialect) -> Converter:
    """Each field checked (a wrong-typed field is named, never a value that breaks a later sort or
    format), unknown keys refused, defaults filled in. A :func:`frozen` instance is made without
    its ``__init__`` (the plan has checked every field): a 2,000-path closure is 2,000 of them."""
    hints = field_types(cls)
    table = [f for f in dataclasses.fields(cls) if not _skipped(f)]
    plan: list[tuple[str, Converter, Any, Any]] = [
        (f.name, converter(hints[f.name], dialect), f.default, f.default_factory) for f in table]
    names = frozenset(f.name for f in table)
    known = tuple(sorted(names))
    direct = "__codec__" in cls.__dict__ and not cls.__codec__.post_init  # type: ignore[attr-defined]
    object_name = dialect.object_name
    new = object.__new__

    def build(doc: Any) -> Any:
        if not isinstance(doc, dict):
            raise CodecError("type", doc, object_name, object_name=object_name)
        if not names.issuperset(doc):  # first: a misspelt key is likelier than a missing one
            unknown = sorted(str(key) for key in doc if key not in names)[0]
            error = CodecError("unknown", doc[unknown], known=known, object_name=object_name)
            error.path.append(unknown)
            raise error
        values: dict[str, Any] = {}
        for name, convert, default, factory in plan:  # a loop: the failing field is named
            if name in doc:
                try:
                    values[name] = convert(doc[name])
                except CodecError as exc:
                    exc.path.insert(0, name)
                    raise
            elif default is not _MISSING:
                values[name] = default
            elif factory is not _MISSING:
                values[name] = factory()
            else:
                error = CodecError("missing", object_name=object_name)
                error.path.append(name)
                raise error
        if direct:
            instance: Any = new(cls)
            instance.__dict__.update(values)
            return instance
        return cls(**values)
    if direct and not dialect.strict_scalars and all(hints[f.name] in _SCALARS for f in table):
        kinds = {str: frozenset({str}), int: frozenset({int}), float: frozenset({int, float}),
                 bool: frozenset({bool})}
        build.flat = (cls, tuple((f.name, kinds[hints[f.name]]) for f in table))  # type: ignore[attr-defined]
    return build


# --- trusted: what this codec wrote and a checksum still vouches for -------------------------------

_TRUSTED: dict[Any, Converter | None] = {}


def trusted(cls: Any, data: Any) -> Any:
    """``data`` as a ``cls``, built without the checks of :func:`decode`: only for data that
    :func:`encode` wrote from a value :func:`decode` had checked, and that a checksum shows
    unchanged since (the run store's listing index). Dataclasses are made, the rest is taken as
    it is (lists and dicts of scalars are not copied)."""
    build = _trusted(cls)
    return data if build is None or data is None else build(data)


def _trusted(hint: Any) -> Converter | None:
    """What turns trusted data into ``hint``; None: the data already is one."""
    if hint in _TRUSTED:
        return _TRUSTED[hint]
    made = _TRUSTED[hint] = _make_trusted(hint)
    return made


def _make_trusted(hint: Any) -> Converter | None:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = field_types(hint)
        table = [f for f in dataclasses.fields(hint) if not _skipped(f)]
        built = [(f.name, conv) for f in table if (conv := _trusted(hints[f.name])) is not None]
        names = [f.name for f in table]
        cls: Any = hint
        direct = "__codec__" in hint.__dict__ and not hint.__codec__.post_init  # type: ignore[attr-defined]
        new = object.__new__

        def build(doc: Any) -> Any:
            values = {name: doc[name] for name in names}
            for name, convert in built:
                if values[name] is not None:
                    values[name] = convert(values[name])
            if not direct:
                return cls(**values)
            instance: Any = new(cls)
            instance.__dict__.update(values)
            return instance
        return build
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or (origin is not None and _is_union_type(origin)):
        members = [(arg, _trusted(arg)) for arg in args if arg is not type(None)]
        objects = [convert for arg, convert in members if convert is not None
                   and (typing.get_origin(arg) or arg) not in (list, tuple)]
        sequences = [convert for arg, convert in members if convert is not None
                     and (typing.get_origin(arg) or arg) in (list, tuple)]
        if not objects and not sequences:
            return None
        of_dict: Converter = objects[0] if objects else _identity
        of_list: Converter = sequences[0] if sequences else _identity
        return lambda value: (of_dict(value) if isinstance(value, dict) else
                              of_list(value) if isinstance(value, list) else value)
    if origin in (list, tuple) and args:
        member = _trusted(args[0])
        if member is None:
            return None if origin is list else tuple
        each: Converter = member
        if origin is list:
            return lambda value: [each(item) for item in value]
        return lambda value: tuple(each(item) for item in value)
    if origin is dict and len(args) == 2:
        entry = _trusted(args[1])
        if entry is None:
            return None
        every: Converter = entry
        return lambda value: {key: every(item) for key, item in value.items()}
    return None


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
