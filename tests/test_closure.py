"""nixrepro.closure: reading `nix path-info --json` of any Nix version, and the closure hash.

The closure hash is a contract with users (DESIGN.md): anyone must be able to recompute it from
`nix path-info` with standard tools, so the tests recompute it independently with hashlib.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from nixrepro.closure import (
    Closure,
    PathInfoParseError,
    StorePathInfo,
    closure_hash,
    normalize_nar_hash,
    parse_path_info,
)

FIXTURES = Path(__file__).parent / "fixtures" / "nix-json"
MISSING_BASE = "00000000000000000000000000000000-missing"
MISSING = f"/nix/store/{MISSING_BASE}"
FOO_BASE = "n5wkd9frr45pa74if5gpz9j7mifg27fh-foo"
FOO = f"/nix/store/{FOO_BASE}"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_text(name))


def nix28_expected() -> list[tuple[str, str, int]]:
    """(path, narHash, narSize) of the real nix 2.8 sample, read straight from the file."""
    doc = fixture_json("nix-2.8-recursive-output.json")
    return sorted((o["path"], o["narHash"], o["narSize"]) for o in doc)


def triples(infos: list[StorePathInfo]) -> list[tuple[str, str, int]]:
    return sorted((info.path, info.narHash, info.narSize) for info in infos)


def per_path_sample(version: int, kind: str) -> dict[str, Any]:
    """One per-path object from the Nix project's test data (it carries its own version/storeDir)."""
    obj: dict[str, Any] = fixture_json(f"v{version}-{kind}.json")
    assert obj["version"] == version
    return obj


# --- every shape Nix has printed ---------------------------------------------------------------


def test_nix_2_8_list_gives_every_path_with_its_hash_and_size() -> None:
    valid, invalid = parse_path_info(fixture_text("nix-2.8-recursive-output.json"))
    assert triples(valid) == nix28_expected()
    assert len(valid) == 6
    assert invalid == []


def test_nix_2_8_invalid_path_is_reported_as_invalid_not_as_a_closure_member() -> None:
    valid, invalid = parse_path_info(fixture_text("nix-2.8-invalid-path-output.json"))
    assert valid == []
    assert invalid == [MISSING]


def test_nix_2_19_object_keyed_by_path_with_null_for_a_missing_path() -> None:
    valid, invalid = parse_path_info(fixture_text("nix-2.19-object.json"))
    assert triples(valid) == nix28_expected()
    assert invalid == [MISSING]


def test_nix_2_8_and_2_19_shapes_of_the_same_closure_give_the_same_closure_hash() -> None:
    old, _ = parse_path_info(fixture_text("nix-2.8-recursive-output.json"))
    new, _ = parse_path_info(fixture_text("nix-2.19-object.json"))
    assert closure_hash(old) == closure_hash(new)


@pytest.mark.parametrize("kind", ["pure", "impure", "empty_pure"])
def test_json_format_1_envelope_ignores_its_version_and_store_dir_keys(kind: str) -> None:
    obj = per_path_sample(1, kind)
    envelope = {"version": 1, "storeDir": "/nix/store", FOO: obj, MISSING: None}

    valid, invalid = parse_path_info(json.dumps(envelope))

    assert triples(valid) == [(FOO, obj["narHash"], obj["narSize"])]
    assert invalid == [MISSING]


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("kind", ["pure", "impure", "empty_pure"])
def test_json_format_2_and_3_envelopes_turn_base_names_into_full_paths(version: int, kind: str) -> None:
    obj = per_path_sample(version, kind)
    envelope = {
        "version": version,
        "storeDir": "/nix/store",
        "info": {FOO_BASE: obj, MISSING_BASE: None},
    }

    valid, invalid = parse_path_info(json.dumps(envelope))

    assert triples(valid) == [(FOO, obj["narHash"], obj["narSize"])]
    assert invalid == [MISSING]


def test_json_format_2_uses_the_store_dir_it_names() -> None:
    obj = per_path_sample(2, "pure")
    envelope = {"version": 2, "storeDir": "/opt/nix/store", "info": {FOO_BASE: obj}}

    valid, _ = parse_path_info(json.dumps(envelope))

    assert [info.path for info in valid] == [f"/opt/nix/store/{FOO_BASE}"]


def test_absent_nar_size_written_as_null_reads_as_zero() -> None:
    # nix >= 2.23 writes absent fields as null.
    doc = {FOO: {"narHash": per_path_sample(1, "pure")["narHash"], "narSize": None}}
    valid, _ = parse_path_info(json.dumps(doc))
    assert valid[0].narSize == 0


