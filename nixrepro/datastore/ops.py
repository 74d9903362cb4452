"""Versioned data operations over the stores and the cache: put, get, verify, pending, sync.

The library behind ``nixrepro data ...``, ``nixrepro sync``, the ``--input/--output`` flags of
``nixrepro run`` and the in-experiment API (``nixrepro.data``). A directory is a set of objects
plus a manifest (``nixrepro.manifest/1``: relative path -> version id, sha256, size); the
manifest's version pins the whole directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..codec import canonical_json, frozen
from ..config import DataConfig
from ..errors import NixreproError, UsageError
from ..fsutil import sha256_file
from ..record import DataVersion
from . import (
    VERSIONS_DIR,
    DataIntegrityError,
    DataRef,
    DataStore,
    DataStoreError,
    DataStoreUnreachable,
    DataURI,
    NoSuchObject,
    ObjectVersion,
    open_store,
)
from .cache import DataCache

if TYPE_CHECKING:
    from .sync import SyncReport

MANIFEST_SCHEMA = "nixrepro.manifest/1"
UPLOAD_THREADS = 32  # small objects in flight (nixrepro.datastore.s3 pools as many connections)
DOWNLOAD_ATTEMPTS = 3
RETRY_PAUSE = 0.5  # seconds before the second attempt of a download the server broke off; doubled


@frozen
class Manifest:
    files: dict[str, dict[str, Any]]  # relative path -> {"version_id", "sha256", "size"}

    def to_bytes(self) -> bytes:
        return canonical_json({"schema": MANIFEST_SCHEMA, "files": self.files})

    @classmethod
    def from_bytes(cls, data: bytes, uri: str) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("schema") != MANIFEST_SCHEMA:
                raise ValueError(doc.get("schema"))
            return cls({str(k): dict(v) for k, v in doc["files"].items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataStoreError(f"{uri} is not a nixrepro directory manifest ({exc}).") from None

    @property
    def size(self) -> int:
        return sum(int(entry["size"]) for entry in self.files.values())


@frozen
class PutResult:
    version: DataVersion
    uploaded: int  # objects sent to the store
    unchanged: bool  # the latest version already held exactly these bytes: no new version


@frozen
class Fetched:
    version: DataVersion
    path: Path  # read-only, in the cache: a file, or a tree of links for a directory


class Data:
    """Data operations with one configuration and one cache (several threads may use it)."""

    def __init__(self, settings: DataConfig | None = None) -> None:
        self.settings = settings or DataConfig()
        self._cache: DataCache | None = None
        self._stores: dict[str, DataStore] = {}

    @property
    def cache(self) -> DataCache:
        if self._cache is None:
            self._cache = DataCache(self.settings.cache_path())
        return self._cache

    def store(self, uri: DataURI) -> DataStore:
        if uri.scheme not in self._stores:
            self._stores[uri.scheme] = open_store(uri, self.settings)
        return self._stores[uri.scheme]

    # --- put ------------------------------------------------------------------------------------

    def put(self, local: Path, uri_text: str) -> PutResult:
        uri = DataURI.parse(uri_text).require_object()
        if local.is_dir():
            return self._put_dir(local, uri)
        if not local.is_file():
            raise UsageError(f"{local} does not exist; give a file or a directory to put.")
        sha = self.cache.hash_files([local])[local]
        latest = self._latest(uri)
        if latest is not None and latest.sha256 == sha and latest.kind == "file":
            return PutResult(_record(uri, latest), 0, True)
        version = self.store(uri).put_file(uri, local, sha)
        self.cache.remember(uri.store, uri.key, version.version_id, sha, version.size, "file")
        return PutResult(_record(uri, version), 1, False)

    def _put_dir(self, local: Path, uri: DataURI) -> PutResult:
        # Scan first, then ask the store: a background boto3 import would hold the GIL against
        # the 20,000 stat calls (measured: 3x slower scan).
        entries = _scan(local)
        hashes = self.cache.hash_tree(local.resolve(), entries)
        digest = _digest(hashes)
        previous = self._latest(uri)
        if previous is not None and previous.kind == "manifest" and \
                self.cache.manifest_digest(uri.store, uri.key, previous.version_id) == digest:
            return PutResult(_record(uri, previous), 0, True)  # unchanged: no manifest download
        old = self.read_manifest(uri, previous).files if previous and previous.kind == "manifest" else {}
        if previous is not None and old and _digest({r: e["sha256"] for r, e in old.items()}) == digest:
            self.cache.remember_manifest(uri.store, uri.key, previous.version_id, digest)
            return PutResult(_record(uri, previous, Manifest(old).size), 0, True)
        entries_out: dict[str, dict[str, Any]] = {}
        todo: list[str] = []
        for rel, sha in hashes.items():
            if rel in old and old[rel]["sha256"] == sha and old[rel].get("version_id"):
                entries_out[rel] = old[rel]
            else:
                todo.append(rel)
        store = self.store(uri)

        def send(rel: str) -> tuple[str, ObjectVersion]:
            return rel, store.put_file(uri.child(rel), Path(entries[rel][0]), hashes[rel])

        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            sent = list(pool.map(send, todo))
        for rel, version in sent:
            entries_out[rel] = {"version_id": version.version_id, "sha256": version.sha256,
                                "size": version.size}
        self.cache.remember_many(
            (uri.store, uri.child(rel).key, v.version_id, str(v.sha256), v.size, "file") for rel, v in sent
        )
        manifest = Manifest(dict(sorted(entries_out.items())))
        version = self._put_manifest(uri, manifest)
        self.cache.remember_manifest(uri.store, uri.key, version.version_id, digest)
        return PutResult(_record(uri, version, manifest.size), len(sent), False)

    def _put_manifest(self, uri: DataURI, manifest: Manifest) -> ObjectVersion:
        sha, path = self.cache.add_bytes(manifest.to_bytes())
        version = self.store(uri).put_file(uri, path, sha, kind="manifest")
        self.cache.remember(uri.store, uri.key, version.version_id, sha, version.size, "manifest")
        return version

    def _latest(self, uri: DataURI) -> ObjectVersion | None:
        try:
            return self.store(uri).head(uri)
        except NoSuchObject:
            return None

    # --- resolve and fetch ----------------------------------------------------------------------

    def resolve(self, uri: DataURI, version_id: str | None = None) -> ObjectVersion:
        uri.require_object()
        if version_id is not None:
            known = self.cache.known(uri.store, uri.key, version_id)
            if known is not None and self.cache.has(known[0]):  # pinned and cached: no request
                sha, size, kind = known
                return ObjectVersion(str(uri), version_id, sha, size, kind)  # type: ignore[arg-type]
        return self.store(uri).head(uri, version_id)

    def resolve_ref(self, ref_text: str) -> tuple[DataURI, ObjectVersion]:
        """``URI[@VERSION]`` as typed: a key may hold "@" (``s3://b/a@b``), so when the tail after
        the last "@" is no version of the head, the whole text is tried as a key (latest)."""
        ref = DataRef.parse(ref_text)
        uri = DataURI.parse(ref.uri)
        try:
            return uri, self.resolve(uri, ref.version_id)
        except DataStoreUnreachable:
            raise
        except DataStoreError as first:
            if ref.version_id is None or ref_text.endswith("@"):
                raise
            whole = DataURI.parse(ref_text)
            try:
                return whole, self.resolve(whole)
            except DataStoreError:
                raise first from None

    def fetch(self, uri_text: str, version_id: str | None = None) -> Fetched:
        """The version's bytes in the cache (downloaded at most once), checked against its sha256."""
        if version_id is None:
            uri, version = self.resolve_ref(uri_text)
            return self.fetch_version(uri, version)
        uri = DataURI.parse(uri_text)
        try:
            version = self.resolve(uri, version_id)
        except DataStoreUnreachable:
            raise
        except DataStoreError as first:
            # `--input s3://b/a@b` arrives split by DataRef.parse: the key may be "a@b" itself
            try:
                uri = DataURI.parse(f"{uri_text}@{version_id}")
                version = self.resolve(uri)
            except NixreproError:
                raise first from None
        return self.fetch_version(uri, version)

    def fetch_version(self, uri: DataURI, version: ObjectVersion) -> Fetched:
        path = self._fetch_object(uri, version)
        if version.kind != "manifest":
            return Fetched(_record(uri, version), path)
        manifest = Manifest.from_bytes(path.read_bytes(), str(uri))
        tree = self.cache.root / "trees" / str(version.sha256)
        if tree.is_dir() and not self._tree_intact(tree, manifest):
            # A file of the tree was changed (its links share the objects' inodes), removed or
            # added: move it aside at once (readers keep their open files) and build it again
            # from checked objects.
            aside = tree.with_name(f".{tree.name}.{os.getpid()}.{time.monotonic_ns()}.bad")
            with contextlib.suppress(FileNotFoundError):  # another process did it
                os.replace(tree, aside)
            shutil.rmtree(aside, ignore_errors=True)
        if not tree.is_dir():
            self._materialize(uri, manifest, tree, link=True)
        return Fetched(_record(uri, version, manifest.size), tree)

    def _tree_intact(self, tree: Path, manifest: Manifest) -> bool:
        expected = {tree / rel: str(entry["sha256"]) for rel, entry in manifest.files.items()}
        if _tree_files(tree) != set(manifest.files):
            return False
        return not self.cache.corrupt_files(expected)

    def read_manifest(self, uri: DataURI, version: ObjectVersion) -> Manifest:
        return Manifest.from_bytes(self._fetch_object(uri, version).read_bytes(), str(uri))

    def _fetch_object(self, uri: DataURI, version: ObjectVersion) -> Path:
        # Checked where it is served: a cached object that no longer hashes to its name is
        # evicted here and downloaded again, never handed over.
        cached = self.cache.checked_object(version.sha256) if version.sha256 else None
        if cached is not None:
            self.cache.remember(uri.store, uri.key, version.version_id, str(version.sha256), version.size,
                                version.kind)
            return cached
        store = self.store(uri)
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            tmp = self.cache.temp_path(version.sha256 or "unknown")
            try:
                store.download(uri, version.version_id, tmp, size=version.size)
                sha = version.sha256 or sha256_file(tmp)  # an object another tool wrote has no sha
                path = self.cache.commit_temp(tmp, sha)
            except DataIntegrityError as exc:
                tmp.unlink(missing_ok=True)
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise DataIntegrityError(
                        f"{uri}@{version.version_id} arrived corrupt {DOWNLOAD_ATTEMPTS} times ({exc}); "
                        "it was refused; check the store (`nixrepro data verify`)."
                    ) from None
            except DataStoreUnreachable:  # the server broke off mid-transfer: try again shortly
                tmp.unlink(missing_ok=True)
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise
                time.sleep(RETRY_PAUSE * 2 ** (attempt - 1))
            except OSError as exc:  # the cache's disk: full, read-only, gone
                tmp.unlink(missing_ok=True)
                raise DataStoreError(
                    f"cannot write {uri}@{version.version_id} into the data cache {self.cache.root} "
                    f"({exc.strerror}); free space there or set [data] cache_dir."
                ) from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            else:
                self.cache.remember(uri.store, uri.key, version.version_id, sha, version.size, version.kind)
                return path
        raise AssertionError("unreachable")

    def _materialize(self, uri: DataURI, manifest: Manifest, dest: Path, link: bool) -> None:
        """Write the manifest's files under ``dest``: links to read-only cache objects, or copies."""
        def one(item: tuple[str, dict[str, Any]]) -> tuple[str, Path]:
            rel, entry = item
            child = uri.child(rel)
            version = ObjectVersion(str(child), str(entry["version_id"]), entry["sha256"], int(entry["size"]))
            return rel, self._fetch_object(child, version)

        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            objects = list(pool.map(one, manifest.files.items()))
        staging = dest.with_name(f".{dest.name}.{os.getpid()}.tmp") if link else dest
        for rel, source in objects:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if link:
                try:
                    os.link(source, target)
                    continue
                except OSError:
                    pass
            shutil.copyfile(source, target)
        if link:
            staging.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(staging, dest)
            except OSError:  # another process materialized it first
                shutil.rmtree(staging, ignore_errors=True)

    def get(self, ref_text: str, dest: Path | None = None) -> tuple[DataVersion, Path]:
        """``data get``: a writable copy of a version at ``dest`` (default: its name, here)."""
        uri, version = self.resolve_ref(ref_text)
        target = dest or Path.cwd() / Path(uri.key).name
        try:
            if version.kind == "manifest":
                manifest = self.read_manifest(uri, version)
                self._materialize(uri, manifest, target, link=False)
                return _record(uri, version, manifest.size), target
            source = self._fetch_object(uri, version)
            if target.is_dir():
                target = target / Path(uri.key).name
            shutil.copyfile(source, target)
        except OSError as exc:
            raise UsageError(f"cannot write {target} ({exc.strerror}); give a destination in a "
                             "writable directory with room for it.") from None
        return _record(uri, version), target

    def verify(self, ref_text: str) -> ObjectVersion:
        """Download a version afresh (not from the cache) and check it against its sha256."""
        ref = DataRef.parse(ref_text)
        DataURI.parse(ref.uri).require_object()  # a bad URI is named before a missing version
        if ref.version_id is None:
            raise DataStoreError(f"give the version to verify, as in {ref.uri}@VERSION; "
                                 f"`nixrepro data versions {ref.uri}` lists them.")
        uri = DataURI.parse(ref.uri).require_object()
        version = self.store(uri).head(uri, ref.version_id)
        actual = self._hash_afresh(uri, version.version_id)
        if version.sha256 and actual != version.sha256:
            raise DataIntegrityError(f"{ref_text} does not match its recorded sha256 "
                                     f"({actual[:12]} != {version.sha256[:12]}); the stored bytes changed.")
        if version.kind == "manifest":
            self._verify_files(uri, ref_text, version)
        return version

    def _hash_afresh(self, uri: DataURI, version_id: str) -> str:
        tmp = self.cache.temp_path("verify")
        try:
            self.store(uri).download(uri, version_id, tmp)
            return sha256_file(tmp)
        except OSError as exc:
            raise DataStoreError(f"cannot download {uri}@{version_id} into the data cache "
                                 f"({exc.strerror}); free space there or set [data] cache_dir.") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _verify_files(self, uri: DataURI, ref_text: str, version: ObjectVersion) -> None:
        """Every file a directory manifest lists, downloaded afresh and re-hashed: a manifest
        that hashes right says nothing about the bytes of the files it names."""
        tmp = self.cache.temp_path("verify-manifest")
        try:
            self.store(uri).download(uri, version.version_id, tmp, size=version.size)
            manifest = Manifest.from_bytes(tmp.read_bytes(), ref_text)
        finally:
            tmp.unlink(missing_ok=True)

        def check(item: tuple[str, dict[str, Any]]) -> str | None:
            rel, entry = item
            child = uri.child(rel)
            try:
                actual = self._hash_afresh(child, str(entry["version_id"]))
            except DataStoreError as exc:
                return f"{rel}: {exc}"
            return None if actual == entry.get("sha256") else f"{rel}: its bytes hash to {actual[:12]}"

        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            problems = [p for p in pool.map(check, sorted(manifest.files.items())) if p]
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise DataIntegrityError(
                f"{ref_text}: {len(problems)} of its {len(manifest.files)} files do not match the "
                f"manifest ({'; '.join(problems[:3])}{more}); the stored bytes changed."
            )

    # --- outputs that cannot be stored now --------------------------------------------------------

    def keep_pending(self, local: Path, uri_text: str, run_dir: Path | None) -> DataVersion:
        """Keep ``local`` in the cache and queue it for ``nixrepro sync``; nothing is lost."""
        uri = DataURI.parse(uri_text).require_object()
        try:
            with self.cache.keeping():  # a concurrent prune waits until the pending row exists
                return self._keep(local, uri, run_dir)
        except OSError as exc:
            raise DataStoreError(
                f"cannot keep {local} for {uri} in the data cache {self.cache.root} ({exc.strerror}); "
                "free space there (or set [data] cache_dir) and store it again with `nixrepro data put`."
            ) from None

    def _keep(self, local: Path, uri: DataURI, run_dir: Path | None) -> DataVersion:
        if local.is_dir():
            files = _walk_files(local)
            hashes = self.cache.hash_files(list(files.values()))
            for path in files.values():
                self.cache.add_file(path, hashes[path])
            manifest = Manifest({rel: {"version_id": None, "sha256": hashes[p], "size": p.stat().st_size}
                                 for rel, p in sorted(files.items())})
            data = manifest.to_bytes()
            sha = _sha(data)
            tmp = self.cache.temp_path(sha)
            tmp.write_bytes(data)
            self.cache.commit_temp(tmp, sha)
            self.cache.add_pending(str(uri), sha, manifest.size, "manifest", run_dir)
            return DataVersion(str(uri), None, sha, manifest.size, pending=True)
        sha = self.cache.hash_files([local])[local]
        self.cache.add_file(local, sha)
        size = local.stat().st_size
        self.cache.add_pending(str(uri), sha, size, "file", run_dir)
        return DataVersion(str(uri), None, sha, size, pending=True)

    def sync_pending(self, dry_run: bool = False) -> SyncReport:
        """Upload every pending output; fill in the version ids of the runs that produced them.
        One broken item is reported and the others go on (nixrepro.datastore.sync)."""
        from .sync import sync_pending

        return sync_pending(self, dry_run)

    def discard_pending(self, item: str) -> list[str]:
        from .sync import discard

        return discard(self, item)


def project_settings() -> DataConfig:
    """The ``[data]`` section of the project around the current directory (defaults outside one)."""
    from ..config import load
    from ..errors import RefusedError
    from ..git import GitRepo

    try:
        root = GitRepo.discover(Path.cwd()).root
    except RefusedError:  # not in a repository: no project, the defaults
        return DataConfig()
    return load(root).data  # a broken [data] is one sentence, never silently the defaults


def _record(uri: DataURI, version: ObjectVersion, size: int | None = None) -> DataVersion:
    return DataVersion(str(uri), version.version_id, version.sha256, version.size if size is None else size)


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _scan(root: Path) -> dict[str, tuple[str, os.stat_result]]:
    """Regular files under ``root``: relative POSIX path -> (path, stat), in no particular order
    (the digest and the manifest sort); one stat each, the floor of noticing a changed file."""
    found: dict[str, tuple[str, os.stat_result]] = {}
    todo = [(str(root), "")]
    while todo:  # a stack, not recursion: a deep tree is no recursion limit
        directory, prefix = todo.pop()
        with os.scandir(directory) as it:
            for entry in it:
                if entry.is_dir():
                    if entry.name != VERSIONS_DIR:
                        todo.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file():
                    found[prefix + entry.name] = (entry.path, entry.stat())
    if not found:
        raise UsageError(f"{root} has no files to put; put a file, or a directory with files in it.")
    return found


def _digest(hashes: dict[str, str]) -> str:
    """One hash of a directory's (relative path, sha256) list: equal digests, equal contents."""
    import hashlib

    lines = "".join(f"{rel}\0{hashes[rel]}\n" for rel in sorted(hashes))  # one update, not 20,000
    return hashlib.sha256(lines.encode()).hexdigest()


def _tree_files(root: Path) -> set[str]:
    """Every file under a materialized tree, by relative POSIX path (links not followed)."""
    found: set[str] = set()
    for directory, _subdirs, names in os.walk(root):
        base = Path(directory).relative_to(root)
        found.update((base / name).as_posix() for name in names)
    return found


def _walk_files(root: Path) -> dict[str, Path]:
    """Regular files under ``root`` by relative POSIX path; links are followed, hidden stores not."""
    found: dict[str, Path] = {}
    for directory, subdirs, names in os.walk(root, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if d != VERSIONS_DIR)
        for name in names:
            path = Path(directory) / name
            if path.is_file():
                found[path.relative_to(root).as_posix()] = path
    if not found:
        raise UsageError(f"{root} has no files to put; put a file, or a directory with files in it.")
    return dict(sorted(found.items()))
