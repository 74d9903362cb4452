"""``nixrepro verify``: prove that a run's record and its recorded environment are intact.

Each check passes, fails or is skipped (with the reason), independently of the others:

* the record: ``record_sha256`` and ``summary_sha256`` recomputed from the file as it is on disk
  (a hand edit shows; one who recomputes them is caught only by the signature);
* the signature (``record.sig``): ``signed by <key name>`` when the project's key signed it,
  ``unsigned``, or a failure when it does not verify (nixrepro.signing);
* the summary: summary.json, which listings read, is the record's (or absent: rebuilt when listed);
* the run's files: stdout.log, stderr.log and metrics.jsonl hash to the record's ``files``;
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import rundir
from .closure import closure_hash, normalize_nar_hash
from .config import DataConfig
from .errors import RecordError
from .git import GitRepo
from .nix import Nix
from .record import RunRecord, record_sha256, summary_sha256
from .runstore import RECORD_FILE, RUN_FILES, SIGNATURE_FILE, SUMMARY_FILE, RunStore, file_hashes

Result = Literal["pass", "fail", "skip"]


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
    data: DataConfig | None = None, trusted_keys: Sequence[str] = (),
) -> Verification:
    """``trusted_keys``: the public keys (``name:base64``) whose signature proves a record."""
    checks = [
        *check_record_file(store, record.id, trusted_keys),
        check_closure_hash(record),
        *check_store(record, nix, contents),
        check_flake_lock(record, repo),
        check_dev_patch(store, record),
        check_data(record, data, contents),
    ]
    return Verification(record.id, checks)


def check_record_file(store: RunStore, run_id: str, trusted_keys: Sequence[str]) -> list[Check]:
    """The record, its signature, its summary and its files, all from record.json as on disk
    (never from the parsed RunRecord: a field it does not know is hashed too)."""
    path = store.run_dir(run_id) / RECORD_FILE
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return [Check("record", "fail", f"{path} cannot be read ({exc})")]
    try:
        signature = store.signature(run_id)
    except RecordError as exc:
        signature = {"signature": f"unreadable ({exc})"}
    return [check_record(doc), check_signature(doc, signature, trusted_keys),
            check_summary(store, run_id, doc), check_files(store, run_id, doc)]


def check_record(doc: dict[str, Any]) -> Check:
    recorded = doc.get("record_sha256")
    actual = record_sha256(doc)
    if recorded != actual:
        return Check("record", "fail",
                     f"record_sha256 is {str(recorded)[:16]}... but the record hashes to "
                     f"{actual[:16]}...: the record was edited after it was written")
    if "summary_sha256" in doc and doc["summary_sha256"] != summary_sha256(doc):
        return Check("record", "fail",
                     "summary_sha256 is not the hash of the record's summary: the record was "
                     "rewritten with a recomputed record_sha256, not by nixrepro")
    return Check("record", "pass", f"record_sha256 {actual[:16]}... matches")


def check_signature(doc: dict[str, Any], sig: dict[str, Any] | None,
                    trusted_keys: Sequence[str]) -> Check:
    """What ``record.sig`` proves; an unsigned record is a skip (record_sha256 alone proves only
    that nobody edited the record without recomputing it), a bad signature a failure. The
    signature is checked against the record's hash as recomputed, never as the record claims it."""
    from .errors import SigningError
    from .signing import check

    if sig is None:
        why = "still running" if doc.get("status") == "running" else "no signing key when it ended"
        return Check("signature", "skip", f"unsigned ({why}); `nixrepro archive` signs it")
    signature = sig.get("signature")
    if not isinstance(signature, str):
        return Check("signature", "fail", f"{SIGNATURE_FILE} holds no signature: it was edited")
    try:
        checked = check(signature, record_sha256(doc), trusted_keys)
    except SigningError as exc:
        return Check("signature", "fail", f"{exc}: the record was edited")
    if checked.verdict == "good":
        return Check("signature", "pass", f"signed by {checked.key_name}")
    if checked.verdict == "unknown":
        known = ", ".join(key.split(":", 1)[0] for key in trusted_keys) or "none"
        return Check("signature", "skip",
                     f"signed by {checked.key_name}, which is not this project's key ({known}): "
                     "it proves nothing here; verify where that key's public half is trusted")
    return Check("signature", "fail",
                 f"the signature by {checked.key_name} does not verify: the record was changed "
                 "after it was signed (its record_sha256 recomputed), or the signature forged")


def check_summary(store: RunStore, run_id: str, doc: dict[str, Any]) -> Check:
    """summary.json, which `runs`, groups and lineage read, says what the record says."""
    path = store.run_dir(run_id) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_bytes())
    except FileNotFoundError:
        return Check("summary", "pass", "none yet; listings build it from the record")
    except (OSError, ValueError) as exc:
        return Check("summary", "fail", f"{SUMMARY_FILE} cannot be read ({exc}); `nixrepro runs` "
                                        "rebuilds it from the record")
    body = summary.get("summary") if isinstance(summary, dict) else None
    if not isinstance(body, dict) or "summary_sha256" not in doc or \
            body.get("record_sha256") != doc.get("record_sha256") or \
            summary_sha256(body) != doc["summary_sha256"]:
        if "summary_sha256" not in doc:
            return Check("summary", "skip", "the record predates summary_sha256; listings read "
                                            "the record itself")
        return Check("summary", "fail", f"{SUMMARY_FILE} is not the record's summary (edited, or "
                                        "left by a crash); listings ignore it and `nixrepro runs` "
                                        "rebuilds it")
    return Check("summary", "pass", f"{SUMMARY_FILE} matches summary_sha256")


def check_files(store: RunStore, run_id: str, doc: dict[str, Any]) -> Check:
    """The run's logs and metrics are what they were when it ended."""
    recorded = doc.get("files")
    if recorded is None:
        if doc.get("status") == "running":
            return Check("run files", "skip", "the run has not ended; its files still grow")
        return Check("run files", "skip", "recorded before nixrepro hashed a run's files")
    if not isinstance(recorded, dict):
        return Check("run files", "fail", "the record's files is not an object: it was edited")
    actual = file_hashes(store.run_dir(run_id))
    problems = []
    for name in RUN_FILES:
        if name in recorded and name not in actual:
            problems.append(f"{name} is missing")
        elif name in actual and name not in recorded:
            problems.append(f"{name} was written after the run ended")
        elif name in actual and actual[name] != recorded[name]:
            problems.append(f"{name} was changed after the run ended")
    if problems:
        return Check("run files", "fail", "; ".join(problems))
    shown = ", ".join(sorted(actual)) or "none written"
    return Check("run files", "pass", f"{shown} as when the run ended")


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
    path = store.run_dir(record.id) / rundir.DEV_PATCH
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return Check("dev patch", "fail", f"{path} is missing")
    if actual != expected:
        return Check("dev patch", "fail", f"{rundir.DEV_PATCH} does not hash to code.diff_sha256")
    return Check("dev patch", "pass", f"{rundir.DEV_PATCH} matches code.diff_sha256")


def check_data(record: RunRecord, settings: DataConfig | None, contents: bool) -> Check:
    """Every recorded data version is still in its store with the recorded sha256."""
    versions = [*record.data.inputs, *record.data.outputs]
    if not versions:
        return Check("data", "skip", "no data versions recorded")
    pending = [v.uri for v in versions if v.pending or not v.version_id]
    if pending:
        return Check("data", "fail", f"{_some(pending)} not uploaded yet; `nixrepro sync` uploads them")
    from .datastore import DataStoreError, DataURI
    from .datastore.ops import Data

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
