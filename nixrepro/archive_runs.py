"""What an archive holds beside Nix's binary cache: the records of its runs and a README.

An archive stands alone: years later, with no run store, no remote and no nixrepro, it still says
which run each environment belongs to and how to restore it. Its root:

    nix-cache-info, *.narinfo, nar/   the binary cache (nix copy --from reads it)
    README.md                         the plain-nix commands that restore an environment
    public-keys.txt                   the public keys that signed the paths and the records
    runs/<id>/record.json, record.sig the run's record and its signature
    runs/<id>/stdout.log ...          the files `verify` checks against the record's hashes
    runs/<id>/archive.json            this archive's entry for the run (levels, key, date)

``runs/<id>/`` is laid out as a run directory of the run store, so the archive's staging
directory reads as a run store (:class:`nixrepro.runstore.RunStore`) and ``verify``'s own checks
prove an archived record before ``rebuild --from`` uses it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from .codec import frozen
from .errors import ArchiveError, RecordError, RunNotFoundError, UsageError
from .fsutil import atomic_write, staging_dir
from .record import RunRecord
from .rundir import DEV_PATCH
from .runstore import RECORD_FILE, RUN_FILES, SIGNATURE_FILE, RunStore

RUNS_DIR = "runs"
KEYS_FILE = "public-keys.txt"
README_FILE = "README.md"
ENTRY_FILE = "archive.json"
# the run's files an archive carries: the record, its signature, and what verify checks
CARRIED = (RECORD_FILE, SIGNATURE_FILE, *RUN_FILES, DEV_PATCH)
CACHE_INFO = "nix-cache-info"
STAGING_DIR = "pulling"  # .nixrepro/pulling/: a run on its way into runs/ (nixrepro.remote.store)
# a run id: 24 hex digits, or the 12 of older runs; a directory or key of another name is no run's
RUN_ID = re.compile(r"[0-9a-f]{24}|[0-9a-f]{12}")
README_TITLE = "# A signed Nix binary cache of nixrepro runs"
FRONT_LOCK = ".nixrepro-front.lock"  # held while public-keys.txt and the README are rewritten
_PUBLIC_KEY = re.compile(r"[^\s:]+:[A-Za-z0-9+/]{43}=")  # name:base64 of 32 bytes, as nix writes one


@frozen
class ArchivedRun:
    """A run found in an archive, its record proven (record_sha256, signature where signed)."""

    record: RunRecord
    url: str
    local: Path  # the archive's local directory (the mirror of an s3:// archive)
    public_key: str | None  # the key this archive names for the run's paths (archive.json)
    trusted_keys: list[str]  # the keys the record's signature and the substitutes are checked with
    signed_by: str | None  # the key name of a good signature; None: unsigned


# --- writing -----------------------------------------------------------------------------------------


def carry(store: RunStore, run_id: str, local: Path, entry: dict[str, object]) -> list[str]:
    """Copy the run's record, signature and checked files into ``local/runs/<id>/`` with this
    archive's ``entry``; returns the keys written (relative to ``local``). A file the run no longer
    has (a signature replaced by a later save) is removed, never left to contradict the record."""
    source, target = store.run_dir(run_id), local / RUNS_DIR / run_id
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CARRIED:
        if (source / name).is_file():
            copy_atomic(source / name, target / name)
            written.append(f"{RUNS_DIR}/{run_id}/{name}")
        else:
            (target / name).unlink(missing_ok=True)
    atomic_write(target / ENTRY_FILE, json.dumps(entry, indent=2) + "\n")
    written.append(f"{RUNS_DIR}/{run_id}/{ENTRY_FILE}")
    return written


def copy_atomic(source: Path, target: Path) -> None:
    """``source`` copied to ``target`` (a temporary file renamed into place: a log may be large,
    and a reader sees the old file or the whole new one)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_target(local: Path, url: str, remote_names: Sequence[str] | None = None) -> None:
    """Refuse to archive into what is not an archive: a directory (or an S3 prefix:
    ``remote_names``, a few of the names there) that holds other files but no nix-cache-info,
    or an archive whose README.md nixrepro did not write (the archive's own would replace it).
    An empty directory, or one that does not exist yet, becomes an archive."""
    try:
        names = remote_names if remote_names is not None else [
            p.name for p in local.iterdir() if not p.name.startswith(".") and p.name != "lost+found"]
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise UsageError(f"{url} is a file, not a directory; archive into a directory (an empty "
                         "one, or an existing archive).") from None
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive directory {local} ({exc.strerror or exc}); "
                           "check it is mounted and readable.") from None
    archive = CACHE_INFO in names if remote_names is not None else (local / CACHE_INFO).is_file()
    if names and not archive:
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise UsageError(
            f"{url} holds files ({shown}) but no {CACHE_INFO}, so it is not an archive, and "
            "archiving would write into it; archive into an empty directory or an existing "
            "archive (e.g. add /nix-archive to the URL).")
    readme = local / README_FILE
    try:
        first = _read_file(readme, len(README_TITLE) + 1).partition(b"\n")[0]
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise ArchiveError(f"cannot read {readme} ({exc.strerror or exc}); check its permissions.") \
            from None
    if first.rstrip(b"\n") != README_TITLE.encode():
        raise UsageError(
            f"{url} has a {README_FILE} that nixrepro did not write, which the archive's own "
            f"{README_FILE} would replace; move it elsewhere, or archive into a directory of its "
            "own (e.g. add /nix-archive to the URL).")