@pytest.mark.parametrize("text", ["", "not json", "[{", '{"/nix/store/a-b": '])
def test_invalid_json_is_a_path_info_parse_error(text: str) -> None:
    with pytest.raises(PathInfoParseError, match="invalid JSON"):
        parse_path_info(text)


@pytest.mark.parametrize("text", ['"a string"', "42", "null"])
def test_json_that_is_neither_list_nor_object_is_a_path_info_parse_error(text: str) -> None:
    with pytest.raises(PathInfoParseError):
        parse_path_info(text)


def test_an_entry_without_nar_hash_is_a_path_info_parse_error_naming_the_path() -> None:
    with pytest.raises(PathInfoParseError, match="/nix/store/aaaa-x"):
        parse_path_info(json.dumps([{"path": "/nix/store/aaaa-x", "narSize": 1}]))


# Never a traceback (AttributeError): a clear PathInfoParseError the CLI can print.
@pytest.mark.parametrize("text", ["[1]", "[null]"])
def test_a_list_of_non_objects_is_a_path_info_parse_error(text: str) -> None:
    with pytest.raises(PathInfoParseError):
        parse_path_info(text)


# --- the closure hash --------------------------------------------------------------------------


def independent_closure_hash(entries: list[tuple[str, str]]) -> str:
    """DESIGN.md, written out: sha256 hex of "<path> <narHash>\\n" lines sorted by path."""
    lines = sorted(f"{path} {nar_hash}\n" for path, nar_hash in entries)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_closure_hash_is_the_documented_recomputation_over_nix_output() -> None:
    valid, _ = parse_path_info(fixture_text("nix-2.8-recursive-output.json"))
    expected = independent_closure_hash([(path, nar_hash) for path, nar_hash, _ in nix28_expected()])
    assert closure_hash(valid) == expected
    assert Closure.of(valid).hash == expected


def test_closure_hash_does_not_depend_on_input_order() -> None:
    valid, _ = parse_path_info(fixture_text("nix-2.8-recursive-output.json"))
    hashes = set()
    rng = random.Random(7)
    for _ in range(10):
        shuffled = list(valid)
        rng.shuffle(shuffled)
        hashes.add(closure_hash(shuffled))
    assert hashes == {closure_hash(valid)}


def test_same_paths_with_different_bits_give_a_different_closure_hash() -> None:
    valid, _ = parse_path_info(fixture_text("nix-2.8-recursive-output.json"))
    first = valid[0]
    tampered = [StorePathInfo(first.path, valid[1].narHash, first.narSize), *valid[1:]]
    assert closure_hash(tampered) != closure_hash(valid)


def test_closure_hash_ignores_nar_size_and_normalises_hash_spelling() -> None:
    # The recipe is path + narHash; a narinfo's "sha256:<nix32>" spelling must not change it.
    sri = StorePathInfo("/nix/store/8sb2cdn9xqvy12dm5h7x31z4jfkvi4l5-zlib-1.3.1",
                        "sha256-DbSPWU1fYPdkGPVzJs5P9p0HE3yiqEJ47VYyqRZt7nM=", 456)
    nix32 = StorePathInfo(sri.path, "sha256:0wzfdlbajcjnxmw45a52gh9hg7gn9z72cwzm31jgfq2z9mcqzd0d", 999)
    assert closure_hash([nix32]) == closure_hash([sri]) == independent_closure_hash([(sri.path, sri.narHash)])


def test_closure_is_sorted_by_path_and_sums_nar_sizes() -> None:
    valid, _ = parse_path_info(fixture_text("nix-2.8-recursive-output.json"))
    closure = Closure.of(reversed(valid))
    assert [info.path for info in closure.paths] == sorted(info.path for info in valid)
    assert closure.nar_size == sum(size for _, _, size in nix28_expected())
    assert len(closure) == 6


# --- NAR hash spellings -------------------------------------------------------------------------

