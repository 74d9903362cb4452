"""``nixrepro archive``: keep a run's environment in a signed Nix binary cache.

Levels (docs/archive.md): ``runtime`` (the env's closure, ``nix copy``) restores the environment bit for
bit; ``sources`` (``nix flake archive``) keeps the flake's and every locked input's source, so the
flake still evaluates after an input repository is gone; ``build-deps`` (``nix-store -qR
--include-outputs <drv>``) adds the build-time closure with every fixed-output source, for a
rebuild from source after upstream URLs die.

Every path is signed with the project key (``[archive] key_file``, generated on first use). Debian's
nix has no ``s3://`` store, so an ``s3://bucket/prefix`` archive is written to a local ``file://``
cache first and uploaded with boto3, skipping objects that are already there.

The archive carries the records of the runs archived into it (``runs/<id>/``) and a README with
the plain-nix commands that restore them, so it stands alone (nixrepro.archive_runs); an
``s3://`` archive's mirror is nixrepro.archive_mirror.

Where a run was archived is kept beside its record, in ``archives.json`` (a list of
:class:`ArchiveEntry`), so adding an archive never changes the record or its ``record_sha256``.
The same key signs the run's record (nixrepro.signing): a run that ended before the key existed is
signed when it is archived.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import field
from pathlib import Path
from urllib.parse import quote, urlparse

from . import archive_runs, codec
from .codec import frozen
from .config import ArchiveConfig
from .errors import ArchiveError, ConfigError, UsageError
from .fsutil import atomic_write
from .git import GitRepo
from .nix import FlakeRef, Nix
from .record import RunRecord
from .runstore import RunStore

ARCHIVES_FILE = "archives.json"
LEVELS = ("runtime", "sources", "build-deps")


@frozen
class ArchiveEntry:
    """One archive of a run, as kept in ``.nixrepro/runs/<id>/archives.json``."""

    url: str
    public_key: str
    archived_at: str
    levels: list[str] = field(default_factory=list)
    paths: int = 0  # store paths in the archive for this run (closure, sources, build deps)


@frozen
class SigningKey:
    secret_file: Path
    public_key: str


def default_key_file() -> Path:
    return ArchiveConfig().secret_key_file()


def key_files(config: ArchiveConfig) -> tuple[Path, Path]:
    """(secret, public) key files: ``[archive] key_file`` or the default, and its ``.pub``."""
    secret_file = config.secret_key_file()
    return secret_file, secret_file.with_name(secret_file.name.removesuffix(".sec") + ".pub")


def existing_key(config: ArchiveConfig) -> SigningKey | None:
    """The project's signing key if it exists (never generated here: a run does not make keys).

    The public key is the secret's second half (libsodium keeps it there), so no nix is called.
    """
    secret_file, _ = key_files(config)
    if not secret_file.exists():  # the usual case as a run ends: nothing to import or read
        return None
    from .errors import SigningError
    from .signing import public_of

    try:
        secret = secret_file.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningError(f"the signing key {secret_file} cannot be read ({exc}); "
                           "fix its permissions or set [archive] key_file") from exc
    try:
        return SigningKey(secret_file, public_of(secret))
    except SigningError as exc:
        raise SigningError(f"{secret_file}: {exc}; replace it with "
                           "`nix key generate-secret --key-name NAME`") from exc


def project_key(repo_root: Path) -> SigningKey | None:
    """The signing key of the project at ``repo_root`` (its nixrepro.toml's [archive] key_file)."""
    from . import config as config_module

    return existing_key(config_module.load(repo_root).archive)


def trusted_keys(repo_root: Path) -> list[str]:
    """The public keys whose signatures ``verify`` and ``rebuild`` accept: the project key's, from
    its secret, or from its ``.pub`` alone where only the public half is on this machine; and
    ``[archive] trusted_keys`` (a team's keys, committed in nixrepro.toml)."""
    from . import config as config_module

    loaded = config_module.load(repo_root)
    config = loaded.archive
    found: list[str] = []
    key = existing_key(config)
    if key is not None:
        found.append(key.public_key)
    else:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.append(key_files(config)[1].read_text().strip())
    for index, extra in enumerate(config.trusted_keys):
        if not _is_public_key(extra):
            raise ConfigError(
                f"{loaded.source}: 'archive.trusted_keys[{index}]' is {extra[:60]!r}, not a Nix public "
                "key; give it as `nix key convert-secret-to-public` prints it (name:base64)."
            )
        if extra.strip() not in found:
            found.append(extra.strip())
    return found


def _is_public_key(text: str) -> bool:
    """``name:base64`` of 32 bytes, as Nix writes an ed25519 public key."""
    import base64
    import binascii

    name, sep, encoded = text.strip().partition(":")
    try:
        return bool(name and sep) and len(base64.b64decode(encoded, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def signing_key(config: ArchiveConfig, nix: Nix) -> SigningKey:
    """The project's signing key; generated (mode 0600) with its ``.pub`` on first use."""
    secret_file, public_file = key_files(config)
    if secret_file.exists() and not secret_file.is_file():
        raise UsageError(f"the signing key {secret_file} is not a file; point [archive] key_file "
                         "in nixrepro.toml at a key file (it is generated where none exists).")
    if not secret_file.is_file():
        secret = nix.generate_secret_key(f"nixrepro-{os.uname().nodename}-1")
        atomic_write(secret_file, secret, mode=0o600)
        atomic_write(public_file, nix.public_key(secret) + "\n")
    if public_file.is_file():
        public = public_file.read_text().strip()
    else:
        public = nix.public_key(secret_file.read_text())
        atomic_write(public_file, public + "\n")
    return SigningKey(secret_file, public)


def staging_dir(url: str) -> Path:
    """The local ``file://`` cache that holds (or mirrors) the archive at ``url``."""
    parsed = urlparse(url)
    if "@" in parsed.netloc or "?" in url or "#" in url:
        # a token in the URL would reach archives.json, the archive's own files and every message
        from .redact import scrub_url

        raise UsageError(
            f"the archive URL {scrub_url(url.split('?', 1)[0].split('#', 1)[0])} carries "
            "credentials or a query; give file:///dir or s3://bucket/prefix alone (S3 credentials "
            "come from the AWS variables or profile, never from the URL).")
    if parsed.scheme == "file":
        if not parsed.path.startswith("/"):
            raise UsageError(f"archive URL {url!r} needs an absolute path, e.g. file:///srv/cache.")
        return Path(parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UsageError(f"archive URL {url!r} names no bucket; write s3://bucket/prefix.")
        if any(part in (".", "..") for part in parsed.path.split("/")):
            # the mirror is <cache>/nixrepro/archives/<bucket>/<prefix>: '..' would put it elsewhere
            raise UsageError(f"archive URL {url!r}: '.' and '..' path segments are not allowed; "
                             "name the prefix directly.")
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "nixrepro" / "archives" / parsed.netloc / parsed.path.strip("/")
    raise UsageError(
        f"archive URL {url!r} is neither file:///dir nor s3://bucket/prefix; give one of those."
    )


def archive_url(url: str | None, config: ArchiveConfig) -> str:
    chosen = url or config.to
    if not chosen:
        raise UsageError(
            "no archive location; pass --to file:///dir or s3://bucket/prefix, "
            "or set [archive] to in nixrepro.toml."
        )
    staging_dir(chosen)  # validates the URL
    return chosen.rstrip("/")


def archive_run(
    store: RunStore, record: RunRecord, url: str, *, config: ArchiveConfig, nix: Nix,
    repo: GitRepo, build_deps: bool = False,
) -> ArchiveEntry:
    """Archive ``record``'s environment at ``url`` and note it in the run's ``archives.json``
    once the archive holds it (an upload that fails notes nothing)."""
    env = record.environment
    local = staging_dir(url)
    s3 = urlparse(url).scheme == "s3"
    _check_target(url, local, config)  # what is not an archive is never written into
    valid, invalid = nix.path_infos([info.path for info in env.closure])
    if invalid:
        raise ArchiveError(
            f"{len(invalid)} paths of run {record.short_id}'s environment are not in the store "
            f"({invalid[0]}...); restore them with `nixrepro rebuild {record.short_id}` first."
        )
    key = signing_key(config, nix)
    local.mkdir(parents=True, exist_ok=True)
    # zstd: xz took 94 s for a 126 MiB Python closure on 2 cores, zstd 1.3 s (any nix reads both)
    target = f"file://{quote(str(local))}?compression=zstd&secret-key={quote(str(key.secret_file))}"
    nix.copy_to(target, [env.env_path])
    levels, count = ["runtime"], len(valid)
    flake = recorded_flake(record, repo)
    if flake is not None:
        nix.flake_archive(target, flake)
        levels.append("sources")
        count += len(env.inputs) + 1
    if build_deps:
        drv = nix.deriver(env.env_path)
        if drv is None:
            raise ArchiveError(
                f"the derivation of {env.env_path} is no longer in the store, so its build-time "
                "closure is unknown; build the environment again (`nix build`) and archive again."
            )
        requisites = nix.build_closure(drv)
        drvs = [p for p in requisites if p.endswith(".drv")]
        # outputs of build-time derivations that were never built here cannot be copied
        present, _missing = nix.path_infos([p for p in requisites if not p.endswith(".drv")])
        nix.copy_to(target, drvs + [info.path for info in present])
        levels.append("build-deps")
        count += len(set(requisites) - {info.path for info in env.closure})
    entry = ArchiveEntry(url=url, public_key=key.public_key, archived_at=_now(), levels=levels,
                         paths=count)
    if record.status != "running":  # the archived record is signed by the key that signed its paths
        store.sign(record.id, key.secret_file.read_text())
    if s3:  # the keys other machines archived with are kept in the list the README shows
        from .archive_mirror import fetch_into, objects

        fetch_into(objects(url, config.endpoint_url), local, [archive_runs.KEYS_FILE])
    # the archive carries the run's record, so that it stands alone (nixrepro.archive_runs)
    changed = archive_runs.carry(store, record.id, local, codec.encode(entry))
    changed += archive_runs.write_front(local, url, key.public_key)
    if s3:
        rewritten = {*changed, archive_runs.CACHE_INFO}
        upload(local, url, endpoint_url=config.endpoint_url, always=rewritten.__contains__)
        _settle_keys(local, url, config, key.public_key)
    add_entry(store, record.id, entry)
    return entry


def _settle_keys(local: Path, url: str, config: ArchiveConfig, public_key: str) -> None:
    """Make sure the S3 archive's ``public-keys.txt`` still lists every key this machine wrote
    there: another machine archiving at the same time uploads the list it read before this one's
    key was in it, and the README's plain-nix restore would then refuse this machine's paths.
    Read back after the upload; where keys went missing, the union is written again (a few
    rounds: each round's window is one GET and two PUTs)."""
    from .archive_mirror import fetch_into, objects

    remote = objects(url, config.endpoint_url)
    for _round in range(4):
        wanted = archive_runs.known_keys(local)
        fetch_into(remote, local, [archive_runs.KEYS_FILE])
        if set(wanted) <= set(archive_runs.known_keys(local)):
            return
        for name in archive_runs.write_front(local, url, public_key, extra=wanted):
            remote.put(name, local / name)
    raise ArchiveError(f"the archive {url} kept losing keys from {archive_runs.KEYS_FILE} while "
                       "other machines wrote it; archive the run again.")


def _check_target(url: str, local: Path, config: ArchiveConfig) -> None:
    """Refuse a location that holds something other than an archive (archive_runs.check_target):
    a directory, or an S3 prefix, which is looked at without a full listing where it is one."""
    if urlparse(url).scheme != "s3":
        archive_runs.check_target(local, url)
        return
    from .archive_mirror import fetch_into, objects

    remote = objects(url, config.endpoint_url)
    local.mkdir(parents=True, exist_ok=True)
    missing = fetch_into(remote, local, [archive_runs.CACHE_INFO, archive_runs.README_FILE])
    names = remote.list_keys() if archive_runs.CACHE_INFO in missing else None
    archive_runs.check_target(local, url, names)


def recorded_flake(record: RunRecord, repo: GitRepo) -> str | None:
    """The run's flake at its recorded commit, as a flake reference; None for an ``--env`` run."""
    env = record.environment
    if env.flake_ref is None and env.flake_lock_path is None:
        return None
    if env.flake_ref is not None and FlakeRef.parse(env.flake_ref).local_path is None:
        return FlakeRef.parse(env.flake_ref).source  # a remote flake (github:...): itself
    ref = f"git+file://{repo.root}?rev={record.code.commit}"
    subdir = flake_subdir(record, repo)
    return ref + (f"&dir={quote(subdir)}" if subdir else "")


def flake_subdir(record: RunRecord, repo: GitRepo) -> str:
    """The flake's directory inside the repository ("" for the root)."""
    env = record.environment
    if env.flake_lock_path:
        return os.path.dirname(env.flake_lock_path)
    local = FlakeRef.parse(env.flake_ref or ".").local_path or "."
    candidate = (Path(record.command.cwd) / local).resolve()
    try:
        rel = candidate.relative_to(repo.root.resolve()).as_posix()
    except ValueError:
        return ""
    return "" if rel == "." else rel


def entries(store: RunStore, run_id: str) -> list[ArchiveEntry]:
    path = store.run_dir(run_id) / ARCHIVES_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise ArchiveError(f"{path} is not valid JSON ({exc}); fix or delete it.") from exc
    try:
        return codec.decode(list[ArchiveEntry], doc)
    except codec.CodecError as exc:
        raise ArchiveError(f"{path} is not the list of archives nixrepro writes ({exc}); fix it, or "
                           "delete it and archive the run again.") from None


def add_entry(store: RunStore, run_id: str, entry: ArchiveEntry) -> None:
    kept = [e for e in entries(store, run_id) if e.url != entry.url]
    doc = codec.encode([*kept, entry])
    atomic_write(store.run_dir(run_id) / ARCHIVES_FILE, json.dumps(doc, indent=2) + "\n")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- s3: a local file:// cache, mirrored (nixrepro.archive_mirror) ---


def upload(local: Path, url: str, *, endpoint_url: str | None,
           always: Callable[[str], bool] = lambda key: key == "nix-cache-info") -> tuple[int, int]:
    """Upload the cache at ``local`` to ``url``; objects already there are skipped, but those
    ``always`` accepts (relative keys: ``nix-cache-info``, a run's record). Returns (uploaded, skipped).
    """
    from . import archive_mirror

    return archive_mirror.upload(local, url, endpoint_url=endpoint_url, always=always)


def download(url: str, local: Path, *, endpoint_url: str | None,
             roots: Sequence[str] | None = None) -> int:
    """Mirror the binary cache at ``url`` into ``local``: with ``roots`` (store paths), only their
    closures' narinfos and NARs (what one rebuild substitutes); without, every file but the records
    of runs (``rebuild`` fetches the one it needs). Files already there are kept;
    ``nix-cache-info`` and ``public-keys.txt`` are fetched again. Returns the count."""
    from . import archive_mirror

    if roots is None:
        return archive_mirror.download(
            url, local, endpoint_url=endpoint_url,
            always=lambda key: key in (archive_runs.CACHE_INFO, archive_runs.KEYS_FILE),
            skip=lambda key: key.startswith(archive_runs.RUNS_DIR + "/"))
    store = archive_mirror.objects(url, endpoint_url)
    front = [archive_runs.CACHE_INFO, archive_runs.KEYS_FILE]
    count = len(front) - len(archive_mirror.fetch_into(store, local, front))
    return count + archive_mirror.fetch_closure(store, local, roots)
