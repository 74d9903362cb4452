"""nixrepro.record: the run record document, its JSON round trip and its tamper-evident hash."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixrepro.closure import closure_hash, parse_path_info
from nixrepro.host import Gpu, HostInfo, KubernetesPod, SlurmJob
from nixrepro.lock import FlakeLock
from nixrepro.record import (
    SCHEMA,
    BuildFacts,
    CodeState,
    Command,
    CudaInfo,
    DataRecord,
    DataVersion,
    Environment,
    Recorder,
    RecordError,
    RunRecord,
    Seeded,
    StageInfo,
    record_sha256,
)
from tests.record_paths import REQUIRED_PATHS, missing_paths

FIXTURES = Path(__file__).parent / "fixtures"
LOCK = FIXTURES / "flake-locks" / "mlprojects-2026-04-15-bfbced8.lock"


def full_record() -> RunRecord:
    """A record with every field and every nested dataclass filled in, from real fixtures."""
    closure, _ = parse_path_info((FIXTURES / "nix-json" / "nix-2.8-recursive-output.json").read_text())
    lock = FlakeLock.read(LOCK)
    return RunRecord(
        id="20260611T101500-3f9c2a",
        status="succeeded",
        dev=True,
        started_at="2026-06-11T10:15:00.123456+00:00",
        ended_at="2026-06-11T10:17:30.654321+00:00",
        exit_code=0,
        signal="SIGTERM",
        duration_s=150.530865,
        parent="20260610T090000-aaaaaa",
        name="baseline λ run",  # non-ASCII on purpose: the canonical JSON is UTF-8
        tags=["ablation", "gpu"],
        command=Command(argv=["python", "train.py", "--lr", "0.1"], cwd="/home/me/proj"),
        params={"lr": 0.1, "epochs": 10, "model": "résnet", "fp16": False},
        seed=1234,
        code=CodeState(
            commit="9f7e99119ece7705299595299f3b031f39356de1",
            branch="main",
            remote="git@github.com:me/proj.git",
            dirty=True,
            diff_sha256=hashlib.sha256(b"diff --git a/train.py b/train.py\n").hexdigest(),
            dirty_files=["train.py"],
        ),
        environment=Environment(
            flake_lock_sha256=lock.sha256,
            inputs=lock.inputs,
            env_path="/nix/store/6816riznq833fs111dw7wy568ic10r5j-python3-3.11.9-env",
            system="x86_64-linux",
            nix_version="2.8.0",
            closure_hash=closure_hash(closure),
            closure=closure,
            flake_ref=".#env",
            flake_lock_path="/home/me/proj/flake.lock",
            contents_verified=True,
        ),
        host=HostInfo(
            os="Debian GNU/Linux 12 (bookworm)",
            kernel="6.1.0-18-amd64",
            arch="x86_64",
            cpu="AMD EPYC 7763 64-Core Processor",
            cpu_count=16,
            memory_bytes=137438953472,
            hostname="gpu-01",
            gpus=[
                Gpu("NVIDIA H100 80GB HBM3", "GPU-11111111-2222-3333-4444-555555555555", 85520809984, "9.0"),
                Gpu("NVIDIA H100 80GB HBM3", "GPU-66666666-7777-8888-9999-000000000000", 85520809984, "9.0"),
            ],
            nvidia_driver="550.54.15",
            cuda_driver="12.4",
            user="alice",
            slurm=SlurmJob(job_id="4242", array_job_id="4235", array_task_id="7",
                           node_list="gpu-[01-02]", partition="gpu"),
            kubernetes=KubernetesPod(pod="train-0", namespace="ml", node="node-a",
                                     completion_index="0"),
        ),
        recorder=Recorder(version="0.1.0", pid=4242, hostname="gpu-01"),
        data=DataRecord(
            inputs=[DataVersion("s3://datasets/train.csv", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY",
                                hashlib.sha256(b"train").hexdigest(), 1048576)],
            outputs=[DataVersion("s3://models/model.pt", "null-version-7",
                                 hashlib.sha256(b"model").hexdigest(), 2048)],
        ),
        metrics={"loss": 0.25, "acc": 0.9, "converged": True, "note": "ok", "step": 300},
        env_vars={"PATH": "/usr/bin:/bin", "WANDB_API_KEY": "<redacted>"},
        trackers={"wandb": {"run_id": "k2x8a1c9", "url": "https://wandb.ai/me/proj/runs/k2x8a1c9"}},
        group="lr-sweep-7f3a",
        repeat_index=2,
        deterministic=True,
        seeded=Seeded(seed=1236, libraries=["random", "numpy"], deterministic_algorithms=True),
        facts=BuildFacts(rev="9f7e99119ece7705299595299f3b031f39356de1",
                         nar_hash="sha256-16KkgfdYqjaeRGBaYsNrhPRRENs0qzkQVUooNHtoy2w=",
                         flake_lock_sha256=lock.sha256,
                         env="/nix/store/6816riznq833fs111dw7wy568ic10r5j-python3-3.11.9-env",
                         system="x86_64-linux", nixpkgs_rev="ac62194c3917d5f474c1a844b6fd6da2db95077d",
                         cuda_support=True, cuda_capabilities=["8.0", "9.0"], allow_unfree=True),
        cuda=CudaInfo(runtime="12.4", driver_supports="12.4", compute_capabilities=["9.0", "9.0"],
                      libcuda="/run/opengl-driver/lib/libcuda.so.550.54.15",
                      libcuda_sha256=hashlib.sha256(b"libcuda").hexdigest(), injection="nixos-opengl-driver"),
        stage=StageInfo(name="train", cache_key="5d41402abc4b2a76b9719d911017c592",
                        key_parts={"params": {"lr": 0.1}, "code": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"},
                        depends_on=["20260611T100000-prep01"]),
        files={"stdout.log": hashlib.sha256(b"out").hexdigest(),
               "metrics.jsonl": hashlib.sha256(b"m").hexdigest()},
    )


def minimal_record() -> RunRecord:
    """Only what a record cannot do without: no GPUs, inputs, closure, data, metrics."""
    return RunRecord(
        id="r1",
        status="running",
        dev=False,
        started_at="2026-06-11T10:15:00+00:00",
        command=Command(argv=["true"], cwd="/"),
        code=CodeState(commit="0" * 40, branch=None, remote=None, dirty=False),
        environment=Environment(
            flake_lock_sha256=None, inputs={}, env_path="/nix/store/x-env", system="x86_64-linux",
            nix_version="2.8.0", closure_hash=closure_hash([]), closure=[],
        ),
        host=HostInfo(os="Linux", kernel="6.1", arch="x86_64", cpu="cpu", cpu_count=1, memory_bytes=None),
        recorder=Recorder(version="0.1.0", pid=1, hostname="h"),
    )


def json_round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(doc))
    return loaded


def canonical_sha256(doc: dict[str, Any]) -> str:
    """docs/record.md written out: sorted keys, no whitespace, UTF-8, without record_sha256."""
    body = {key: value for key, value in doc.items() if key != "record_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_full_record_really_fills_every_nested_dataclass() -> None:
    record = full_record()
    assert record.environment.inputs and record.environment.closure and len(record.host.gpus) == 2
    assert record.data.inputs and record.data.outputs


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [full_record, minimal_record])
def test_record_round_trips_through_json_to_an_equal_object(make: Any) -> None:
    record = make()
    doc = json_round_trip(record.to_dict())

    loaded = RunRecord.from_dict(doc)

    assert loaded == record.replace(record_sha256=doc["record_sha256"],
                                    summary_sha256=doc["summary_sha256"])
    assert loaded.to_dict() == doc


def test_to_json_is_the_same_document() -> None:
    record = full_record()
    assert json.loads(record.to_json()) == json_round_trip(record.to_dict())


@pytest.mark.parametrize(("where", "named"), [
    ((), "a_future_field"),
    (("host",), "host.a_future_fact"),
    (("environment", "closure", 0), "environment.closure[0].a_future_fact"),
])
def test_a_key_that_is_no_field_is_refused_naming_it(where: tuple[Any, ...], named: str) -> None:
    """Not dropped: a record saved again (crash detection, sync) would lose what it held."""
    doc = json_round_trip(full_record().to_dict())
    _at(doc, where)[named.rsplit(".", 1)[-1].split("]")[-1]] = {"x": 1}
    with pytest.raises(RecordError) as caught:
        RunRecord.from_dict(doc)
    assert repr(named) in str(caught.value) and "upgrade nixrepro" in str(caught.value)


# --- record_sha256 ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [full_record, minimal_record])
def test_record_sha256_is_sha256_of_canonical_json_without_the_field(make: Any) -> None:
    doc = make().to_dict()
    assert doc["record_sha256"] == canonical_sha256(doc)
    assert record_sha256(doc) == canonical_sha256(doc)


def test_record_sha256_is_over_utf8_not_ascii_escapes() -> None:
    doc = full_record().to_dict()
    body = {key: value for key, value in doc.items() if key != "record_sha256"}
    escaped = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert doc["record_sha256"] != hashlib.sha256(escaped).hexdigest()


def leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, (*path, index))
    else:
        yield path


def changed(value: Any) -> list[Any]:
    """Edits of ``value`` that keep its JSON type (fields are type-checked); a null may be any."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        return [value + 1]
    if isinstance(value, str):
        return [value + "x"]
    return ["was null", 7, True]


