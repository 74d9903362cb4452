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

from nixrepro.lock import FlakeLock, LockedInput, LockError

LOCKS = Path(__file__).parent / "fixtures" / "flake-locks"
ALL_LOCKS = sorted(LOCKS.glob("*.lock"))
DEVENV_OLD = LOCKS / "devenv-2026-03-19-0eb0c26f.lock"  # 35 nodes
DEVENV_NEW = LOCKS / "devenv-2026-08-14-44614f75.lock"  # 13 nodes


def lock_json(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_bytes())
    return doc


def walk(doc: dict[str, Any], input_path: str, seen: tuple[str, ...] = ()) -> str:
    """The node an input path leads to, following Nix's rules (follows lists start at the root;
    a follows path met twice is a cycle, which Nix reports when the input is evaluated)."""
    if input_path in seen:
        raise RecursionError(input_path)
    node: str = doc["root"]
    for name in input_path.split("/"):
        edge = doc["nodes"][node]["inputs"][name]
        node = edge if isinstance(edge, str) else walk(doc, "/".join(edge), (*seen, input_path))
    return node


def locked_attrs(doc: dict[str, Any], node: str) -> dict[str, Any]:
    """A node's locked attributes as Nix reads them: version 5's "info" merged in."""
    return {**doc["nodes"][node]["locked"], **doc["nodes"][node].get("info", {})}


