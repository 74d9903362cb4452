"""The ``nixrepro`` command line: click commands over the library.

One module per area registers its commands on :data:`cli` (``run.py``: run, runs, show,
gc-roots), and :data:`COMMANDS` names the module of each: a command's module is imported when the
command is invoked, so ``nixrepro run`` loads none of the others (``--help`` loads them all). A
command parses its options, calls the library and prints; what it computes belongs
in the library, so that every command works from Python too (docs/architecture.md). Only this
package turns a :class:`NixreproError` into ``Error: ...`` and an exit code, and Ctrl-C into exit
code 130. ``--debug`` (or NIXREPRO_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def _quiet_interrupt(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# Ctrl-C while the command line is still being imported (click, the command modules) exits 130
# without a traceback; main() puts Python's own handler back once it can report it.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _quiet_interrupt)

# The collector is paused while click's ~60 modules are imported (objects that live as long as
# the process: ~5 ms of collections), and put back as it was; see lasting_imports.
_collecting = gc.isenabled()
gc.disable()
try:
    import click

    from .. import __version__
    from ..errors import NixreproError
    from ..redact import scrub_url
finally:
    if _collecting:
        gc.enable()

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def store(cwd: Path | None = None) -> Any:
    """The run store of the repository around ``cwd``. A RUN it does not hold is looked up in the
    project's remote run store ([runs] remote), and pulled and verified when found there."""
    import dataclasses

    from ..git import GitRepo
    from ..runstore import RunStore

    return dataclasses.replace(RunStore.for_repo(GitRepo.discover(cwd or Path.cwd()).root), pull=True)


@contextlib.contextmanager
def lasting_imports() -> Iterator[None]:
    """Around a command's imports of the library it runs on: the modules' objects (classes,
    functions, tables) live as long as the process, so the cyclic collector is paused while they
    are made and then skips them (``gc.freeze``) in every later collection, and in the two
    collections of the interpreter's exit. Objects made afterwards are collected as ever.
    ``nixrepro run``: ~15 ms of CPU less (the collections of its imports, and 5 ms a full one)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def nix_cli() -> Any:
    """The nix CLI as commands use it: a build shows nix's progress when stderr is a terminal."""
    from ..nix import Nix

    return Nix(progress=sys.stderr if sys.stderr.isatty() else None)


def echo_json(data: Any) -> None:
    click.echo(json_text(data))


_compact = json.JSONEncoder(sort_keys=True).encode  # the C encoder (indent= forces the Python one)


def json_text(data: Any, depth: int = 0) -> str:
    """``data`` as the commands print JSON: an object one key a line, indented by two; a list
    that holds objects or lists one item a line, each item on its line as compact JSON (a run
    of ``runs --json``, a store path of a closure); anything else on one line.

    Every line but the objects' keys is made by the C encoder, where ``json.dumps(indent=2)`` runs
    the pure-Python one for every value: 10,000 runs are written in ~0.1 s instead of ~1 s.
    """
    pad = "  " * (depth + 1)
    if isinstance(data, dict) and data:
        items = [f"{pad}{_compact(_key(key))}: {json_text(data[key], depth + 1)}"
                 for key in sorted(data, key=_key)]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(data, (list, tuple)) and any(isinstance(item, (dict, list, tuple)) for item in data):
        return "[\n" + ",\n".join(pad + _compact(item) for item in data) + "\n" + "  " * depth + "]"
    return _compact(data)


def _key(key: Any) -> str:
    """An object's key as JSON spells it (True is "true", None "null")."""
    if isinstance(key, str):
        return key
    return _compact(key) if key is None or isinstance(key, bool) else str(key)


# Each command's module under nixrepro/cli/, which registers it on `cli` when imported; a new
# command gets its line here (tests/test_docs_true.py fails for a command registered without one).
COMMANDS = {
    "archive": "archive", "rebuild": "archive", "reproduce": "archive",
    "data": "data",
    "diff": "diff", "verify": "diff",
    "init": "init",
    "lineage": "lineage",
    "pipeline": "pipeline",
    "pull": "remote", "push": "remote",
    "run": "run", "runs": "run", "show": "run", "gc-roots": "run",
    "sync": "sync",
    "report": "ui", "ui": "ui",
}


class LazyGroup(click.Group):
    """A group whose commands' modules are imported when a command is looked up (click's
    "Lazily Loading Subcommands"): each import is ~0.5 ms and more, and a run needs one."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"{__name__}.{module}")
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="nixrepro")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Record ML experiment runs with the identity of their Nix environment.

    \b
    Example:
      nixrepro run --flake .#env -p lr=0.1 --seed 1 -- python train.py
      nixrepro runs
      nixrepro show @latest
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: errors become one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    head = args[: args.index("--")] if "--" in args else args
    debug = "--debug" in head or os.environ.get("NIXREPRO_DEBUG") == "1"
    if signal.getsignal(signal.SIGINT) is _quiet_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_cwd()
        cli.main(args=args, prog_name="nixrepro", standalone_mode=False)
    except NixreproError as exc:
        if debug:
            raise
        # the last guard: a git or nix error can quote a URL with its token
        click.echo(f"Error: {scrub_url(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:  # click's name for a KeyboardInterrupt in a command
        if debug and exc.__cause__ is not None:
            raise exc.__cause__ from None
        click.echo("Aborted.", err=True)
        sys.exit(128 + getattr(exc.__cause__, "signum", signal.SIGINT))  # 143 for SIGTERM
    except KeyboardInterrupt as exc:
        if debug:
            raise
        click.echo("Interrupted.", err=True)
        sys.exit(128 + getattr(exc, "signum", signal.SIGINT))  # 143 for SIGTERM, as a shell says
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


def _check_cwd() -> None:
    """A deleted working directory is one sentence, not a FileNotFoundError from deep inside."""
    from ..errors import UsageError

    try:
        os.getcwd()
    except FileNotFoundError:
        raise UsageError("the current directory no longer exists (it was deleted or moved); "
                         "cd into the project again and rerun the command.") from None

