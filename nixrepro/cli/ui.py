"""``ui`` and ``report``: the runs in a browser, served locally or as one HTML file.

Neither is on the path of ``nixrepro run``: nixrepro.ui (and http.server) load only when one of
these commands runs.
"""

from __future__ import annotations

import errno
import signal
import sys
from pathlib import Path

import click

from . import CONTEXT, cli, store


@cli.command(context_settings=CONTEXT)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="The port; 0 picks a free one.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on. Anything but a loopback address shows every record "
                   "to whoever can reach it.")
@click.option("--verbose", is_flag=True, help="Log each request to stderr.")
@click.option("--remote", is_flag=True,
              help="Show the team's remote run store ([runs] remote) instead of this checkout's; "
                   "a run's page pulls it, verified, into a temporary directory.")
def ui(port: int, host: str, verbose: bool, remote: bool) -> None:
    """Serve a read-only web viewer over this project's runs, until Ctrl-C.

    Runs (filter, sort, paged), each run's record, curves and logs, the experiment table with
    params against a metric, runs compared side by side with their diff and repeat groups' mean
    ± SEM, and the lineage of data versions. Nothing it serves changes the store; with --remote,
    nothing is written to this checkout's store either.

    \b
    Example:
      nixrepro ui
      nixrepro ui --port 0
      nixrepro ui --remote
    """
    from ..errors import UsageError
    from ..ui.server import is_loopback, make_server

    runs = store()
    source = None
    if remote:
        from ..remote.pending import require_remote
        from ..ui.remote import RemoteRuns

        found = require_remote(runs.root.parent)
        found.is_run_store(create=False)  # a prefix that is not a run store: one sentence now
        source = RemoteRuns.for_project(runs.root.parent)
    try:
        server = make_server(runs.root, host=host, port=port, verbose=verbose, runs=source)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is in use; pick another with --port N "
                             "(--port 0 picks a free one).") from None
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host "
                         "and --port.") from None
    server.warm()
    if not is_loopback(host):
        click.echo(f"nixrepro: warning: listening on {host}: anyone who can reach it can read every "
                   "record of this store.", err=True)
    shown = source.remote.url if source is not None else runs.root
    click.echo(f"nixrepro: serving {shown} at {server.url} (read only; Ctrl-C stops)", err=True)
    sys.stderr.flush()
    # SIGTERM (kill, a service manager) stops it as Ctrl-C does: through the finally below, which
    # also removes the runs pulled from a remote store
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        server.serve_forever()
    finally:
        server.server_close()


@cli.command(context_settings=CONTEXT)
@click.argument("run_refs", metavar="RUN...", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="report.html",
              show_default=True, help="The HTML file to write ('-': standard output).")
def report(run_refs: tuple[str, ...], output: Path) -> None:
    """Write one self-contained HTML file about these runs: it opens offline, anywhere.

    Each run's status, code, environment, host, data, params, metrics, curves and logs; for two
    runs or more also their overlaid curves, their diff and each repeat group's mean ± SEM. RUN
    is an id, a unique prefix, @latest, @latest~N or a repeat group (g...: all its runs). A RUN
    not in this checkout's store is looked up in the remote run store ([runs] remote) and read
    from there, verified as `nixrepro pull` verifies it, without writing it to the store.

    \b
    Example:
      nixrepro report @latest~1 @latest -o report.html
    """
    from ..ui.html import encode
    from ..ui.remote import RemoteRuns
    from ..ui.report import build_report, write_report

    runs = store()

    def remote() -> RemoteRuns | None:  # opened only for a RUN that is not here
        return RemoteRuns.for_project(runs.root.parent)

    if str(output) == "-":
        sys.stdout.buffer.write(encode(build_report(runs.root, list(run_refs), remote)))
        return
    try:
        size = write_report(runs.root, list(run_refs), output, remote)
    except OSError as exc:
        from ..errors import UsageError

        raise UsageError(f"cannot write {output} ({exc.strerror or exc}); choose another -o path.") from None
    click.echo(f"nixrepro: wrote {output} ({size // 1024 or 1} KiB); it opens offline in any browser",
               err=True)