def _read_file(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file at ``path``: something else put in an archive
    (a FIFO, waited on forever; /dev/zero, never ending) raises OSError, unread."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return handle.read(limit)


def known_keys(local: Path) -> list[str]:
    """The public keys ``public-keys.txt`` lists, in order."""
    try:
        text = _read_file(local / KEYS_FILE, 2**20).decode()
    except (OSError, UnicodeDecodeError):  # none there, or none that reads: no key listed
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def write_front(local: Path, url: str, public_key: str, extra: Sequence[str] = ()) -> list[str]:
    """Add ``public_key`` to ``public-keys.txt`` and write the README; returns the keys written.

    Machines archive into one archive at once: the list is read and written under a lock of
    the archive's directory (two writers would each drop the other's key, and the README's
    restore would then refuse that machine's paths), and it also takes every key a run's
    ``archive.json`` here names, so a key dropped before (by an older nixrepro, or an S3 upload
    racing another) comes back with the next archive; and ``extra``, keys known otherwise."""
    with _locked(local / FRONT_LOCK):
        keys = known_keys(local)
        for key in (*extra, *archived_keys(local), public_key):
            if key not in keys:
                keys.append(key)
        atomic_write(local / KEYS_FILE, "".join(key + "\n" for key in keys))
        atomic_write(local / README_FILE, readme(url, keys))
    return [KEYS_FILE, README_FILE]


def archived_keys(local: Path) -> list[str]:
    """The public keys the runs' ``archive.json`` files in the archive at ``local`` name."""
    found: list[str] = []
    for run_id in run_ids(local):
        key = entry_of(local, run_id).get("public_key")
        if isinstance(key, str) and _PUBLIC_KEY.fullmatch(key) and key not in found:
            found.append(key)
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock of ``path`` (flock: local disks, and NFS v4), held by this process."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def readme(url: str, keys: Sequence[str]) -> str:
    """The archive's README.md: how to restore a run's environment with nix and jq alone."""
    parsed = urlparse(url)
    shown_keys = "\n".join(f"    {key}" for key in keys)
    if parsed.scheme == "s3":
        where = f"the S3 prefix `{url}`"
        fetch = S3_FETCH.format(url=url, bucket=parsed.netloc, prefix=parsed.path.strip("/"))
    else:
        where = "this directory"
        fetch = ""
    return README.format(where=where, keys=shown_keys, fetch=fetch, url=url)


README = README_TITLE + """

`nixrepro archive` wrote {where}: the Nix store paths of the environments of the runs archived
into it, each signed, and each run's record. Restoring an environment needs only `nix` (2.4 or
newer, with `--extra-experimental-features nix-command` where it is not enabled) and `jq`;
nixrepro is not needed.

    nix-cache-info, *.narinfo, nar/   the binary cache that `nix copy --from` reads
    public-keys.txt                   the public keys that signed the paths and the records
    runs/<run id>/record.json         the run record: command, commit, flake inputs, closure
    runs/<run id>/record.sig          the record's signature, by one of those keys
    runs/<run id>/archive.json        what was archived for the run (levels), when, by which key
    runs/<run id>/stdout.log ...      the run's logs and metrics, as its record hashes them

## The trusted public key

The store paths here are signed by:

{keys}

Compare it with a copy you trust (the project's `archive-key.pub`, or `[archive] trusted_keys`
in its nixrepro.toml): a key read from the archive itself proves only that the archive agrees
with itself.
{fetch}
## Restore a run's environment

In the archive's directory:

    ls runs/                                                # the archived runs
    RUN=runs/<run id>
    ENV=$(jq -r .environment.env_path $RUN/record.json)     # the environment's store path
    jq -r '.environment.closure[].path' $RUN/record.json    # every store path of its closure
    nix copy --from "file://$PWD" --option trusted-public-keys "$(cat public-keys.txt)" "$ENV"

`nix copy` brings the environment's whole runtime closure into the Nix store and refuses a path
whose signature does not verify against a trusted key. On a multi-user install a user who is not
in `trusted-users` cannot set `trusted-public-keys` on the command line: add the key to
`trusted-public-keys` in `/etc/nix/nix.conf`, or run the copy as root. The environment is then
`$ENV` (its programs in `$ENV/bin`); a GC root keeps it: `nix-store --add-root env --realise "$ENV"`.

## Check that it is the recorded closure

    diff <(jq -r '.environment.closure[] | .path + " " + .narHash' $RUN/record.json | sort) \\
         <(nix path-info --json --recursive "$ENV" \\
           | jq -r '(if type == "array" then .[] else to_entries[] | .value + {{path: .key}} end)
                    | .path + " " + .narHash' | sort) && echo identical

Every path and its NAR hash (the hash of its contents) are the recorded ones: the environment
is bit for bit the one the run had.

## Rebuild from source

Where the run was archived with the `sources` level (its flake's inputs) or `build-deps` (every
build input), the recorded commit builds again even after an input's repository is gone, with
this archive as a substituter:

    git checkout $(jq -r .code.commit $RUN/record.json)
    nix build .#env --no-update-lock-file \\
      --option extra-substituters "file://<this directory>" \\
      --option extra-trusted-public-keys "$(cat <this directory>/public-keys.txt)"

With nixrepro installed, `nixrepro rebuild --from {url} <run id>` does this in a
fresh checkout and compares the closure with the record's; `nixrepro reproduce` runs it again.
"""

S3_FETCH = """
## An S3 archive: copy it down first

Nix builds without S3 support (Debian's) cannot read `s3://`; copy the prefix into a directory
with any S3 client and work there:

    aws s3 sync s3://{bucket}/{prefix} ./archive    # add --endpoint-url for MinIO, SeaweedFS...
    cd archive

A nix with S3 support reads it in place: `nix copy --from 's3://{bucket}/{prefix}?region=...'`
(`&endpoint=host:port&scheme=http` for an S3-compatible service).
"""


# --- reading -----------------------------------------------------------------------------------------


def run_ids(local: Path) -> list[str]:
    """The runs the archive at ``local`` carries (each with a record; a name that is no run id is
    no run's)."""
    runs = local / RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir()
                  if RUN_ID.fullmatch(p.name) and (p / RECORD_FILE).is_file())


