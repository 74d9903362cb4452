"""``init``: add nixrepro's config to an existing flake project."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT, cli


@cli.command(context_settings=CONTEXT)
@click.option("--flake", default=".#env", show_default=True,
              help="The flake output `nixrepro run` uses by default.")
@click.option("--force", is_flag=True, help="Overwrite an existing nixrepro.toml.")
def init(flake: str, force: bool) -> None:
    """Write nixrepro.toml into this flake project and make git ignore the run store.

    For a project that already has a flake.nix; a new project starts from a template
    (`nix flake init -t <nixrepro>#minimal`). Commit the files it writes before the first run.

    \b
    Example:
      nixrepro init --flake .#train-env
    """
    from ..git import GitRepo
    from ..scaffold import init_project

    root = GitRepo.discover(Path.cwd()).root
    result = init_project(root, flake=flake, force=force)
    names = " ".join(str(path.relative_to(root)) for path in result.written)
    click.echo(f"wrote {names}; commit them: git add {names} && git commit -m 'nixrepro'")
