"""Nix.closure and Nix.path_infos on nix's JSON, the --json-format they ask for, and the README's
recomputation of the closure hash, run as written: on the real nix of this machine, and (through
its jq program) on every other version's JSON from tests/fixtures/nix-json.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nixrepro.closure import Closure, PathInfoParseError, json_format_args, parse_path_info
from nixrepro.errors import RefusedError
from nixrepro.nix import Nix
from tests.test_closure import (
    BAR,
    FOO,
    FOO_BASE,
    MISSING,
    MISSING_BASE,
    envelope,
    fixture_json,
    fixture_text,
    per_path_sample,
)

ROOT = Path(__file__).parent.parent


# --- which --json-format nixrepro asks for, and Nix.closure / path_infos -----------------------


@pytest.mark.parametrize(
    ("version", "args"),
    [
        ("2.8.0", []),
        ("2.18.1", []),
        ("2.32.4", []),
        ("2.33.0pre20251101_abcdef0", []),  # 2.33's own pre-releases may predate the flag
        ("2.33.0", ["--json-format", "2"]),
        ("2.33.6", ["--json-format", "2"]),
        ("2.34.0pre20260101_dirty", ["--json-format", "2"]),
        ("2.35.2", ["--json-format", "2"]),
        ("3.0.0", ["--json-format", "2"]),
        ("2.91.1", []),  # Lix: numbered from 2.90, forked before the flag, rejects it
        (None, []),
        ("", []),
        ("unknown", []),
    ],
)
def test_json_format_is_asked_for_from_nix_2_33_on(version: str | None, args: list[str]) -> None:
    assert json_format_args(version) == args


def fake_nix(tmp_path: Path, stdout: str) -> tuple[Nix, Path]:
    """A ``nix`` that prints ``stdout`` and writes its arguments, one a line, to the returned file."""
    (tmp_path / "out").write_text(stdout)
    args = tmp_path / "args"
    script = tmp_path / "nix"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {args}\ncat {tmp_path / "out"}\n')
    script.chmod(0o755)
    return Nix(executable=str(script)), args


@pytest.mark.parametrize(
    ("banner", "version"),
    [
        ("nix (Nix) 2.8.0", "2.8.0"),
        ("nix (Nix) 2.24.0pre20240527_dirty", "2.24.0pre20240527_dirty"),
        ("nix (Determinate Nix 3.4.1) 2.28.2", "2.28.2"),  # the distribution's own number first
        ("nix (Lix, like Nix) 2.91.1", "2.91.1"),
    ],
)
def test_version_is_the_nix_version_even_when_a_distribution_names_its_own(
        tmp_path: Path, banner: str, version: str) -> None:
    nix, _ = fake_nix(tmp_path, banner + "\n")
    assert nix.version() == version


def test_closure_passes_json_format_2_to_nix_2_33_and_reads_its_envelope(tmp_path: Path) -> None:
    nix, args = fake_nix(tmp_path, envelope(2, {FOO_BASE: per_path_sample(2, "impure")}))
    closure = nix.closure(FOO, nix_version="2.33.0")
    assert args.read_text().split("\n")[-4:-1] == ["--json-format", "2", FOO]
    assert [info.path for info in closure.paths] == [FOO]


def test_closure_without_a_version_asks_with_no_json_format(tmp_path: Path) -> None:
    nix, args = fake_nix(tmp_path, json.dumps({FOO: per_path_sample(1, "pure")}))
    assert len(nix.closure(FOO)) == 1
    assert "--json-format" not in args.read_text().split("\n")


def test_closure_refuses_an_unknown_shape_naming_the_nix_version(tmp_path: Path) -> None:
    nix, _ = fake_nix(tmp_path, json.dumps({"version": 4, "storeDir": "/nix/store", "objects": {}}))
    with pytest.raises(PathInfoParseError, match=r"of nix 2\.40\.0 printed a shape nixrepro does not know"):
        nix.closure(FOO, nix_version="2.40.0")


def test_closure_refuses_an_answer_that_leaves_out_the_env_path(tmp_path: Path) -> None:
    nix, _ = fake_nix(tmp_path, json.dumps({BAR: per_path_sample(1, "pure")}))
    with pytest.raises(RefusedError, match=rf"{FOO} is not in its own closure .*{BAR}.*; pass the store"):
        nix.closure(FOO)


def test_path_infos_refuses_an_answer_that_leaves_a_path_out(tmp_path: Path) -> None:
    # a path left out would be neither missing nor present: `verify` would pass it unseen
    nix, _ = fake_nix(tmp_path, json.dumps({FOO: per_path_sample(1, "pure")}))
    with pytest.raises(PathInfoParseError, match=rf"did not answer for {BAR} \(1 of 2 paths"):
        nix.path_infos([FOO, BAR], nix_version="2.33.1")
    assert nix.path_infos([FOO])[0][0].path == FOO


def test_path_infos_passes_json_format_and_reads_invalid_paths(tmp_path: Path) -> None:
    nix, args = fake_nix(tmp_path, envelope(2, {FOO_BASE: per_path_sample(2, "pure"), MISSING_BASE: None}))
    valid, invalid = nix.path_infos([FOO, MISSING], nix_version="2.35.0")
    assert ([info.path for info in valid], invalid) == ([FOO], [MISSING])
    assert "--json-format\n2\n" in args.read_text()


# --- the README's recomputation lines, run as written ------------------------------------------


@dataclass(frozen=True)
class RecomputeLine:
    """One line of README.md's "The closure hash" block and the Nix versions its comment names."""

    first: tuple[int, int]
    last: tuple[int, int] | None  # None: "and later"
    command: str

    def covers(self, version: tuple[int, int]) -> bool:
        return self.first <= version and (self.last is None or version <= self.last)

    @property
    def after_nix(self) -> str:
        """The pipeline after `nix path-info ... |`, to feed a fixture to (jq's program has ` | `s)."""
        return self.command[self.command.index(" | jq ") + 3:]


