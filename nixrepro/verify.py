"""``nixrepro verify``: prove that a run's record and its recorded environment are intact.

Each check passes, fails or is skipped (with the reason), independently of the others:

* the record: ``record_sha256`` recomputed from the file as it is on disk (a hand edit shows);
* the closure hash: recomputed from the recorded closure;
* the closure in the store: every recorded path valid, with the recorded NAR hash;
* the contents (``--contents``): ``nix store verify`` re-hashes every path's files;
* flake.lock: the file at the recorded commit hashes to the recorded value;
* the dev patch: ``code.patch`` hashes to ``code.diff_sha256``;
* data versions: still retrievable (comes with the data store; skipped until then).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from .closure import closure_hash, normalize_nar_hash
from .config import DataConfig
from .git import GitRepo
from .nix import Nix
from .record import RunRecord, record_sha256
from .runstore import RECORD_FILE, RunStore

Result = Literal["pass", "fail", "skip"]
DEV_PATCH = "code.patch"


@dataclass(frozen=True)
class Check:
    name: str
    result: Result
    detail: str

    @property
    def ok(self) -> bool:
        return self.result != "fail"


@dataclass(frozen=True)
class Verification:
    run_id: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def verify_run(
    store: RunStore, record: RunRecord, *, repo: GitRepo, nix: Nix, contents: bool = False,
    data: DataConfig | None = None,
) -> Verification:
    checks = [
        check_record(store, record.id),
        check_closure_hash(record),
        *check_store(record, nix, contents),
        check_flake_lock(record, repo),
        check_dev_patch(store, record),
        check_data(record, data, contents),
    ]
    return Verification(record.id, checks)


def check_record(store: RunStore, run_id: str) -> Check:
    path = store.run_dir(run_id) / RECORD_FILE
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Check("record", "fail", f"{path} cannot be read ({exc})")
    recorded = doc.get("record_sha256")
    actual = record_sha256(doc)
    if recorded != actual:
        return Check("record", "fail",
                     f"record_sha256 is {str(recorded)[:16]}... but the record hashes to "
                     f"{actual[:16]}...: the record was edited after it was written")
    return Check("record", "pass", f"record_sha256 {actual[:16]}... matches")


def check_closure_hash(record: RunRecord) -> Check:
    env = record.environment
    actual = closure_hash(env.closure)
    if actual != env.closure_hash:
        return Check("closure hash", "fail",
                     f"the recorded closure hashes to {actual[:16]}..., "
                     f"not the recorded {env.closure_hash[:16]}...")
    return Check("closure hash", "pass", f"{actual[:16]}... over {len(env.closure)} paths")


def check_store(record: RunRecord, nix: Nix, contents: bool) -> list[Check]:
    """The closure paths valid with their recorded NAR hashes; with ``contents``, re-hashed."""
    recorded = {info.path: normalize_nar_hash(info.narHash) for info in record.environment.closure}
    valid, invalid = nix.path_infos(sorted(recorded))
    changed = [info.path for info in valid if normalize_nar_hash(info.narHash) != recorded[info.path]]
    problems = []
    if invalid:
        problems.append(f"{len(invalid)} missing from the store ({_some(invalid)})")
    if changed:
        problems.append(f"{len(changed)} with a different NAR hash than recorded ({_some(changed)})")
    if problems:
        store_check = Check("closure in store", "fail", "; ".join(problems)
                            + "; restore them with `nixrepro rebuild`")
    else:
        store_check = Check("closure in store", "pass",
                            f"all {len(recorded)} paths valid with the recorded NAR hash")
    if not contents:
        return [store_check, Check("contents", "skip", "not re-hashed; pass --contents")]
    present = [info.path for info in valid]
    corrupted = nix.verify_contents(present) if present else []
    if corrupted:
        contents_check = Check("contents", "fail",
                               f"{len(corrupted)} paths no longer match their hash ({_some(corrupted)}); "
                               "repair them with `nix store repair`")
    elif not present:
        contents_check = Check("contents", "skip", "no recorded path is in the store")
    else:
        contents_check = Check("contents", "pass", f"{len(present)} paths re-hashed, all match")
    return [store_check, contents_check]


def check_flake_lock(record: RunRecord, repo: GitRepo) -> Check:
    env = record.environment
    if env.flake_lock_sha256 is None:
        return Check("flake.lock", "skip", "the flake has no inputs, so no flake.lock was recorded")
    rel = env.flake_lock_path or "flake.lock"
    commit = record.code.commit
    if not repo.has_commits(commit):
        return Check("flake.lock", "fail",
                     f"commit {commit[:12]} is not in {repo.root}; fetch it to check {rel}")
    data = repo.show_file(commit, rel)
    if data is None:
        return Check("flake.lock", "fail", f"{rel} is not in commit {commit[:12]}")
    actual = hashlib.sha256(data).hexdigest()
    if record.dev and record.code.dirty and actual != env.flake_lock_sha256:
        return Check("flake.lock", "skip", "a dev run: the recorded lock may be the uncommitted one")
    if actual != env.flake_lock_sha256:
        return Check("flake.lock", "fail",
                     f"{rel} at {commit[:12]} hashes to {actual[:16]}..., "
                     f"not the recorded {env.flake_lock_sha256[:16]}...")
    return Check("flake.lock", "pass", f"{rel} at {commit[:12]} matches")


def check_dev_patch(store: RunStore, record: RunRecord) -> Check:
    expected = record.code.diff_sha256
    if expected is None:
        return Check("dev patch", "skip", "not a dev run")
    path = store.run_dir(record.id) / DEV_PATCH
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return Check("dev patch", "fail", f"{path} is missing")
    if actual != expected:
        return Check("dev patch", "fail", f"{DEV_PATCH} does not hash to code.diff_sha256")
    return Check("dev patch", "pass", f"{DEV_PATCH} matches code.diff_sha256")


def check_data(record: RunRecord, settings: DataConfig | None, contents: bool) -> Check:
    """Every recorded data version is still in its store with the recorded sha256."""
    versions = [*record.data.inputs, *record.data.outputs]
    if not versions:
        return Check("data", "skip", "no data versions recorded")
    pending = [v.uri for v in versions if v.pending or not v.version_id]
    if pending:
        return Check("data", "fail", f"{_some(pending)} not uploaded yet; `nixrepro sync` uploads them")
    from .dataops import Data
    from .datastore import DataStoreError, DataURI

    data = Data(settings)
    problems = []
    for version in versions:
        ref = f"{version.uri}@{version.version_id}"
        try:
            if contents:  # download afresh and re-hash
                found = data.verify(ref)
            else:
                uri = DataURI.parse(version.uri)
                found = data.store(uri).head(uri, version.version_id)
        except DataStoreError as exc:
            problems.append(f"{ref}: {exc}")
            continue
        if found.sha256 != version.sha256:
            problems.append(f"{ref}: its sha256 is not the recorded one")
    if problems:
        return Check("data", "fail", "; ".join(problems[:3]))
    how = "re-hashed" if contents else "present"
    return Check("data", "pass", f"all {len(versions)} data versions {how} with the recorded sha256")


def _some(paths: list[str], limit: int = 3) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def to_json(verification: Verification) -> dict[str, object]:
    return {
        "run": verification.run_id,
        "ok": verification.ok,
        "checks": [{"name": c.name, "result": c.result, "detail": c.detail}
                   for c in verification.checks],
    }