def test_changing_any_field_changes_record_sha256() -> None:
    """Every leaf survives from_dict -> to_dict and is covered by the hash: an edit that a reader
    drops (or that to_dict does not write) would go unnoticed."""
    doc = json_round_trip(full_record().to_dict())
    # (schema has its own test: another schema is refused, not hashed)
    # (status has its own test too: an unknown status is refused, not hashed)
    # (summary_sha256 is derived: to_dict recomputes it)
    skipped = {("record_sha256",), ("schema",), ("status",), ("summary_sha256",)}
    paths = [path for path in leaves(doc) if path not in skipped]
    assert len(paths) > 100
    for path in paths:
        for value in changed(_at(doc, path)):
            edited = copy.deepcopy(doc)
            parent = edited
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = value
            try:
                loaded = RunRecord.from_dict(edited)
            except RecordError:
                continue  # a null field of another type: try the next kind of value
            assert loaded.to_dict()["record_sha256"] != doc["record_sha256"], f"editing {path} went unnoticed"
            break
        else:
            pytest.fail(f"no edit of {path} was accepted")


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


TOP_LEVEL_FIELDS = [f.name for f in dataclasses.fields(RunRecord) if f.name != "record_sha256"]


@pytest.mark.parametrize("field", TOP_LEVEL_FIELDS)
def test_every_top_level_field_is_written_and_covered_by_record_sha256(field: str) -> None:
    """to_dict writes every field, and record_sha256 leaves none out but itself (a hash that
    skipped a field, or a document without it, would fail here)."""
    doc = full_record().to_dict()
    assert field in doc
    without = {key: value for key, value in doc.items() if key != field}
    assert record_sha256(without) != doc["record_sha256"]


