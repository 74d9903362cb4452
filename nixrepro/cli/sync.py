"""``sync``: upload what runs kept locally (W&B runs recorded offline)."""

from __future__ import annotations

import click

from . import CONTEXT, cli, echo_json, store


@cli.command(context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Only list what would be uploaded.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sync(dry_run: bool, as_json: bool) -> None:
    """Upload what runs kept locally: pending data outputs, then W&B runs recorded offline.

    Pending outputs are those a run wrote while the data store was unreachable; once uploaded,
    their version ids are filled into the runs' records.

    \b
    Example:
      nixrepro sync --dry-run
      nixrepro sync
    """
    from ..sync import sync as sync_all

    results = sync_all(store().root, dry_run=dry_run)
    if as_json:
        echo_json({r.name: r.items for r in results} | {"dry_run": dry_run})
        return
    verb = "would upload" if dry_run else "uploaded"
    for result in results:
        if not result.items:
            click.echo(f"{result.name}: nothing to upload")
            continue
        click.echo(f"{result.name}: {verb} {len(result.items)}")
        for item in result.items:
            click.echo(f"  {item}")
