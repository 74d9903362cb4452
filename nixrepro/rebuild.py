"""``nixrepro rebuild`` and ``nixrepro reproduce``: bring a run's environment back, then its result.

Rebuild checks the recorded commit out in a temporary ``git worktree``, builds the recorded flake
output with the recorded lock (``--no-update-lock-file``) and compares the closure hash with the
recorded one. With an archive (``--from``, or the last one in the run's ``archives.json``) the
archive is an extra substituter whose signatures must verify against the archive's public key, so
sources and outputs that vanished upstream come back from it.

Reproduce rebuilds, re-runs the recorded command with the same params, seed and pinned data
versions as a new run whose parent is the old one, and compares the metrics within ``rtol``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from . import archive, archive_runs
from .archive_runs import ArchivedRun
from .closure import Closure
from .config import Config
from .diff import MetricChange, RunDiff, diff_metrics, diff_runs
from .errors import (
    NixCommandError,
    NixreproError,
    RebuildError,
    RefusedError,
    RemoteError,
    RemoteIntegrityError,
    RunNotFoundError,
    UsageError,
)
from .git import GitRepo
from .nix import FlakeRef, Nix
from .record import RunRecord
from .runstore import RunStore

if TYPE_CHECKING:
    from .trackers import RunObserver

# a store path as nix prints it: a store directory, 32 characters of nix's base32, a name
_STORE_PATH = re.compile(r"/[^\0\n]*/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+")


@dataclass(frozen=True)
class Rebuilt:
    record: RunRecord
    env_path: str
    closure: Closure
    source: str | None  # the archive URL used as substituter, if any
    diff: RunDiff

    @property
    def identical(self) -> bool:
        return self.closure.hash == self.record.environment.closure_hash


@dataclass(frozen=True)
class Located:
    """A run to rebuild, and where its record came from."""

    record: RunRecord
    archived: ArchivedRun | None = None  # found in an archive, not in the run store

    @property
    def found_in(self) -> str:
        return self.archived.url if self.archived else "the run store"


def locate(store: RunStore, ref: str, *, repo: GitRepo, config: Config,
           from_url: str | None = None) -> Located:
    """The run ``ref``: from the run store (and the remote run store behind it), else from the
    archive (``--from``, or ``[archive] to``) whose copy of the record is verified first, so that
    no run store is needed at all. A remote that cannot be read (gone, years later) does not stop
    the archive from being asked."""
    url = from_url.rstrip("/") if from_url else config.archive.to
    try:
        return Located(store.resolve(ref))
    except RemoteError as away:
        if url is None or isinstance(away, RemoteIntegrityError):  # a tampered run: never around it
            raise
        archive.staging_dir(url)  # a URL that carries credentials is refused, never printed
        print(f"nixrepro: warning: {away} Looking for run {ref} in the archive {url}.", file=sys.stderr)
        missing: NixreproError | None = None
    except RunNotFoundError as not_found:
        if url is None:
            raise
        missing = not_found
    try:
        found = find_archived(url, ref, repo=repo, config=config)
    except RunNotFoundError:
        if from_url or missing is None:
            raise
        raise RunNotFoundError(f"{str(missing).split('; ')[0]}, nor in the archive {url} "
                               "([archive] to); `nixrepro runs` lists the runs.") from None
    return Located(found.record, found)


def find_archived(url: str, ref: str, *, repo: GitRepo, config: Config) -> ArchivedRun:
    """Run ``ref`` in the archive at ``url``, its record proven against the project's keys."""
    return archive_runs.find(url, ref, archive.staging_dir(url),
                             endpoint_url=config.archive.endpoint_url,
                             trusted=archive.trusted_keys(repo.root))