def test_a_hand_edited_record_no_longer_matches_its_hash() -> None:
    doc = json_round_trip(full_record().to_dict())
    doc["metrics"]["acc"] = 0.99
    assert canonical_sha256(doc) != doc["record_sha256"]
    assert record_sha256(doc) != doc["record_sha256"]


def test_record_sha256_does_not_depend_on_key_order() -> None:
    doc = full_record().to_dict()
    reordered = dict(reversed(list(doc.items())))
    assert record_sha256(reordered) == doc["record_sha256"]


# --- reading records ----------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["nixrepro.run/2", "nixrepro.run/0", None, ""])
def test_a_record_of_another_schema_is_a_record_error(schema: Any) -> None:
    doc = json_round_trip(full_record().to_dict())
    doc["schema"] = schema
    with pytest.raises(RecordError) as caught:
        RunRecord.from_dict(doc)
    assert repr(schema) in str(caught.value)
    assert repr(SCHEMA) in str(caught.value)


def test_a_record_without_schema_is_a_record_error() -> None:
    doc = json_round_trip(full_record().to_dict())
    del doc["schema"]
    with pytest.raises(RecordError):
        RunRecord.from_dict(doc)


def test_a_record_with_an_unknown_status_is_a_record_error() -> None:
    doc = json_round_trip(full_record().to_dict())
    doc["status"] = "exploded"
    with pytest.raises(RecordError) as caught:
        RunRecord.from_dict(doc)
    assert "unknown status 'exploded'" in str(caught.value)


