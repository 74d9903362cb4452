"""Where the local run store meets the remote one: the push queue, the push at a run's end, the
``runs`` step of ``nixrepro sync``, and the remote fallback when a RUN is not found locally.

The queue is a directory, ``.nixrepro/push-pending/``, holding one empty file per run to push,
named by its id. :meth:`RunStore.save` adds a run there when it saves a final record (and a remote
is configured); the run's end (:meth:`RunStore.hold` released) pushes it and takes it out. A run
that could not be pushed (the remote unreachable, a data output still pending) stays, and
``nixrepro sync`` pushes it; a crashed run, found by a later listing, waits for the sync too. Adding
and removing are a create and an unlink, so concurrent runs and syncs never lose an entry.

The remote is named in one place: ``[runs] remote`` of the config nixrepro reads. A remote in
pyproject.toml's ``[tool.nixrepro.runs]`` that nixrepro.toml hides is refused with a sentence, not
silently ignored (:func:`configured_remote`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from ..config import CONFIG_FILE, Config
from ..config import load as load_config
from ..errors import ConfigError, NixreproError, RecordError, RunNotFoundError
from ..record import RunRecord
from ..runstore import RECORD_FILE, RunStore
from . import RemoteConflict, RemoteError, RemoteUnreachable, RemoteURL, open_objects
from .store import PushWaits, RemoteRunStore

PENDING_DIR = "push-pending"
_opened: dict[tuple[str | None, ...], RemoteRunStore] = {}
_AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                  "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
_lock = threading.Lock()


def configured_remote(repo_root: Path, config: Config) -> str | None:
    """``[runs] remote`` of the project; a second, different one where nixrepro does not read it
    (pyproject.toml's [tool.nixrepro.runs] while nixrepro.toml exists) is a ConfigError."""
    remote = config.runs.remote
    pyproject = repo_root / "pyproject.toml"
    if config.source is None or not config.source.endswith(CONFIG_FILE) or not pyproject.is_file():
        return remote
    from ..config import _read_toml

    try:
        tool = _read_toml(pyproject).get("tool", {})
        other = tool.get("nixrepro", {}).get("runs", {}).get("remote")
    except (ConfigError, AttributeError):
        return remote  # a pyproject nixrepro does not read is not ours to judge
    if isinstance(other, str) and other != remote:
        said = f"[runs] remote = {remote!r}" if remote else "no [runs] remote"
        raise ConfigError(
            f"two remote run stores are configured: {config.source} has {said}, and {pyproject} "
            f"[tool.nixrepro.runs] has remote = {other!r}, which nixrepro ignores while "
            f"{CONFIG_FILE} exists; keep the remote in {CONFIG_FILE} only."
        )
    return remote


def open_remote(repo_root: Path, config: Config | None = None) -> RemoteRunStore | None:
    """The project's remote run store, None without one (opened once per process)."""
    config = config or load_config(repo_root)
    url = configured_remote(repo_root, config)
    if url is None:
        return None
    endpoint = config.runs.endpoint_url or config.data.endpoint_url
    # one client per remote and credentials: a process that changes its AWS variables (a test, a
    # notebook) gets a client that uses the new ones
    chain = "\0".join(os.environ.get(name, "") for name in _AWS_VARIABLES)
    with _lock:
        key = (url, endpoint, config.data.region, config.data.profile,
               hashlib.sha256(chain.encode()).hexdigest())
        if key not in _opened:
            settings = dataclasses.replace(config.data, endpoint_url=endpoint)
            _opened[key] = RemoteRunStore(open_objects(RemoteURL.parse(url), settings))
        return _opened[key]


def require_remote(repo_root: Path) -> RemoteRunStore:
    remote = open_remote(repo_root)
    if remote is None:
        raise ConfigError(f"no remote run store is configured; set [runs] remote = "
                          f"\"s3://bucket/prefix\" (or \"file:///shared/dir\") in {CONFIG_FILE}.")
    return remote


# --- the queue ------------------------------------------------------------------------------------


def queue_dir(store: RunStore) -> Path:
    return store.root / PENDING_DIR


def enqueue(store: RunStore, run_id: str) -> None:
    """Note that the run is to be pushed (RunStore.save of a final record)."""
    path = queue_dir(store) / run_id
    try:
        path.parent.mkdir(exist_ok=True)
        path.touch()
    except OSError as exc:  # the record is saved; only the reminder to push it is missing
        print(f"nixrepro: warning: run {run_id} could not be queued for the remote run store "
              f"({exc.strerror or exc}); push it with `nixrepro push {run_id}`.", file=sys.stderr)


def queued(store: RunStore) -> list[str]:
    try:
        return sorted(p.name for p in queue_dir(store).iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []


def _done(store: RunStore, run_id: str) -> None:
    (queue_dir(store) / run_id).unlink(missing_ok=True)


def push_ended(store: RunStore, run_id: str) -> None:
    """Push the run that has just ended, if it is queued; a failure is one warning and the run
    stays queued. Never raises: the run is recorded whatever becomes of its push."""
    if not (queue_dir(store) / run_id).exists():
        return
    try:
        remote = open_remote(store.root.parent)
        if remote is None:
            return
        push_one(store, remote, run_id)
        with contextlib.suppress(RemoteError):  # the push is done; a listing only gets slower
            remote.maybe_compact()
    except PushWaits as exc:
        print(f"nixrepro: {exc}", file=sys.stderr)
    except NixreproError as exc:
        print(f"nixrepro: warning: run {run_id} is recorded here but not pushed: {exc} "
              "`nixrepro sync` pushes it.", file=sys.stderr)


def push_one(store: RunStore, remote: RemoteRunStore, run_id: str) -> Any:
    """Push one run and take it out of the queue; a conflict takes it out too (pushing it again
    could only fail again: both copies are kept, the error says where)."""
    try:
        pushed = remote.push(store, run_id)
    except (RemoteConflict, RecordError):
        _done(store, run_id)
        raise
    _done(store, run_id)
    return pushed


def sync_step(store_root: Path, dry_run: bool) -> tuple[list[str], list[str]]:
    """``nixrepro sync``'s ``runs`` step: push every queued run; (pushed, failed) lines."""
    store = RunStore(store_root)
    todo = queued(store)
    if not todo:
        return [], []
    remote = open_remote(store_root.parent)
    if remote is None:
        raise ConfigError(f"{len(todo)} run(s) wait to be pushed in {queue_dir(store)}, but no "
                          f"remote run store is configured; set [runs] remote in {CONFIG_FILE}.")
    if dry_run:
        return [f"run {run_id}" for run_id in todo], []
    done, failed = [], []
    away: RemoteUnreachable | None = None
    for run_id in todo:
        if not (store.run_dir(run_id) / RECORD_FILE).is_file():
            _done(store, run_id)
            failed.append(f"run {run_id}: its directory is gone from {store.runs_dir}; nothing to push")
            continue
        if away is not None:  # one unreachable remote is not asked again for every run
            failed.append(f"run {run_id}: {away}")
            continue
        try:
            push_one(store, remote, run_id)
            done.append(f"run {run_id} -> {remote.url}")
        except RemoteUnreachable as exc:
            away = exc
            failed.append(f"run {run_id}: {exc}")
        except NixreproError as exc:
            failed.append(f"run {run_id}: {exc}")
    if done:
        with contextlib.suppress(RemoteError):
            remote.maybe_compact()
    return done, failed


# --- resolving a RUN that is not here -------------------------------------------------------------


def resolve_remote(store: RunStore, ref: str) -> RunRecord | None:
    """The remote run ``ref`` names (an id or a unique prefix), pulled and verified into the
    local store; None when no remote is configured. Called when no local run matches."""
    remote = open_remote(store.root.parent)
    if remote is None:
        return None
    matches = remote.match(ref)
    if not matches:
        shown = ref if len(ref) <= 40 else ref[:40] + "..."
        raise RunNotFoundError(f"no run matches {shown!r} in {store.root} or in the remote run store "
                               f"{remote.url}; `nixrepro runs` and `nixrepro runs --remote` list them.")
    if len(matches) > 1:
        raise RunNotFoundError(f"{ref!r} matches {len(matches)} runs of {remote.url} "
                               f"({', '.join(matches[:5])}); give more characters of the id.")
    return pull(store, remote, matches[0])


def pull(store: RunStore, remote: RemoteRunStore, run_id: str) -> RunRecord:
    """Pull one run, its signature checked against the project's trusted keys."""
    from ..archive import trusted_keys

    team = bool(load_config(store.root.parent).archive.trusted_keys)
    return remote.pull(store, run_id, trusted_keys(store.root.parent), team_keys=team)
