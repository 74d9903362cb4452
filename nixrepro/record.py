"""The run record: one JSON document per run, the contract between every part of nixrepro.

Field by field documentation: docs/record.md. ``record_sha256`` is the sha256 of the canonical JSON
(sorted keys, no whitespace, UTF-8) of the record without that field; ``verify`` recomputes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from .closure import StorePathInfo
from .errors import RecordError
from .host import HostInfo
from .lock import LockedInput

SCHEMA = "nixrepro.run/1"
Status = Literal["running", "succeeded", "failed", "interrupted", "crashed"]
STATUSES: tuple[str, ...] = typing.get_args(Status)
Scalar = int | float | bool | str | None


@dataclass(frozen=True)
class Command:
    argv: list[str]
    cwd: str


@dataclass(frozen=True)
class CodeState:
    commit: str
    branch: str | None
    remote: str | None
    dirty: bool
    diff_sha256: str | None = None
    dirty_files: list[str] = field(default_factory=list)
    # "checkout": the work tree the run started in; "flake": a flake run by reference
    # (`nix run github:org/repo#experiment`), whose code is ``commit`` and not the cwd's checkout
    origin: str = "checkout"


@dataclass(frozen=True)
class Environment:
    flake_lock_sha256: str | None
    inputs: dict[str, LockedInput]
    env_path: str
    system: str
    nix_version: str
    closure_hash: str
    closure: list[StorePathInfo]
    flake_ref: str | None = None
    flake_lock_path: str | None = None
    contents_verified: bool = False


@dataclass(frozen=True)
class DataVersion:
    uri: str
    version_id: str | None
    sha256: str | None
    size: int | None
    pending: bool = False  # produced, kept locally, not yet uploaded (`nixrepro sync`)


@dataclass(frozen=True)
class OutputResult:
    """What became of one ``--output LOCAL=URI`` of ``nixrepro run`` (nixrepro.rundir)."""

    uri: str
    local: str  # the path the command was to write, relative to the run's cwd
    # "stored" (a version in ``outputs``), "pending" (kept in the cache for `nixrepro sync`),
    # "failed" (nothing stored: ``reason`` says why and how to store it), "missing" (not written)
    state: str
    reason: str | None = None  # one sentence, for every state but "stored"


@dataclass(frozen=True)
class DataRecord:
    inputs: list[DataVersion] = field(default_factory=list)
    outputs: list[DataVersion] = field(default_factory=list)
    output_results: list[OutputResult] = field(default_factory=list)  # one per --output flag


@dataclass(frozen=True)
class StageInfo:
    """For a run that is a pipeline stage: its name, cache key and the runs it depends on."""

    name: str
    cache_key: str
    key_parts: dict[str, Any] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EvaluatedInput:
    """A flake input as lib.mkExperiment saw it at evaluation time."""

    rev: str | None
    narHash: str | None


@dataclass(frozen=True)
class BuildFacts:
    """What lib.mkExperiment wrote at evaluation time about the build (``nix run .#experiment``)."""

    rev: str | None  # the flake's commit; None: built from a dirty tree
    nar_hash: str | None  # the flake source's NAR hash
    flake_lock_sha256: str | None
    env: str  # the environment's store path
    system: str
    nixpkgs_rev: str | None
    cuda_support: bool = False  # the evaluated nixpkgs config that matters for reproduction
    cuda_capabilities: list[str] = field(default_factory=list)
    allow_unfree: bool = False
    git: bool | None = None  # the flake's source is a git tree (None: facts older than this field)
    dirty_rev: str | None = None  # newer nix: the dirty tree's HEAD, "<rev>-dirty"
    last_modified: int | None = None
    nixpkgs_nar_hash: str | None = None
    inputs: dict[str, EvaluatedInput] = field(default_factory=dict)  # root inputs, as evaluated


@dataclass(frozen=True)
class Shadowing:
    """A library that an LD_LIBRARY_PATH directory provides under the name of one in the closure:
    the loader searches LD_LIBRARY_PATH first, so the run loads it instead of the pinned one."""

    library: str  # the file name, "libcudart.so.12"
    directory: str  # the LD_LIBRARY_PATH entry that holds it, "/usr/local/cuda/lib64"
    shadows: str  # the closure's file of that name, "/nix/store/...-cuda_cudart-12.4.127-lib/lib/..."


@dataclass(frozen=True)
class CudaInfo:
    """CUDA facts: the runtime the env pins, the driver the host brings (nixrepro.cuda)."""

    runtime: str | None  # CUDA runtime version in the closure, "12.4"; None: the env has none
    driver_supports: str | None  # newest CUDA the host driver supports (nvidia-smi)
    compute_capabilities: list[str] = field(default_factory=list)  # of the host's GPUs
    libcuda: str | None = None  # the libcuda.so.1 that will load (resolved path)
    libcuda_sha256: str | None = None
    # how the driver reaches the process: "nixos-opengl-driver", "host-driver" (mkExperiment's
    # hostDriver), "nixGL", "nix-gl-host", "LD_LIBRARY_PATH" (any other entry), or None (none found)
    injection: str | None = None
    # runtime against driver, by NVIDIA's rules: "native" (the driver supports the runtime's
    # version), "minor-version" (an older driver of the same major: minor version compatibility),
    # "unsupported", or None (no runtime or no driver to compare)
    compatibility: str | None = None
    shadowing: list[Shadowing] = field(default_factory=list)  # closure libraries LD_LIBRARY_PATH hides
    libc_dirs: list[str] = field(default_factory=list)  # LD_LIBRARY_PATH entries holding a libc.so.6


@dataclass(frozen=True)
class Recorder:
    """Who wrote the record: the nixrepro version and the recorder's process."""

    version: str
    pid: int
    hostname: str


@dataclass(frozen=True)
class Seeded:
    """What ``nixrepro.seed_everything()`` seeded inside the run (docs/repeats.md)."""

    seed: int
    libraries: list[str] = field(default_factory=list)  # "random", "numpy", "torch"
    deterministic_algorithms: bool = False  # torch.use_deterministic_algorithms(True)


@dataclass(frozen=True)
class RunRecord:
    id: str
    status: Status
    dev: bool
    started_at: str
    command: Command
    code: CodeState
    environment: Environment
    host: HostInfo
    recorder: Recorder
    schema: str = SCHEMA
    ended_at: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    duration_s: float | None = None
    parent: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    params: dict[str, Scalar] = field(default_factory=dict)
    seed: int | None = None
    data: DataRecord = field(default_factory=DataRecord)
    metrics: dict[str, Scalar] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. the W&B run id/url
    group: str | None = None  # the --repeat group this run belongs to
    repeat_index: int | None = None  # 0..N-1 within its group
    deterministic: bool = False  # run with --deterministic
    seeded: Seeded | None = None  # set when the experiment called nixrepro.seed_everything()
    stage: StageInfo | None = None
    facts: BuildFacts | None = None  # set when started by `nix run .#experiment` (--facts)
    cuda: CudaInfo | None = None  # set when the env has a CUDA runtime or the host a GPU
    # sha256 of the run's files that a person or a listing relies on (stdout.log, stderr.log,
    # metrics.jsonl), set when the run ends (nixrepro.runstore.file_hashes); None while running
    files: dict[str, str] | None = None
    summary_sha256: str = ""  # derived, see summary_sha256()
    record_sha256: str = ""

    def replace(self, **changes: Any) -> RunRecord:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data, with a fresh ``summary_sha256`` and ``record_sha256``.

        (The signature is not in the record but beside it, nixrepro.runstore.SIGNATURE_FILE: signing
        a record, as ``nixrepro archive`` does, never changes its bytes.)
        """
        doc: dict[str, Any] = to_plain(self)
        doc["summary_sha256"] = summary_sha256(doc)
        doc["record_sha256"] = record_sha256(doc)
        return doc

    def to_json(self) -> str:
        return document_json(self.to_dict())

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RunRecord:
        schema = doc.get("schema")
        if schema != SCHEMA:
            raise RecordError(
                f"run record has schema {schema!r}, this nixrepro reads {SCHEMA!r}; "
                "upgrade nixrepro to read it."
            )
        if doc.get("status") not in STATUSES:
            raise RecordError(
                f"run record {doc.get('id')!r} has an unknown status {doc.get('status')!r}; "
                f"it must be one of {', '.join(STATUSES)}."
            )
        try:
            return _build(cls, doc)
        except (TypeError, KeyError, ValueError) as exc:
            raise RecordError(f"run record {doc.get('id')!r} is malformed: {exc}; restore it from "
                              "a backup or remove its run directory.") from exc

    @property
    def short_id(self) -> str:
        return self.id[:8]


def document_json(doc: dict[str, Any]) -> str:
    """A record document as written to disk: compact JSON (json's C encoder: a 2,000-path closure
    costs milliseconds, not 100 ms). ``nixrepro show --json`` or ``jq . record.json`` pretty-prints it.
    Strict JSON: a NaN or infinity that got this far is written as the string metrics use for it.
    """
    return _strict_json(doc, sort_keys=True, ensure_ascii=False) + "\n"


def _strict_json(doc: Any, **options: Any) -> str:
    """json.dumps that never writes NaN or Infinity, which jq and most parsers refuse: the first
    try is the fast C encoder; only a document that holds one is walked and converted."""
    try:
        text = json.dumps(doc, allow_nan=False, **options)
    except ValueError:
        text = json.dumps(_finite(doc), allow_nan=False, **options)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            # An argument or file name that was not UTF-8 reaches Python as lone surrogates
            # (surrogateescape); JSON's own escape (\udcff) keeps it, and reads back the same.
            text = text.encode("utf-8", "backslashreplace").decode()
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not -_INF < value < _INF:
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


_INF = float("inf")


def record_file_json(doc: dict[str, Any]) -> str:
    """record.json's text: :func:`document_json` with the two hashes first, so that a listing reads
    them from the file's first bytes (:func:`read_head`) instead of parsing a 400 KB closure."""
    head = {key: doc[key] for key in HEAD_FIELDS}
    rest = document_json({key: value for key, value in doc.items() if key not in HEAD_FIELDS})
    first = ", ".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in head.items())
    return "{" + first + (", " + rest[1:] if rest != "{}\n" else "}\n")


