"""The run record: one JSON document per run, the contract between every part of nixrepro.

Field by field documentation: docs/record.md. ``record_sha256`` is the sha256 of the canonical JSON
(sorted keys, no whitespace, UTF-8) of the record without that field; ``verify`` recomputes it.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeVar

from . import codec
from .closure import StorePathInfo
from .codec import canonical_json as canonical_json  # re-exported: the record's functions
from .codec import document_json as document_json
from .codec import frozen
from .errors import RecordError as RecordError  # re-exported: readers catch it from here
from .host import HostInfo
from .lock import LockedInput

SCHEMA = "nixrepro.run/1"
Status = Literal["running", "succeeded", "failed", "interrupted", "crashed"]
STATUSES: tuple[str, ...] = typing.get_args(Status)
Scalar = int | float | bool | str | None


@frozen
class Command:
    argv: list[str]
    cwd: str


@frozen
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


@frozen
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


@frozen
class DataVersion:
    uri: str
    version_id: str | None
    sha256: str | None
    size: int | None
    pending: bool = False  # produced, kept locally, not yet uploaded (`nixrepro sync`)


@frozen
class OutputResult:
    """What became of one ``--output LOCAL=URI`` of ``nixrepro run`` (nixrepro.rundir)."""

    uri: str
    local: str  # the path the command was to write, relative to the run's cwd
    # "stored" (a version in ``outputs``), "pending" (kept in the cache for `nixrepro sync`),
    # "failed" (nothing stored: ``reason`` says why and how to store it), "missing" (not written)
    state: str
    reason: str | None = None  # one sentence, for every state but "stored"


@frozen
class DataRecord:
    inputs: list[DataVersion] = field(default_factory=list)
    outputs: list[DataVersion] = field(default_factory=list)
    output_results: list[OutputResult] = field(default_factory=list)  # one per --output flag


@frozen
class StageInfo:
    """For a run that is a pipeline stage: its name, cache key and the runs it depends on."""

    name: str
    cache_key: str
    key_parts: dict[str, Any] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)


@frozen
class EvaluatedInput:
    """A flake input as lib.mkExperiment saw it at evaluation time."""

    rev: str | None
    narHash: str | None


@frozen
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


@frozen
class Shadowing:
    """A library that an LD_LIBRARY_PATH directory provides under the name of one in the closure:
    the loader searches LD_LIBRARY_PATH first, so the run loads it instead of the pinned one."""

    library: str  # the file name, "libcudart.so.12"
    directory: str  # the LD_LIBRARY_PATH entry that holds it, "/usr/local/cuda/lib64"
    shadows: str  # the closure's file of that name, "/nix/store/...-cuda_cudart-12.4.127-lib/lib/..."


@frozen
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


@frozen
class Recorder:
    """Who wrote the record: the nixrepro version and the recorder's process."""

    version: str
    pid: int
    hostname: str


@frozen
class Seeded:
    """What ``nixrepro.seed_everything()`` seeded inside the run (docs/repeats.md)."""

    seed: int
    libraries: list[str] = field(default_factory=list)  # "random", "numpy", "torch"
    deterministic_algorithms: bool = False  # torch.use_deterministic_algorithms(True)


@frozen
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
        return codec.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data, with a fresh ``summary_sha256`` and ``record_sha256``.

        (The signature is not in the record but beside it, nixrepro.runstore.SIGNATURE_FILE: signing
        a record, as ``nixrepro archive`` does, never changes its bytes.)
        """
        doc: dict[str, Any] = codec.encode(self)
        known = _HASHED.get(id(self))
        if known is not None and known[0] is self:  # this very record was hashed before (saved,
            doc["summary_sha256"], doc["record_sha256"] = known[1:]  # then sized for its reserve)
            return doc
        doc["summary_sha256"] = summary_sha256(doc)
        doc["record_sha256"] = record_sha256(doc)
        _HASHED.clear()  # the last record only: it is kept alive here, and its id so stays its own
        _HASHED[id(self)] = (self, doc["summary_sha256"], doc["record_sha256"])
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
            return codec.decode(cls, doc)
        except codec.CodecError as exc:
            if exc.problem == "unknown":
                raise RecordError(
                    f"run record {doc.get('id')!r} has a field this nixrepro does not know, "
                    f"{exc.where()!r} (written by a newer nixrepro, or edited); upgrade nixrepro to "
                    "read it, or restore the record from a backup."
                ) from None
            raise RecordError(f"run record {doc.get('id')!r} is malformed: {exc}; restore it from "
                              "a backup or remove its run directory.") from None

    @property
    def short_id(self) -> str:
        return self.id[:8]


def record_file_json(doc: dict[str, Any]) -> str:
    """record.json's text: :func:`document_json` with the two hashes first, so that a listing reads
    them from the file's first bytes (:func:`read_head`) instead of parsing a 400 KB closure."""
    return record_file_bytes(doc).decode()


def record_file_bytes(doc: dict[str, Any]) -> bytes:
    """:func:`record_file_json` as the bytes written (a 20,000-path closure is put in as the bytes
    it was encoded to once, nixrepro.closure.StorePaths, and joined once)."""
    head = {key: doc[key] for key in HEAD_FIELDS}
    rest = codec.document_pieces({key: value for key, value in doc.items() if key not in HEAD_FIELDS})
    first = ", ".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in head.items())
    if rest[0].startswith(b"{}"):
        return b"{" + first.encode() + b"}\n"
    return b"".join([b"{", first.encode(), b", ", rest[0][1:], *rest[1:]])


HEAD_FIELDS = ("record_sha256", "summary_sha256")
# id -> (the record, its summary_sha256, its record_sha256): the last record hashed by to_dict
_HASHED: dict[int, tuple[RunRecord, str, str]] = {}
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


def record_sha256(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``doc`` without its ``record_sha256`` field."""
    body = {key: value for key, value in doc.items() if key != "record_sha256"}
    return codec.canonical_sha256(body)


def summary_sha256(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the record's summary (the record with an empty closure)
    without its two hashes. It is inside the record, so record_sha256 and the signature cover it:
    a summary.json that hashes to it shows exactly what the record says."""
    body = {key: value for key, value in without_closure(doc).items()
            if key not in ("record_sha256", "summary_sha256")}
    return codec.canonical_sha256(body)


T = TypeVar("T")
# The codec's names as record.py had them (nixrepro.codec is the one codec now).
to_plain = codec.encode


def _build(cls: type[T], doc: Any) -> T:
    """``doc`` as a ``cls`` (a record type), strictly: nixrepro.codec.decode."""
    return codec.decode(cls, doc)
