"""Uploading the pending queue (``nixrepro sync``) and discarding from it (``sync --discard``).

The queue is sacred: an item leaves it only once its bytes are stored and its run's record says so,
or when the user discards it by name. Each item is uploaded on its own, so one broken item (bytes
missing or corrupt in the cache, a refusing store, an unreadable run record) is reported and the
others go on. Each upload is made at most once:

- a lock per item (``DataCache.item_lock``): a second ``sync`` running at the same time skips it;
- the progress of each item is noted in the cache index (``uploaded``) before and after each put,
  so a sync killed half-way, or one whose run record cannot be written, resumes where it stopped;
  a put that was started but not noted as finished is first looked for in the store (the latest
  version with the same sha256 is that put), as ``data put`` does for unchanged data.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ItemError, NixreproError, UsageError
from ..record import DataVersion
from . import DataStoreError, DataStoreUnreachable, DataURI, Kind, ObjectVersion
from .cache import Pending

if TYPE_CHECKING:
    from .ops import Data

ITEM = ""  # the `uploaded` row of the item itself (a file, or a directory's final manifest)


@dataclass
class SyncReport:
    done: list[str] = field(default_factory=list)  # "#ID URI@VERSION", or "#ID URI (N bytes)" in a dry run
    failed: list[str] = field(default_factory=list)  # "#ID URI: why; the remedy"


def sync_pending(data: Data, dry_run: bool = False) -> SyncReport:
    report = SyncReport()
    away: dict[str, str] = {}  # store -> why: once a store is unreachable its other items wait
    for item in data.cache.pending():
        label = f"#{item.id} {item.uri}"
        if dry_run:
            report.done.append(f"{label} ({item.size} bytes)")
            continue
        store = _store_name(item.uri)
        if store in away:
            report.failed.append(f"{label}: {away[store]}")
            continue
        with data.cache.item_lock(item.id) as held:
            if not held or data.cache.pending_item(item.id) is None:
                continue  # another sync is uploading it, or has just finished it
            try:
                version = _upload(data, item)
                _fill_in_run(item, version)
            except DataStoreUnreachable as exc:
                away[store] = f"{exc}"
                report.failed.append(f"{label}: {exc}")
                continue
            except NixreproError as exc:
                report.failed.append(f"{label}: {exc}")
                continue
            data.cache.done_pending(item.id)
            report.done.append(f"{label}@{version.version_id}")
    return report


def discard(data: Data, text: str) -> list[str]:
    """Drop pending items named by id (``3`` or ``#3``) or URI; their bytes go at the next prune."""
    items = data.cache.pending()
    wanted = text.lstrip("#")
    chosen = [i for i in items if str(i.id) == wanted] if wanted.isdigit() else \
        [i for i in items if i.uri == text]
    if not chosen:
        raise UsageError(f"no pending item is {text!r}; `nixrepro sync --dry-run` lists them by id.")
    gone = []
    for item in chosen:
        with data.cache.item_lock(item.id) as held:
            if not held:
                raise UsageError(f"pending item #{item.id} is being uploaded by another `nixrepro sync`; "
                                 "wait for it to end.")
            data.cache.done_pending(item.id)
        run = Path(item.run_dir).name if item.run_dir else None
        kept = f" (run {run} keeps it as pending: never stored)" if run else ""
        gone.append(f"#{item.id} {item.uri}{kept}")
    return gone


def _store_name(uri: str) -> str:
    try:
        return DataURI.parse(uri).store
    except NixreproError:
        return uri


def _upload(data: Data, item: Pending) -> DataVersion:
    from .ops import Manifest, _record

    try:
        uri = DataURI.parse(item.uri).require_object()
    except UsageError as exc:  # queued by an older nixrepro that accepted it
        raise ItemError(f"{exc} It cannot be uploaded; `nixrepro sync --discard {item.id}` drops it."
                        ) from None
    source = _kept(data, item, item.sha256, "the kept bytes")
    progress = data.cache.uploads(item.id)
    if item.kind != "manifest":
        stored = _put_once(data, item, ITEM, uri, source, item.sha256, "file", progress)
        return _record(uri, stored)
    manifest = Manifest.from_bytes(source.read_bytes(), item.uri)
    entries: dict[str, dict[str, Any]] = {}
    for rel, entry in manifest.files.items():
        sha = str(entry["sha256"])
        path = _kept(data, item, sha, f"the kept bytes of {rel}")
        sent = _put_once(data, item, rel, uri.child(rel), path, sha, "file", progress)
        entries[rel] = {"version_id": sent.version_id, "sha256": sha, "size": sent.size}
    final = Manifest(dict(sorted(entries.items())))
    sha, path = data.cache.add_bytes(final.to_bytes())
    stored = _put_once(data, item, ITEM, uri, path, sha, "manifest", progress)
    data.cache.remember(uri.store, uri.key, stored.version_id, sha, stored.size, "manifest")
    return _record(uri, stored, final.size)


def _kept(data: Data, item: Pending, sha: str, what: str) -> Path:
    """An object of a pending item, checked against its sha256 before it is uploaded."""
    path = data.cache.object_path(sha)
    if not path.is_file():
        raise ItemError(f"{what} are missing from the data cache, so it cannot be uploaded; "
                        f"`nixrepro sync --discard {item.id}` drops it.")
    if data.cache.corrupt_files({path: sha}):  # kept, not evicted: they are all there is
        raise ItemError(f"{what} in the data cache no longer hash to {sha[:12]}, so they are not "
                        f"uploaded; `nixrepro sync --discard {item.id}` drops it.")
    return path


def _put_once(data: Data, item: Pending, rel: str, uri: DataURI, path: Path, sha: str, kind: Kind,
              progress: dict[str, tuple[str | None, int | None]]) -> ObjectVersion:
    done = progress.get(rel)
    if done is not None and done[0] is not None:
        return ObjectVersion(str(uri), done[0], sha, int(done[1] or 0), kind)
    store = data.store(uri)
    if done is not None or rel == ITEM:  # started before (or cheap to ask): is it there already?
        with contextlib.suppress(DataStoreError):
            latest = store.head(uri)
            if latest.sha256 == sha and latest.kind == kind:
                data.cache.note_upload(item.id, rel, latest.version_id, latest.size)
                return latest
    data.cache.note_upload(item.id, rel, None, None)
    sent = store.put_file(uri, path, sha, kind)
    data.cache.note_upload(item.id, rel, sent.version_id, sent.size)
    return sent


def _fill_in_run(item: Pending, version: DataVersion) -> None:
    """Replace the run's pending output by its stored version, in the data log and the record.
    If the record cannot be read, the item stays queued with its upload noted: the next sync
    fills it in and uploads nothing again."""
    if not item.run_dir:
        return
    from .. import datalog
    from ..rundir import fold
    from ..runstore import RunStore

    run_dir = Path(item.run_dir)
    if not run_dir.is_dir():
        return  # the run was deleted: the data is stored, nothing to fill in
    try:
        datalog.append(run_dir, "output", version)
        store = RunStore(run_dir.parent.parent)
        record = store.load(run_dir.name)
        if record.status != "running":  # a running run folds the data log itself when it ends
            store.save(fold(record, run_dir))  # the run directory's one fold (nixrepro.rundir)
    except (NixreproError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ItemError(
            f"stored as {version.uri}@{version.version_id}, but the record of run {run_dir.name} cannot "
            f"be updated ({reason}); repair it and run `nixrepro sync` again (nothing is uploaded twice), "
            f"or `nixrepro sync --discard {item.id}`."
        ) from None
