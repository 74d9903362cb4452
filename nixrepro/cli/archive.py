"""``archive``, ``rebuild`` and ``reproduce``: keep an environment, bring it back, run it again."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from . import CONTEXT, cli, echo_json, nix_cli, store


def _context() -> tuple[Any, Any, Any, Any]:
    from .. import config as config_module
    from ..git import GitRepo

    runs = store()
    repo = GitRepo(runs.root.parent)
    return runs, repo, nix_cli(), config_module.load(repo.root)


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--to", "url", metavar="URL",
              help="file:///dir or s3://bucket/prefix (default: [archive] to in nixrepro.toml).")
@click.option("--build-deps", is_flag=True,
              help="Also archive the build-time closure with every fixed-output source.")
def archive(run_ref: str, url: str | None, build_deps: bool) -> None:
    """Keep a run's environment and its flake sources in a signed Nix binary cache.

    Copies the runtime closure (nix copy) and the flake inputs' sources (nix flake archive);
    with --build-deps also everything needed to build it from source. Paths are signed with the
    project key, generated on first use ([archive] key_file). The location and public key are
    kept beside the run in archives.json, so `nixrepro rebuild` finds them.

    \b
    Example:
      nixrepro archive @latest --to file:///srv/nix-archive
      nixrepro archive 3f9a2c --to s3://my-bucket/nix --build-deps
    """
    from ..archive import archive_run, archive_url
    from ..runstore import SIGNATURE_FILE

    runs, repo, nix, config = _context()
    record = runs.resolve(run_ref)
    target = archive_url(url, config.archive)
    unsigned = not (runs.run_dir(record.id) / SIGNATURE_FILE).is_file()
    entry = archive_run(runs, record, target, config=config.archive, nix=nix, repo=repo,
                        build_deps=build_deps)
    click.echo(f"archived run {record.short_id} to {entry.url} ({', '.join(entry.levels)}; "
               f"{entry.paths} paths), signed by {entry.public_key.split(':', 1)[0]}")
    click.echo(f"public key: {entry.public_key}")
    if unsigned and record.status != "running":
        _push_signature(runs, repo.root, config, record.id)


def _push_signature(runs: Any, repo_root: Any, config: Any, run_id: str) -> None:
    """The record was signed just now, after it was pushed unsigned: the team's remote run store
    gets the signature too (a run's objects are never replaced, a missing one is added)."""
    from ..errors import NixreproError
    from ..remote.pending import enqueue, open_remote, push_one

    remote = open_remote(repo_root, config)
    if remote is None:
        return
    enqueue(runs, run_id)
    try:
        push_one(runs, remote, run_id)
    except NixreproError as exc:
        click.echo(f"nixrepro: warning: the signature of run {run_id} is not pushed to {remote.url}: "
                   f"{exc} `nixrepro sync` pushes it.", err=True)
        return
    click.echo(f"pushed the signed record to {remote.url}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--from", "from_url", metavar="URL",
              help="An archive to substitute from, and to find the run's record in when no run "
                   "store has it (default: the run's last archive, else [archive] to).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rebuild(run_ref: str, from_url: str | None, as_json: bool) -> None:
    """Build a run's environment again from its recorded commit and lock; exit 1 if it differs.

    Checks out the recorded commit in a temporary git worktree and builds the recorded flake
    output with --no-update-lock-file. An archive (--from, or the one recorded by `nixrepro
    archive`, or [archive] to) is used as a substituter whose signatures must verify. A run that
    is not in the run store is looked up in that archive, which carries its record: verified
    (record_sha256, the signature) before it is used.

    \b
    Example:
      nixrepro rebuild @latest
      nixrepro rebuild 3f9a2c --from file:///srv/nix-archive
    """
    from ..diff import to_json
    from ..diffview import render_text
    from ..rebuild import locate
    from ..rebuild import rebuild as rebuild_run

    runs, repo, nix, config = _context()
    located = locate(runs, run_ref, repo=repo, config=config, from_url=from_url)
    record = located.record
    result = rebuild_run(runs, record, repo=repo, nix=nix, config=config, from_url=from_url,
                         archived=located.archived)
    if as_json:
        echo_json({"run": record.id, "identical": result.identical, "env_path": result.env_path,
                   "closure_hash": result.closure.hash, "source": result.source,
                   "record_from": located.archived.url if located.archived else None,
                   "diff": to_json(result.diff)})
    else:
        _found(located)
        click.echo(f"identical: {result.env_path} has the recorded closure hash "
                   f"{result.closure.hash} ({len(result.closure)} paths)" if result.identical
                   else render_text(result.diff, color=sys.stdout.isatty()))
    if not result.identical:
        sys.exit(1)


def _found(located: Any) -> None:
    """Say where a record that is not in the run store came from, and what proved it."""
    archived = located.archived
    if archived is None:
        return
    proof = f"signed by {archived.signed_by}" if archived.signed_by else "unsigned"
    click.echo(f"run {archived.record.short_id}: record from the archive {archived.url} "
               f"(record_sha256 matches, {proof})")


@contextlib.contextmanager
def _output_to_stderr(active: bool) -> Iterator[None]:
    """While active, what is written to stdout (file descriptor 1: the re-run command's output
    goes there) goes to stderr."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _tolerance(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """--rtol is a finite number >= 0: nan would pass every comparison's `not within` test
    unnoticed, and neither nan nor inf can be written to the --json output (strict JSON)."""
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(f"{value} is not a relative tolerance; give a finite number >= 0, "
                                 "e.g. 1e-6 (0 means bit-identical).")
    return value


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--from", "from_url", metavar="URL", help="An archive to rebuild from.")
@click.option("--rtol", type=float, default=0.0, show_default=True, callback=_tolerance,
              help="Relative tolerance for metrics; 0 means bit-identical.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reproduce(run_ref: str, from_url: str | None, rtol: float, as_json: bool) -> None:
    """Rebuild a run's environment and run its command again as a child run; compare metrics.

    Uses the recorded argv, params, seed and data versions; the new run's parent is RUN. Needs
    HEAD at the recorded commit. Exits 1 when the new run failed or a metric is outside --rtol.

    \b
    Example:
      nixrepro reproduce @latest --rtol 1e-6
    """
    from ..determinism import determinism_note
    from ..rebuild import locate, metric_within
    from ..rebuild import reproduce as reproduce_run
    from ..trackers import from_config

    runs, repo, nix, config = _context()
    located = locate(runs, run_ref, repo=repo, config=config, from_url=from_url)
    record = located.record
    if not as_json:
        _found(located)
    with _output_to_stderr(as_json):  # --json: stdout is the JSON alone, the command's output aside
        result = reproduce_run(runs, record, repo=repo, nix=nix, config=config, from_url=from_url,
                               rtol=rtol, archived=located.archived,
                               observers=from_config(config, repo.root, runs.root))
    ok = result.within_tolerance and result.run.status == "succeeded"
    note = determinism_note(record)  # why metrics may legitimately differ
    if as_json:
        echo_json({"run": result.run.id, "parent": record.id, "status": result.run.status,
                   "rtol": rtol, "within_tolerance": result.within_tolerance,
                   "determinism": note,
                   "metrics": [{"name": m.name, "old": m.old, "new": m.new, "delta": m.delta,
                                "relative": m.relative, "within": metric_within(m, rtol)}
                               for m in result.metrics]})
    else:
        click.echo(f"reproduced run {record.short_id} as run {result.run.short_id} "
                   f"({result.run.status}); environment identical")
        for m in result.metrics:
            mark = "ok " if metric_within(m, rtol) else "OUT"
            delta = f"  {m.delta:+.6g}" if m.delta is not None else ""
            click.echo(f"  {mark} {m.name:<16} {m.old} -> {m.new}{delta}")
        click.echo(("metrics within" if result.within_tolerance else "metrics NOT within")
                   + (" rtol=0 (bit-identical)" if rtol == 0 else f" rtol={rtol:g}"))
        if note and not result.within_tolerance:
            click.echo(f"note: {note}")
    if not ok:
        sys.exit(1)

