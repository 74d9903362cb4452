"""Strict decoding of :mod:`nixrepro.codec`: plain data to a value of a given class, every field
checked (:func:`decode`), and the unchecked build of data this codec wrote and a checksum vouches
for (:func:`trusted`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, Union

from .canonical import no_gc
from .fields import _MISSING, _SCALARS, _skipped
from .hints import field_types

T = TypeVar("T")


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
            return cls(**values)

        def build_direct(doc: Any) -> Any:
            # encode wrote exactly these fields: the document is the instance's __dict__
            instance: Any = new(cls)
            values = instance.__dict__
            values.update(doc)
            for name, convert in built:
                value = values[name]
                if value is not None:
                    values[name] = convert(value)
            return instance
        return build_direct if direct else build
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
