"""``pipeline run|status|graph``: stages from nixrepro.toml, each a recorded run, cached."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from . import CONTEXT, cli, echo_json, nix_cli


def _runner(dev: bool = False, force: bool = False, quiet_stdout: bool = False) -> Any:
    """``quiet_stdout``: the stages' stdout goes to stderr, so --json's stdout is only JSON."""
    from ..pipeline.runner import for_project

    return for_project(Path.cwd(), nix_cli(), dev=dev, force=force,
                       stage_stdout=sys.stderr.buffer if quiet_stdout else None)


def _print(outcomes: list[Any]) -> None:
    width = max((len(o.name) for o in outcomes), default=5)
    for o in outcomes:
        run = f"run {o.run_id[:8]}" if o.run_id else ""
        detail = "; ".join(part for part in (run, o.reason) if part)
        click.echo(f"{o.name:<{width}}  {o.state:<8}  {detail}".rstrip())


@cli.group(context_settings=CONTEXT)
def pipeline() -> None:
    """Run the stages of [stages.NAME] in nixrepro.toml, skipping those that are up to date.

    A stage is skipped when a succeeded run has the same command, params, environment closure,
    code (git tree of its deps) and input data versions.

    \b
    Example:
      nixrepro pipeline run
      nixrepro pipeline status
    """


@pipeline.command("run", context_settings=CONTEXT)
@click.argument("stages", nargs=-1)
@click.option("--force", is_flag=True, help="Run every selected stage even when it is cached.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Stages that do not depend on each other may run at the same time.")
@click.option("--dev", is_flag=True, help="Allow a dirty tree; the stages are recorded as dev runs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable outcome.")
def pipeline_run(stages: tuple[str, ...], force: bool, jobs: int, dev: bool, as_json: bool) -> None:
    """Run STAGES (default: all) and what they depend on; exit 1 if a stage failed.

    SIGINT, SIGTERM and SIGHUP go to the running stages; nixrepro waits for them, starts no
    other, and exits 128 + the signal's number (130 for Ctrl-C).

    \b
    Example:
      nixrepro pipeline run train -j 2
    """
    from ..errors import PipelineError

    runner = _runner(dev=dev, force=force, quiet_stdout=as_json)
    outcomes = runner.run(list(stages), jobs=jobs)
    if as_json:
        echo_json([o.to_dict() for o in outcomes])
    else:
        _print(outcomes)
    if runner.faults:
        name, exc = runner.faults[0]
        error = PipelineError(
            f"the pipeline stopped: stage {name!r} hit an internal error ({type(exc).__name__}: "
            f"{exc}); the stages that ran are recorded; run with --debug for the traceback."
        )
        if runner.signals.exit_code is None:
            raise error from exc
        click.echo(f"Error: {error}", err=True)
    if runner.signals.exit_code is not None:  # like a shell job that died of the signal
        click.echo(f"Interrupted ({runner.signals.signal_name}): the stages that ran are recorded.",
                   err=True)
        sys.exit(runner.signals.exit_code)
    if any(o.state in ("failed", "interrupted", "not run") for o in outcomes):
        sys.exit(1)


@pipeline.command("status", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pipeline_status(as_json: bool) -> None:
    """Show how each stage ended in the last `pipeline run`, and what a run would do now.

    \b
    Example:
      nixrepro pipeline status
    """
    from ..pipeline.runner import status

    stages = status(_runner(dev=True))
    if as_json:
        echo_json(stages)
        return
    width = max((len(s["stage"]) for s in stages), default=5)
    for s in stages:
        then = s["last"]["state"] if s["last"] else "-"
        now = "up to date" if s["now"]["state"] == "skipped" else s["now"]["reason"]
        click.echo(f"{s['stage']:<{width}}  last: {then:<8}  now: {now}")


@pipeline.command("graph", context_settings=CONTEXT)
@click.option("--dot", is_flag=True, help="Graphviz dot instead of text.")
def pipeline_graph(dot: bool) -> None:
    """Print the stages and the data that links them.

    \b
    Example:
      nixrepro pipeline graph --dot | dot -Tsvg > pipeline.svg
    """
    from .. import config as config_module
    from ..git import GitRepo
    from ..pipeline import Pipeline, graph_dot, graph_text

    config = config_module.load(GitRepo.discover(Path.cwd()).root)
    pipe = Pipeline.from_config(config)
    click.echo(graph_dot(pipe) if dot else graph_text(pipe))
