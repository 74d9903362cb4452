"""What differs between two runs, computed from their records alone (store paths need not exist).

:func:`diff_runs` turns two :class:`RunRecord` into a :class:`RunDiff`; :func:`to_json` gives its
stable JSON form (``nixrepro.diff/1``, docs/diff.md) and ``nixrepro.diffview.render_text`` the
terminal form. The one impure part is optional: given a :class:`GitRepo`, the code section lists
the commits between the two runs and ``git diff --stat`` when both commits are in the repository.

Packages are grouped the way ``nix store diff-closures`` groups them, so version changes agree with
it: an output suffix (``-dev``, ``-lib``, any ``-[a-z]+``) is stripped from the store name, then the
name and version split at the first ``-`` not followed by a letter (nix's ``DrvName``). On top of
that, paths whose version did not change but whose store path or NAR hash did are listed as
"same version, rebuilt", which diff-closures does not show.
"""

from __future__ import annotations

import math
import re
import shlex
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any, Literal

from .closure import StorePathInfo, normalize_nar_hash
from .codec import frozen
from .determinism import determinism_note
from .host import fact_items
from .lock import LockedInput
from .parallel import Background
from .record import RunRecord, Scalar, to_plain

if TYPE_CHECKING:  # git is only needed for the optional code details
    from .git import GitRepo

SCHEMA = "nixrepro.diff/1"
Verdict = Literal["identical", "same-recipe-different-bits", "different"]
VERDICT_TEXT: dict[str, str] = {
    "identical": "identical environment",
    "same-recipe-different-bits": "same recipe but different bits",
    "different": "different environment",
}
_OUTPUT_SUFFIX = re.compile(r"(.*)-([a-z]+|lib32|lib64)")
_LETTERS = frozenset(string.ascii_letters)


@frozen
class FieldChange:
    """One field whose value differs: ``old`` -> ``new`` (None when absent on that side)."""

    field: str
    old: Any
    new: Any


@frozen
class InputChange:
    """A flake input: ``status`` added, removed or changed, with the changed locked fields."""

    name: str
    status: Literal["added", "removed", "changed"]
    url: str
    changes: list[FieldChange] = field(default_factory=list)


@frozen
class PackageChange:
    """A package (store name without version) whose versions differ, or that was added/removed."""

    name: str
    status: Literal["added", "removed", "changed"]
    old_versions: list[str]
    new_versions: list[str]
    old_size: int
    new_size: int

    @property
    def size_delta(self) -> int:
        return self.new_size - self.old_size


@frozen
class RebuiltPackage:
    """Same name and version on both sides, but a different store path or NAR hash."""

    name: str
    version: str
    old_paths: list[str]
    new_paths: list[str]
    reason: Literal["different store path", "same store path, different NAR hash"]


@frozen
class BitsChange:
    """A store path present on both sides with different contents."""

    path: str
    old_nar_hash: str
    new_nar_hash: str


@frozen
class DataChange:
    direction: Literal["input", "output"]
    uri: str
    status: Literal["added", "removed", "changed"]
    changes: list[FieldChange] = field(default_factory=list)


@frozen
class MetricChange:
    name: str
    old: Scalar
    new: Scalar
    delta: float | None  # new - old, when both are numbers
    relative: float | None  # delta / |old|, when old is a non-zero number


@frozen
class CodeDiff:
    old_commit: str
    new_commit: str
    changes: list[FieldChange]  # commit, dirty, diff_sha256, branch
    commits_between: list[str] | None = None  # "<sha> <subject>", oldest first; None: not known
    diff_stat: str | None = None

    @property
    def differs(self) -> bool:
        return bool(self.changes)


@frozen
class EnvironmentDiff:
    old_closure_hash: str
    new_closure_hash: str
    old_paths: int
    new_paths: int
    old_size: int
    new_size: int
    changes: list[FieldChange]  # closure_hash, env_path, flake_lock_sha256, system, nix_version
    packages: list[PackageChange]
    rebuilt: list[RebuiltPackage]
    different_bits: list[BitsChange]

    @property
    def differs(self) -> bool:
        return bool(self.changes or self.packages or self.rebuilt or self.different_bits)


