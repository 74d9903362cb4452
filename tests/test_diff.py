"""`nixrepro diff`: package grouping as nix does it, real flake.lock revisions, real runs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from nixrepro.closure import StorePathInfo, closure_hash
from nixrepro.diff import diff_closures, diff_inputs, diff_runs, split_store_name, to_json
from nixrepro.diffview import render_text
from nixrepro.lock import FlakeLock
from nixrepro.record import CudaInfo, RunRecord, record_sha256
from tests.helpers import Project, set_env, sh

LOCKS = Path(__file__).parent / "fixtures" / "flake-locks"
H1 = "sha256-" + "A" * 43 + "="
H2 = "sha256-" + "B" * 42 + "A="  # a canonical base64 SHA-256 (last 2 bits zero)


def info(hash32: str, name: str, nar_hash: str = H1, size: int = 1000) -> StorePathInfo:
    return StorePathInfo(f"/nix/store/{hash32 * 32}-{name}", nar_hash, size)


# --- grouping store names like `nix store diff-closures` ------------------------------------------


@pytest.mark.parametrize(("store_name", "expected"), [
    ("python3-3.11.9", ("python3", "3.11.9")),
    ("python3-3.11.9-dev", ("python3", "3.11.9")),  # an output suffix is not part of the version
    ("gcc-12.3.0-lib", ("gcc", "12.3.0")),
    ("glibc-2.38-27-bin", ("glibc", "2.38-27")),
    ("nss-cacert-3.95", ("nss-cacert", "3.95")),
    ("source", ("source", "")),
    ("hello-world", ("hello", "")),  # nix takes "-world" for an output name too
    ("extra-0-exp4lbl", ("extra", "0-exp4lbl")),
    ("cuda_cudart-12.4.127", ("cuda_cudart", "12.4.127")),
])
def test_store_names_split_like_nix(store_name: str, expected: tuple[str, str]) -> None:
    assert split_store_name(store_name) == expected


def test_closure_changes_versions_additions_removals_rebuilds_and_bits() -> None:
    old = [info("a", "python3-3.11.9", size=100), info("b", "numpy-1.26.4", size=50),
           info("c", "zlib-1.3", size=10), info("d", "openssl-3.0.13", size=7),
           info("e", "glibc-2.38-27", H1, 30)]
    new = [info("f", "python3-3.12.4", size=120), info("b", "numpy-1.26.4", size=50),
           info("g", "torch-2.3.0", size=900), info("h", "openssl-3.0.13", size=7),
           info("e", "glibc-2.38-27", H2, 30)]
    packages, rebuilt, bits = diff_closures(old, new)
    assert [(p.name, p.status, p.old_versions, p.new_versions, p.size_delta) for p in packages] == [
        ("python3", "changed", ["3.11.9"], ["3.12.4"], 20),
        ("torch", "added", [], ["2.3.0"], 900),
        ("zlib", "removed", ["1.3"], [], -10),
    ]
    assert [(r.name, r.version, r.reason) for r in rebuilt] == [
        ("glibc", "2.38-27", "same store path, different NAR hash"),
        ("openssl", "3.0.13", "different store path"),
    ]
    assert [(b.path, b.old_nar_hash, b.new_nar_hash) for b in bits] == [(old[4].path, H1, H2)]


# --- flake inputs on real flake.lock revisions ----------------------------------------------------


def _locked(lock_file: str, root_input: str) -> dict[str, Any]:
    """The locked attributes of a root input, read straight from the file."""
    doc = json.loads((LOCKS / lock_file).read_text())
    node = doc["nodes"][doc["root"]]["inputs"][root_input]
    return dict(doc["nodes"][node]["locked"])


def test_inputs_of_real_lock_revisions_nixified_ai_2023_to_2025() -> None:
    old_file, new_file = "nixified-ai-2023-02-11-5615f11.lock", "nixified-ai-2025-09-06-8145f26.lock"
    old = FlakeLock.parse((LOCKS / old_file).read_bytes()).inputs
    new = FlakeLock.parse((LOCKS / new_file).read_bytes()).inputs
    changes = {c.name: c for c in diff_inputs(old, new)}
    assert changes["invokeai-src"].status == "removed"
    assert changes["hercules-ci-effects"].status == "added"
    parts = {c.field: (c.old, c.new) for c in changes["flake-parts"].changes}
    before, after = _locked(old_file, "flake-parts"), _locked(new_file, "flake-parts")
    for key in ("rev", "narHash", "lastModified"):
        assert parts[key] == (before[key], after[key])
    assert "url" in parts  # the url carries the rev for github inputs


def test_inputs_of_real_lock_revisions_devenv_follows_and_new_inputs() -> None:
    old_file, new_file = "devenv-2026-03-19-0eb0c26f.lock", "devenv-2026-08-14-44614f75.lock"
    old = FlakeLock.parse((LOCKS / old_file).read_bytes()).inputs
    new = FlakeLock.parse((LOCKS / new_file).read_bytes()).inputs
    changes = {c.name: c for c in diff_inputs(old, new)}
    assert changes["ghostty"].status == "added"
    assert changes["ghostty"].url.startswith("github:ghostty-org/ghostty/")
    nixpkgs = {c.field: (c.old, c.new) for c in changes["nixpkgs"].changes}
    assert nixpkgs["rev"] == (_locked(old_file, "nixpkgs")["rev"], _locked(new_file, "nixpkgs")["rev"])
    gh = "github:{owner}/{repo}/{rev}"
    assert nixpkgs["url"] == (gh.format(**_locked(old_file, "nixpkgs")),
                              gh.format(**_locked(new_file, "nixpkgs")))
    assert nixpkgs["lastModified"] == (_locked(old_file, "nixpkgs")["lastModified"],
                                       _locked(new_file, "nixpkgs")["lastModified"])
    unchanged = [name for name in set(old) & set(new)
                 if old[name].rev == new[name].rev and old[name].narHash == new[name].narHash]
    assert unchanged and not set(unchanged) & set(changes)


# --- real runs ------------------------------------------------------------------------------------

def _record(project: Project, ref: str) -> dict[str, Any]:
    return project.record(ref)


def _run(project: Project, *args: str) -> dict[str, Any]:
    result = project.nixrepro("run", "--flake", ".#env", *args, "--", sys.executable, "train.py",
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert result.returncode == 0, result.stderr
    return _record(project, "@latest")


def _nix_diff_closures(old_env: str, new_env: str) -> set[tuple[str, str, str]]:
    """(name, old versions, new versions) of each version change that nix itself reports."""
    out = sh(["nix", "store", "diff-closures", old_env, new_env])
    found = set()
    for line in re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines():
        match = re.match(r"^(\S+): (.*?) → (.*?)(, [+-][\d.]+ KiB)?$", line)
        if match:
            found.add((match.group(1), match.group(2), match.group(3)))
    return found


def _ours(diff_json: dict[str, Any]) -> set[tuple[str, str, str]]:
    def show(versions: list[str]) -> str:
        return ", ".join(v or "ε" for v in versions) if versions else "∅"

    return {(p["name"], show(p["old_versions"]), show(p["new_versions"]))
            for p in diff_json["sections"]["environment"]["packages"]}


@pytest.mark.nix
def test_diff_of_real_runs_agrees_with_nix_diff_closures(project: Project) -> None:
    set_env(project, label="alpha", extra_paths=3, version="1.0")
    a = _run(project, "-p", "lr=0.5", "--seed", "1")
    set_env(project, label="alpha", extra_paths=2, version="1.1")
    b = _run(project, "-p", "lr=0.25", "--seed", "2")
    result = project.nixrepro("diff", a["id"][:6], "@latest", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "different"
    assert _ours(doc) == _nix_diff_closures(a["environment"]["env_path"], b["environment"]["env_path"])
    assert ("alpha", "1.0", "1.1") in _ours(doc)
    sections = doc["sections"]
    assert sections["params"]["changes"] == [{"field": "lr", "old": 0.5, "new": 0.25}]
    assert sections["seed"]["changes"] == [{"field": "seed", "old": 1, "new": 2}]
    loss = next(m for m in sections["metrics"]["metrics"] if m["name"] == "loss")
    assert loss["old"] == pytest.approx(0.5**5) and loss["new"] == pytest.approx(0.75**5)
    assert loss["delta"] == pytest.approx(0.75**5 - 0.5**5)
    assert loss["relative"] == pytest.approx((0.75**5 - 0.5**5) / 0.5**5)
    assert sections["code"]["commits_between"] == [
        sh(["git", "log", "-1", "--format=%h %s"], cwd=project.root).strip()]
    assert "flake.nix" in sections["code"]["diff_stat"]
    assert sections["inputs"]["differs"] is False and sections["host"]["differs"] is False

    text = project.nixrepro("diff", "@latest~1", "@latest")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0] == "different environment: 2 packages changed"
    assert "\x1b[" not in text.stdout  # no colour when not a terminal
    titles = [line for line in lines if line and not line.startswith((" ", "note: "))]
    assert titles[1:] == ["code", "environment", "params", "seed", "metrics"]
    # metrics differ and neither run was deterministic: the diff says so, once per run
    assert lines[-1] == ("note: neither run was recorded with --deterministic, so part of a difference "
                         "in their metrics may be chance; compare repeats (--repeat N) instead.")
    assert "alpha: 1.0 -> 1.1" in text.stdout and "lr             0.5 -> 0.25" in text.stdout
    every = project.nixrepro("diff", "@latest~1", "@latest", "--all").stdout
    assert [t for t in every.splitlines() if t and not t.startswith((" ", "note: "))][1:] == [
        "code", "flake inputs", "environment", "host", "params", "seed", "data versions",
        "metrics", "outcome"]


@pytest.mark.nix
def test_same_version_rebuilt_is_shown_where_diff_closures_shows_nothing(project: Project) -> None:
    set_env(project, label="beta", version="2.0")
    a = _run(project)
    set_env(project, label="beta", version="2.0", variant="patched")
    b = _run(project)
    assert a["environment"]["env_path"] != b["environment"]["env_path"]
    assert _nix_diff_closures(a["environment"]["env_path"], b["environment"]["env_path"]) == set()
    doc = json.loads(project.nixrepro("diff", "@latest~1", "@latest", "--json").stdout)
    assert doc["verdict"] == "different"
    rebuilt = doc["sections"]["environment"]["rebuilt"]
    assert [(r["name"], r["version"], r["reason"]) for r in rebuilt] == [
        ("beta", "2.0", "different store path")]
    text = project.nixrepro("diff", "@latest~1", "@latest").stdout
    assert "same version, rebuilt:" in text and "beta 2.0  (different store path)" in text


def _forge_run(project: Project, source: dict[str, Any], run_id: str, **changes: Any) -> None:
    """A second record of the same run as if made elsewhere (a record is just a file)."""
    doc = json.loads(json.dumps(source))
    doc.update(id=run_id, **changes)
    doc["environment"]["closure_hash"] = closure_hash(
        StorePathInfo(**p) for p in doc["environment"]["closure"])
    doc["record_sha256"] = record_sha256(doc)
    (project.runs_dir / run_id).mkdir()
    (project.runs_dir / run_id / "record.json").write_text(json.dumps(doc))


@pytest.mark.nix
def test_verdicts_identical_and_same_recipe_different_bits(project: Project) -> None:
    a = _run(project)
    _run(project)
    text = project.nixrepro("diff", "@latest~1", "@latest").stdout
    assert text.splitlines()[0].startswith("identical environment (closure ")
    forged = json.loads(json.dumps(a))
    env_entry = next(p for p in forged["environment"]["closure"]
                     if p["path"] == a["environment"]["env_path"])
    env_entry["narHash"] = H2
    _forge_run(project, forged, "ffff00000000")
    doc = json.loads(project.nixrepro("diff", a["id"], "ffff00", "--json").stdout)
    assert doc["verdict"] == "same-recipe-different-bits"
    assert doc["sections"]["environment"]["different_bits"] == [
        {"path": a["environment"]["env_path"],
         "old_nar_hash": next(p["narHash"] for p in a["environment"]["closure"]
                              if p["path"] == a["environment"]["env_path"]),
         "new_nar_hash": H2}]
    text = project.nixrepro("diff", a["id"], "ffff00").stdout
    assert text.splitlines()[0] == (
        f"same recipe but different bits: the same {len(a['environment']['closure'])} store paths, "
        "1 with different contents (a non-reproducible build or tampering)")


@pytest.mark.nix
def test_diff_needs_only_the_records_not_nix_nor_the_store(project: Project, tmp_path: Path) -> None:
    a = _run(project)
    gone = json.loads(json.dumps(a))
    for entry in gone["environment"]["closure"]:
        path = entry["path"]  # another hash: a path this store never had
        entry["path"] = path[:11] + ("0" if path[11] != "0" else "1") + path[12:]
    gone["code"]["commit"] = "0" * 40  # a commit this repository does not have
    _forge_run(project, gone, "eeee00000000", host={**a["host"], "kernel": "9.9.9-test"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(sh(["sh", "-c", "command -v git"]).strip())
    result = project.nixrepro("diff", a["id"], "eeee", env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 0, result.stderr
    assert "(a commit is not in this repository: no log or diff stat)" in result.stdout
    assert f"kernel         {a['host']['kernel']} -> 9.9.9-test" in result.stdout


def test_render_and_json_from_library_calls() -> None:
    doc = json.loads((Path(__file__).parent / "fixtures" / "record-minimal.json").read_text())
    a = RunRecord.from_dict(doc)
    b = a.replace(id="b" * 12, metrics={"loss": 0.5, "acc": True}, params={"lr": 0.2},
                  exit_code=1, status="failed")
    diff = diff_runs(a, b)
    doc_json = to_json(diff)
    assert doc_json["schema"] == "nixrepro.diff/1" and doc_json["verdict"] == "identical"
    assert doc_json["sections"]["outcome"]["differs"] is True
    assert [m["name"] for m in doc_json["sections"]["metrics"]["metrics"]] == ["acc", "loss"]
    text = render_text(diff, color=True)
    assert "\x1b[32m" in text and "\x1b[31m" in text
    assert "exit_code" in render_text(diff) and "status" in render_text(diff)


def test_host_section_shows_another_libcuda_at_the_same_driver_version() -> None:
    doc = json.loads((Path(__file__).parent / "fixtures" / "record-minimal.json").read_text())
    base = RunRecord.from_dict(doc)
    cuda = CudaInfo(runtime="12.4", driver_supports="12.4", compute_capabilities=["9.0"],
                    libcuda="/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15", libcuda_sha256="a" * 64,
                    injection="LD_LIBRARY_PATH")
    a = base.replace(cuda=cuda)
    b = base.replace(id="b" * 12, cuda=dataclasses.replace(cuda, libcuda_sha256="b" * 64))
    changes = to_json(diff_runs(a, b))["sections"]["host"]["changes"]
    assert changes == [{"field": "libcuda_sha256", "old": "a" * 64, "new": "b" * 64}]
    assert "libcuda_sha256" in render_text(diff_runs(a, b))


def test_runs_that_differ_only_in_their_command_line_say_so() -> None:
    """`nix run .#experiment -- --lr 0.1` then `-- --lr 0.5`: params are empty, the argv differs."""
    doc = json.loads((Path(__file__).parent / "fixtures" / "record-minimal.json").read_text())
    a = RunRecord.from_dict(doc)
    b = a.replace(command=dataclasses.replace(a.command, argv=[*a.command.argv, "--lr", "0.5"]))
    diff = diff_runs(a, b)
    [change] = diff.code.changes
    assert change.field == "command" and change.new.endswith(" --lr 0.5")
    assert diff.differs("code") and "--lr 0.5" in render_text(diff, color=False)
    assert not diff_runs(a, a).differs("code")
