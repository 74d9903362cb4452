"""``pull`` and ``push``: runs between the local store and the team's remote run store
([runs] remote, docs/teams.md). Listing it is ``runs --remote``; every command that takes RUN
pulls a run it finds only there (cli.store)."""

from __future__ import annotations

from typing import Any

import click

from . import CONTEXT, cli, echo_json, store


@cli.command(context_settings=CONTEXT)
@click.argument("run_refs", metavar="RUN...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pull(run_refs: tuple[str, ...], as_json: bool) -> None:
    """Fetch runs from the remote run store, each verified before anything is written.

    RUN is an id or a unique id prefix of a remote run (`nixrepro runs --remote` lists them). A
    run is refused, and nothing written, when its record does not hash to its record_sha256, its
    signature does not verify, or a log, the metrics or the dev patch is not what the record says.
    A run that is already here is left as it is.

    \b
    Example:
      nixrepro pull 3f9a2c1b 7c1d0e
    """
    from ..errors import RunNotFoundError
    from ..remote.pending import pull as pull_run
    from ..remote.pending import require_remote

    runs = store()
    remote = require_remote(runs.root.parent)
    local = runs.ids()
    done = []
    for ref in run_refs:
        here = [run_id for run_id in local if run_id.startswith(ref)] if ref else []
        if len(here) == 1:
            done.append({"run": here[0], "pulled": False})
            if not as_json:
                click.echo(f"run {here[0]} is already here")
            continue
        matches = remote.match(ref)
        if len(matches) != 1:
            shown = ref if len(ref) <= 40 else ref[:40] + "..."
            raise RunNotFoundError(
                f"no run of {remote.url} matches {shown!r}; `nixrepro runs --remote` lists them."
                if not matches else
                f"{shown!r} matches {len(matches)} runs of {remote.url} ({', '.join(matches[:5])}); "
                "give more characters of the id.")
        record = pull_run(runs, remote, matches[0])
        done.append({"run": record.id, "pulled": True})
        if not as_json:
            click.echo(f"pulled run {record.id} from {remote.url}")
    if as_json:
        echo_json({"remote": remote.url, "runs": done})


@cli.command(context_settings=CONTEXT)
@click.argument("run_refs", metavar="RUN...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def push(run_refs: tuple[str, ...], as_json: bool) -> None:
    """Push runs to the remote run store now (runs that end are pushed by themselves).

    For runs recorded before [runs] remote was set, or to retry one at once rather than with
    `nixrepro sync`. A run already there with the same bytes is left as it is; one whose id holds
    a different run there is refused (runs are immutable).

    \b
    Example:
      nixrepro push @latest~2 3f9a2c1b
    """
    from ..remote.pending import enqueue, push_one, require_remote

    runs = store()
    remote = require_remote(runs.root.parent)
    done = []
    for ref in run_refs:
        record = runs.resolve(ref)
        enqueue(runs, record.id)
        pushed = push_one(runs, remote, record.id)
        done.append({"run": record.id, "written": pushed.written, "present": pushed.present})
        if not as_json:
            what = "pushed" if pushed.written else "already in the remote:"
            click.echo(f"{what} run {record.id} -> {remote.url}")
    remote.maybe_compact()
    if as_json:
        echo_json({"remote": remote.url, "runs": done})


def remote_summaries() -> list[Any]:
    """``runs --remote``: the remote run store's runs as summaries, newest first, for the same
    filters and table as the local ones."""
    from ..remote.pending import require_remote

    return list(require_remote(store().root.parent).summaries())