HEAD_FIELDS = ("record_sha256", "summary_sha256")
_HEAD = re.compile(rb'^\{"record_sha256": "([0-9a-f]{64})", "summary_sha256": "([0-9a-f]{64})"')
_HEAD_BYTES = 170  # exactly what _HEAD matches: 19 + 64 + 22 + 64 + 1


def read_head(path: Path) -> tuple[str, str] | None:
    """(record_sha256, summary_sha256) from the start of a record.json that
    :func:`record_file_json` wrote; None for any other layout (an older nixrepro, a rewrite)."""
    with open(path, "rb") as file:
        match = _HEAD.match(file.read(_HEAD_BYTES))
    return (match.group(1).decode(), match.group(2).decode()) if match else None


def without_closure(doc: dict[str, Any]) -> dict[str, Any]:
    """The record document with an empty closure (a malformed one as it is, for from_dict to refuse)."""
    environment = doc.get("environment") if isinstance(doc, dict) else None
    if not isinstance(environment, dict):
        return doc
    return {**doc, "environment": {**environment, "closure": []}}


def canonical_json(doc: Any) -> bytes:
    """The bytes record_sha256 hashes; a NaN is hashed as the string it is written as, so the
    hash of a record agrees with the hash of the file it was written to."""
    return _strict_json(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_sha256(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``doc`` without its ``record_sha256`` field."""
    body = {key: value for key, value in doc.items() if key != "record_sha256"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def summary_sha256(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the record's summary (the record with an empty closure)
    without its two hashes. It is inside the record, so record_sha256 and the signature cover it:
    a summary.json that hashes to it shows exactly what the record says."""
    body = {key: value for key, value in without_closure(doc).items()
            if key not in ("record_sha256", "summary_sha256")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


T = TypeVar("T")
_SCALARS = frozenset((str, int, float, bool))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def to_plain(value: Any) -> Any:
    """Dataclasses to dicts, recursively; like dataclasses.asdict without its deep copies."""
    cls = type(value)
    if cls in _SCALARS or value is None:
        return value
    names = _FIELD_NAMES.get(cls)
    if names is None and dataclasses.is_dataclass(value):
        names = _FIELD_NAMES.setdefault(cls, tuple(f.name for f in dataclasses.fields(value)))
    if names is not None:
        plain = {}
        for name in names:
            item = getattr(value, name)
            # scalars inline: a 2,000-path closure is 8,000 of them, each a call otherwise
            plain[name] = item if item is None or type(item) in _SCALARS else to_plain(item)
        return plain
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    return value


Converter = Callable[[Any], Any]
_CONVERTERS: dict[Any, Converter] = {}


def _build(cls: type[T], doc: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from JSON data, recursing by type hints. Unknown keys are dropped."""
    converter: Converter = _converter(cls)
    built: T = converter(doc)
    return built


def _converter(hint: Any) -> Converter:
    """A function turning JSON data into ``hint``; made once per type (records hold 1000s of paths)."""
    cached = _CONVERTERS.get(hint)
    if cached is None:
        cached = _CONVERTERS[hint] = _make_converter(hint)
    return cached


def _identity(value: Any) -> Any:
    return value


class _WrongType(TypeError):
    """A JSON value of the wrong type; ``where`` grows as it propagates out (``host.gpus[1].uuid``)."""

    def __init__(self, value: Any, expected: str, where: str = "") -> None:
        self.value, self.expected, self.where = value, expected, where
        shown = _JSON_NAMES.get(type(value), type(value).__name__)
        super().__init__(f"{where or 'the record'} is {shown}, it must be {expected}")

    def at(self, part: str) -> _WrongType:
        joined = part + (self.where if self.where.startswith("[") or not self.where else "." + self.where)
        return _WrongType(self.value, self.expected, joined)


_JSON_NAMES: dict[type, str] = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
                                list: "a list", dict: "an object", type(None): "null"}


def _checker(kinds: frozenset[type], expected: str) -> Converter:
    """A scalar converter that refuses any other JSON type (``type()``: a bool is no int here)."""
    def check(value: Any) -> Any:
        if type(value) not in kinds:
            raise _WrongType(value, expected)
        return value
    return check


_SCALAR_KINDS: dict[Any, tuple[frozenset[type], str]] = {
    str: (frozenset({str}), "a string"),
    int: (frozenset({int}), "an integer"),
    float: (frozenset({int, float}), "a number"),
    bool: (frozenset({bool}), "a boolean"),
}


def _make_converter(hint: Any) -> Converter:
    """Every field is type-checked: a record with a wrong-typed field is a RecordError naming the
    field, never a value that breaks a later sort or format (one such record broke `runs`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALAR_KINDS:
        return _checker(*_SCALAR_KINDS[hint])
    if origin is Literal:
        allowed = frozenset(args)

        def literal(value: Any) -> Any:
            if type(value) is not str or value not in allowed:
                raise _WrongType(value, "one of " + ", ".join(map(str, args)))
            return value
        return literal
    if origin in (Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) != 1:
            if all(arg in _SCALAR_KINDS for arg in inner):  # Scalar: a param or metric value
                kinds = frozenset({type(None)}.union(*(_SCALAR_KINDS[arg][0] for arg in inner)))
                return _checker(kinds, "a string, number, boolean or null")
            return _identity
        convert_inner = _converter(inner[0])
        return lambda value: None if value is None else convert_inner(value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _dataclass_converter(hint)
    if origin is list:
        item = _converter(args[0])

        def convert_list(value: Any) -> Any:
            if type(value) is not list:
                raise _WrongType(value, "a list")
            if item is _identity:
                return list(value)
            converted = []
            for index, member in enumerate(value):
                try:
                    converted.append(item(member))
                except _WrongType as exc:
                    raise exc.at(f"[{index}]") from None
            return converted
        return convert_list
    if origin is dict:
        item = _converter(args[1])

        def convert_dict(value: Any) -> Any:
            if type(value) is not dict:
                raise _WrongType(value, "an object")
            if item is _identity:
                return dict(value)
            converted = {}
            for key, member in value.items():
                try:
                    converted[key] = item(member)
                except _WrongType as exc:
                    raise exc.at(str(key)) from None
            return converted
        return convert_dict
    return _identity


def _dataclass_converter(cls: type) -> Converter:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _converter(hints[f.name])) for f in dataclasses.fields(cls)]

    def build(doc: Any) -> Any:
        if type(doc) is not dict:
            raise _WrongType(doc, "an object")
        values = {}
        for name, conv in fields:  # a loop, not a comprehension: the failing field is named
            if name in doc:
                try:
                    values[name] = conv(doc[name])
                except _WrongType as exc:
                    raise exc.at(name) from None
        return cls(**values)
    return build
