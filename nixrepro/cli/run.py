"""``run``, ``runs``, ``show`` and ``gc-roots``: recording runs and reading them back."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from . import CONTEXT, cli, echo_json, lasting_imports, nix_cli, store


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("--env", "env_path", metavar="STOREPATH", help="The environment: a store path.")
@click.option("--flake", metavar="REF", help="The environment: a flake output to build (.#env).")
@click.option("--dev", is_flag=True, envvar="NIXREPRO_DEV",
              help="Allow a dirty tree; store its diff; mark the run dev (also NIXREPRO_DEV=1).")
@click.option("--facts", "facts_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Build facts from lib.mkExperiment, checked against the checkout (nix run .#experiment).")
@click.option("--name", help="A human name for the run.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--parent", metavar="RUN", help="The run this one derives from.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A param, typed int/float/bool/str (repeatable); the command gets them "
              "as JSON in NIXREPRO_PARAMS.")
@click.option("--seed", type=int,
              help="Recorded and exported as NIXREPRO_SEED and PYTHONHASHSEED (0 to 4294967295).")
@click.option("--verify-contents", is_flag=True,
              help="Re-hash the closure (nix store verify) and refuse a corrupted one.")
@click.option("--deterministic", is_flag=True,
              help="Pin PYTHONHASHSEED, CUBLAS_WORKSPACE_CONFIG and BLAS thread counts (seed 0 "
              "unless --seed); nixrepro.seed_everything() then also makes torch deterministic.")
@click.option("--repeat", type=click.IntRange(min=1), metavar="N",
              help="Run N times as a group, with seeds SEED, SEED+1, ... (SEED defaults to 0).")
@click.option("--input", "inputs", multiple=True, metavar="URI[@VERSION]",
              help="Data to fetch (through the cache) and record before the command; it finds "
              "the paths in NIXREPRO_INPUTS (JSON uri -> path). Repeatable.")
@click.option("--output", "outputs", multiple=True, metavar="LOCAL=URI",
              help="A file or directory the command writes, stored as a new version of URI "
              "and recorded when it ends. Repeatable.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    env_path: str | None, flake: str | None, dev: bool, name: str | None, tags: tuple[str, ...],
    parent: str | None, params: tuple[str, ...], seed: int | None, verify_contents: bool,
    deterministic: bool, repeat: int | None, inputs: tuple[str, ...], outputs: tuple[str, ...],
    facts_file: Path | None, command: tuple[str, ...],
) -> None:
    """Run COMMAND in a pinned environment and record the run.

    Refuses (exit 1, nothing recorded) outside git, on a dirty tree (unless --dev), and when
    flake.lock is missing, untracked or modified. Exits with the command's own exit code.

    \b
    Example:
      nixrepro run --flake .#env -p lr=0.1 --seed 42 -- python train.py --epochs 3
      nixrepro run --flake .#env --repeat 5 --deterministic -- python train.py
      nixrepro run --input s3://ml-data/raw.csv --output out.csv=s3://ml-data/clean.csv -- ./clean.sh
    """
    with lasting_imports():
        from .. import config as config_module
        from ..git import STORE_DIR, GitRepo
        from ..trackers import from_config

    cwd = Path.cwd()
    repo = GitRepo.discover(cwd)  # found once: the runner is handed it
    root = repo.root
    config = config_module.load(root)
    # The trackers first: each starts importing its library now, overlapping all that follows.
    trackers = from_config(config, root, root / STORE_DIR) if repeat is None else []

    with lasting_imports():
        from ..runner import RunRequest, parse_param
        from ..runner import run as run_request

    request = RunRequest(
        argv=list(command), cwd=cwd, env_path=env_path, flake=flake, dev=dev, name=name,
        tags=list(tags), parent=parent, params=dict(parse_param(p) for p in params), seed=seed,
        verify_contents=verify_contents, deterministic=deterministic, inputs=list(inputs),
        outputs=list(outputs), facts=facts_file,
    )
    if repeat is None:
        record = run_request(request, config, nix=nix_cli(), observers=trackers, repo=repo)
        _report(record)
    else:
        from ..repeats import run_repeated  # with the statistics: not on the single run's path

        records = run_repeated(request, repeat, config, nix=nix_cli(),
                               observers=lambda: from_config(config, root, root / STORE_DIR),
                               on_run=_report)
        record = records[-1]
        click.echo(f"nixrepro: group {record.group}: {len(records)} of {repeat} runs; "
                   f"`nixrepro show {(record.group or '')[:9]}`", err=True)
    code = record.exit_code if record.exit_code is not None else 128 + _signal_number(record.signal)
    sys.exit(code)


def _report(record: Any) -> None:
    click.echo(
        f"nixrepro: run {record.id} {record.status}"
        + (" (dev)" if record.dev else "")
        + (f" (repeat {record.repeat_index}, seed {record.seed})" if record.group else "")
        + f" in {record.duration_s or 0:.1f}s; `nixrepro show {record.short_id}`",
        err=True,
    )


def _signal_number(name: str | None) -> int:
    import signal

    return int(signal.Signals[name]) if name else 0


@cli.command(context_settings=CONTEXT)
@click.option("--status", metavar="STATUS",
              help="Only runs with this status: running, succeeded, failed, interrupted or crashed.")
@click.option("--name", metavar="TEXT",
              help="Only runs whose name contains TEXT (any case); with * ? [ the whole name as a "
              "shell pattern.")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Only runs with this tag (repeatable: every one given).")
@click.option("--commit", metavar="PREFIX", help="Only runs of a commit whose id starts with PREFIX.")
@click.option("--since", metavar="WHEN",
              help="Only runs started at or after WHEN: a date (2026-11-22), an ISO time "
              "(2026-11-22T13:00, local unless it has an offset) or an age (30m, 3h, 2d, 1w).")
@click.option("--user", metavar="NAME", help="Only runs made by this account (a shell pattern too).")
@click.option("--host", metavar="NAME",
              help="Only runs made on this host: its name, a Kubernetes node or a node of the Slurm "
              "job (a shell pattern too, e.g. 'gpu-*').")
@click.option("-c", "--columns", "columns", multiple=True, metavar="COLS",
              help="Columns after ID, comma-separated: status, started, duration, commit, name, "
              "command, tags, seed, group, parent, user, host..., a param or metric (lr, params.lr, "
              "metrics.acc) or a pattern (params.*). Default: the built-in ones with every param "
              "and metric that varies across the listed runs.")
@click.option("--where", "wheres", multiple=True, metavar="COND",
              help="Only runs where NAME OP VALUE holds (OP: == != < <= > >= or ~ for "
              "contains), e.g. 'acc>0.9' or 'name~base'. Repeatable: all must hold.")
@click.option("--sort", "sort_by", metavar="COL",
              help="Sort by this column (-COL or --desc: descending). Default: newest first.")
@click.option("--desc", is_flag=True, help="Sort descending.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many runs.")
@click.option("--tree", is_flag=True, help="Show each run under its --parent, every repeat too.")
@click.option("--csv", "as_csv", is_flag=True, help="The table as CSV, one line per run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--remote", is_flag=True,
              help="List the team's remote run store ([runs] remote) instead of this checkout's.")
def runs(status: str | None, name: str | None, tags: tuple[str, ...], commit: str | None,
         since: str | None, user: str | None, host: str | None, columns: tuple[str, ...],
         wheres: tuple[str, ...], sort_by: str | None, desc: bool, limit: int | None, tree: bool,
         as_csv: bool, as_json: bool, remote: bool) -> None:
    """List recorded runs, newest first, with the params and metrics that vary across them.

    Dev and crashed runs are marked; a repeat group is one line with its metrics' mean ± SEM.
    The filters (--status, --name, --tag, --commit, --since, --user, --host, --where) work alike
    on this checkout's runs and on the remote's (--remote); all given must hold.

    \b
    Example:
      nixrepro runs --status failed --limit 5
      nixrepro runs --since 2d --tag sweep --user alice
      nixrepro runs --remote --host 'gpu-*' --commit 3f9a2c1 --json
      nixrepro runs -c lr,batch,acc --where 'acc>0.9' --sort -acc
      nixrepro runs --csv > runs.csv
      nixrepro runs --tree
    """
    from ..errors import UsageError
    from ..filters import RunFilter
    from ..present import terminal_safe
    from ..table import Columns, csv_columns, parse_where, render_text, sort_records, to_csv

    if as_csv and as_json:
        raise UsageError("--csv and --json are two formats; give one of them.")
    if tree and (as_csv or as_json):
        raise UsageError("--tree draws the text table; --csv and --json carry each run's parent instead.")
    # checked before the store is read: a bad value costs no listing (a remote one takes seconds)
    chosen_runs = RunFilter.parse(status=status, name=name, tags=tags, commit=commit, since=since,
                                  user=user, host=host)
    from .remote import remote_summaries

    everything = remote_summaries() if remote else store().summaries()
    known = Columns(everything)
    conditions = [parse_where(text, known) for text in wheres]
    order = None
    if sort_by is not None:
        descending = desc or sort_by.startswith("-")
        found = known.resolve(sort_by[1:] if sort_by.startswith("-") else sort_by)
        if len(found) != 1:
            raise UsageError(f"--sort {sort_by} names {len(found)} columns; sort by one column.")
        order = (found[0], descending)
    elif desc:
        raise UsageError("--desc sorts descending by the --sort column; give --sort COL too.")
    records = chosen_runs.apply(everything) if chosen_runs.active else everything
    if conditions:
        records = [r for r in records if all(c(r) for c in conditions)]
    if order is not None:
        records = sort_records(records, *order)
    if limit is not None:
        records = records[:limit]
    if as_json:
        echo_json([_summary_dict(r) for r in records])
        return
    if columns:
        chosen = known.resolve_all(["id", *columns])
        left_out = 0
    else:
        chosen, left_out = known.default(records)
    if as_csv:
        click.echo(to_csv(records, csv_columns(chosen)), nl=False)
        return
    if not records:
        click.echo("No runs recorded yet. Start one with: nixrepro run -- CMD" if not everything
                   else f"No run of the {len(everything)} recorded matches.")
        return
    click.echo(terminal_safe(render_text(records, chosen, tree=tree)))
    if left_out:
        click.echo(f"nixrepro: {left_out} more varying params and metrics are not shown; "
                   "choose columns with -c (e.g. -c 'params.*').", err=True)


def _summary_dict(record: Any) -> dict[str, Any]:
    host = record.host
    return {
        "id": record.id, "name": record.name, "status": record.status, "dev": record.dev,
        "started_at": record.started_at, "duration_s": record.duration_s,
        "exit_code": record.exit_code, "commit": record.code.commit, "tags": record.tags,
        "closure_hash": record.environment.closure_hash, "argv": record.command.argv,
        "metrics": record.metrics, "group": record.group, "repeat_index": record.repeat_index,
        "seed": record.seed, "deterministic": record.deterministic,
        "params": record.params, "parent": record.parent,
        "user": host.user or None, "host": host.hostname or None,
        "slurm": _facts(host.slurm), "kubernetes": _facts(host.kubernetes),
    }


def _facts(job: Any) -> dict[str, Any] | None:
    """A scheduler's facts (nixrepro.host.SlurmJob, KubernetesPod) as JSON, None outside one."""
    return None if job is None else dict(vars(job))


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print the full run record.")
def show(run_ref: str, as_json: bool) -> None:
    """Show one run. RUN is an id, a unique id prefix, @latest or @latest~N.

    A repeat group id (g..., or a unique prefix) shows the group: mean, std, SEM and n per metric.

    \b
    Example:
      nixrepro show @latest --json
      nixrepro show g3f9a2c
    """
    from ..groups import group_json, group_summary, resolve_group
    from ..present import run_summary, terminal_safe
    from ..runstore import is_group_ref

    if is_group_ref(run_ref):
        group = resolve_group(store(), run_ref)
        if as_json:
            echo_json(group_json(group))
        else:
            click.echo(terminal_safe(group_summary(group)))
        return
    record = store().resolve(run_ref)
    if as_json:
        echo_json(record.to_dict())
    else:
        click.echo(terminal_safe(run_summary(record)))