def substituter_for(
    store: RunStore, record: RunRecord, from_url: str | None, config: Config, repo: GitRepo,
    nix: Nix, archived: ArchivedRun | None = None,
) -> tuple[str, str] | None:
    """(``file://`` cache URL, the public keys it is trusted with) of the archive to rebuild from,
    or None.

    The archive is ``--from``, else the run's last ``archives.json`` entry, else ``[archive] to``
    (where the record came from a remote or an archive: a fresh machine has no archives.json). Its
    keys: the one archives.json recorded for it on this machine; else the project's trusted keys;
    else, on a machine that trusts none, the keys the archive names (with a warning).

    An ``s3://`` archive is fetched into its local mirror: only the closure of the run's paths and
    of its flake inputs' sources (what the rebuild substitutes), or all of it where the run was
    archived with its build-time closure (``build-deps``: what a build from source needs).
    """
    known = [] if archived else archive.entries(store, record.id)
    optional = False  # the configured archive is tried, never required
    levels: list[str] = []
    if archived is not None:
        url, keys = archived.url, archived.trusted_keys
        found = archive_runs.entry_of(archived.local, record.id).get("levels")
        levels = [str(level) for level in found] if isinstance(found, list) else []
    elif from_url is None and known:
        url, keys, levels = known[-1].url, [known[-1].public_key], known[-1].levels
    elif from_url is None:
        if not config.archive.to:
            return None
        url, keys, optional = config.archive.to.rstrip("/"), [], True
    else:
        url = from_url.rstrip("/")
        matching = [e for e in known if e.url == url][-1:]
        keys = [e.public_key for e in matching]
        levels = matching[0].levels if matching else []
    local = archive.staging_dir(url)
    if urlparse(url).scheme == "s3":
        local.mkdir(parents=True, exist_ok=True)
        roots = None if "build-deps" in levels else _roots(record, nix)
        archive.download(url, local, endpoint_url=config.archive.endpoint_url, roots=roots)
    if not (local / archive_runs.CACHE_INFO).is_file():
        if optional:
            return None
        raise UsageError(f"{url} is not a binary cache (no nix-cache-info); give the URL that "
                         "`nixrepro archive` wrote to.")
    if not keys:
        keys = archive.trusted_keys(repo.root)
    if not keys:
        keys = archive_runs.known_keys(local)
        if keys:
            print(f"nixrepro: warning: no trusted key on this machine; trusting the keys the archive "
                  f"{url} names ({', '.join(k.split(':', 1)[0] for k in keys)}); pin them with "
                  "[archive] trusted_keys in nixrepro.toml.", file=sys.stderr)
    return f"file://{local}", " ".join(keys)


def _roots(record: RunRecord, nix: Nix) -> list[str]:
    """The store paths a rebuild of ``record`` substitutes: its closure, and the source of every
    locked flake input (evaluating the flake needs them; the archive's ``sources`` level)."""
    env = record.environment
    roots = [env.env_path, *(info.path for info in env.closure)]
    for locked in env.inputs.values():
        if locked.narHash:
            with contextlib.suppress(NixreproError):  # a hash nix cannot read: nothing to fetch
                roots.append(nix.source_path(locked.narHash))
    return roots


def rebuild(
    store: RunStore, record: RunRecord, *, repo: GitRepo, nix: Nix, config: Config,
    from_url: str | None = None, archived: ArchivedRun | None = None,
) -> Rebuilt:
    """Build ``record``'s environment again and compare its closure with the recorded one.
    ``archived``: the record came from that archive (:func:`locate`), which is then the substituter."""
    env = record.environment
    if env.flake_ref is None and not _STORE_PATH.fullmatch(env.env_path):
        # what `nix build` is given: a record from a remote or an archive is only as honest as
        # whoever wrote it, and a flake reference or an option there would be built, or obeyed
        raise RebuildError(
            f"run {record.short_id}'s record names {env.env_path[:80]!r} as its environment, which is "
            "no Nix store path (/nix/store/<hash>-<name>), so it is not built; the record was not "
            "written by nixrepro: `nixrepro verify` it where it was recorded.")
    substituter = substituter_for(store, record, from_url, config, repo, nix, archived)
    options: dict[str, str] = {}
    if substituter is not None:
        options = {"extra-substituters": substituter[0],
                   "extra-trusted-public-keys": substituter[1], "require-sigs": "true"}
    installable = _installable(record, repo)
    try:
        if installable is None:  # an --env run: the store path itself, from the archive
            out = nix.build_with_options(env.env_path, options)
        else:
            with tempfile.TemporaryDirectory(prefix="nixrepro-rebuild-") as tmp:
                checkout = Path(tmp) / "src"
                if not repo.has_commits(record.code.commit):
                    raise RebuildError(
                        f"commit {record.code.commit[:12]} of run {record.short_id} is not in "
                        f"{repo.root}; fetch it (`git fetch`) and rebuild again."
                    )
                repo.add_worktree(checkout, record.code.commit)
                try:
                    subdir = archive.flake_subdir(record, repo)
                    flake_dir = checkout / subdir if subdir else checkout
                    out = nix.build_with_options(f"{flake_dir}#{installable}", options, cwd=flake_dir)
                finally:
                    repo.remove_worktree(checkout)
    except NixCommandError as exc:
        raise _explain(exc, record, nix, substituter[0] if substituter else None) from exc
    closure = nix.closure(out, nix.version())
    rebuilt_env = dataclasses.replace(env, env_path=out, closure_hash=closure.hash,
                                      closure=list(closure.paths))
    again = record.replace(environment=rebuilt_env)
    return Rebuilt(record, out, closure, substituter[0] if substituter else None,
                   diff_runs(record, again))


