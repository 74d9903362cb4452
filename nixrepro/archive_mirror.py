"""The archive's mirror: an ``s3://bucket/prefix`` archive kept as a local ``file://`` cache.

Debian's nix has no ``s3://`` store, so ``nixrepro archive`` writes the binary cache into a local
directory (:func:`nixrepro.archive.staging_dir`) and this module copies it up, and back down where
a rebuild needs it. A binary cache's narinfos and NARs never change once written (a store path's
contents are fixed by its hash), so an object already there is skipped; the few files that do
change (``nix-cache-info``, the README, the key list, the records of a run archived again) are
named by the caller and always sent.

The objects are reached through :class:`Objects`, four calls on plain (unversioned) objects:
an archive bucket needs no versioning, and a versioned one works the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from .config import DataConfig
from .errors import NoSuchObject

THREADS = 10  # objects in flight: narinfos are tiny, so the round trips are what costs
T = TypeVar("T")


class Objects(Protocol):
    """The objects under one ``s3://bucket/prefix``, by key relative to the prefix."""

    def list_keys(self, under: str = "") -> list[str]:
        """Every key below ``under`` (a relative directory, "" for all), relative to the prefix."""

    def put(self, key: str, path: Path) -> None:
        """Write the file at ``path`` as ``key``, replacing what is there."""

    def get(self, key: str, dest: Path) -> None:
        """Write ``key``'s bytes to ``dest``; NoSuchObject when there is none."""


class S3Objects:
    """:class:`Objects` on S3 through the data store's S3 backend (the one module that talks to S3)."""

    def __init__(self, url: str, endpoint_url: str | None) -> None:
        from .datastore import DataURI
        from .datastore.s3 import S3Store

        self.base = DataURI.parse(url)
        self.store = S3Store(DataConfig(endpoint_url=endpoint_url))

    def list_keys(self, under: str = "") -> list[str]:
        base = self.base.child(under.strip("/")) if under.strip("/") else self.base
        start = len(f"s3://{self.base.bucket}/") + (len(self.base.key) + 1 if self.base.key else 0)
        return [version.uri[start:] for version in self.store.listing(base)]

    def put(self, key: str, path: Path) -> None:
        self.store.put_object(self.base.child(key), path)

    def get(self, key: str, dest: Path) -> None:
        self.store.get_object(self.base.child(key), dest)


def objects(url: str, endpoint_url: str | None) -> Objects:
    return S3Objects(url, endpoint_url)


def upload(local: Path, url: str, *, endpoint_url: str | None,
           always: Callable[[str], bool]) -> tuple[int, int]:
    """Copy every file under ``local`` to ``url`` that is not there yet, and every file whose
    relative path ``always`` accepts. Returns (uploaded, skipped)."""
    store = objects(url, endpoint_url)
    existing = set(store.list_keys())
    todo, skipped = [], 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = path.relative_to(local).as_posix()
        if any(part.startswith(".") for part in key.split("/")):
            continue  # a write in progress or cut short (.x.part, .x.tmp), a lock: no archive's file
        if key in existing and not always(key):
            skipped += 1
        else:
            todo.append((key, path))
    _parallel(lambda item: store.put(*item), todo)
    return len(todo), skipped


def download(url: str, local: Path, *, endpoint_url: str | None, always: Callable[[str], bool],
             skip: Callable[[str], bool] = lambda key: False) -> int:
    """Copy every object under ``url`` into ``local`` that is not there yet (or that ``always``
    accepts), leaving out the keys ``skip`` accepts. Returns the count."""
    store = objects(url, endpoint_url)
    todo = [key for key in store.list_keys() if safe_key(key) and not skip(key)
            and (always(key) or not (local / key).is_file())]
    fetch_into(store, local, todo)
    return len(todo)


def fetch_into(store: Objects, local: Path, keys: Iterable[str]) -> list[str]:
    """Download ``keys`` into ``local`` (each written whole, then renamed into place, so an
    interrupted download never leaves a short file that a later mirror would take as complete).
    Returns the keys that are not there; a key that is no relative path inside ``local``
    (``../x``, ``/etc/x``: what a hostile bucket may list) is never fetched, and counts as not there."""
    missing: list[str] = []

    def one(key: str) -> None:
        if not safe_key(key):
            missing.append(key)
            return
        target = local / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        try:
            store.get(key, partial)
        except NoSuchObject:
            missing.append(key)
            partial.unlink(missing_ok=True)
            return
        partial.replace(target)

    _parallel(one, list(keys))
    return missing


def safe_key(key: str) -> bool:
    """A key that names a file inside the mirror: relative, with no empty, ``.`` or ``..`` part
    (a binary cache, its records and its front never have another)."""
    parts = key.split("/")
    return bool(key) and "\\" not in key and "\0" not in key \
        and not any(part in ("", ".", "..") for part in parts)


def _parallel(call: Callable[[T], None], items: list[T]) -> None:
    if len(items) <= 1:
        for item in items:
            call(item)
        return
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(call, items))


def fetch_closure(store: Objects, local: Path, roots: Iterable[str]) -> int:
    """Download into ``local`` the narinfos and NARs of ``roots`` (store paths) and of everything
    they reference, following each narinfo's References: what a rebuild of one run substitutes,
    not the whole archive (a team's archive holds every run's environment). A root the archive
    does not have is left out (nix then builds or fetches it, or says what is missing).
    Returns the number of files downloaded."""
    fetched = 0
    seen: set[str] = set()
    wanted = {_hash_part(path) for path in roots}
    while wanted:
        todo = sorted(wanted - seen)
        seen.update(todo)
        keys = [f"{part}.narinfo" for part in todo if not (local / f"{part}.narinfo").is_file()]
        missing = set(fetch_into(store, local, keys))
        fetched += len(keys) - len(missing)
        nars, wanted = [], set()
        for part in todo:
            info = _narinfo(local / f"{part}.narinfo")
            if info is None:
                continue
            url, references = info
            if url and not (local / url).is_file():
                nars.append(url)
            wanted.update(_hash_part(ref) for ref in references)
        fetched += len(nars) - len(fetch_into(store, local, nars))
    return fetched


def _hash_part(path: str) -> str:
    """``/nix/store/<32 chars>-name`` (or its base name) -> the 32 characters a narinfo is named by."""
    return path.rsplit("/", 1)[-1][:32]


def _narinfo(path: Path) -> tuple[str | None, list[str]] | None:
    """(URL, References) of a narinfo; None where it is not there or not readable."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    fields = dict(line.partition(": ")[::2] for line in text.splitlines() if ": " in line)
    url = fields.get("URL")
    if url is not None and (url.startswith("/") or ".." in url.split("/")):
        url = None  # a NAR is under the cache's root; a narinfo pointing elsewhere gets nothing
    return url, fields.get("References", "").split()
