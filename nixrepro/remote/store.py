"""The remote run store: runs as immutable objects under a prefix, and an index that lists ten
thousand of them without reading one record.

    <prefix>/
      nixrepro-runstore.json      {"format": "nixrepro-runstore", "version": 1, ...}: written by
                                  the first push; a prefix with objects but without it is refused
      runs/<id>/record.json       the local record.json, byte for byte
      runs/<id>/record.sig, stdout.log, stderr.log, metrics.jsonl, code.patch
                                  what `nixrepro verify` checks, pushed before the record
      index/<id>.json             the run's listing entry, written last: a run is listed once whole
      pages/<n>-<sha>.json.gz     n listing entries in one object (compacted from index/)

A push writes every object with ``put_if_absent``: an object that is already there is compared
(its sha256), never replaced, so pushing a run twice is a no-op and a different run under the same
id is refused. Only derived objects are ever deleted: a listing entry once a page holds it, a page
once a bigger page holds it; never a run's object.

Listing: a LIST of ``index/`` (few keys: compaction keeps them under :data:`COMPACT_AT`), a LIST of
``pages/``, the pages and the loose entries fetched in parallel. A plain LIST of 10,000 keys takes
2.4 s on SeaweedFS here, so one object per run listed by ListObjectsV2 alone would miss the 2 s
target (bench/remote_listing.py measures both). Pages hold at most :data:`PAGE_RUNS` entries;
compaction merges the loose entries and the pages that are not full into new pages and then
deletes what it merged, so full pages are never rewritten. Readers list ``index/`` before
``pages/`` and start again when an object they listed has gone (a compaction in between), so a
listing never misses a run that was listed whole before it began.

A listing entry is the record's summary (what ``summary.json`` holds locally) without what no
listing shows (:func:`listing_entry`: environment variables, flake inputs...), which is most of it:
10,000 entries are ~18 MB of JSON to parse and decode. A listing shows what the index says; a
run is verified when it is pulled (:meth:`RemoteRunStore.pull`): its record's hashes, its
signature where it has one, and its files' hashes, before anything is written locally.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import NixreproError, RecordError, RunNotFoundError
from ..fsutil import sha256_file
from ..record import RunRecord, without_closure
from ..rundir import DEV_PATCH
from ..runstore import RECORD_FILE, RUN_FILES, SIGNATURE_FILE, RunStore
from . import (
    NoSuchKey,
    ObjectInfo,
    ObjectStore,
    RemoteConflict,
    RemoteError,
    RemoteIntegrityError,
    TooLarge,
)

MARKER = "nixrepro-runstore.json"
PROBE = ".nixrepro-probe-"  # the object that tests a service's conditional writes (remote.s3)
FORMAT = "nixrepro-runstore"
VERSION = 1
RUNS, INDEX, PAGES = "runs/", "index/", "pages/"
PAGE_SUFFIX = ".json.gz"
PAGE_RUNS = 2000  # entries per full page (~1 MB gzipped); a full page is never rewritten
COMPACT_AT = 32  # loose index entries that make a push compact them into pages
THREADS = 16  # objects fetched at once (the S3 client keeps 32 connections)
# The run's objects besides record.json, in the order they are pushed; the record comes after them
# and the index entry last, so a run that can be found is whole.
RUN_OBJECTS = (SIGNATURE_FILE, *RUN_FILES, DEV_PATCH)
# a run id: 24 hex digits, or the 12 of older runs (RunStore.new_run_dir); no other length, so
# that nothing in a remote can extend a whole id into a prefix of two runs
RUN_ID = re.compile(r"[0-9a-f]{24}|[0-9a-f]{12}")
PULLING = "pulling"  # .nixrepro/pulling/<id>-<random>/: a pull in progress, renamed into runs/ whole
# the most a reader takes of an object it holds in memory (anything bigger is no object of ours):
MAX_RECORD = 256 * 2**20  # record.json (a 20,000-path closure is ~4 MB)
MAX_SIGNATURE = 2**16  # record.sig
MAX_ENTRY = 16 * 2**20  # index/<id>.json
MAX_PAGE = 256 * 2**20  # a page, gzipped and decompressed alike (2,000 entries are ~4 MB)
T = TypeVar("T")
R = TypeVar("R")


class PushWaits(RemoteError):
    """The run is not ready to push (still running, or a data output not yet uploaded): it stays
    in the queue and ``nixrepro sync`` pushes it later."""


@dataclass(frozen=True)
class Pushed:
    run_id: str
    written: int  # objects written now
    present: int  # objects that were there already with the same bytes


class _Changed(Exception):
    """An object listed a moment ago is gone: a compaction ran meanwhile; list again."""


class RemoteRunStore:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self._marker: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return str(self.objects.url)

    # --- the marker -----------------------------------------------------------------------------

    def is_run_store(self, *, create: bool) -> bool:
        """Whether the prefix is a run store; ``create``: make an empty prefix one (first push).

        An empty prefix without ``create`` is False (no run pushed yet); a prefix holding other
        objects, or a marker of another format, is refused with a sentence.
        """
        with self._lock:  # the pushes of a run's threads, or of a pipeline's stages, ask at once
            if self._marker is None:
                found = self._find_marker()
                if found is None and not create:
                    return False
                self._marker = found if found is not None else self._create_marker()
            self.objects.conditional_writes = bool(self._marker.get("conditional_writes", True))
            return True

    def _find_marker(self) -> dict[str, Any] | None:
        """The marker; None for an empty prefix. Objects without a marker are asked about twice:
        another machine's first push may have written its marker between the two looks."""
        with contextlib.suppress(NoSuchKey):
            return self._marker_doc()
        others = [item for item in self.objects.list("", limit=8) if not item.key.startswith(PROBE)]
        if not others:
            return None
        with contextlib.suppress(NoSuchKey):
            return self._marker_doc()
        raise RemoteError(
            f"{self.url} holds objects but no {MARKER}, so it is not a nixrepro run store; point "
            "[runs] remote in nixrepro.toml at an empty prefix (e.g. add /runs) or at an existing "
            "run store.")

    def _marker_doc(self) -> dict[str, Any]:
        """The marker as read; a marker cut short by a first push that was killed mid-write
        (SeaweedFS keeps what it got, with the sha256 its writer meant) is written again whole:
        its bytes can only be those of one of the two markers nixrepro writes."""
        try:
            raw = self.objects.get(MARKER, MAX_SIGNATURE)
        except TooLarge:
            raw = b""
        try:
            return self._read_marker(raw)
        except RemoteError:
            info = self.objects.head(MARKER)
            for conditional in (True, False):
                doc = _marker(conditional)
                data = _marker_bytes(doc)
                if info is not None and info.sha256 == _sha(data) and info.size != len(data):
                    self.objects.repair(MARKER, data, info.sha256)
                    return doc
            raise

    def _read_marker(self, raw: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise RemoteError(f"{self.url}/{MARKER} is not a nixrepro run store marker, so the prefix "
                              "is not a run store; point [runs] remote at an empty prefix or at a run "
                              "store.")
        version = doc.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise RemoteError(f"{self.url} is a run store of format version {version!r}, newer than "
                              f"this nixrepro reads ({VERSION}); upgrade nixrepro.")
        return doc

    def _create_marker(self) -> dict[str, Any]:
        probe = getattr(self.objects, "probe_conditional_writes", None)
        conditional = bool(probe()) if probe is not None else True
        self.objects.conditional_writes = conditional
        doc = _marker(conditional)
        data = _marker_bytes(doc)
        if not self.objects.put_if_absent(MARKER, data, _sha(data)):
            return self._marker_doc()
        return doc

    # --- push -----------------------------------------------------------------------------------

    def push(self, local: RunStore, run_id: str) -> Pushed:
        """Push one ended run: its files, then its record, then its listing entry.

        Raises :class:`PushWaits` for a run that is not ready (it stays queued), RecordError for
        a local record or file that was changed after the run ended (verify fails it: it is not
        shared), :class:`RemoteConflict` when the remote holds a different run under this id.
        A local file that cannot be read is one sentence too (the run stays queued): a run's end
        pushes, and a run's end never raises anything else.
        """
        try:
            return self._push(local, run_id)
        except OSError as exc:  # the backends' own errors are RemoteErrors: this one is local
            raise NixreproError(
                f"cannot read run {run_id} in {local.run_dir(run_id)} to push it "
                f"({exc.strerror or exc}{': ' + exc.filename if exc.filename else ''}); fix its "
                "permissions (or the disk), then `nixrepro sync` pushes it.") from None

    def _push(self, local: RunStore, run_id: str) -> Pushed:
        run_dir = local.run_dir(run_id)
        raw = (run_dir / RECORD_FILE).read_bytes()
        doc = _json_object(raw, f"run {run_id}'s {RECORD_FILE}")
        if doc.get("status") == "running":
            raise PushWaits(f"run {run_id} is still running; it is pushed when it ends.")
        if _pending_outputs(doc):
            raise PushWaits(f"run {run_id} waits for its data outputs to be uploaded "
                            "(`nixrepro sync` uploads them, then pushes the run).")
        local._check_hashes(run_id, doc)
        objects = [(name, run_dir / name) for name in RUN_OBJECTS if (run_dir / name).is_file()]
        hashes = {name: sha256_file(path) for name, path in objects}
        _check_files(run_id, doc, hashes)
        self.is_run_store(create=True)
        base = f"{RUNS}{run_id}/"
        results = _parallel(lambda item: self._put_run_object(base + item[0], item[1], hashes[item[0]]),
                            objects)
        results.append(self._put_run_object(base + RECORD_FILE, raw, _sha(raw)))
        entry = _entry_bytes(doc)
        self._put(f"{INDEX}{run_id}.json", entry, _sha(entry))  # another entry there: a listing's own
        return Pushed(run_id, results.count(True), results.count(False))

    def _put_run_object(self, key: str, data: bytes | Path, sha256: str) -> bool:
        """:meth:`_put`, with a different object under a run's key refused (runs are immutable)."""
        written = self._put(key, data, sha256)
        if written is not None:
            return written
        name = key.rsplit("/", 1)[-1]
        run_id = key.split("/")[1]
        if name == SIGNATURE_FILE:
            return False  # signed again here since it was pushed: the remote keeps the first one
        raise RemoteConflict(
            f"run {run_id} in {self.url} holds a different {name} than the local run: the local run "
            "was changed after it was pushed, or another machine recorded a run with this id; runs "
            f"are immutable, so neither is overwritten (`nixrepro show {run_id}` shows the local one)."
        )

    def _put(self, key: str, data: bytes | Path, sha256: str) -> bool | None:
        """Write the object, or prove the one there holds the same bytes: True when written, False
        when the same bytes are there, None when other bytes are (left as they are).

        One object is replaced: a copy of these very bytes cut short, whose kept sha256 is theirs
        but whose size is not. SeaweedFS keeps what a writer killed mid-PUT sent (even nothing);
        S3 would have refused it. It is no other object, and rewriting it loses nothing.
        """
        if self.objects.put_if_absent(key, data, sha256):
            return True
        info = self.objects.head(key)
        if info is None:
            return self._put(key, data, sha256)  # deleted meanwhile (a listing entry folded)
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        if info.sha256 == sha256 and info.size != size:
            self.objects.repair(key, data, sha256)
            return True
        if info.size == size and (info.sha256 or self.objects.digest(key)) == sha256:
            return False
        return None

    def compact(self, loose: Sequence[ObjectInfo] | None = None) -> int:
        """Fold the loose listing entries and the pages that are not full into full pages; returns
        how many entries were folded. Safe with other compactions and pushes running at once: an
        object is deleted only after a page holding all it held is written."""
        loose = list(loose) if loose is not None else self._loose()
        small = [p for p in self._pages() if _page_count(p.key) < PAGE_RUNS]
        merged: dict[str, dict[str, Any]] = {}
        read: list[str] = []
        for page, doc in zip(small, _parallel(self._maybe(self._page_to_fold), small), strict=True):
            if doc is not None:
                merged.update(doc)
                read.append(page.key)
        for item, found in zip(loose, _parallel(self._maybe(self._read_entry), loose), strict=True):
            if found is not None and found[1] is not None:
                merged.setdefault(found[0], found[1])
                read.append(item.key)
        if not merged:
            return 0
        written = self.write_pages(merged.values())
        for key in read:
            if key not in written:
                self.objects.delete(key)
        return len(loose)

    def write_pages(self, entries: Iterable[dict[str, Any]]) -> set[str]:
        """Write ``entries`` as pages of :data:`PAGE_RUNS` (the last one may hold fewer), each
        named by its count and content; returns their keys."""
        ordered = sorted(entries, key=lambda e: (str(e.get("started_at")), str(e.get("id"))))
        written = set()
        for start in range(0, len(ordered), PAGE_RUNS):
            chunk = ordered[start:start + PAGE_RUNS]
            data = gzip.compress(json.dumps({"format": FORMAT, "entries": chunk},
                                            sort_keys=True).encode(), compresslevel=6, mtime=0)
            key = f"{PAGES}{len(chunk):06d}-{_sha(data)[:32]}{PAGE_SUFFIX}"
            if self._put(key, data, _sha(data)) is None:  # named by its content: never another page
                raise RemoteError(f"{self.url}/{key} is not the index page its name says; it was "
                                  "written by something other than nixrepro: remove it.")
            written.add(key)
        return written

    def maybe_compact(self) -> None:
        """Compact when :data:`COMPACT_AT` loose entries have gathered (after a push)."""
        loose = self._loose()
        if len(loose) >= COMPACT_AT:
            self.compact(loose)

    # --- read -----------------------------------------------------------------------------------

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every listed run's entry, by id."""
        if not self.is_run_store(create=False):
            return {}
        for _attempt in range(5):
            loose = self._loose()  # before the pages: an entry folded meanwhile is in a page
            pages = self._pages()
            try:
                found: dict[str, dict[str, Any]] = {}
                for doc in _parallel(self._read_page, pages):
                    for run_id, entry in doc.items():
                        found.setdefault(run_id, entry)
                missing = [item for item in loose if _entry_id(item.key) not in found]
                for run_id, read in _parallel(self._read_entry, missing):
                    # one that does not read is left out with the listing's warning (from_dict)
                    found.setdefault(run_id, read if read is not None else {"id": run_id})
                return found
            except _Changed:
                continue
        raise RemoteError(f"the index of {self.url} kept changing while it was read (other machines "
                          "compacting it); retry.")

    def summaries(self) -> list[RunRecord]:
        """Every listed run as a summary (no closure, no environment variables), newest first;
        an entry that does not read as a record is left out with one warning."""
        found = []
        with _no_gc():
            for run_id, entry in self.entries().items():
                try:
                    found.append(RunRecord.from_dict(entry))
                except RecordError as exc:
                    why = ("cut short or altered" if set(entry) == {"id"} else
                           str(exc).split("; ")[0])  # the record's own remedy is not this one
                    print(f"nixrepro: warning: run {run_id} of {self.url} is left out of the listing: "
                          f"its listing entry does not read ({why}); `nixrepro pull {run_id}` still "
                          "fetches and verifies the run.", file=sys.stderr)
        return sorted(found, key=lambda r: (r.started_at, r.id), reverse=True)

    def match(self, ref: str) -> list[str]:
        """The ids of the remote's runs that start with ``ref`` (hex only: nothing else is an id)."""
        if not re.fullmatch(r"[0-9a-f]+", ref) or not self.is_run_store(create=False):
            return []
        ids = {item.key.split("/")[1] for item in self.objects.list(RUNS + ref)
               if item.key.endswith("/" + RECORD_FILE) and item.key.count("/") == 2}
        return sorted(run_id for run_id in ids if run_id.startswith(ref) and RUN_ID.fullmatch(run_id))

    def pull(self, local: RunStore, run_id: str, trusted_keys: Sequence[str],
             team_keys: bool = False) -> RunRecord:
        """Fetch one run, verify it, and only then put it into the local store (atomically: a
        directory renamed into place). Raises :class:`RemoteIntegrityError` for a run that fails
        verification; nothing local is written then.

        The files are fetched into ``.nixrepro/pulling/``, outside ``runs/``, a piece at a time
        (a log may be bigger than memory) and checked against the record's hashes as they come:
        a pull that is killed, or that fills the disk, leaves no run behind, whole or half.

        ``trusted_keys``: the public keys a signature is checked against; ``team_keys``: they
        include a team's list ([archive] trusted_keys), so a record signed by any other key is
        refused (without one, such a signature proves nothing either way, and the hashes decide).
        """
        if not RUN_ID.fullmatch(run_id):
            raise RunNotFoundError(f"{run_id[:40]!r} is not a run id.")
        if (local.run_dir(run_id) / RECORD_FILE).is_file():
            return local.load(run_id)
        base = f"{RUNS}{run_id}/"
        try:
            raw = self.objects.get(base + RECORD_FILE, MAX_RECORD)
        except NoSuchKey:
            raise RunNotFoundError(f"there is no run {run_id} in {self.url}; `nixrepro runs --remote` "
                                   "lists its runs.") from None
        except TooLarge as exc:
            raise self._refusal(run_id, f"its {RECORD_FILE} is {exc.size} bytes, more than any "
                                        "record") from None
        doc = _json_object(raw, f"{self.url}'s record of run {run_id}", remote=True)
        signature = self._verified(run_id, doc, trusted_keys, team_keys, base)
        local.ensure()
        staging = local.root / PULLING / f"{run_id}-{secrets.token_hex(4)}"
        try:
            staging.mkdir(parents=True)
            self._fetch_files(run_id, doc, base, staging)
            if signature is not None:
                _write_synced(staging / SIGNATURE_FILE, signature)
            _write_synced(staging / RECORD_FILE, raw)
            try:
                os.rename(staging, local.run_dir(run_id))
            except OSError:
                if not (local.run_dir(run_id) / RECORD_FILE).is_file():
                    raise  # not a pull of the same run that won the race
        except OSError as exc:
            raise NixreproError(
                f"cannot write run {run_id} into {local.runs_dir} ({exc.strerror or exc}); free space "
                "there (or fix its permissions) and pull it again: nothing of it was kept.") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        local.summary(run_id)  # its summary.json, for listings
        return local.load(run_id)

    def _refusal(self, run_id: str, why: str) -> RemoteIntegrityError:
        return RemoteIntegrityError(
            f"run {run_id} in {self.url} fails verification ({why}), so it is not pulled; "
            "nothing was written locally: ask whoever pushed it to check it with `nixrepro "
            "verify`, and the store's owner to look at who wrote it.")

    def _verified(self, run_id: str, doc: dict[str, Any], trusted_keys: Sequence[str],
                  team_keys: bool, base: str) -> bytes | None:
        """The record checked against its id, its hashes, its shape and its signature (whose
        bytes are returned, None for an unsigned record), before any file is fetched."""
        from ..verify import check_record, check_signature

        if doc.get("id") != run_id:
            raise self._refusal(run_id, f"its record is of run {str(doc.get('id'))[:40]!r}")
        if doc.get("status") == "running":
            raise self._refusal(run_id, "its record says it is still running, which no push writes")
        record = check_record(doc)
        if not record.ok:
            raise self._refusal(run_id, record.detail)
        try:
            RunRecord.from_dict(doc)  # a record of another shape, its hashes recomputed: never kept
        except RecordError as exc:
            raise self._refusal(run_id, f"its record does not read: {str(exc).split('; ')[0]}") from None
        signature: bytes | None = None
        try:
            signature = self.objects.get(base + SIGNATURE_FILE, MAX_SIGNATURE)
        except NoSuchKey:
            pass
        except TooLarge as exc:
            raise self._refusal(run_id, f"its {SIGNATURE_FILE} is {exc.size} bytes, more than any "
                                        "signature") from None
        if signature is not None:
            sig = _json_object(signature, f"run {run_id}'s {SIGNATURE_FILE}", remote=True)
            checked = check_signature(doc, sig, trusted_keys)
            if not checked.ok:
                raise self._refusal(run_id, checked.detail)
            if checked.result == "skip" and team_keys:
                signer = str(sig.get("signature", "")).split(":", 1)[0][:60]
                raise self._refusal(run_id, f"it is signed by {signer!r}, a key that [archive] "
                                            "trusted_keys does not list; if that is a team machine's "
                                            "key, add its public half there")
        if not isinstance(doc.get("files") or {}, dict) or set(doc.get("files") or {}) - set(RUN_FILES):
            raise self._refusal(run_id, "its record names files that no run writes")
        return signature

    def _fetch_files(self, run_id: str, doc: dict[str, Any], base: str, staging: Path) -> None:
        """Every file the record names, fetched into ``staging`` and checked against its sha256
        (a log, the metrics, a dev run's patch). A local disk's error is the OSError itself."""
        wanted = {str(name): value for name, value in dict(doc.get("files") or {}).items()}
        code: dict[str, Any] = doc["code"] if isinstance(doc.get("code"), dict) else {}
        if code.get("diff_sha256"):
            wanted[DEV_PATCH] = code["diff_sha256"]

        def fetch(name: str) -> None:
            path = staging / name
            try:
                digest = self.objects.get_file(base + name, path)
            except NoSuchKey as exc:
                raise self._refusal(run_id, f"a file its record names is missing: {exc}") from None
            if digest != wanted[name]:
                raise self._refusal(run_id, f"{name} does not hash to the sha256 its record holds")
            _sync(path)

        _parallel(fetch, sorted(wanted))

    def _loose(self) -> list[ObjectInfo]:
        return [item for item in self.objects.list(INDEX) if _entry_id(item.key)]

    def _pages(self) -> list[ObjectInfo]:
        pages = [item for item in self.objects.list(PAGES) if item.key.endswith(PAGE_SUFFIX)]
        return sorted(pages, key=lambda p: p.size, reverse=True)

    def _read_page(self, page: ObjectInfo) -> dict[str, dict[str, Any]]:
        """The page's entries by run id ({} with a warning for a page that does not read)."""
        try:
            entries = _page_entries(self.objects.get(page.key, MAX_PAGE))
        except NoSuchKey:
            raise _Changed() from None
        except TooLarge:
            entries = None
        if entries is None:
            print(f"nixrepro: warning: {self.url}/{page.key} does not read as an index page (cut "
                  "short, altered or not written by nixrepro); the runs listed only there are left "
                  "out (pushing them again lists them).", file=sys.stderr)
            return {}
        return entries

    def _page_to_fold(self, page: ObjectInfo) -> dict[str, dict[str, Any]] | None:
        """A page's entries for a compaction, which deletes the page once they are in a new one;
        None for a page it must leave alone: one that does not read, unless it is a copy cut
        short by a compaction killed mid-write (its kept sha256 is the one its name says, its
        bytes are not), whose entries are still loose (a compaction deletes after it writes)."""
        try:
            raw = self.objects.get(page.key, MAX_PAGE)
        except NoSuchKey:
            raise _Changed() from None
        except TooLarge:
            return None  # never deleted unread
        entries = _page_entries(raw)
        if entries is not None:
            return entries
        named = page.key[len(PAGES):].removesuffix(PAGE_SUFFIX).partition("-")[2]
        info = self.objects.head(page.key)
        cut_short = bool(named) and info is not None and bool(info.sha256) \
            and str(info.sha256).startswith(named) and not _sha(raw).startswith(named)
        return {} if cut_short else None

    def _read_entry(self, item: ObjectInfo) -> tuple[str, dict[str, Any] | None]:
        """(run id, its entry); None for an entry that does not read (cut short by a push that
        was killed: the push, still queued, writes it again), which compaction leaves alone."""
        run_id = _entry_id(item.key)
        try:
            raw = self.objects.get(item.key, MAX_ENTRY)
        except NoSuchKey:
            raise _Changed() from None
        except TooLarge:
            return run_id, None
        try:
            entry = json.loads(raw)
        except ValueError:
            return run_id, None
        return run_id, entry if isinstance(entry, dict) and entry.get("id") == run_id else None

    @staticmethod
    def _maybe(read: Callable[[T], R]) -> Callable[[T], R | None]:
        def wrapped(item: T) -> R | None:
            try:
                return read(item)
            except _Changed:
                return None  # folded by another compaction meanwhile: its page holds it

        return wrapped


def _marker(conditional: bool) -> dict[str, Any]:
    # The same bytes from every machine (no host, no time): two first pushes at once that both
    # find the prefix empty write identical markers, whichever lands.
    return {"format": FORMAT, "version": VERSION, "conditional_writes": conditional}


def _marker_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def listing_entry(doc: dict[str, Any]) -> dict[str, Any]:
    """A record's listing entry: its summary without what no listing shows and what makes up most
    of its bytes and decoding time (environment variables, flake inputs, GPUs, CUDA and build
    facts, a stage's key parts); still a record that RunRecord.from_dict reads."""
    entry = {key: value for key, value in without_closure(doc).items() if key not in _UNLISTED}
    if isinstance(entry.get("environment"), dict):
        entry["environment"] = {**entry["environment"], "inputs": {}}
    if isinstance(entry.get("host"), dict):
        entry["host"] = {**entry["host"], "gpus": []}
    if isinstance(entry.get("stage"), dict):
        entry["stage"] = {**entry["stage"], "key_parts": {}}
    return entry


_UNLISTED = ("env_vars", "cuda", "facts")


def _entry_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(listing_entry(doc), sort_keys=True, ensure_ascii=False) + "\n").encode()