def match(url: str, ref: str, ids: Sequence[str]) -> str:
    """The one id of ``ids`` that is ``ref`` or starts with it."""
    if ref in ids:
        return ref
    found = [run_id for run_id in ids if ref and run_id.startswith(ref)]
    shown = ref if len(ref) <= 40 else ref[:40] + "..."
    if not found:
        hint = " (an archive has no @latest: give the run's id)" if ref.startswith("@") else ""
        raise RunNotFoundError(
            f"no run matches {shown!r} in the archive {url}{hint}; its runs/ directory lists "
            "the runs it carries (`nixrepro archive RUN --to URL` adds one)."
        )
    if len(found) > 1:
        raise RunNotFoundError(f"{shown!r} matches {len(found)} runs in the archive {url} "
                               f"({', '.join(found[:5])}); give more characters of the id.")
    return found[0]


def entry_of(local: Path, run_id: str) -> dict[str, object]:
    """The run's ``archive.json`` in the archive ({} where there is none or it is unreadable)."""
    try:
        doc = json.loads(_read_file(local / RUNS_DIR / run_id / ENTRY_FILE, 2**20))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def prove(local: Path, url: str, run_id: str, trusted: Sequence[str]) -> ArchivedRun:
    """The archived record of ``run_id``, after verify's own checks of it: record_sha256 and
    summary_sha256, the signature against ``trusted`` (the project's keys) and the run's files.

    With no trusted key on this machine the keys the archive names for the run are used, and a
    warning says so: the archive then proves only that it agrees with itself.
    """
    from .verify import check_record_file

    entry = entry_of(local, run_id)
    raw = entry.get("public_key")
    public = raw if isinstance(raw, str) else None
    keys = list(trusted)
    if not keys:
        keys = [public] if public else known_keys(local)
        if keys:
            print(f"nixrepro: warning: no trusted key on this machine; trusting the key the archive "
                  f"names ({', '.join(k.split(':', 1)[0] for k in keys)}); pin it with [archive] "
                  "trusted_keys in nixrepro.toml to check the archive against a key you hold.",
                  file=sys.stderr)
    for name in CARRIED:  # only files are read: a FIFO would be waited on forever, a device read
        path = local / RUNS_DIR / run_id / name  # without end (/dev/zero)
        try:
            regular = stat.S_ISREG(path.stat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ArchiveError(f"cannot read {path} ({exc.strerror or exc}); check the archive is "
                               "mounted and readable.") from None
        if not regular:
            raise ArchiveError(
                f"run {run_id}'s {name} in the archive {url} is not a file, so it is not what "
                "`nixrepro archive` wrote; it is not used. Archive the run again from a machine "
                "that has it.")
    runs = RunStore(local)  # runs/<id>/ is a run directory: verify's checks read it as they are
    checks = check_record_file(runs, run_id, keys)
    try:
        doc = json.loads((local / RUNS_DIR / run_id / RECORD_FILE).read_bytes())
    except (OSError, ValueError):
        doc = None  # the record check has failed it
    if isinstance(doc, dict) and doc.get("id") != run_id:  # a record, even signed, of another run
        raise ArchiveError(
            f"run {run_id}'s record in the archive {url} is the record of run "
            f"{str(doc.get('id'))[:40]!r}, so it is not used (a record copied under another run's "
            "directory). Archive the run again from a machine that has it.")
    failed = [check for check in checks if check.result == "fail"]
    if failed:
        raise ArchiveError(
            f"run {run_id}'s record in the archive {url} fails verification ({failed[0].name}: "
            f"{failed[0].detail}); it is not used. Archive the run again from a machine that has it."
        )
    signature = runs.signature(run_id)
    signed = next(check for check in checks if check.name == "signature").result == "pass"
    signer = str(signature.get("signature", "")).split(":", 1)[0] if signature else None
    if signature is not None and not signed:  # a good signature, by a key nobody here trusts
        raise ArchiveError(
            f"run {run_id}'s record in the archive {url} is signed by {signer}, which this project "
            f"does not trust ({', '.join(k.split(':', 1)[0] for k in keys)}); if you trust it, add "
            f"its public key (in {KEYS_FILE} there) to [archive] trusted_keys in nixrepro.toml."
        )
    signed_by = signer if signed else None
    try:
        record = RunRecord.from_dict(doc)  # a dict: the record check has read it
    except RecordError as exc:  # its hashes recomputed over a record of another shape
        raise ArchiveError(
            f"run {run_id}'s record in the archive {url} does not read "
            f"({str(exc).split('; ')[0]}); it is not used. Archive the run again from a machine "
            "that has it.") from None
    return ArchivedRun(record, url, local, public, keys, signed_by)


def find(url: str, ref: str, local: Path, *, endpoint_url: str | None,
         trusted: Sequence[str]) -> ArchivedRun:
    """The run ``ref`` (an id or unique prefix) in the archive at ``url``, its record proven.

    An ``s3://`` archive is listed and only that run's files are fetched into ``local``.
    """
    if urlparse(url).scheme == "s3":
        from .archive_mirror import fetch_into, objects

        store = objects(url, endpoint_url)
        missing = fetch_into(store, local, [CACHE_INFO, KEYS_FILE])
        if CACHE_INFO in missing:
            raise UsageError(f"{url} is not an archive (no {CACHE_INFO}); give the URL that "
                             "`nixrepro archive` wrote to.")
        keys = store.list_keys(RUNS_DIR)
        ids = sorted({key.split("/")[1] for key in keys
                      if key.count("/") == 2 and key.endswith("/" + RECORD_FILE)
                      and RUN_ID.fullmatch(key.split("/")[1])})
        run_id = match(url, ref, ids)
        # the run's own files, by name: nothing else under runs/<id>/ is fetched
        names = {f"{RUNS_DIR}/{run_id}/{name}" for name in (*CARRIED, ENTRY_FILE)}
        files = [key for key in keys if key in names]
        stale = local / RUNS_DIR / run_id
        if stale.is_dir():  # only what the archive holds now: a file it dropped must not linger
            shutil.rmtree(stale)
        fetch_into(store, local, files)
    else:
        if not (local / CACHE_INFO).is_file():
            raise UsageError(f"{url} is not an archive (no {CACHE_INFO}); give the URL that "
                             "`nixrepro archive` wrote to.")
        run_id = match(url, ref, run_ids(local))
    return prove(local, url, run_id, trusted)


def import_run(store: RunStore, archived: ArchivedRun) -> None:
    """Put an archived run into the local run store (``reproduce`` makes it the parent of a new
    run), with this archive in its ``archives.json``. A run already there is left as it is."""
    from .archive import ARCHIVES_FILE

    run_id = archived.record.id
    # where the archive is now: a disk mounted elsewhere than where it was written
    entry = {**entry_of(archived.local, run_id), "url": archived.url}
    if (store.run_dir(run_id) / RECORD_FILE).is_file():
        return
    store.ensure()
    # outside runs/: a copy that is killed midway leaves no half run that listings would show
    staging = staging_dir(store.root / STAGING_DIR, run_id)  # what a killed copy left: removed
    try:
        source = archived.local / RUNS_DIR / run_id
        for name in CARRIED:
            if (source / name).is_file():
                copy_atomic(source / name, staging / name)
        atomic_write(staging / ARCHIVES_FILE, json.dumps([entry], indent=2) + "\n")
        try:
            staging.rename(store.run_dir(run_id))  # whole, or not at all
        except OSError:
            if not (store.run_dir(run_id) / RECORD_FILE).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)