@frozen
class RunDiff:
    """Everything that differs between run ``a`` (old) and run ``b`` (new)."""

    a: RunRecord
    b: RunRecord
    verdict: Verdict
    code: CodeDiff
    inputs: list[InputChange]
    environment: EnvironmentDiff
    host: list[FieldChange]
    params: list[FieldChange]
    seed: list[FieldChange]
    data: list[DataChange]
    metrics: list[MetricChange]
    outcome: list[FieldChange]
    # One sentence per run that was not run deterministically (metrics may differ by chance).
    determinism: list[str] = field(default_factory=list)

    @property
    def verdict_text(self) -> str:
        return VERDICT_TEXT[self.verdict]

    def differs(self, section: str) -> bool:
        value = getattr(self, section)
        return bool(value.differs if hasattr(value, "differs") else value)


SECTIONS = ("code", "inputs", "environment", "host", "params", "seed", "data", "metrics", "outcome")


def diff_runs(a: RunRecord, b: RunRecord, *, repo: GitRepo | None = None) -> RunDiff:
    """Compare run ``a`` (old) with run ``b`` (new). Pure unless ``repo`` is given: then git is
    asked about the commits while the rest is compared."""
    code = Background(diff_code, a, b, repo) if repo is not None else None
    environment = diff_environment(a, b)
    return RunDiff(
        a=a,
        b=b,
        verdict=verdict(a.environment.closure, b.environment.closure, a.environment.closure_hash,
                        b.environment.closure_hash),
        code=code.result() if code is not None else diff_code(a, b, None),
        inputs=diff_inputs(a.environment.inputs, b.environment.inputs),
        environment=environment,
        host=diff_host(a, b),
        params=diff_mapping(a.params, b.params),
        seed=fields_changed([("seed", a.seed, b.seed)]),
        data=diff_data(a, b),
        metrics=diff_metrics(a.metrics, b.metrics),
        outcome=fields_changed([
            ("status", a.status, b.status),
            ("exit_code", a.exit_code, b.exit_code),
            ("signal", a.signal, b.signal),
            ("duration_s", a.duration_s, b.duration_s),
        ]),
        determinism=[note for note in map(determinism_note, (a, b)) if note],
    )


def verdict(old: Sequence[StorePathInfo], new: Sequence[StorePathInfo], old_hash: str,
            new_hash: str) -> Verdict:
    if old_hash == new_hash:
        return "identical"
    if {info.path for info in old} == {info.path for info in new}:
        return "same-recipe-different-bits"
    return "different"


def fields_changed(triples: Iterable[tuple[str, Any, Any]]) -> list[FieldChange]:
    return [FieldChange(name, old, new) for name, old, new in triples if old != new]


def diff_mapping(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[FieldChange]:
    """Per key: changed, added (old None) or removed (new None)."""
    return fields_changed((key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new)))


def diff_code(a: RunRecord, b: RunRecord, repo: GitRepo | None) -> CodeDiff:
    old, new = a.code, b.code
    changes = fields_changed([
        ("commit", old.commit, new.commit),
        ("branch", old.branch, new.branch),
        ("dirty", old.dirty, new.dirty),
        ("diff_sha256", old.diff_sha256, new.diff_sha256),
        ("origin", old.origin, new.origin),
        # what was run: `nix run .#experiment -- --lr 0.1` and `-- --lr 0.5` differ only here
        ("command", shlex.join(a.command.argv), shlex.join(b.command.argv)),
    ])
    between: list[str] | None = None
    stat: str | None = None
    if repo is not None and old.commit != new.commit:
        asked = Background(_diff_stat, repo, old.commit, new.commit)  # both git calls at once
        between = repo.commits_between(old.commit, new.commit)  # None when either is not here
        stat = asked.result() if between is not None else None
    return CodeDiff(old.commit, new.commit, changes, between, stat)


