"""nixrepro.codec: frozen dataclasses without generated code, the strict codec, the canonical JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import field
from typing import Any, Literal

import pytest

from nixrepro import codec, config, record
from nixrepro.codec import JSON, TOML, CodecError, canonical_json, decode, encode, frozen


@frozen
class Part:
    name: str
    size: int | None = None


@frozen
class Whole:
    label: str
    parts: list[Part] = field(default_factory=list)
    weight: float = 1.0
    kind: Literal["a", "b"] = "a"
    tags: dict[str, str | list[str]] = field(default_factory=dict)
    extra: Any = None


# --- frozen: what a dataclass does ------------------------------------------------------------------


def test_a_frozen_class_is_a_dataclass_to_the_standard_library() -> None:
    whole = Whole("w", [Part("p", 3)])
    assert dataclasses.is_dataclass(whole) and dataclasses.is_dataclass(Whole)
    assert [f.name for f in dataclasses.fields(Whole)] == ["label", "parts", "weight", "kind", "tags",
                                                           "extra"]
    assert dataclasses.asdict(whole) == {"label": "w", "parts": [{"name": "p", "size": 3}], "weight": 1.0,
                                         "kind": "a", "tags": {}, "extra": None}
    changed = dataclasses.replace(whole, weight=2.0)
    assert changed.weight == 2.0 and changed.parts == whole.parts and whole.weight == 1.0
    assert codec.replace(whole, label="v") == Whole("v", [Part("p", 3)])


def test_a_frozen_instance_cannot_be_changed() -> None:
    part = Part("p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.name = "q"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del part.name


def test_equality_hash_and_repr_follow_the_fields() -> None:
    assert Part("p", 1) == Part(name="p", size=1) and hash(Part("p", 1)) == hash(Part("p", 1))
    assert Part("p", 1) != Part("p", 2)
    assert Part("p") != ("p", None)  # type: ignore[comparison-overlap]
    assert repr(Part("p", 1)) == "Part(name='p', size=1)"
    assert len({Part("p"), Part("p"), Part("q")}) == 2


def test_defaults_and_factories_are_per_instance() -> None:
    first, second = Whole("a"), Whole("b")
    first.parts.append(Part("x"))
    assert second.parts == []


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((), {}, "missing 1 required argument: 'label'"),
    (("w",), {"label": "v"}, "multiple values for argument 'label'"),
    (("w",), {"colour": "red"}, "unexpected keyword argument 'colour'"),
    (("w", [], 1.0, "a", {}, None, "too many"), {}, "positional arguments"),
])
def test_wrong_arguments_are_a_type_error(args: tuple[Any, ...], kwargs: dict[str, Any],
                                          message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Whole(*args, **kwargs)


def test_a_mutable_default_or_a_required_field_after_a_default_is_refused() -> None:
    with pytest.raises(ValueError, match="mutable default"):
        @frozen
        class Bad:
            items: list[str] = []  # noqa: RUF012
    with pytest.raises(TypeError, match="follows default"):
        @frozen
        class Late:
            first: int = 0
            second: int  # type: ignore[misc]


# --- decode: strict ---------------------------------------------------------------------------------


def test_decode_round_trips_encode() -> None:
    whole = Whole("w", [Part("p", 3), Part("q")], 0.5, "b", {"t": ["x"], "u": "y"}, {"free": [1]})
    assert decode(Whole, json.loads(json.dumps(encode(whole)))) == whole


@pytest.mark.parametrize(("doc", "where", "problem"), [
    ({"label": "w", "colour": "red"}, "colour", "unknown"),
    ({"label": "w", "parts": [{"name": "p", "sise": 1}]}, "parts[0].sise", "unknown"),
    ({}, "label", "missing"),
    ({"label": "w", "parts": [{"size": 1}]}, "parts[0].name", "missing"),
    ({"label": 7}, "label", "type"),
    ({"label": "w", "parts": [{"name": "p", "size": True}]}, "parts[0].size", "type"),  # no bool as int
    ({"label": "w", "kind": "c"}, "kind", "type"),
    ({"label": "w", "tags": {"t": 3}}, "tags.t", "type"),
    ({"label": "w", "parts": {"name": "p"}}, "parts", "type"),
])
def test_what_is_not_a_value_of_the_class_is_refused_naming_where(doc: dict[str, Any], where: str,
                                                                    problem: str) -> None:
    with pytest.raises(CodecError) as caught:
        decode(Whole, doc)
    assert caught.value.problem == problem
    assert caught.value.where() == where
    assert str(caught.value).startswith(where)


def test_a_misspelt_key_is_reported_before_a_missing_one() -> None:
    with pytest.raises(CodecError) as caught:
        decode(Part, {"nmae": "p"})
    assert caught.value.problem == "unknown" and caught.value.known == ("name", "size")


def test_a_type_error_says_what_was_found_and_what_was_expected() -> None:
    with pytest.raises(CodecError) as caught:
        decode(Whole, {"label": "w", "tags": {"t": {"x": 1}}})
    assert str(caught.value) == "tags.t is an object, it must be a string or a list of strings"
    with pytest.raises(CodecError) as caught:
        decode(Whole, {"label": "w", "tags": {"t": {"x": 1}}}, TOML)
    assert caught.value.kind() == "a table"


def test_json_keeps_an_integer_given_for_a_float_toml_makes_it_a_float() -> None:
    """A record read back must hash as written; a config number is a number."""
    assert type(decode(Whole, {"label": "w", "weight": 2}).weight) is int
    assert type(decode(Whole, {"label": "w", "weight": 2}, TOML).weight) is float


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_toml_refuses_numbers_a_record_cannot_hold(value: Any) -> None:
    with pytest.raises(CodecError) as caught:
        decode(Whole, {"label": "w", "weight": value}, TOML)
    assert caught.value.problem == "nonfinite" and caught.value.where() == "weight"


def test_toml_refuses_a_nul_character_in_a_string() -> None:
    with pytest.raises(CodecError) as caught:
        decode(Whole, {"label": "w", "tags": {"t": ["ok", "a\x00b"]}}, TOML)
    assert caught.value.problem == "nul" and caught.value.where() == "tags.t[1]"
    assert decode(Whole, {"label": "a\x00b"}).label == "a\x00b"  # JSON holds what the run had


def test_a_type_the_codec_cannot_read_is_refused_when_it_is_first_used() -> None:
    @frozen
    class Odd:
        pair: tuple[int, str]

    with pytest.raises(TypeError, match="cannot read"):
        decode(Odd, {"pair": [1, "a"]})


RECORD_TYPES = [value for value in vars(record).values()
                if isinstance(value, type) and dataclasses.is_dataclass(value)]
CONFIG_TYPES = [value for value in vars(config).values()
                if isinstance(value, type) and dataclasses.is_dataclass(value)]


@pytest.mark.parametrize("cls", RECORD_TYPES + CONFIG_TYPES, ids=lambda cls: cls.__name__)
def test_every_record_and_config_type_can_be_read(cls: type) -> None:
    """Every field's type is one the codec reads: a new field of another kind fails here, not in
    a user's listing."""
    codec.converter(cls, JSON)
    codec.converter(cls, TOML)
    assert codec.field_types(cls) == typing.get_type_hints(cls)  # read as Python reads them


