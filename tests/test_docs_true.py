"""The docs stay true: every field of the run record, every file of a run directory and every
command is documented, and every command's --help carries an example (as sqlite-utils keeps its
docs honest). A new field or command without its line in docs/ fails here, not in review."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from nixrepro import datalog, determinism, metrics, rundir, runstore
from nixrepro.archive import ARCHIVES_FILE
from nixrepro.cli import COMMANDS as cli_commands
from nixrepro.cli import cli
from nixrepro.record import RunRecord

ROOT = Path(__file__).resolve().parent.parent
RECORD_MD = (ROOT / "docs" / "record.md").read_text()
ALL_DOCS = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def _dataclass_of(hint: object) -> type | None:
    """The dataclass a field holds, directly, in a list, as a dict's values or optionally."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    origin = typing.get_origin(hint)
    if origin in (list, dict, typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            found = _dataclass_of(arg)
            if found is not None:
                return found
    return None


def record_paths(cls: type, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(parent path, field name) for every field of the record, nested dataclasses included."""
    for f in dataclasses.fields(cls):
        yield prefix, f.name
        inner = _dataclass_of(typing.get_type_hints(cls)[f.name])
        if inner is not None and inner is not cls:
            yield from record_paths(inner, f"{prefix}{f.name}.")


def _rows(markdown: str) -> list[tuple[list[str], str]]:
    """Each table row of ``markdown``: the backticked names of its first cell, and the whole row."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first = line.split("|")[1]
            rows.append((re.findall(r"`([^`]+)`", first), line))
    return rows


ROWS = _rows(RECORD_MD)


def _normal(token: str) -> str:
    """``host.gpus[]`` -> ``host.gpus``; ``facts.inputs.<name>.rev`` -> ``facts.inputs.rev``."""
    return re.sub(r"\.<[^>]+>", "", token.replace("[]", ""))


def _documented(parent: str, name: str) -> bool:
    """A field is documented by a row of its own, or named (`name`, or its whole path) in the row
    of a field that holds it (`host.gpus[]` ... `uuid`)."""
    path = parent + name
    for heads, row in ROWS:
        tokens = {_normal(token) for token in re.findall(r"`([^`]+)`", row)}
        for head in map(_normal, heads):
            if head == path or head.startswith(path + "."):
                return True
            if path.startswith(head + ".") and (name in tokens or path in tokens):
                return True
    return False


@pytest.mark.parametrize(("parent", "name"), sorted(set(record_paths(RunRecord))),
                         ids=lambda v: v or "-")
def test_every_record_field_is_documented_in_record_md(parent: str, name: str) -> None:
    assert _documented(parent, name), (
        f"docs/record.md does not document `{parent}{name}`: add it to the field table")


RUN_DIR_FILES = sorted({
    runstore.RECORD_FILE, runstore.SUMMARY_FILE, runstore.SIGNATURE_FILE, runstore.LOCK_FILE,
    runstore.GC_ROOT, *runstore.RUN_FILES, rundir.STDOUT_LOG, rundir.STDERR_LOG, rundir.DEV_PATCH,
    rundir.OUTPUTS_FILE, metrics.METRICS_FILE, datalog.DATA_FILE, determinism.SEEDED_FILE, ARCHIVES_FILE,
    rundir.RESERVE_FILE,
})


@pytest.mark.parametrize("name", RUN_DIR_FILES)
def test_every_file_of_a_run_directory_is_documented_in_record_md(name: str) -> None:
    assert f"`{name}`" in RECORD_MD, f"docs/record.md does not say what the run file {name} holds"


def _commands(group: click.Group, prefix: str = "nixrepro") -> Iterator[tuple[str, click.Command]]:
    """Every command as `nixrepro --help` lists it: through the group's own API, which imports
    each command's module (nixrepro.cli loads them lazily)."""
    ctx = click.Context(group, info_name=prefix)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"`{prefix} {name}` is listed, and its module does not define it"
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


COMMANDS = list(_commands(cli))


def test_the_command_list_is_read_from_the_cli_itself() -> None:
    names = {path for path, _ in COMMANDS}
    assert {"nixrepro run", "nixrepro diff", "nixrepro data put"} <= names


def test_every_registered_command_is_in_the_lazy_map() -> None:
    """A command a module registers without its line in nixrepro.cli.COMMANDS would be missing
    from `nixrepro --help` and unknown to `nixrepro NAME` until another command imported its module."""
    # every module is imported by now (COMMANDS above): what they registered is all there is
    assert set(cli.commands) == set(cli_commands), (
        f"add {sorted(set(cli.commands) - set(cli_commands))} to nixrepro.cli.COMMANDS")


def test_a_command_imports_only_its_own_module() -> None:
    code = ("import sys; from nixrepro.cli import cli; cli.get_command(None, 'run'); "
            "print(sorted(m for m in sys.modules if m.startswith('nixrepro.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "['nixrepro.cli.run']\n"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_is_documented_and_its_help_has_an_example(path: str, command: click.Command) -> None:
    assert f"`{path}" in ALL_DOCS or f"{path} " in ALL_DOCS, f"no page of README.md or docs/ shows `{path}`"
    if not isinstance(command, click.Group):
        assert "Example" in (command.help or ""), f"`{path} --help` has no example"


def test_an_undocumented_field_is_caught() -> None:
    assert not _documented("host.", "no_such_field")
    assert not _documented("", "no_such_field")
    assert _documented("host.gpus.", "uuid")  # named in its parent's row