def _diff_stat(repo: GitRepo, old: str, new: str) -> str | None:
    """``git diff --stat`` of the two commits; None when git cannot compare them."""
    result = repo.call("diff", "--stat", old, new, check=False)
    return result.stdout.rstrip("\n") if result.returncode == 0 else None


# every field that says what was fetched or how far it is pinned (a flake = false input is another
# thing than the same source as a flake)
_INPUT_FIELDS = ("url", "rev", "narHash", "lastModified", "ref", "type", "flake", "locked", "local",
                 "follows", "overridden")


def diff_inputs(old: Mapping[str, LockedInput], new: Mapping[str, LockedInput]) -> list[InputChange]:
    """Locked flake inputs by input path: rev / narHash / lastModified old -> new, added, removed."""
    result: list[InputChange] = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before is None:
            if after is not None:
                result.append(InputChange(name, "added", after.url))
        elif after is None:
            result.append(InputChange(name, "removed", before.url))
        else:
            changes = fields_changed(
                (f, getattr(before, f), getattr(after, f)) for f in _INPUT_FIELDS
                # a record older than the locked check says None: not a change of the input
                if not (f == "locked" and None in (before.locked, after.locked))
            )
            if changes:
                result.append(InputChange(name, "changed", after.url, changes))
    return result


def diff_environment(a: RunRecord, b: RunRecord) -> EnvironmentDiff:
    old, new = a.environment, b.environment
    changes = fields_changed([
        ("closure_hash", old.closure_hash, new.closure_hash),
        ("env_path", old.env_path, new.env_path),
        ("flake_lock_sha256", old.flake_lock_sha256, new.flake_lock_sha256),
        ("system", old.system, new.system),
        ("nix_version", old.nix_version, new.nix_version),
    ])
    packages, rebuilt, bits = diff_closures(old.closure, new.closure)
    return EnvironmentDiff(
        old_closure_hash=old.closure_hash,
        new_closure_hash=new.closure_hash,
        old_paths=len(old.closure),
        new_paths=len(new.closure),
        old_size=sum(p.narSize for p in old.closure),
        new_size=sum(p.narSize for p in new.closure),
        changes=changes,
        packages=packages,
        rebuilt=rebuilt,
        different_bits=bits,
    )


def split_store_name(store_name: str) -> tuple[str, str]:
    """``python3-3.11.9-dev`` -> ("python3", "3.11.9"), as ``nix store diff-closures`` groups."""
    match = _OUTPUT_SUFFIX.fullmatch(store_name)
    name = match.group(1) if match else store_name
    for i in range(len(name) - 1):
        if name[i] == "-" and name[i + 1] not in _LETTERS:
            return name[:i], name[i + 1:]
    return name, ""


# name -> version -> [(path, narHash, narSize)]
Grouped = dict[str, dict[str, list[tuple[str, str, int]]]]


def group_closure(closure: Iterable[StorePathInfo], names: frozenset[str] | None = None) -> Grouped:
    """The closure by package name and version; ``names``: only these packages."""
    grouped: Grouped = {}
    for info in closure:
        name, version = split_store_name(_store_name(info))
        if names is None or name in names:
            grouped.setdefault(name, {}).setdefault(version, []).append(
                (info.path, info.narHash, info.narSize)
            )
    return grouped


def _store_name(info: StorePathInfo) -> str:
    path = info.path
    if path.startswith("/nix/store/") and path[43:44] == "-":  # a slice: 40,000 calls at 20,000 paths
        return path[44:]
    base = path.rsplit("/", 1)[-1]
    return base[33:] if len(base) > 33 else base


def _maybe_named(closure: Sequence[StorePathInfo], prefixes: tuple[str, ...]) -> list[StorePathInfo]:
    """The paths whose store name may start with one of ``prefixes`` (group_closure keeps those
    whose package is one of them): a path of the usual form (/nix/store/<32 characters>-<name>) is
    tested where its name starts, with no call per path (40,000 at 20,000 paths); any other is
    kept for group_closure to judge."""
    return [info for info in closure
            if (path := info.path).startswith(prefixes, 44) or path[43:44] != "-"
            or not path.startswith("/nix/store/")]