def test_trusted_builds_what_decode_would() -> None:
    """For what the codec wrote itself from a checked value (the listing index)."""
    whole = Whole("w", [Part("p", 3), Part("q")], 0.5, "b", {"t": ["x"]}, {"free": [1]})
    plain = json.loads(json.dumps(encode(whole)))
    assert codec.trusted(Whole, plain) == decode(Whole, plain) == whole
    assert codec.trusted(Whole | None, None) is None


# --- the canonical JSON -----------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["é", {"d": None, "c": True}]}) == \
        '{"a":["é",{"c":true,"d":null}],"b":1}'.encode()


def test_canonical_json_writes_no_nan_and_keeps_undecodable_bytes() -> None:
    text = canonical_json({"x": math.nan, "y": [math.inf], "z": "\udcff"}).decode()
    assert json.loads(text) == {"x": "nan", "y": ["inf"], "z": "\udcff"}


def test_an_encoded_list_is_written_as_the_list_would_be() -> None:
    """A closure's JSON made once is put in place: the bytes (and the hash) are the same."""
    items = [{"path": f"/nix/store/{i:032d}-p", "narHash": "sha256-x", "narSize": i} for i in range(100)]
    doc = {"id": "r", "environment": {"closure": codec.Encoded(items), "name": "é"}, "metrics": {"x": 1}}
    plain = json.loads(json.dumps(doc))
    assert canonical_json(doc) == canonical_json(plain)
    assert codec.canonical_sha256(doc) == codec.canonical_sha256(plain)
    assert codec.document_json(doc) == codec.document_json(plain)
    assert codec.document_bytes(doc) == codec.document_json(plain).encode()


def test_a_string_that_looks_like_the_stand_in_is_written_as_it_is() -> None:
    items = [{"n": i} for i in range(100)]
    doc = {"a": "\x00encoded-0\x00", "b": codec.Encoded(items), "c": json.dumps("\x00encoded-0\x00")}
    assert json.loads(canonical_json(doc)) == {"a": "\x00encoded-0\x00", "b": items,
                                                "c": json.dumps("\x00encoded-0\x00")}