def _installable(record: RunRecord, repo: GitRepo) -> str | None:
    """The flake attribute to build (``env`` of ``.#env``); None for an ``--env`` run."""
    ref = record.environment.flake_ref
    if ref is None:
        return None
    parsed = FlakeRef.parse(ref)
    flake, attr = parsed.source, parsed.attr
    if archive.recorded_flake(record, repo) == flake:  # a remote flake: not in this repository
        raise RebuildError(f"run {record.short_id} used the remote flake {ref}; rebuild it with "
                           f"`nix build {ref}` (nixrepro rebuilds flakes of this repository).")
    return attr or "default"


def _explain(exc: NixCommandError, record: RunRecord, nix: Nix, source: str | None) -> NixreproError:
    """Name the flake input whose source is gone, when that is why the build failed."""
    gone = []
    for name, locked in sorted(record.environment.inputs.items()):
        if not locked.narHash:
            continue
        try:
            path = nix.source_path(locked.narHash)
            present, _ = nix.path_infos([path])
        except NixreproError:
            continue
        if present:
            continue
        url = locked.url
        local = urlparse(url.removeprefix("git+")).path if "file:" in url or url.startswith("path:") \
            else ""
        local = local or (url.removeprefix("path:") if url.startswith("path:") else "")
        if (local and not os.path.exists(local)) or (url and url in exc.stderr) or \
                (local and local in exc.stderr):
            rev = f" at rev {locked.rev[:12]}" if locked.rev else ""
            gone.append(f"flake input '{name}' ({url}{rev})")
    if not gone:
        return exc
    where = (f"and the archive {source} does not have it" if source else
             "and no archive was given")
    return RebuildError(
        f"the source of {gone[0]} is gone: it is not in the Nix store, not at its URL, {where}; "
        "rebuild with --from the URL of an archive made by `nixrepro archive`."
    )


# --- reproduce ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reproduced:
    original: RunRecord
    rebuilt: Rebuilt
    run: RunRecord
    metrics: list[MetricChange]
    rtol: float

    @property
    def within_tolerance(self) -> bool:
        return all(metric_within(m, self.rtol) for m in self.metrics)


def metric_within(change: MetricChange, rtol: float) -> bool:
    """Equal, or both numbers with |new - old| <= rtol * |old| (rtol 0: bit-identical)."""
    old, new = change.old, change.new
    if change.delta is None or old is None or new is None:
        return old == new and type(old) is type(new)
    return math.isclose(float(new), float(old), rel_tol=rtol, abs_tol=0.0) or float(new) == float(old)


def reproduce(
    store: RunStore, record: RunRecord, *, repo: GitRepo, nix: Nix, config: Config,
    from_url: str | None = None, rtol: float = 0.0, archived: ArchivedRun | None = None,
    observers: Sequence[RunObserver] = (),
) -> Reproduced:
    """Rebuild, then run the recorded command again as a child run, and compare the metrics.

    ``observers`` (nixrepro.trackers.from_config) see the new run, as those of `nixrepro run` do.
    """
    from .runner import RunRequest
    from .runner import run as run_request

    if rtol < 0:
        raise UsageError(f"--rtol {rtol} is negative; give a relative tolerance >= 0.")
    if record.dev:
        raise RefusedError(f"run {record.short_id} is a dev run (its code is a patch, not a commit); "
                           "commit the change, record a run, and reproduce that one.")
    head = repo.snapshot().commit
    if head != record.code.commit:
        raise RefusedError(
            f"run {record.short_id} was recorded at commit {record.code.commit[:12]} but HEAD is "
            f"{head[:12]}; check it out (`git checkout {record.code.commit[:12]}`) and reproduce again."
        )
    rebuilt = rebuild(store, record, repo=repo, nix=nix, config=config, from_url=from_url,
                      archived=archived)
    if not rebuilt.identical:
        raise RefusedError(
            f"the rebuilt environment of run {record.short_id} differs from the recorded one "
            f"({rebuilt.closure.hash[:16]}... instead of {record.environment.closure_hash[:16]}...); "
            f"`nixrepro rebuild {record.short_id}` shows how."
        )
    cwd = Path(record.command.cwd).resolve()
    root = repo.root.resolve()
    request = RunRequest(
        argv=list(record.command.argv),
        # the recorded directory where it is in this checkout; on another machine (another
        # checkout's path, perhaps existing here as something else) the repository's root
        cwd=cwd if cwd.is_dir() and (cwd == root or root in cwd.parents) else repo.root,
        env_path=None if record.environment.flake_ref else rebuilt.env_path,
        flake=record.environment.flake_ref,
        name=record.name,
        tags=list(record.tags),
        parent=record.id,
        params=dict(record.params),
        seed=record.seed,
        data_pins={d.uri: d.version_id for d in record.data.inputs if d.version_id},
    )
    if archived is not None:  # the new run's parent, into the run store beside it
        archive_runs.import_run(store, archived)
    new = run_request(request, config=config, nix=nix, observers=observers)
    return Reproduced(record, rebuilt, new, diff_metrics(record.metrics, new.metrics), rtol)