def diff_closures(
    old: Sequence[StorePathInfo], new: Sequence[StorePathInfo]
) -> tuple[list[PackageChange], list[RebuiltPackage], list[BitsChange]]:
    """Package version changes, same-version rebuilds, and same paths with different bits.

    Only a package with a path that is not on both sides (with the same NAR hash) can differ,
    and a package's name starts its store name: so only the paths whose names start with such
    a package's are grouped (two closures of 2,000 paths that differ in a few cost a few).
    """
    old_hashes = {info.path: info.narHash for info in old}
    new_hashes = {info.path: info.narHash for info in new}
    gone = [info for info in old if new_hashes.get(info.path) != info.narHash]
    came = [info for info in new if old_hashes.get(info.path) != info.narHash]
    names = frozenset(split_store_name(_store_name(info))[0] for info in (*gone, *came))
    prefixes = tuple(names)
    before = group_closure(_maybe_named(old, prefixes), names)
    after = group_closure(_maybe_named(new, prefixes), names)
    packages: list[PackageChange] = []
    rebuilt: list[RebuiltPackage] = []
    for name in sorted(set(before) | set(after)):
        old_versions, new_versions = before.get(name, {}), after.get(name, {})
        if set(old_versions) != set(new_versions):
            status: Literal["added", "removed", "changed"] = (
                "added" if not old_versions else "removed" if not new_versions else "changed"
            )
            packages.append(PackageChange(
                name=name,
                status=status,
                old_versions=sorted(set(old_versions) - set(new_versions)),
                new_versions=sorted(set(new_versions) - set(old_versions)),
                old_size=sum(size for paths in old_versions.values() for _, _, size in paths),
                new_size=sum(size for paths in new_versions.values() for _, _, size in paths),
            ))
        for version in sorted(set(old_versions) & set(new_versions)):
            was, now = sorted(old_versions[version]), sorted(new_versions[version])
            if was == now:
                continue
            paths_before, paths_after = [p for p, _, _ in was], [p for p, _, _ in now]
            reason: Literal["different store path", "same store path, different NAR hash"] = (
                "different store path" if paths_before != paths_after
                else "same store path, different NAR hash"
            )
            rebuilt.append(RebuiltPackage(name, version, paths_before, paths_after, reason))
    # Compare the recorded strings first and normalise only on a mismatch (nix versions differ
    # in hash encoding): normalising 2,000 hashes would dominate the diff.
    bits = []
    for info in sorted(came, key=lambda i: i.path):
        recorded = old_hashes.get(info.path)
        if recorded is None:
            continue
        old_hash, new_hash = normalize_nar_hash(recorded), normalize_nar_hash(info.narHash)
        if old_hash != new_hash:
            bits.append(BitsChange(info.path, old_hash, new_hash))
    return packages, rebuilt, bits


def diff_host(a: RunRecord, b: RunRecord) -> list[FieldChange]:
    """Every host fact (host.fact_items: the scheduler's field by field, so two tasks of one array
    job differ in ``slurm.array_task_id``), then the driver library: the one part of a CUDA run
    Nix cannot pin (same driver version, other bits?)."""
    return fields_changed([
        *((name, before, after) for (name, before), (_, after)
          in zip(fact_items(a.host), fact_items(b.host), strict=True)),
        ("libcuda", a.cuda.libcuda if a.cuda else None, b.cuda.libcuda if b.cuda else None),
        ("libcuda_sha256", a.cuda.libcuda_sha256 if a.cuda else None,
         b.cuda.libcuda_sha256 if b.cuda else None),
    ])


