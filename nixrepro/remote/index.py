"""The remote run store's listing index: every run's listing entry, read without one record.

    <prefix>/index/<id>.json          a run's entry, written last by its push: a listed run is whole
    <prefix>/pages/<n>-<sha>.json.gz  n entries in one object, named by its content

A listing is a LIST of ``index/`` (compaction keeps it under :data:`COMPACT_AT` keys), a LIST of
``pages/``, and the pages and loose entries fetched in parallel. Compaction folds the loose entries
and the pages that are not full into pages of :data:`PAGE_RUNS` and then deletes what it folded,
so full pages are never rewritten; readers list ``index/`` before ``pages/`` and start again when
an object they listed has gone, so a compaction never hides a run. An entry is the record's
summary without what no listing shows (:func:`listing_entry`); it is not verified (it cannot be
without the record): a run is verified when it is pulled.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..codec import no_gc
from ..errors import RecordError, RemoteError
from ..record import RunRecord, without_closure
from . import NoSuchKey, ObjectInfo, ObjectStore, TooLarge

FORMAT = "nixrepro-runstore"
RUNS, INDEX, PAGES = "runs/", "index/", "pages/"
PAGE_SUFFIX = ".json.gz"
PAGE_RUNS = 2000  # entries per full page (~1 MB gzipped); a full page is never rewritten
COMPACT_AT = 32  # loose index entries that make a push compact them into pages
MAX_ENTRY = 16 * 2**20  # index/<id>.json
MAX_PAGE = 256 * 2**20  # a page, gzipped and decompressed alike (2,000 entries are ~4 MB)
THREADS = 16  # objects fetched at once (the S3 client keeps 32 connections)
# a run id: 24 hex digits, or the 12 of older runs (RunStore.new_run_dir); no other length, so
# that nothing in a remote can extend a whole id into a prefix of two runs
RUN_ID = re.compile(r"[0-9a-f]{24}|[0-9a-f]{12}")
T = TypeVar("T")
R = TypeVar("R")


class _Changed(Exception):
    """An object listed a moment ago is gone: a compaction ran meanwhile; list again."""


class ListingIndex:
    """The index half of :class:`~nixrepro.remote.store.RemoteRunStore`, which provides these."""

    objects: ObjectStore

    @property
    def url(self) -> str:
        raise NotImplementedError

    def is_run_store(self, *, create: bool) -> bool:
        raise NotImplementedError

    def _put(self, key: str, data: bytes, sha256: str) -> bool | None:
        raise NotImplementedError

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
            # Another machine's compaction may fold away a page this one is comparing or reading:
            # the run is pushed and listed either way, and that compaction goes on (nothing is
            # deleted before the pages holding it are written).
            with contextlib.suppress(NoSuchKey, _Changed):
                self.compact(loose)

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
        with no_gc():
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


def entry_bytes(doc: dict[str, Any]) -> bytes:
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


def _gunzip(data: bytes, limit: int) -> bytes:
    """``data`` decompressed, refusing more than ``limit`` bytes (a small object that inflates
    to gigabytes is no page)."""
    inflate = zlib.decompressobj(wbits=31)  # the gzip format
    out = inflate.decompress(data, limit)
    if inflate.unconsumed_tail or not inflate.eof:
        raise ValueError("not a whole gzip stream within the limit")
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parallel(call: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``call`` on each item, :data:`THREADS` at a time (the objects of a listing or a run)."""
    todo = list(items)
    if len(todo) <= 1:
        return [call(item) for item in todo]
    with ThreadPoolExecutor(min(THREADS, len(todo))) as pool:
        return list(pool.map(call, todo))