def _entry_id(key: str) -> str:
    name = key[len(INDEX):] if key.startswith(INDEX) else ""
    run_id = name.removesuffix(".json")
    return run_id if name.endswith(".json") and RUN_ID.fullmatch(run_id) else ""


def _page_entries(raw: bytes) -> dict[str, dict[str, Any]] | None:
    """A page's entries by run id, None for bytes that are no page. An entry whose id is no run
    id (``../x``, a terminal's escape codes) is no run's and is left out."""
    try:
        entries = json.loads(_gunzip(raw, MAX_PAGE))["entries"]
        return {entry["id"]: entry for entry in entries
                if isinstance(entry, dict) and isinstance(entry.get("id"), str)
                and RUN_ID.fullmatch(entry["id"])}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error):
        return None


def _page_count(key: str) -> int:
    try:
        return int(key[len(PAGES):].split("-", 1)[0])
    except ValueError:
        return 0


def _pending_outputs(doc: dict[str, Any]) -> bool:
    data: dict[str, Any] = doc["data"] if isinstance(doc.get("data"), dict) else {}
    outputs = data.get("outputs") or []
    results = data.get("output_results") or []
    return any(isinstance(v, dict) and v.get("pending") for v in outputs) or \
        any(isinstance(r, dict) and r.get("state") == "pending" for r in results)


