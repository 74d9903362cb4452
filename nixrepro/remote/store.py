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
import json
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import NixreproError, RecordError, RunNotFoundError
from ..fsutil import sha256_file, staging_dir
from ..record import RunRecord
from ..rundir import DEV_PATCH
from ..runstore import RECORD_FILE, RUN_FILES, SIGNATURE_FILE, RunStore
from . import (
    NoSuchKey,
    ObjectStore,
    RemoteConflict,
    RemoteError,
    RemoteIntegrityError,
    TooLarge,
)
from .index import (
    FORMAT,
    INDEX,
    RUN_ID,
    RUNS,
    ListingIndex,
    _parallel,
    _sha,
    entry_bytes,
)

MARKER = "nixrepro-runstore.json"
PROBE = ".nixrepro-probe-"  # the object that tests a service's conditional writes (remote.s3)
VERSION = 1
# The run's objects besides record.json, in the order they are pushed; the record comes after them
# and the index entry last, so a run that can be found is whole.
RUN_OBJECTS = (SIGNATURE_FILE, *RUN_FILES, DEV_PATCH)
PULLING = "pulling"  # .nixrepro/pulling/<id>-<random>/: a pull in progress, renamed into runs/ whole
# the most a reader takes of an object it holds in memory (anything bigger is no object of ours):
MAX_RECORD = 256 * 2**20  # record.json (a 20,000-path closure is ~4 MB)
MAX_SIGNATURE = 2**16  # record.sig
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


class RemoteRunStore(ListingIndex):
    """The run store under one prefix: pushes and pulls here, the listing index in ListingIndex."""

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
        entry = entry_bytes(doc)
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


    # --- read -----------------------------------------------------------------------------------


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
        staging: Path | None = None
        try:
            staging = staging_dir(local.root / PULLING, run_id)
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
            if staging is not None:
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


def _marker(conditional: bool) -> dict[str, Any]:
    # The same bytes from every machine (no host, no time): two first pushes at once that both
    # find the prefix empty write identical markers, whichever lands.
    return {"format": FORMAT, "version": VERSION, "conditional_writes": conditional}


def _marker_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


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