@cli.group("gc-roots", context_settings=CONTEXT, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def gc_roots(ctx: click.Context, as_json: bool) -> None:
    """List the GC roots that keep recorded environments in the Nix store.

    \b
    Example:
      nixrepro gc-roots
      nixrepro gc-roots remove 3f9a2c1b
    """
    if ctx.invoked_subcommand is not None:
        return
    roots = [(run_id, link, os.readlink(link)) for run_id, link in store().gc_roots()]
    if as_json:
        echo_json([{"run": r, "link": str(link), "path": t} for r, link, t in roots])
    elif not roots:
        click.echo("No recorded environment is pinned.")
    else:
        for run_id, _link, target in roots:
            click.echo(f"{run_id}  {target}")


@gc_roots.command("remove", context_settings=CONTEXT)
@click.argument("run_refs", metavar="RUN...", nargs=-1, required=True)
def gc_roots_remove(run_refs: tuple[str, ...]) -> None:
    """Unpin the environments of these runs, so `nix-collect-garbage` may delete them.

    \b
    Example:
      nixrepro gc-roots remove @latest~3
    """
    from ..runstore import GC_ROOT

    runs = store()
    for ref in run_refs:
        record = runs.resolve(ref)
        link = runs.run_dir(record.id) / GC_ROOT
        if link.is_symlink():
            link.unlink()
            click.echo(f"unpinned {record.environment.env_path} (run {record.short_id})")
        else:
            click.echo(f"run {record.short_id} was not pinned")