def readme_lines() -> list[RecomputeLine]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## The closure hash: check it without nixrepro\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README's closure hash section has no sh block"
    rows = match[1].splitlines()
    assert len(rows) % 2 == 0, rows
    lines = []
    for comment, command in zip(rows[::2], rows[1::2], strict=True):
        found = re.fullmatch(r"# nix (\d+)\.(\d+) (?:to (\d+)\.(\d+)|and later): .+", comment)
        assert found, f"README: {comment!r} does not say which nix versions the next line covers"
        assert command.startswith("nix path-info -r --json ") and command.endswith(
            " | LC_ALL=C sort | sha256sum"), command
        last = (int(found[3]), int(found[4])) if found[3] else None
        lines.append(RecomputeLine((int(found[1]), int(found[2])), last, command))
    return lines


def line_for(version: str) -> RecomputeLine:
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    (line,) = [line for line in readme_lines() if line.covers((major, minor))]
    return line


def run_sh(command: str, *, stdin: str | None = None, env_path: str | None = None) -> str:
    if shutil.which("jq") is None:
        pytest.fail("jq is not installed; `bash scripts/setup.sh --test` installs it")
    env = {**os.environ, **({"ENV": env_path} if env_path else {})}
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], input=stdin, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    digest, name = result.stdout.split()
    assert name == "-"
    return digest


def test_readme_lines_cover_every_nix_from_2_4_once_and_ask_for_what_nixrepro_asks_for() -> None:
    lines = readme_lines()
    assert lines[0].first == (2, 4)  # nixrepro needs flakes; 2.3 prints nix32 hashes (below)
    for before, after in itertools.pairwise(lines):
        assert before.last is not None and after.first == (before.last[0], before.last[1] + 1)
    assert lines[-1].last is None
    for line in lines:
        flags = "".join(f"{arg} " for arg in json_format_args(f"{line.first[0]}.{line.first[1]}.0"))
        assert line.command.startswith(f'nix path-info -r --json {flags}"$ENV" | jq -r '), line.command


def test_docs_recompute_the_closure_hash_only_with_the_readme_lines() -> None:
    commands = {line.command for line in readme_lines()}
    for doc in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "nixrepro" / "closure.py"]:
        for found in re.findall(r"nix path-info[^`\n]*sha256sum", doc.read_text()):
            assert found in commands, f"{doc.name}: {found}"


