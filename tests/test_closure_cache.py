"""nixrepro.closure's closure cache: nix is asked once per store path, and what is kept is what it said."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from nixrepro import closure as closures
from nixrepro import codec
from nixrepro.closure import Closure, StorePathInfo, cached_closure, parse_path_info
from nixrepro.record import RunRecord, record_file_bytes
from tests.test_record import FIXTURES, minimal_record

NIX_JSON = FIXTURES / "nix-json" / "nix-2.8-recursive-output.json"


class Nix:
    """Stands in for `nix path-info`: answers with a real recorded closure, counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def closure(self) -> Closure:
        self.calls += 1
        valid, _ = parse_path_info(NIX_JSON.read_text())
        return Closure.of(valid)


@pytest.fixture
def env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "store" / "6816riznq833fs111dw7wy568ic10r5j-env"
    path.mkdir(parents=True)
    return path


def test_nix_is_asked_once_for_a_store_path(env_path: Path) -> None:
    nix = Nix()
    first = cached_closure(str(env_path), "2.8.0", nix.closure)
    again = cached_closure(str(env_path), "2.8.0", nix.closure)
    assert nix.calls == 1
    assert again == first == nix.closure()
    assert again.hash == nix.closure().hash


def test_a_store_path_made_again_is_asked_about_again(env_path: Path) -> None:
    """Deleted and built again, a path may hold other bits: its new inode and ctime say so."""
    nix = Nix()
    cached_closure(str(env_path), "2.8.0", nix.closure)
    shutil.rmtree(env_path)
    (env_path.parent / "other").mkdir()  # the freed inode is not handed straight back
    env_path.mkdir()
    cached_closure(str(env_path), "2.8.0", nix.closure)
    assert nix.calls == 2


@pytest.mark.parametrize("change", ["nix version", "NIX_REMOTE", "NIX_CONFIG"])
def test_another_nix_or_store_is_asked(env_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    nix = Nix()
    cached_closure(str(env_path), "2.8.0", nix.closure)
    version = "2.18.1" if change == "nix version" else "2.8.0"
    if change != "nix version":
        monkeypatch.setenv(change, "daemon" if change == "NIX_REMOTE" else "store = /other")
    cached_closure(str(env_path), version, nix.closure)
    assert nix.calls == 2


def test_a_path_that_is_not_there_is_never_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    nix = Nix()
    for _ in range(2):
        cached_closure(str(tmp_path / "gone"), "2.8.0", nix.closure)
    assert nix.calls == 2 and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", [b"", b"{not json\n", None])
def test_a_damaged_or_edited_cache_is_asked_again(env_path: Path, damage: bytes | None) -> None:
    nix = Nix()
    cached_closure(str(env_path), "2.8.0", nix.closure)
    cache = closures.cache_file(str(env_path))
    if damage is None:  # a NAR hash changed, the checksum left as it was
        text = cache.read_bytes()
        info = parse_path_info(NIX_JSON.read_text())[0][0]
        cache.write_bytes(text.replace(info.narHash.encode(), b"sha256-" + b"A" * 43 + b"=", 1))
    else:
        cache.write_bytes(damage)
    assert cached_closure(str(env_path), "2.8.0", nix.closure) == nix.closure()
    assert nix.calls == 3


def test_an_unwritable_cache_only_costs_the_nix_call(env_path: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file where the directory goes
    nix = Nix()
    assert cached_closure(str(env_path), "2.8.0", nix.closure) == nix.closure()


def test_a_record_of_a_cached_closure_is_the_record_of_nixs_answer(env_path: Path) -> None:
    """Byte for byte, so that record_sha256 is the same however the closure was found."""
    nix = Nix()
    answer = nix.closure()
    cached_closure(str(env_path), "2.8.0", nix.closure)
    kept = cached_closure(str(env_path), "2.8.0", nix.closure)
    base = minimal_record()

    def record(paths: list[StorePathInfo]) -> RunRecord:
        return base.replace(environment=codec.replace(base.environment, closure=paths,
                                                      closure_hash=answer.hash))

    plain, cached = record(list(answer.paths)), record(kept.store_paths())
    assert record_file_bytes(cached.to_dict()) == record_file_bytes(plain.to_dict())
    assert cached.to_dict()["record_sha256"] == plain.to_dict()["record_sha256"]
    assert json.loads(cached.to_json()) == json.loads(plain.to_json())
    assert RunRecord.from_dict(json.loads(cached.to_json())) == RunRecord.from_dict(plain.to_dict())
    assert os.path.getsize(closures.cache_file(str(env_path))) > 0


def test_the_cache_keeps_the_closures_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(closures, "CACHE_KEEP", 3)
    nix = Nix()
    paths = []
    for i in range(5):
        path = tmp_path / "store" / f"{i:032d}-env"
        path.mkdir(parents=True)
        paths.append(path)
        cached_closure(str(path), "2.8.0", nix.closure)
        cache = closures.cache_file(str(path))
        os.utime(cache, ns=(i * 10**9, i * 10**9))  # written in this order
    kept = sorted(p.name for p in cache.parent.iterdir() if not p.name.startswith("."))
    assert kept == sorted(closures.cache_file(str(p)).name for p in paths[-3:])
