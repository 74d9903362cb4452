"""``sync``: upload what runs kept locally (pending data outputs, runs waiting for the remote run
store, W&B runs recorded offline)."""

from __future__ import annotations

import click

from . import CONTEXT, cli, echo_json, store


@cli.command(context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Only list what would be uploaded (pending items by id).")
@click.option("--discard", "discard", multiple=True, metavar="ITEM",
              help="Drop a pending data output instead of uploading it: its id from `sync --dry-run` "
                   "(e.g. 3) or its URI. Its bytes are then left to `data cache prune`, and its run "
                   "keeps it as pending (never stored). Repeatable; nothing is uploaded.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sync(dry_run: bool, discard: tuple[str, ...], as_json: bool) -> None:
    """Upload what runs kept locally: pending data outputs, then the runs waiting to be pushed to
    the remote run store, then W&B runs recorded offline.

    Pending outputs are those a run wrote while the data store was unreachable; once uploaded,
    their version ids are filled into the runs' records. The runs step pushes every run queued
    for [runs] remote (one that ended while the remote was unreachable, or waited for its data
    outputs) once its record holds its outputs' versions. An item that cannot be uploaded is
    listed with the reason and the others go on (exit code 1); each is uploaded only once, even
    by syncs running at the same time or after one was killed.

    \b
    Example:
      nixrepro sync --dry-run
      nixrepro sync
      nixrepro sync --discard 3
    """
    from ..errors import SyncError
    from ..sync import discard as discard_items
    from ..sync import sync as sync_all

    if discard:
        gone = discard_items(list(discard))
        if as_json:
            echo_json({"discarded": gone})
            return
        for line in gone:
            click.echo(f"discarded {line}")
        return
    results = sync_all(store().root, dry_run=dry_run)
    failed = {r.name: r.failed for r in results if r.failed}
    errors = [r for r in results if r.error is not None]
    if as_json:
        doc: dict[str, object] = {r.name: r.items for r in results} | {"dry_run": dry_run}
        if failed or errors:  # only then, so that a clean sync reads as before
            doc["failed"] = failed | {r.name: [str(r.error)] for r in errors}
        echo_json(doc)
    else:
        verb = "would upload" if dry_run else "uploaded"
        for result in results:
            if result.error is not None:
                continue
            if not result.items and not result.failed:
                click.echo(f"{result.name}: nothing to upload")
                continue
            click.echo(f"{result.name}: {verb} {len(result.items)}")
            for item in result.items:
                click.echo(f"  {item}")
            for item in result.failed:
                click.echo(f"  not uploaded: {item}", err=True)
    count = sum(len(items) for items in failed.values())
    if not count and not errors:
        return
    if not count and len(errors) == 1 and errors[0].error is not None:
        raise errors[0].error  # one step failed as a whole: its own sentence says it all
    for result in errors:
        click.echo(f"  {result.name}: {result.error}", err=True)
    parts = ([f"{count} pending item(s)"] if count else []) + [f"the {r.name} step" for r in errors]
    raise SyncError(
        f"{' and '.join(parts)} could not be uploaded (listed above; the rest was); fix what each says "
        "and run `nixrepro sync` again, or drop an item with `nixrepro sync --discard ID`."
    )
