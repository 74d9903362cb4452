"""The frozen-dataclass maker of :mod:`nixrepro.codec`: :func:`frozen` makes a frozen dataclass
whose ``__init__``, ``__eq__``, ``__hash__`` and ``__repr__`` are the shared functions below,
reading the class's field table; nothing compiles code (``@dataclass`` compiles each class's
methods, about 0.5 ms a class)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

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


def _skipped(spec: dataclasses.Field[Any]) -> bool:
    return spec.metadata.get("codec") == "skip"