# Real pairs, obtained on the nix 2.8 machine that wrote these tests with
#   nix --extra-experimental-features nix-command hash to-base16 <sri>
#   nix --extra-experimental-features nix-command hash to-base32 --type sha256 <hex>
#   nix --extra-experimental-features nix-command hash to-sri --type sha256 <hex or nix32>
# (the first three SRI hashes are from the fixtures; all-ones exercises nix32's top digit).
HASH_SPELLINGS = [
    # (SRI, hex, nix32)
    (
        "sha256-vU2UGGO5n/y4jBn2o/5U+xjzJVp7oW72BNVqm7UN5lk=",
        "bd4d941863b99ffcb88c19f6a3fe54fb18f3255a7ba16ef604d56a9bb50de659",
        "0ng61nsrnsnm0kv6x8bvb8jz667vakza7xhrijwgr7xrccc98kdx",
    ),
    (
        "sha256-DbSPWU1fYPdkGPVzJs5P9p0HE3yiqEJ47VYyqRZt7nM=",
        "0db48f594d5f60f76418f57326ce4ff69d07137ca2a84278ed5632a9166dee73",
        "0wzfdlbajcjnxmw45a52gh9hg7gn9z72cwzm31jgfq2z9mcqzd0d",
    ),
    (
        "sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc=",
        "15e3c560894cbb27085cf65b5a2ecb18488c999497f4531b6907a7581ce6d527",
        "09ymwqf5i9q7d4dm7x4pjjcqqj0qrcp5lnznbh42gfsci5hcbqqm",
    ),
    (
        "sha256-//////////////////////////////////////////8=",
        "ff" * 32,
        "1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ),
    (
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "00" * 32,
        "0000000000000000000000000000000000000000000000000000",
    ),
]


@pytest.mark.parametrize(("sri", "hex_digest", "nix32"), HASH_SPELLINGS)
def test_sri_nar_hash_passes_through_unchanged(sri: str, hex_digest: str, nix32: str) -> None:
    assert normalize_nar_hash(sri) == sri


@pytest.mark.parametrize(("sri", "hex_digest", "nix32"), HASH_SPELLINGS)
def test_narinfo_nix32_spelling_gives_the_sri_nix_gives(sri: str, hex_digest: str, nix32: str) -> None:
    assert normalize_nar_hash(f"sha256:{nix32}") == sri


@pytest.mark.parametrize(("sri", "hex_digest", "nix32"), HASH_SPELLINGS)
def test_hex_spelling_gives_the_sri_nix_gives(sri: str, hex_digest: str, nix32: str) -> None:
    assert normalize_nar_hash(f"sha256:{hex_digest}") == sri


def test_ca_field_of_nix_test_data_nix32_and_sri_agree() -> None:
    # The Nix project's own v1 sample writes the content address as nix32, v2 as SRI: same digest.
    v1_ca = per_path_sample(1, "pure")["ca"]  # "fixed:r:sha256:<nix32>"
    v2_ca = per_path_sample(2, "pure")["ca"]["hash"]
    assert normalize_nar_hash(v1_ca.removeprefix("fixed:r:")) == v2_ca


@pytest.mark.parametrize(
    "value",
    [
        "md5:0123456789abcdef0123456789abcdef",  # not sha256
        "sha512:abc",
        "0ng61nsrnsnm0kv6x8bvb8jz667vakza7xhrijwgr7xrccc98kdx",  # no algorithm
        "sha256:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",  # nix32 overflowing 256 bits
        "sha256:2zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",  # nix: invalid base-32 hash
        "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",  # 'e' is not a nix32 digit
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg",  # not hex
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",  # odd length
    ],
)
def test_malformed_nar_hash_is_a_path_info_parse_error(value: str) -> None:
    with pytest.raises(PathInfoParseError):
        normalize_nar_hash(value)


# nix 2.8 refuses each of these: "hash 'abcd' has wrong length for hash type 'sha256'",
# "invalid SRI hash 'abc'", "invalid character in Base64 string".
@pytest.mark.parametrize("value", ["sha256:", "sha256:abcd", "sha256-abc", "sha256-!!!"])
def test_nar_hash_of_the_wrong_length_is_a_path_info_parse_error(value: str) -> None:
    with pytest.raises(PathInfoParseError):
        normalize_nar_hash(value)


def test_path_info_with_nix32_nar_hash_is_recorded_in_sri_form() -> None:
    sri, _, nix32 = HASH_SPELLINGS[0]
    doc = [{"path": "/nix/store/23m8k613bpd01023raja92h7s9nx0wrw-python3.11-numpy-2.0.1",
            "narHash": f"sha256:{nix32}", "narSize": 760}]
    valid, _ = parse_path_info(json.dumps(doc))
    assert valid[0].narHash == sri


# --- StorePathInfo.name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/nix/store/n1x4swgbhwjzb9vaavqpqv4iijf8zj3l-python3-3.11.9", "python3-3.11.9"),
        ("/nix/store/6816riznq833fs111dw7wy568ic10r5j-python3-3.11.9-env", "python3-3.11.9-env"),
        ("/opt/store/8sb2cdn9xqvy12dm5h7x31z4jfkvi4l5-zlib-1.3.1", "zlib-1.3.1"),
    ],
)
def test_store_path_name_is_the_part_after_the_hash(path: str, name: str) -> None:
    assert StorePathInfo(path, "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 0).name == name