def keyed(doc: Any) -> str:
    """nix 2.19 - 2.32: the object keyed by store path, valid paths only (an env's closure)."""
    return json.dumps({path: item for path, item in doc.items() if item is not None})


def v2_from_nix28(version: int, store_dir: str) -> str:
    """The real nix 2.8 closure, as `--json-format 2|3` would print it: base names in "info"."""
    info = {}
    for entry in fixture_json("nix-2.8-recursive-output.json"):
        base = entry["path"].rsplit("/", 1)[1]
        info[base] = {"version": version, "storeDir": store_dir, "narHash": entry["narHash"],
                      "narSize": entry["narSize"], "references": [], "ca": None}
    info[FOO_BASE] = per_path_sample(version, "impure")
    return envelope(version, info, store_dir)


SHAPES = {
    "2.8.0": lambda: fixture_text("nix-2.8-recursive-output.json"),
    "2.18.1": lambda: json.dumps([  # 2.14 - 2.18 write "valid": true
        {"path": FOO, **fixture_json("nix-2.19.0-path-info-impure.json"), "valid": True},
        {"path": BAR, **fixture_json("nix-2.24.0-path-info-empty_impure.json"), "valid": True},
    ]),
    "2.19.0": lambda: keyed(fixture_json("nix-2.19-object.json")),
    "2.24.0": lambda: keyed({FOO: fixture_json("nix-2.19.0-path-info-impure.json"),
                             BAR: fixture_json("nix-2.24.0-path-info-empty_impure.json")}),
    "2.32.0": lambda: keyed({FOO: per_path_sample(1, "impure"), BAR: per_path_sample(1, "empty_pure")}),
    "2.33.0": lambda: v2_from_nix28(2, "/nix/store"),
    "2.34.0": lambda: v2_from_nix28(2, "/opt/nix/store"),
    "2.35.0": lambda: v2_from_nix28(3, "/nix/store"),  # `--json-format 3` has the same layout
}


@pytest.mark.parametrize("version", sorted(SHAPES))
def test_readme_line_on_each_versions_json_gives_nixrepros_closure_hash(version: str) -> None:
    text = SHAPES[version]()
    valid, invalid = parse_path_info(text, version)
    assert len(valid) >= 2 and invalid == []
    assert run_sh(line_for(version).after_nix, stdin=text) == Closure.of(valid).hash


def test_the_2_19_line_also_reads_nix_2_33_without_json_format() -> None:
    # 2.33+ still answer a plain --json (with a deprecation warning) in format 1
    text = keyed({FOO: per_path_sample(1, "impure"), BAR: per_path_sample(1, "pure")})
    assert run_sh(line_for("2.19.0").after_nix, stdin=text) == Closure.of(parse_path_info(text)[0]).hash


def test_nix_2_3_output_is_not_covered_by_the_list_line_because_its_hashes_are_nix32() -> None:
    text = fixture_text("fzakaria-blog-2021-ruby-cache.nixos.org.json")
    assert run_sh(line_for("2.4.0").after_nix, stdin=text) != Closure.of(parse_path_info(text)[0]).hash


# --- the real nix of this machine -----------------------------------------------------------------

SMALL_ENV = """
let dep = derivation { name = "closure-test-dep"; system = "x86_64-linux"; builder = "/bin/sh";
                       args = [ "-c" "echo dep > $out" ]; };
in derivation { name = "closure-test-env"; system = "x86_64-linux"; builder = "/bin/sh";
                PATH = "/usr/bin:/bin"; args = [ "-c" "mkdir $out; echo ${dep} > $out/dep" ]; }
"""


