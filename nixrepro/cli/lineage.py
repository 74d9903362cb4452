"""``lineage``: where a data version came from, across runs and pipeline stages."""

from __future__ import annotations

import click

from ..errors import RecordError, RunNotFoundError, UsageError
from . import CONTEXT, cli, store


@cli.command(context_settings=CONTEXT)
@click.argument("ref", metavar="URI[@VERSION] | RUN")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable tree (nixrepro.lineage/1).")
@click.option("--dot", "as_dot", is_flag=True, help="Graphviz source (pipe into `dot -Tsvg`).")
def lineage(ref: str, as_json: bool, as_dot: bool) -> None:
    """Show the run that produced a data version, the inputs it read, and so on back.

    Without @VERSION, the version most recently written by a recorded run. Given a run (id,
    prefix or @latest), what it wrote and the lineage of everything it read. Works from the run
    records alone: no data store needs to be reachable.

    \b
    Example:
      nixrepro lineage s3://ml-data/models/model.pt
      nixrepro lineage file:///data/eval.json@000003 --dot | dot -Tsvg > lineage.svg
      nixrepro lineage @latest
    """
    from ..datastore import DataRef
    from ..lineage import (
        Lineage,
        json_text,
        render_dot,
        render_run_text,
        render_text,
        run_to_json,
        to_json,
    )
    from ..present import terminal_safe
    from ..record import RunRecord
    from ..runstore import _warn_skipped as warn_skipped

    runs = store()

    def load(run_id: str) -> RunRecord | None:
        """A run the listing showed; one whose record was edited or removed since is left out,
        with the listing's warning, as the next listing leaves it out."""
        try:
            record: RunRecord = runs.summary(run_id)
        except (RecordError, RunNotFoundError) as exc:
            warn_skipped(runs.run_dir(run_id), exc)
            return None
        return record

    index = Lineage(runs.values("data"), load)
    if "://" not in ref:  # a run, not a data URI
        if as_dot:
            raise UsageError("--dot draws the lineage of a data version; give URI[@VERSION].")
        record = runs.resolve(ref)
        inputs = index.trace_run(record)
        if as_json:
            click.echo(json_text(run_to_json(record, inputs)))
        else:
            click.echo(terminal_safe(render_run_text(record, inputs)))
        return
    tree = index.trace(DataRef.parse(ref))
    if as_json:
        click.echo(json_text(to_json(tree)))  # any depth, as json.dumps would
    elif as_dot:
        click.echo(render_dot(tree))
    else:
        click.echo(terminal_safe(render_text(tree)))
