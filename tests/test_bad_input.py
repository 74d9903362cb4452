"""Bad input is one sentence and an exit code, never a traceback: a malformed nixrepro.toml or
[tool.nixrepro], metrics beyond a 64-bit float in a repeat group, hostile run and group refs,
flag values the commands cannot use, and what `nixrepro init` is given or finds.

Everything goes through the real CLI in a subprocess, as a user types it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nixrepro.config import load
from tests.helpers import Project, cli_in_process, git_commit, make_project, run_cli, sh

BIG = 10**400  # an integer metric no 64-bit float holds


def one_sentence(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The error line of a refused command: exit ``code``, no traceback, one ``Error:`` line."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def strict_json(text: str) -> Any:
    """JSON as jq reads it: NaN and Infinity are errors."""
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with a flake.nix (no nix needed: nothing here builds)."""
    root = tmp_path / "repo"
    root.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    (root / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    git_commit(root, "init")
    return root


# --- nixrepro.toml and [tool.nixrepro] --------------------------------------------------------------

CONFIGS: dict[str, tuple[bytes, str]] = {
    "not UTF-8": (b"[run]\nflake = '\xe9'\n", "is not UTF-8 text (byte 15 is 0xe9)"),
    "UTF-16": ("[run]\n".encode("utf-16"), "is not UTF-8 text"),
    "nested 3000 deep": (b"a = " + b"[" * 3000 + b"]" * 3000 + b"\n", "nests arrays or tables too deeply"),
    "a 5000-digit integer": (b"[run]\nverify_contents = " + b"9" * 5000 + b"\n", "value too large to read"),
    "a NUL escape in a string": (b'[run]\nflake = ".#e\\u0000nv"\n', "'run.flake' holds a NUL character"),
    "nan as a stage param": (b"[stages.a]\ncmd = 'true'\nparams = {x = nan}\n",
                             "'stages.a.params.x' must be a finite number"),
    "-inf as a stage param": (b"[stages.a]\ncmd = 'true'\nparams = {x = -inf}\n",
                              "'stages.a.params.x' must be a finite number"),
    "an unexpandable ~user cache_dir": (b"[data]\ncache_dir = '~no-such-user-here/x'\n",
                                        "'data.cache_dir' is '~no-such-user-here/x', whose user"),
    "an endpoint without a scheme": (b"[data]\nendpoint_url = 'localhost:9000'\n",
                                     "'data.endpoint_url' must be an http:// or https:// URL"),
    "an endpoint with a broken host": (b"[archive]\nendpoint_url = 'http://[::1'\n",
                                       "'archive.endpoint_url' must be an http:// or https:// URL"),
    "an empty stage name": (b"[stages.\"\"]\ncmd = 'true'\n", "a stage has an empty name"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_a_malformed_config_is_one_sentence_naming_the_file(repo: Path, case: str) -> None:
    content, expected = CONFIGS[case]
    (repo / "nixrepro.toml").write_bytes(content)
    line = one_sentence(cli_in_process(["pipeline", "graph"], cwd=repo))
    assert line.startswith(f"Error: {repo / 'nixrepro.toml'}"), line
    assert expected in line, line


def test_a_config_that_is_a_directory_or_a_dangling_link_is_refused_not_ignored(repo: Path) -> None:
    config = repo / "nixrepro.toml"
    config.mkdir()
    line = one_sentence(cli_in_process(["pipeline", "graph"], cwd=repo))
    assert line == f"Error: {config} is a directory; make it a readable TOML file, or remove it."
    config.rmdir()
    config.symlink_to(repo / "gone.toml")
    line = one_sentence(cli_in_process(["pipeline", "graph"], cwd=repo))
    assert line == (f"Error: {config} cannot be read (No such file or directory); make it a readable "
                    "TOML file, or remove it.")


def test_a_byte_order_mark_is_not_a_syntax_error(repo: Path) -> None:
    (repo / "nixrepro.toml").write_bytes("\ufeff[run]\nflake = 1\n".encode())
    line = one_sentence(cli_in_process(["pipeline", "graph"], cwd=repo))  # read past the mark to the key
    assert line.endswith("nixrepro.toml: 'run.flake' must be a string, not an integer."), line


@pytest.mark.parametrize(("content", "expected"), [
    ("tool = 1\n", "pyproject.toml: 'tool' must be a table, not an integer"),
    ("[tool]\nnixrepro = 'x'\n", "pyproject.toml [tool.nixrepro] must be a table of sections, not a string"),
    ("[tool]\nnixrepro = [1]\n", "pyproject.toml [tool.nixrepro] must be a table of sections, not a list"),
])
def test_a_wrong_typed_tool_table_in_pyproject_is_one_sentence(repo: Path, content: str,
                                                               expected: str) -> None:
    (repo / "pyproject.toml").write_text(content)
    assert expected in one_sentence(cli_in_process(["pipeline", "graph"], cwd=repo))


def test_a_non_utf8_pyproject_is_one_sentence(repo: Path) -> None:
    (repo / "pyproject.toml").write_bytes(b"\xff[tool.nixrepro]\n")
    assert "pyproject.toml is not UTF-8 text" in one_sentence(cli_in_process(["pipeline", "graph"], cwd=repo))


# --- nixrepro init ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flake", ['.#a"b', ".#a\\b", '.#"""\U0001f4a5'])
def test_init_writes_any_flake_ref_as_toml_that_reads_back(repo: Path, flake: str) -> None:
    result = cli_in_process(["init", "--flake", flake], cwd=repo)
    assert result.returncode == 0, result.stderr
    assert load(repo).run.flake == flake


@pytest.mark.parametrize(("flake", "expected"), [
    ("", "--flake is empty"), ("  ", "--flake is empty"),
    (".#a\nb", "holds a control character"), (".#\x7f", "holds a control character"),
])
def test_init_refuses_a_flake_ref_it_cannot_write(repo: Path, flake: str, expected: str) -> None:
    assert expected in one_sentence(cli_in_process(["init", "--flake", flake], cwd=repo))
    assert not (repo / "nixrepro.toml").exists()


def test_init_refuses_a_gitignore_it_cannot_read_and_writes_nothing(repo: Path) -> None:
    (repo / ".gitignore").mkdir()
    line = one_sentence(cli_in_process(["init"], cwd=repo))
    assert line.startswith(f"Error: {repo / '.gitignore'} cannot be read (Is a directory)"), line
    assert not (repo / "nixrepro.toml").exists()


def test_init_keeps_a_gitignore_that_is_not_utf8_byte_for_byte(repo: Path) -> None:
    (repo / ".gitignore").write_bytes(b"caf\xe9/\n")
    assert cli_in_process(["init"], cwd=repo).returncode == 0
    assert (repo / ".gitignore").read_bytes() == b"caf\xe9/\n.nixrepro/\nresult\n"


def test_init_over_a_config_directory_is_one_sentence(repo: Path) -> None:
    (repo / "nixrepro.toml").mkdir()
    line = one_sentence(cli_in_process(["init", "--force"], cwd=repo))
    assert line == (f"Error: {repo / 'nixrepro.toml'} is a directory; move it away, then run "
                    "`nixrepro init` again.")


# --- repeat groups with metrics beyond a float ------------------------------------------------------

METRICS_SH = """#!/bin/sh
case "$NIXREPRO_SEED" in
  0|100) extreme=1.7e308 ;;
  *) extreme=-1.7e308 ;;
esac
printf '{"step": 0, "metrics": {"big": %s%s, "loss": 0.%s, "extreme": %s}}\\n' \\
  "{big}" "$NIXREPRO_SEED" "$NIXREPRO_SEED" "$extreme" >> "$NIXREPRO_RUN_DIR/metrics.jsonl"
"""


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory, has_nix: None) -> tuple[Project, str, str]:
    """A project with two repeat groups whose runs log a 400-digit integer and +-1.7e308."""
    project = make_project(tmp_path_factory.mktemp("bad-input"), label="env-bad-input")
    env = project.build_env()
    script = project.root / "metrics.sh"
    script.write_text(METRICS_SH.replace("{big}", str(BIG)[:-1]))
    script.chmod(0o755)
    project.commit("metrics")
    ids = []
    for seed in ("0", "100"):
        result = project.nixrepro("run", "--env", env, "--repeat", "2", "--seed", seed, "--", "./metrics.sh")
        assert result.returncode == 0, result.stderr
        ids.append(json.loads(project.nixrepro("show", "@latest", "--json").stdout)["group"])
    return project, ids[0], ids[1]


def env_of(project: Project) -> str:
    return str(json.loads(project.nixrepro("show", "@latest", "--json").stdout)["environment"]["env_path"])


@pytest.mark.nix
def test_a_huge_integer_metric_in_a_group_is_listed_not_averaged(groups: tuple[Project, str, str]) -> None:
    project, group_a, _ = groups
    shown = project.nixrepro("show", group_a)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert f"big={BIG}" in shown.stdout  # each run still shows what it logged
    data = strict_json(project.nixrepro("show", group_a, "--json").stdout)
    assert "big" not in data["metrics"] and data["metrics"]["loss"]["n"] == 2
    assert data["runs"][0]["metrics"]["big"] == BIG
    listing = project.nixrepro("runs")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    assert "loss 0.05 ± 0.05 (n=2)" in listing.stdout


@pytest.mark.nix
def test_statistics_beyond_a_float_are_null_in_strict_json(groups: tuple[Project, str, str]) -> None:
    project, group_a, _ = groups
    extreme = strict_json(project.nixrepro("show", group_a, "--json").stdout)["metrics"]["extreme"]
    assert extreme["mean"] == 0.0 and extreme["std"] is None  # sqrt(2) * 1.7e308 fits no float
    assert extreme["sem"] == pytest.approx(1.7e308)
    assert "extreme 0 ± 1.7e+308 (n=2)" in project.nixrepro("runs").stdout


@pytest.mark.nix
def test_a_diff_of_groups_with_huge_metrics_is_a_table_and_strict_json(
        groups: tuple[Project, str, str]) -> None:
    project, group_a, group_b = groups
    text = project.nixrepro("diff", group_a, group_b)
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    assert "cannot test: a standard deviation is beyond a 64-bit float" in text.stdout
    data = strict_json(project.nixrepro("diff", group_a, group_b, "--json").stdout)
    assert set(data["metrics"]) == {"extreme", "loss"}
    assert data["metrics"]["loss"]["difference"] == pytest.approx(0.0505)  # 0.05 -> 0.1005
    assert data["metrics"]["extreme"]["difference"] == 0.0 and data["metrics"]["extreme"]["t"] is None


@pytest.mark.nix
@pytest.mark.parametrize("ref", ["g" + "x" * 10_000, "g" + "\u00fc\u202e" * 500])
def test_an_odd_group_ref_is_one_short_sentence(groups: tuple[Project, str, str], ref: str) -> None:
    project, _, _ = groups
    line = one_sentence(project.nixrepro("show", ref))
    assert line.startswith("Error: no repeat group matches") and len(line) < 300, line


@pytest.mark.nix
def test_a_long_run_name_does_not_widen_the_runs_table(groups: tuple[Project, str, str]) -> None:
    project, _, _ = groups
    named = project.nixrepro("run", "--env", env_of(project), "--name", "n" * 10_000, "--", "true")
    assert named.returncode == 0, named.stderr
    listing = project.nixrepro("runs")
    assert max(len(line) for line in listing.stdout.splitlines()) < 200
    assert "n" * 29 + "…" in listing.stdout


@pytest.mark.nix
@pytest.mark.parametrize(("seed", "repeat"), [("4294967295", "2"), ("-1", "2")])
def test_repeat_seeds_outside_pythonhashseed_are_refused_before_any_run(
        groups: tuple[Project, str, str], seed: str, repeat: str) -> None:
    project, _, _ = groups
    before = len(list(project.runs_dir.iterdir()))
    line = one_sentence(project.nixrepro("run", "--env", env_of(project), "--seed", seed,
                                         "--repeat", repeat, "--", "true"))
    assert "the range PYTHONHASHSEED takes" in line, line
    assert len(list(project.runs_dir.iterdir())) == before


@pytest.mark.nix
@pytest.mark.parametrize("rtol", ["nan", "inf", "1e999"])
def test_reproduce_refuses_a_tolerance_that_is_not_finite(groups: tuple[Project, str, str],
                                                          rtol: str) -> None:
    project, _, _ = groups
    result = project.nixrepro("reproduce", "--rtol", rtol, "@latest")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "is not a relative tolerance; give a finite number >= 0" in result.stderr


# --- what the other modules did with hostile input (each a traceback before) ----------------------


@pytest.mark.nix
def test_a_run_ref_far_beyond_any_store_is_one_short_sentence(groups: tuple[Project, str, str]) -> None:
    project, _, _ = groups
    line = one_sentence(project.nixrepro("show", "@latest~" + "9" * 5000))
    assert "further back than any run store goes" in line and len(line) < 200
    odd = one_sentence(project.nixrepro("show", "@latest~-1"))
    assert "@latest~N counts back from the newest run" in odd


@pytest.mark.nix
def test_a_diff_of_runs_with_a_metric_beyond_a_float_compares_it_for_equality(
        groups: tuple[Project, str, str]) -> None:
    project, _, _ = groups
    result = project.nixrepro("diff", "@latest~1", "@latest", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    [big] = [m for m in strict_json(result.stdout)["sections"]["metrics"]["metrics"] if m["name"] == "big"]
    assert big["delta"] is None and big["old"] != big["new"]


@pytest.mark.nix
def test_hostile_run_arguments_are_recorded_or_refused_never_a_traceback(
        groups: tuple[Project, str, str]) -> None:
    project, _, _ = groups
    env = env_of(project)
    digits = "7" * 5000
    huge = project.nixrepro("run", "--env", env, "-p", f"id={digits}", "--", "true")
    assert huge.returncode == 0, huge.stderr
    assert json.loads(project.nixrepro("show", "@latest", "--json").stdout)["params"]["id"] == digits
    # an argument that is not UTF-8 is recorded as the same bytes (JSON's \udcff escape)
    raw = subprocess.run([sys.executable.encode(), b"-m", b"nixrepro", b"run", b"--env", env.encode(),
                          b"--tag", b"caf\xe9", b"--", b"true", b"na\xefve"], cwd=project.root,
                         capture_output=True, check=False)
    assert raw.returncode == 0 and b"Traceback" not in raw.stderr, raw.stderr
    text = (project.runs_dir / json.loads(project.nixrepro("show", "@latest", "--json").stdout)["id"]
            / "record.json").read_bytes()
    text.decode("utf-8")  # strict UTF-8 on disk
    record = json.loads(text)
    assert record["command"]["argv"][-1].encode("utf-8", "surrogateescape") == b"na\xefve"
    verified = project.nixrepro("verify", "@latest")
    assert verified.returncode == 0, verified.stdout
    long_name = project.nixrepro("run", "--env", env, "--", "x" * 10_000)
    assert long_name.returncode == 126 and "Traceback" not in long_name.stderr, long_name.stderr
    assert "cannot be started (File name too long)" in long_name.stderr
    assert json.loads(project.nixrepro("show", "@latest", "--json").stdout)["exit_code"] == 126
    seed = one_sentence(project.nixrepro("run", "--env", env, "--seed", "-1", "--", "true"))
    assert seed.startswith("Error: seed -1 is outside 0..4294967295, the range PYTHONHASHSEED takes")


def test_a_cache_dir_that_is_a_file_and_a_broken_data_section_are_one_sentence(repo: Path) -> None:
    (repo / "a-file").write_text("not a directory\n")
    (repo / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{repo / "a-file"}"\n')
    line = one_sentence(run_cli(["sync", "--dry-run"], cwd=repo), 1)
    assert "cannot be used" in line and "cache_dir" in line
    (repo / "nixrepro.toml").write_text("[data]\nendpoint_url = 5\n")
    line = one_sentence(run_cli(["data", "ls", "file:///tmp/x"], cwd=repo))
    assert "endpoint_url" in line  # the data commands read it too, never the defaults instead


def test_a_signing_key_path_that_is_a_directory_is_one_sentence(tmp_path: Path) -> None:
    from nixrepro.archive import signing_key
    from nixrepro.config import ArchiveConfig
    from nixrepro.errors import UsageError
    from nixrepro.nix import Nix

    (tmp_path / "key").mkdir()
    with pytest.raises(UsageError, match="is not a file; point \\[archive\\] key_file"):
        signing_key(ArchiveConfig(key_file=str(tmp_path / "key")), Nix())