@pytest.fixture(scope="module")
def small_env() -> str:
    """A built store path with one dependency: a closure of two paths."""
    if shutil.which("nix") is None:
        pytest.fail("nix is not installed; the README's test command installs nix-bin")
    built = subprocess.run(["nix", "build", "--no-link", "--json", "--impure", "--expr", SMALL_ENV],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    return str(json.loads(built.stdout)[0]["outputs"]["out"])


@pytest.mark.nix
def test_readme_line_for_the_installed_nix_gives_nixrepros_closure_hash(small_env: str) -> None:
    nix = Nix()
    version = nix.version()
    closure = nix.closure(small_env, nix_version=version)
    listed = json.loads(subprocess.run(["nix", "path-info", "-r", "--json", small_env],
                                       capture_output=True, text=True, check=True).stdout)
    assert len(closure) == 2 and small_env in [info.path for info in closure.paths]
    assert closure.hash == nix.closure(small_env).hash == hashlib.sha256("".join(sorted(
        f"{entry['path']} {entry['narHash']}\n" for entry in listed)).encode()).hexdigest()
    assert run_sh(line_for(version).command, env_path=small_env) == closure.hash


@pytest.mark.nix
def test_the_installed_nix_gets_json_format_only_if_it_has_the_flag(small_env: str) -> None:
    version = Nix().version()
    with_flag = subprocess.run(["nix", "path-info", "--json", "--json-format", "2", small_env],
                               capture_output=True, text=True, check=False)
    assert (with_flag.returncode == 0) == bool(json_format_args(version)), with_flag.stderr


@pytest.mark.nix
def test_closure_refuses_a_path_inside_the_env_which_nix_answers_for_the_env(small_env: str) -> None:
    with pytest.raises(RefusedError, match=rf"{small_env}/dep is not in its own closure .*{small_env}\)"):
        Nix().closure(f"{small_env}/dep")


@pytest.mark.nix
def test_path_infos_of_the_real_store_answer_for_every_path(small_env: str) -> None:
    valid, invalid = Nix().path_infos([small_env, MISSING], nix_version=Nix().version())
    assert [info.path for info in valid] == [small_env] and invalid == [MISSING]


def test_the_nix_version_is_asked_once_per_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nix --version` costs ~20 ms a run and the closure waits for it: it is cached, keyed by the
    binary's path, size and mtime, so an upgraded nix is asked again."""
    from nixrepro.nix import Nix

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "nix"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'nix (Nix) 2.33.1'\n")
    fake.chmod(0o755)
    nix = Nix(executable=str(fake))
    assert nix.version() == nix.version() == "2.33.1"
    assert calls.read_text().count("x") == 1
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'nix (Nix) 2.34.0 upgraded'\n")
    os.utime(fake, ns=(0, 10**9))  # another binary: another size and mtime
    assert nix.version() == "2.34.0"
    assert calls.read_text().count("x") == 2


def test_a_gc_root_is_the_two_links_nix_store_add_root_indirect_writes(tmp_path: Path) -> None:
    """The run's GC root is written without a nix process, exactly as nix writes one: the collector
    lists it and will not delete the path; a removed link frees it again."""
    import hashlib

    from nixrepro.closure import nix32_encode
    from nixrepro.nix import Nix

    source = tmp_path / "payload"
    source.write_text(f"gc root test {tmp_path.name}\n")
    path = subprocess.run(["nix-store", "--add", str(source)], capture_output=True, text=True,
                          check=True).stdout.strip()
    ours, theirs = tmp_path / "run" / "gcroot", tmp_path / "nix" / "gcroot"
    Nix().add_gc_root(path, ours)
    theirs.parent.mkdir()
    subprocess.run(["nix-store", "--add-root", str(theirs), "--indirect", "--realise", path],
                   capture_output=True, check=True)
    auto = Path("/nix/var/nix/gcroots/auto")
    for link in (ours, theirs):  # nix's own link and ours have the same shape and naming
        entry = auto / nix32_encode(hashlib.sha1(str(link).encode()).digest())
        assert os.readlink(entry) == str(link) and os.readlink(link) == path
    roots = subprocess.run(["nix-store", "--gc", "--print-roots"], capture_output=True, text=True,
                           check=True).stdout
    assert f"{ours} -> {path}" in roots.splitlines()
    theirs.unlink()
    kept = subprocess.run(["nix-store", "--delete", path], capture_output=True, text=True)
    assert kept.returncode != 0 and Path(path).exists()  # our root keeps it alive
    ours.unlink()
    freed = subprocess.run(["nix-store", "--delete", path], capture_output=True, text=True)
    assert freed.returncode == 0, freed.stderr