def test_there_are_real_locks_to_test() -> None:
    assert len(ALL_LOCKS) >= 34  # 13 from the first table of the README, 21 from the second
    assert {lock_json(p)["version"] for p in ALL_LOCKS} == {5, 6, 7}


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_every_root_input_of_a_real_lock_is_recorded_under_its_own_name(path: Path) -> None:
    doc = lock_json(path)
    lock = FlakeLock.read(path)
    assert lock.version == doc["version"]
    for name, edge in doc["nodes"][doc["root"]]["inputs"].items():
        if edge == []:  # follows "": the root flake itself
            assert name not in lock.inputs
            continue
        recorded = lock.inputs[name]
        try:
            node = walk(doc, name)
        except RecursionError:  # a follows cycle: named, marked unlocked, nothing pinned
            assert (recorded.type, recorded.locked, recorded.rev) == ("follows", False, None), name
            continue
        locked = locked_attrs(doc, node)
        assert recorded.node == node, name
        assert (recorded.type, recorded.rev, recorded.narHash) == (
            locked["type"], locked.get("rev"), locked.get("narHash")), name
        assert recorded.follows == ("/".join(edge) if isinstance(edge, list) else None), name
        assert recorded.flake == doc["nodes"][node].get("flake", True), name


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_every_real_lock_records_each_other_node_once(path: Path) -> None:
    doc = lock_json(path)
    lock = FlakeLock.read(path)
    roots = set(doc["nodes"][doc["root"]]["inputs"])
    nested = [inp.node for key, inp in lock.inputs.items() if key not in roots]
    assert len(nested) == len(set(nested)), "a node is recorded under two input paths"
    root_nodes = {inp.node for key, inp in lock.inputs.items() if key in roots}
    assert not set(nested) & root_nodes
    reachable = set(nested) | {n for n in root_nodes if n in doc["nodes"]}
    assert reachable <= set(doc["nodes"]) - {doc["root"]}


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_lock_sha256_is_the_sha256_of_the_file_bytes(path: Path) -> None:
    assert FlakeLock.read(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_each_input_key_is_an_input_path_leading_to_its_node(path: Path) -> None:
    doc = lock_json(path)
    for key, locked in FlakeLock.read(path).inputs.items():
        if locked.type != "follows":
            assert walk(doc, key) == locked.node, key


@pytest.mark.parametrize("path", ALL_LOCKS, ids=lambda p: p.name)
def test_locked_values_are_those_of_the_lock(path: Path) -> None:
    doc = lock_json(path)
    for key, inp in FlakeLock.read(path).inputs.items():
        if inp.type == "follows":
            continue
        locked = locked_attrs(doc, inp.node)
        assert inp.type == locked["type"], key
        assert inp.rev == locked.get("rev"), key
        assert inp.narHash == locked.get("narHash"), key
        assert inp.lastModified == locked.get("lastModified"), key
        assert inp.flake == doc["nodes"][inp.node].get("flake", True), key


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
    assert (treefmt.locked, treefmt.local, treefmt.pinned) == (True, False, True)


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


def test_an_empty_follows_list_is_the_root_flake_not_an_input() -> None:
    # Nix resolves [] to the root node (call-flake.nix, getInputByPath root []).
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


# --- what real locks hold that naive parsers lose (tests/fixtures/flake-locks/FEATURES.md) ------


def real(name: str) -> dict[str, LockedInput]:
    return FlakeLock.read(LOCKS / name).inputs


def test_a_root_input_following_another_root_input_keeps_its_name_and_nixpkgs_rev() -> None:
    doc = lock_json(LOCKS / "divnix-digga-fe73d2a0.lock")  # root: "nixpkgs": ["nixos"]
    inputs = real("divnix-digga-fe73d2a0.lock")
    nixos = doc["nodes"][doc["nodes"]["root"]["inputs"]["nixos"]]["locked"]
    assert inputs["nixpkgs"].follows == "nixos"
    assert inputs["nixpkgs"].node == inputs["nixos"].node
    assert inputs["nixpkgs"].rev == nixos["rev"] == inputs["nixos"].rev
    # deeper: hydra's root nixpkgs follows ["nix", "nixpkgs"]; hasktorch's a path through haskell-nix
    assert real("nixos-hydra-5c01800f.lock")["nixpkgs"].follows == "nix/nixpkgs"
    hasktorch = real("hasktorch-hasktorch-fa348266.lock")["nixpkgs"]
    assert (hasktorch.follows, hasktorch.rev) == ("haskell-nix/nixpkgs-2305",
                                                  "d2332963662edffacfddfad59ff4f709dde80ffe")


def test_the_nixpkgs_rev_that_wandb_and_diff_read_survives_a_root_follows() -> None:
    import dataclasses

    from nixrepro.record import RunRecord
    from nixrepro.trackers.wandb import nixpkgs_rev

    record = json.loads((Path(__file__).parent / "fixtures" / "record-minimal.json").read_text())
    base = RunRecord.from_dict(record)
    inputs = real("mordragt-nixos-f5c17f94.lock")  # "nixpkgs": ["cosmic", "nixpkgs"]
    run = base.replace(environment=dataclasses.replace(base.environment, inputs=inputs))
    assert nixpkgs_rev(run) == "2c8d3f48d33929642c1c12cd243df4cc7d2ce434"


def test_a_follows_cycle_is_named_and_marked_unlocked_not_dropped() -> None:
    # digga at 6151d02b: root "nixos" follows ["digga", "nixpkgs"], digga's nixpkgs follows
    # ["nixos"]. Nix loads the lock and fails only if such an input is evaluated.
    inputs = real("divnix-digga-6151d02b.lock")
    for name in ("nixos", "nixpkgs"):
        assert (inputs[name].type, inputs[name].locked, inputs[name].pinned) == ("follows", False, False)
        assert "cycle" in inputs[name].node
    assert inputs["nixpkgs"].url == "follows:nixos"
    assert inputs["agenix"].locked is True  # the rest is read as usual


def test_gitlab_on_another_host_keeps_the_host() -> None:
    wlroots = real("hyprwm-hyprland-3d64b0e9.lock")["wlroots"]
    assert wlroots.url == ("gitlab:wlroots/wlroots/50eae512d9cecbf0b3b1898bb1f0b40fa05fe19b"
                           "?host=gitlab.freedesktop.org")


def test_the_url_keeps_every_attribute_that_changes_what_is_fetched() -> None:
    umu = real("misterio77-nix-config-7e93f8e3.lock")["nix-gaming/umu"]  # dir twice: url and attr
    assert umu.url == ("git+https://github.com/Open-Wine-Components/umu-launcher/?dir=packaging/nix"
                       "&ref=refs/heads/main&rev=e9cb4d764013d4c8c3d1166f59581da8f56a3d83&submodules=1")
    assert "?lfs=1&ref=main&rev=" in real("canozokur-nixos-config-bb9c3633.lock")["nix-secrets"].url
    assert "?allRefs=1&ref=main&rev=" in real("xhos-nix-5d46f997.lock")["nix-secrets"].url
    assert real("fufexan-dotfiles-09a53755.lock")["kmonad"].url.endswith("?dir=nix")
    hg = real("dermetfan-garnix-05050ab8.lock")["dermetfan-blog"]
    assert hg.url.startswith("hg+https://hg@hg.sr.ht/~dermetfan/dermetfan-blog?ref=default&rev=")
    sourcehut = [i for i in real("dermetfan-garnix-05050ab8.lock").values() if i.type == "sourcehut"]
    assert sourcehut and all(i.url.startswith("sourcehut:~") for i in sourcehut)


def test_version_5_info_is_merged_into_locked() -> None:
    doc = lock_json(LOCKS / "nixos-nix-4ba4c7ff.lock")
    node = doc["nodes"]["nixpkgs"]
    assert "narHash" not in node["locked"] and "narHash" in node["info"]
    nixpkgs = real("nixos-nix-4ba4c7ff.lock")["nixpkgs"]
    assert nixpkgs.narHash == node["info"]["narHash"]
    assert nixpkgs.locked is True  # a github rev *and* the narHash from info


def test_unlocked_and_local_inputs_are_marked_as_such() -> None:
    nixvim = real("simon-wg-nixos-b71b9d63.lock")["nixvim"]  # path:./nixvim with a parent
    assert (nixvim.url, nixvim.locked, nixvim.local, nixvim.pinned) == ("path:./nixvim", False, True, False)
    matugen = real("fufexan-dotfiles-09a53755.lock")["matugen"]  # a dirty git+file: dirtyRev, no rev
    assert (matugen.locked, matugen.local) == (False, True)
    store = real("tweag-jupyenv-b6e691fc.lock")["jupyenv"]  # an absolute path with a narHash
    assert (store.locked, store.local, store.pinned) == (True, True, False)


def test_flake_false_is_part_of_an_input_s_identity_in_diff() -> None:
    import dataclasses

    from nixrepro.diff import diff_inputs

    old = real("devenv-2026-08-14-44614f75.lock")
    new = {**old, "ghostty": dataclasses.replace(old["ghostty"], flake=True)}
    [change] = diff_inputs(old, new)
    assert change.name == "ghostty" and [(c.field, c.old, c.new) for c in change.changes] == [
        ("flake", False, True)]


# --- bad locks: one sentence naming the file and the problem --------------------------------------


def bad_lock(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "flake.lock"
    path.write_text(json.dumps(doc))
    with pytest.raises(LockError) as caught:
        FlakeLock.read(path)
    message = str(caught.value)
    assert message.startswith(f"{path} ") and message.count(". ") == 0 and message.endswith(".")
    return message.replace(str(path), "FILE")


def test_a_dangling_node_is_refused(tmp_path: Path) -> None:
    doc = {"version": 7, "root": "root", "nodes": {"root": {"inputs": {"nixpkgs": "nixpkgs_9"}}}}
    assert bad_lock(tmp_path, doc) == (
        "FILE is malformed: it references the missing node 'nixpkgs_9'; regenerate it with "
        "`nix flake lock`.")


def test_an_edge_back_to_the_root_is_refused(tmp_path: Path) -> None:
    doc = lock_json(LOCKS / "mlprojects-2026-04-15-bfbced8.lock")
    first = next(iter(doc["nodes"]["root"]["inputs"].values()))
    doc["nodes"][first]["inputs"] = {"self": "root"}
    assert "leads back to the root node" in bad_lock(tmp_path, doc)


def test_a_missing_version_is_version_0_as_for_nix(tmp_path: Path) -> None:
    doc = lock_json(LOCKS / "mlprojects-2026-04-15-bfbced8.lock")
    del doc["version"]
    assert "has lock version 0, which Nix and nixrepro do not read" in bad_lock(tmp_path, doc)


@pytest.mark.parametrize("doc", [[1, 2], {"version": 7, "root": "r", "nodes": {}},
                                 {"version": 7, "root": "root", "nodes": {"root": {"inputs": []}}}],
                         ids=["a list", "no root node", "inputs not an object"])
def test_a_malformed_lock_is_one_sentence(tmp_path: Path, doc: object) -> None:
    assert "nix flake lock" in bad_lock(tmp_path, doc)
