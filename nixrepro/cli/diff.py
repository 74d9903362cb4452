"""``diff`` and ``verify``: what differs between two runs, and whether one is still intact.

``diff`` is on the path a user runs often: its imports stay lean (no runner, no nix module).
"""

from __future__ import annotations

import sys

import click

from . import CONTEXT, cli, echo_json, store


@cli.command(context_settings=CONTEXT)
@click.argument("run_a", metavar="RUN_A")
@click.argument("run_b", metavar="RUN_B")
@click.option("--all", "show_all", is_flag=True, help="Show every section, also those that agree.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/diff.md).")
@click.option("--color/--no-color", default=None, help="Colour (default: when stdout is a terminal).")
def diff(run_a: str, run_b: str, show_all: bool, as_json: bool, color: bool | None) -> None:
    """Say exactly what differs between two runs, from their records alone.

    The first line is the verdict: identical environment, same recipe but different bits (same
    store paths, different contents), or different environment. Then code, flake inputs,
    environment packages, host, params, seed, data versions, metrics and outcome, each shown only
    when it differs. RUN_A and RUN_B are ids, unique id prefixes, @latest or @latest~N.

    Two repeat groups (ids starting with g, from `run --repeat N`) are compared by their metric
    means with their standard errors; Welch's t-test says which differences are within noise.

    \b
    Example:
      nixrepro diff @latest~1 @latest
      nixrepro diff 3f9a2c 7c1d0e --all
      nixrepro diff g1a2b3c g4d5e6f
    """
    from ..diff import diff_runs, to_json
    from ..git import GitRepo
    from ..runstore import is_group_ref

    runs = store()
    if is_group_ref(run_a) or is_group_ref(run_b):
        _diff_groups(run_a, run_b, as_json)
        return
    a, b = runs.resolve(run_a), runs.resolve(run_b)
    result = diff_runs(a, b, repo=GitRepo(runs.root.parent))
    if as_json:
        echo_json(to_json(result))
        return
    from ..diffview import render_text
    from ..present import terminal_safe

    use_color = sys.stdout.isatty() if color is None else color
    click.echo(terminal_safe(render_text(result, all=show_all, color=use_color)), color=use_color)


def _diff_groups(ref_a: str, ref_b: str, as_json: bool) -> None:
    from ..errors import UsageError
    from ..groups import compare_groups, comparison_json, comparison_text, resolve_group
    from ..present import terminal_safe
    from ..runstore import is_group_ref

    if not (is_group_ref(ref_a) and is_group_ref(ref_b)):
        raise UsageError(
            f"cannot compare a run with a repeat group ({ref_a} and {ref_b}); give two runs or two groups."
        )
    runs = store()
    a, b = resolve_group(runs, ref_a), resolve_group(runs, ref_b)
    comparison = compare_groups(a.runs, b.runs)
    if as_json:
        echo_json({"a": a.id, "b": b.id, **comparison_json(comparison)})
        return
    click.echo(f"A = group {a.short_id} ({len(a.succeeded)} of {len(a.runs)} runs succeeded)")
    click.echo(f"B = group {b.short_id} ({len(b.succeeded)} of {len(b.runs)} runs succeeded)")
    click.echo(terminal_safe(comparison_text(comparison)))


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--contents", is_flag=True, help="Also re-hash every path's files (nix store verify).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(run_ref: str, contents: bool, as_json: bool) -> None:
    """Prove that a run's record and recorded environment are intact; exit 1 if any check fails.

    Checks the record's record_sha256 and its signature (signed by the project's key, unsigned,
    or a failure), that summary.json (what `runs` lists) and the run's logs and metrics are what
    the record says, the closure hash, that every closure path is in the store with its recorded
    NAR hash (--contents: re-hashes the files too), that flake.lock at the recorded commit hashes
    to the recorded value, and that every recorded data version is still in its store with its
    sha256 (--contents: downloaded and re-hashed).

    \b
    Example:
      nixrepro verify @latest --contents
    """
    from ..archive import trusted_keys
    from ..datastore.ops import project_settings
    from ..git import GitRepo
    from ..nix import Nix
    from ..verify import to_json, verify_run

    runs = store()
    record = runs.resolve(run_ref)
    result = verify_run(runs, record, repo=GitRepo(runs.root.parent), nix=Nix(), contents=contents,
                        data=project_settings(), trusted_keys=trusted_keys(runs.root.parent))
    if as_json:
        echo_json(to_json(result))
    else:
        marks = {"pass": click.style("pass", fg="green"), "fail": click.style("FAIL", fg="red"),
                 "skip": click.style("skip", fg="yellow")}
        click.echo(f"run {record.id}")
        for check in result.checks:
            click.echo(f"  {marks[check.result]}  {check.name:<17} {check.detail}")
        click.echo("verified: intact" if result.ok else "verification FAILED")
    if not result.ok:
        sys.exit(1)