@pytest.mark.parametrize("required", ["id", "command", "code", "environment", "host", "started_at"])
def test_a_record_missing_a_required_field_is_a_record_error(required: str) -> None:
    doc = json_round_trip(full_record().to_dict())
    del doc[required]
    with pytest.raises(RecordError, match="malformed"):
        RunRecord.from_dict(doc)


# --- the required paths of docs/record.md -------------------------------------------------------------


@pytest.mark.parametrize("make", [full_record, minimal_record])
def test_record_has_every_required_path(make: Any) -> None:
    assert missing_paths(json_round_trip(make().to_dict())) == []


def _field_type(cls: Any, path: str) -> Any:
    """The type a required path names, walked through the dataclasses' type hints."""
    hint: Any = cls
    for segment in path.split("."):
        if segment == "<name>":
            hint = typing.get_args(hint)[1]
            continue
        name = segment.removesuffix("[]")
        assert dataclasses.is_dataclass(hint), f"{path}: {name} is not inside a record object"
        hints = typing.get_type_hints(hint)
        assert name in hints, f"{path}: {hint.__name__} has no field {name}"
        hint = hints[name]
        hint = next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint) \
            if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
        if segment.endswith("[]"):
            assert typing.get_origin(hint) is list, f"{path}: {name} is not a list"
            hint = typing.get_args(hint)[0]
    return hint


@pytest.mark.parametrize("path", REQUIRED_PATHS)
def test_every_required_path_is_a_field_of_the_record(path: str) -> None:
    """The helper's list names real fields: a typo or a renamed field would fail here, instead of
    a count that only proves nobody edited the list."""
    assert REQUIRED_PATHS.count(path) == 1
    _field_type(RunRecord, path)


def test_the_field_walk_refuses_what_is_not_a_field() -> None:
    with pytest.raises(AssertionError, match="no field"):
        _field_type(RunRecord, "host.gpu_count")
    with pytest.raises(AssertionError, match="not a list"):
        _field_type(RunRecord, "host.os[].x")


@pytest.mark.parametrize(
    ("remove", "reported"),
    [
        (("record_sha256",), "record_sha256"),
        (("code", "diff_sha256"), "code.diff_sha256"),
        (("host", "gpus", 1, "uuid"), "host.gpus[1].uuid"),
        (("environment", "inputs", "nixpkgs", "rev"), "environment.inputs.nixpkgs.rev"),
        (("environment", "closure", 0, "narSize"), "environment.closure[0].narSize"),
        (("data", "outputs", 0, "version_id"), "data.outputs[0].version_id"),
        (("data",), "data"),
    ],
)
def test_missing_paths_names_what_is_missing(remove: tuple[Any, ...], reported: str) -> None:
    doc = json_round_trip(full_record().to_dict())
    parent = doc
    for key in remove[:-1]:
        parent = parent[key]
    del parent[remove[-1]]
    assert reported in missing_paths(doc)


def test_missing_paths_rejects_a_list_that_is_not_a_list() -> None:
    doc = json_round_trip(minimal_record().to_dict())
    doc["host"]["gpus"] = None
    assert missing_paths(doc) == ["host.gpus[]"]
