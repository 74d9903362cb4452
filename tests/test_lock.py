"""nixrepro.lock: flake.lock read from the file itself, on real locks of public flakes.

Expected values are read from the lock JSON in the tests, or written out by hand from reading the
lock files (tests/fixtures/flake-locks/README.md names their repositories).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixrepro.lock import FlakeLock, LockError

LOCKS = Path(__file__).parent / "fixtures" / "flake-locks"
ALL_LOCKS = sorted(LOCKS.glob("*.lock"))
DEVENV_OLD = LOCKS / "devenv-2026-03-19-0eb0c26f.lock"  # 35 nodes
DEVENV_NEW = LOCKS / "devenv-2026-08-14-44614f75.lock"  # 13 nodes


def lock_json(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_bytes())
    return doc


def walk(doc: dict[str, Any], input_path: str) -> str:
    """The node an input path leads to, following Nix's rules (follows lists start at the root)."""
    node: str = doc["root"]
    for name in input_path.split("/"):
        edge = doc["nodes"][node]["inputs"][name]
        node = edge if isinstance(edge, str) else walk(doc, "/".join(edge))
    return node


def test_there_are_real_locks_to_test() -> None:
    assert len(ALL_LOCKS) == 13


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_every_real_lock_parses_with_one_input_per_locked_node(path: Path) -> None:
    doc = lock_json(path)
    lock = FlakeLock.read(path)

    assert lock.version == doc["version"] == 7
    nodes = [inp.node for inp in lock.inputs.values()]
    assert len(nodes) == len(set(nodes)), "a node is recorded under two input paths"
    assert set(nodes) == set(doc["nodes"]) - {doc["root"]}


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_lock_sha256_is_the_sha256_of_the_file_bytes(path: Path) -> None:
    assert FlakeLock.read(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_each_input_key_is_an_input_path_leading_to_its_node(path: Path) -> None:
    doc = lock_json(path)
    for key, locked in FlakeLock.read(path).inputs.items():
        assert walk(doc, key) == locked.node, key


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_locked_values_are_those_of_the_lock(path: Path) -> None:
    nodes = lock_json(path)["nodes"]
    for key, inp in FlakeLock.read(path).inputs.items():
        locked = nodes[inp.node]["locked"]
        assert inp.type == locked["type"], key
        assert inp.rev == locked.get("rev"), key
        assert inp.narHash == locked["narHash"], key
        assert inp.lastModified == locked["lastModified"], key
        assert inp.flake == nodes[inp.node].get("flake", True), key


def test_github_inputs_record_owner_repo_rev_and_a_github_url() -> None:
    nodes = lock_json(DEVENV_NEW)["nodes"]
    inputs = FlakeLock.read(DEVENV_NEW).inputs
    github = {key: inp for key, inp in inputs.items() if inp.type == "github"}
    assert len(github) == 12
    for key, inp in github.items():
        locked = nodes[inp.node]["locked"]
        assert inp.url == f"github:{locked['owner']}/{locked['repo']}/{locked['rev']}", key
        assert (inp.owner, inp.repo, inp.rev) == (locked["owner"], locked["repo"], locked["rev"]), key
        assert (inp.narHash, inp.lastModified) == (locked["narHash"], locked["lastModified"]), key


def test_one_github_input_written_out() -> None:
    treefmt = FlakeLock.read(DEVENV_NEW).inputs["nixd/treefmt-nix"]
    assert treefmt.url == "github:numtide/treefmt-nix/db947814a175b7ca6ded66e21383d938df01c227"
    assert treefmt.narHash == "sha256-eynAfOmbmxJnkp7YewvCEbShNnnYJ9gLLqkzsYtBPeM="
    assert treefmt.lastModified == 1780220602
    assert treefmt.flake is True


def test_original_ref_is_kept() -> None:
    inputs = FlakeLock.read(DEVENV_NEW).inputs
    assert inputs["cachix"].ref == "latest"
    assert inputs["nix"].ref == "devenv-2.34"
    assert inputs["nixpkgs"].ref == "rolling"
    assert inputs["rust-overlay"].ref is None


# --- keys: shortest input path from the root ---------------------------------------------------


def test_devenv_inputs_are_keyed_by_input_path_not_node_name() -> None:
    # Read from the lock by hand: root has ten inputs, nixd brings treefmt-nix, nixpkgs brings
    # nixpkgs-src; every other input of every node follows one of root's inputs (or nothing).
    inputs = FlakeLock.read(DEVENV_NEW).inputs
    assert set(inputs) == {
        "cachix", "crate2nix", "flake-compat", "flake-parts", "ghostty", "git-hooks", "nix", "nixd",
        "nixpkgs", "rust-overlay", "nixd/treefmt-nix", "nixpkgs/nixpkgs-src",
    }


def test_an_input_reached_via_follows_is_not_duplicated() -> None:
    inputs = FlakeLock.read(DEVENV_NEW).inputs
    # cachix's, git-hooks' and nix's nixpkgs follow root's nixpkgs; treefmt-nix's follows
    # ["nixd", "nixpkgs"], itself a follows of root's nixpkgs.
    for followed in ("cachix/nixpkgs", "git-hooks/nixpkgs", "nix/nixpkgs", "nix/git-hooks-nix",
                     "nixd/treefmt-nix/nixpkgs", "flake-parts/nixpkgs-lib"):
        assert followed not in inputs
    assert inputs["nixpkgs"].node == "nixpkgs"


def test_an_empty_follows_list_follows_nothing() -> None:
    # cachix: "devenv": [];  nix: "nixpkgs-23-11": [], "nixpkgs-regression": []
    inputs = FlakeLock.read(DEVENV_NEW).inputs
    assert "cachix/devenv" not in inputs
    assert "nix/nixpkgs-23-11" not in inputs
    assert "nix/nixpkgs-regression" not in inputs


def test_deep_devenv_lock_keys_nodes_at_their_shortest_path() -> None:
    inputs = FlakeLock.read(DEVENV_OLD).inputs
    by_node = {inp.node: key for key, inp in inputs.items()}
    # Node names renumbered by nix (nixpkgs_4, git-hooks_3) map back to root's input names.
    assert by_node["nixpkgs_4"] == "nixpkgs"
    assert by_node["git-hooks_3"] == "git-hooks"
    assert by_node["gitignore_5"] == "git-hooks/gitignore"
    # gitignore_2 is only an input of git-hooks_2, itself four levels down.
    assert by_node["gitignore_2"] == "crate2nix/crate2nix_stable/cachix/git-hooks/gitignore"
    # crate2nix_stable's own crate2nix_stable input follows itself: recorded once.
    assert by_node["crate2nix_stable"] == "crate2nix/crate2nix_stable"
    # cachix_2.devenv follows ["crate2nix"]: not a second copy of crate2nix.
    assert "crate2nix/cachix/devenv" not in inputs
    assert by_node["crate2nix"] == "crate2nix"


def test_flake_false_inputs_are_recorded_as_non_flakes() -> None:
    inputs = FlakeLock.read(DEVENV_NEW).inputs
    assert {key for key, inp in inputs.items() if not inp.flake} == {
        "crate2nix", "flake-compat", "ghostty", "nixpkgs/nixpkgs-src",
    }
    assert inputs["ghostty"].url == "github:ghostty-org/ghostty/88b4cd047fa627cdca6781bc7e7dc8b75a2cecb9"


def test_tarball_inputs_record_the_locked_url() -> None:
    nodes = lock_json(DEVENV_OLD)["nodes"]
    tarball = FlakeLock.read(DEVENV_OLD).inputs["crate2nix/flake-compat"]
    assert tarball.type == "tarball"
    assert tarball.url == nodes["flake-compat_2"]["locked"]["url"]
    assert tarball.url.startswith("https://api.flakehub.com/f/pinned/edolstra/flake-compat/")


def test_keys_stay_stable_when_nix_renumbers_nodes_between_revisions() -> None:
    # cudalearning's nixpkgs input is node "nixpkgs_2"; the key is still "nixpkgs" in every revision.
    revisions = sorted(LOCKS.glob("cudalearning-*.lock"))
    assert len(revisions) == 4
    for path in revisions:
        inputs = FlakeLock.read(path).inputs
        assert inputs["nixpkgs"].node == lock_json(path)["nodes"]["root"]["inputs"]["nixpkgs"]
        assert set(inputs) == set(FlakeLock.read(revisions[0]).inputs)


def test_inputs_added_and_removed_over_three_years() -> None:
    old = FlakeLock.read(LOCKS / "nixified-ai-2023-02-11-5615f11.lock").inputs
    new = FlakeLock.read(LOCKS / "nixified-ai-2026-06-28-a3bd3e9.lock").inputs
    assert set(old) - set(new) == {"invokeai-src"}
    assert "hercules-ci-effects" in set(new) - set(old)
    assert old["invokeai-src"].flake is False


# --- purity -----------------------------------------------------------------------------------


def test_reading_a_lock_needs_no_nix_and_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")

    def no_processes(*args: object, **kwargs: object) -> None:
        raise AssertionError("reading a flake.lock started a process")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    lock = FlakeLock.read(DEVENV_OLD)
    assert len(lock.inputs) == 34


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 8, "7", None])
def test_unknown_lock_version_names_the_file_and_says_relock(tmp_path: Path, version: object) -> None:
    doc = lock_json(LOCKS / "mlprojects-2026-04-15-bfbced8.lock")
    doc["version"] = version
    path = tmp_path / "flake.lock"
    path.write_text(json.dumps(doc))

    with pytest.raises(LockError) as caught:
        FlakeLock.read(path)

    message = str(caught.value)
    assert str(path) in message
    message = message.replace(str(path), "FILE")
    assert f"lock version {version!r}" in message
    assert "relock" in message


@pytest.mark.parametrize("data", [b"{\n  \"nodes\": {", b"", b"\xff\xfe\x00not utf-8"])
def test_invalid_json_names_the_file_and_says_relock(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "flake.lock"
    path.write_bytes(data)

    with pytest.raises(LockError) as caught:
        FlakeLock.read(path)

    message = str(caught.value)
    assert str(path) in message
    message = message.replace(str(path), "FILE")
    assert "not valid JSON" in message
    assert "nix flake lock" in message


def test_a_lock_without_nodes_says_nodes_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "flake.lock"
    path.write_text('{"root": "root", "version": 7}')
    with pytest.raises(LockError) as caught:
        FlakeLock.read(path)
    assert "nodes" in str(caught.value).replace(str(path), "FILE")