def diff_data(a: RunRecord, b: RunRecord) -> list[DataChange]:
    result: list[DataChange] = []
    sides: tuple[tuple[Literal["input", "output"], list[Any], list[Any]], ...] = (
        ("input", a.data.inputs, b.data.inputs), ("output", a.data.outputs, b.data.outputs))
    for direction, old_list, new_list in sides:
        old = {d.uri: d for d in old_list}
        new = {d.uri: d for d in new_list}
        for uri in sorted(set(old) | set(new)):
            before, after = old.get(uri), new.get(uri)
            if before is None:
                result.append(DataChange(direction, uri, "added"))
            elif after is None:
                result.append(DataChange(direction, uri, "removed"))
            else:
                changes = fields_changed(
                    (f, getattr(before, f), getattr(after, f))
                    for f in ("version_id", "sha256", "size", "pending")
                )
                if changes:
                    result.append(DataChange(direction, uri, "changed", changes))
    return result


def _number(value: Any) -> bool:
    """A metric a difference can be taken of: a number a 64-bit float holds (10**400 is compared
    for equality only)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def diff_metrics(old: Mapping[str, Scalar], new: Mapping[str, Scalar]) -> list[MetricChange]:
    """Every metric of either run (a metric that did not change is listed only with ``--all``)."""
    result: list[MetricChange] = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        delta = relative = None
        if isinstance(before, (int, float)) and isinstance(after, (int, float)) \
                and _number(before) and _number(after):
            delta = float(after) - float(before)
            relative = delta / abs(float(before)) if before else None
            if not math.isfinite(delta):  # 1.7e308 - -1.7e308: no float holds it (strict JSON)
                delta = relative = None
            elif relative is not None and not math.isfinite(relative):
                relative = None
        result.append(MetricChange(name, before, after, delta, relative))
    return result


def changed_metrics(diff: RunDiff) -> list[MetricChange]:
    return [m for m in diff.metrics if m.old != m.new or type(m.old) is not type(m.new)]


def section_differs(diff: RunDiff, section: str) -> bool:
    """Whether a section is shown without ``--all``. A run's duration always differs a little,
    so the outcome section counts as different only when status, exit code or signal do."""
    if section == "metrics":
        return bool(changed_metrics(diff))
    if section == "outcome":
        return any(c.field != "duration_s" for c in diff.outcome)
    return diff.differs(section)


def to_json(diff: RunDiff) -> dict[str, Any]:
    """The stable JSON form (docs/diff.md): every section, each with ``differs``."""
    env = diff.environment
    code = diff.code
    return {
        "schema": SCHEMA,
        "a": _run_ref(diff.a),
        "b": _run_ref(diff.b),
        "verdict": diff.verdict,
        "verdict_text": diff.verdict_text,
        "sections": {
            "code": {
                "differs": code.differs,
                "old_commit": code.old_commit,
                "new_commit": code.new_commit,
                "changes": to_plain(code.changes),
                "commits_between": code.commits_between,
                "diff_stat": code.diff_stat,
            },
            "inputs": {"differs": bool(diff.inputs), "changes": to_plain(diff.inputs)},
            "environment": {
                "differs": env.differs,
                "old_closure_hash": env.old_closure_hash,
                "new_closure_hash": env.new_closure_hash,
                "old_paths": env.old_paths,
                "new_paths": env.new_paths,
                "old_size": env.old_size,
                "new_size": env.new_size,
                "changes": to_plain(env.changes),
                "packages": [{**to_plain(p), "size_delta": p.size_delta} for p in env.packages],
                "rebuilt": to_plain(env.rebuilt),
                "different_bits": to_plain(env.different_bits),
            },
            "host": {"differs": bool(diff.host), "changes": to_plain(diff.host)},
            "params": {"differs": bool(diff.params), "changes": to_plain(diff.params)},
            "seed": {"differs": bool(diff.seed), "changes": to_plain(diff.seed)},
            "data": {"differs": bool(diff.data), "changes": to_plain(diff.data)},
            "metrics": {"differs": bool(changed_metrics(diff)), "metrics": to_plain(diff.metrics)},
            "outcome": {"differs": section_differs(diff, "outcome"), "changes": to_plain(diff.outcome)},
        },
        "determinism": diff.determinism,
    }


def _run_ref(record: RunRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "started_at": record.started_at,
            "closure_hash": record.environment.closure_hash}