def _check_files(run_id: str, doc: dict[str, Any], hashes: dict[str, str]) -> None:
    """The local files are those the run ended with: an edited log is not shared."""
    recorded = doc.get("files") or {}
    for name in RUN_FILES:
        if name in recorded and hashes.get(name) != recorded[name]:
            raise RecordError(f"run {run_id}'s {name} was changed after the run ended, so it is not "
                              f"pushed; `nixrepro verify {run_id}` shows the checks.")
    patch = (doc.get("code") or {}).get("diff_sha256")
    if patch and hashes.get(DEV_PATCH) != patch:
        raise RecordError(f"run {run_id}'s {DEV_PATCH} does not hash to its record's diff_sha256, so "
                          f"it is not pushed; `nixrepro verify {run_id}` shows the checks.")


def _json_object(raw: bytes, what: str, remote: bool = False) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        error = RemoteIntegrityError if remote else RecordError
        raise error(f"{what} is not a JSON object, so it is not {'pulled' if remote else 'pushed'}; "
                    "nothing was written.")
    return doc


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a listing is parsed and decoded: 10,000 entries
    are ~100,000 new objects, none in a cycle, and the collections their allocation sets off cost
    more than the decoding itself (from_dict of 10,000 entries: 0.38 s paused, 0.9-1.2 s not)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _gunzip(data: bytes, limit: int) -> bytes:
    """``data`` decompressed, refusing more than ``limit`` bytes (a small object that inflates
    to gigabytes is no page)."""
    inflate = zlib.decompressobj(wbits=31)  # the gzip format
    out = inflate.decompress(data, limit)
    if inflate.unconsumed_tail or not inflate.eof:
        raise ValueError("not a whole gzip stream within the limit")
    return out


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parallel(call: Callable[[T], R], items: Iterable[T]) -> list[R]:
    todo = list(items)
    if len(todo) <= 1:
        return [call(item) for item in todo]
    with ThreadPoolExecutor(min(THREADS, len(todo))) as pool:
        return list(pool.map(call, todo))
