"""``data``: versioned data on S3 or a directory (docs/data.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import CONTEXT, cli, echo_json


def _data() -> Any:
    from ..datastore.ops import Data, project_settings

    return Data(project_settings())


def _version_json(version: Any) -> dict[str, Any]:
    return {"uri": version.uri, "version_id": version.version_id, "sha256": version.sha256,
            "size": version.size}


@cli.group(context_settings=CONTEXT)
def data() -> None:
    """Put, get and inspect versioned data (s3://bucket/key or file:///dir/name).

    Every put makes a new version id; old versions stay readable. A directory is a set of
    objects plus a manifest whose version pins the whole directory.

    \b
    Example:
      nixrepro data put ./train.csv s3://ml-data/train.csv
      nixrepro data get s3://ml-data/train.csv@3HL4kqtJlcpXroDTDmJ
    """


@data.command(context_settings=CONTEXT)
@click.argument("local", type=click.Path(path_type=Path))
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def put(local: Path, uri: str, as_json: bool) -> None:
    """Store LOCAL (a file or a directory) as a new version of URI; unchanged data makes none.

    \b
    Example:
      nixrepro data put ./images s3://ml-data/images
    """
    result = _data().put(local, uri)
    if as_json:
        echo_json({**_version_json(result.version), "uploaded": result.uploaded,
                   "unchanged": result.unchanged})
        return
    what = "unchanged" if result.unchanged else f"{result.uploaded} object(s) uploaded"
    click.echo(f"{result.version.uri}@{result.version.version_id}  ({what})")


@data.command(context_settings=CONTEXT)
@click.argument("ref", metavar="URI[@VERSION]")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
def get(ref: str, dest: Path | None) -> None:
    """Copy a version (default: the latest) to DEST (default: its name, here); checked by sha256.

    \b
    Example:
      nixrepro data get s3://ml-data/images@3HL4kqt ./images
    """
    version, path = _data().get(ref, dest)
    click.echo(f"{version.uri}@{version.version_id} -> {path}")


@data.command("ls", context_settings=CONTEXT)
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(uri: str, as_json: bool) -> None:
    """List the objects under URI (their latest versions).

    \b
    Example:
      nixrepro data ls s3://ml-data/images
    """
    from ..datastore import DataURI

    parsed = DataURI.parse(uri)
    found = _data().store(parsed).listing(parsed)
    if as_json:
        echo_json([_version_json(v) for v in found])
        return
    for version in found:
        click.echo(f"{version.size:>12}  {version.modified or '':<25}  {version.uri}")


@data.command(context_settings=CONTEXT)
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def versions(uri: str, as_json: bool) -> None:
    """List the versions of URI, newest first.

    \b
    Example:
      nixrepro data versions s3://ml-data/train.csv
    """
    from ..datastore import DataURI

    parsed = DataURI.parse(uri)
    found = _data().store(parsed).versions(parsed)
    if as_json:
        echo_json([{**_version_json(v), "kind": v.kind, "modified": v.modified, "latest": v.latest}
                   for v in found])
        return
    for v in found:
        mark = "latest" if v.latest else ""
        click.echo(f"{v.version_id}  {v.size:>12}  {(v.sha256 or '-')[:12]:<12}  {v.kind:<8}  "
                   f"{v.modified or '':<25}  {mark}".rstrip())


@data.command(context_settings=CONTEXT)
@click.argument("ref", metavar="URI@VERSION")
def verify(ref: str) -> None:
    """Download a version afresh and check it against its sha256; exit 1 if it changed.

    \b
    Example:
      nixrepro data verify s3://ml-data/train.csv@3HL4kqt
    """
    version = _data().verify(ref)
    click.echo(f"{version.uri}@{version.version_id}: sha256 {version.sha256} verified")


@data.group(context_settings=CONTEXT)
def cache() -> None:
    """The local cache of downloaded versions and pending uploads."""


@cache.command("verify", context_settings=CONTEXT)
def cache_verify() -> None:
    """Re-hash every cached object; remove the corrupt ones (they are fetched again when needed).

    \b
    Example:
      nixrepro data cache verify
    """
    result = _data().cache.verify()
    click.echo(f"{result.checked} objects checked, {len(result.corrupt)} corrupt removed")
    for sha in result.corrupt:
        click.echo(f"  removed {sha}")


@cache.command("prune", context_settings=CONTEXT)
def cache_prune() -> None:
    """Remove every cached object except what outputs waiting for `nixrepro sync` need.

    A pending directory keeps its manifest and every file it lists; drop a pending item first
    with `nixrepro sync --discard ID` to let its bytes go.

    \b
    Example:
      nixrepro data cache prune
    """
    count, size = _data().cache.prune()
    click.echo(f"removed {count} objects ({size} bytes)")
