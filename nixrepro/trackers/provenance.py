"""What a tracker is told about a run's provenance, derived once from the record's fields.

:func:`provenance` is the nested form (W&B keeps it in the run's config under ``nixrepro``);
:func:`flat` is the same facts as ``nixrepro.<path>`` keys with string values (MLflow keeps them as
tags). Both sinks use these two functions and nothing else, so a fact added to the record (a new
field of :class:`~nixrepro.host.HostInfo`, say) reaches every tracker without a line here: the
host, code, CUDA, data and build facts are taken whole from their record dataclasses. Only the
environment is shaped: the closure is its path count (the closure hash identifies it) and each flake
input is its rev (or NAR hash).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # light to import: a sink's module is imported before the run path is
    from ..record import RunRecord

PREFIX = "nixrepro"


def nixpkgs_rev(record: RunRecord) -> str | None:
    """The locked rev of the flake input named ``nixpkgs``, when the flake has one."""
    locked = record.environment.inputs.get("nixpkgs")
    return locked.rev if locked else None


def remote_location(remote: str | None, run_id: str) -> dict[str, str] | None:
    """Where the team's remote run store keeps the run (``[runs] remote``): the store and the
    record's object, ``<remote>/runs/<id>/record.json`` (nixrepro.remote.store's layout), so that a
    dashboard row leads to the record (``nixrepro pull <id>`` fetches it). None without a remote."""
    if not remote:
        return None
    store = remote.rstrip("/")
    return {"store": store, "record": f"{store}/runs/{run_id}/record.json"}


def provenance(record: RunRecord, remote: str | None = None) -> dict[str, Any]:
    """Everything the result depended on, by identity, as JSON-ready data; ``remote``: the
    project's remote run store, where the record is pushed."""
    from ..record import to_plain

    env = record.environment
    environment = {key: value for key, value in to_plain(env).items()
                   if key not in ("closure", "inputs")}
    environment.update(
        nixpkgs_rev=nixpkgs_rev(record),
        inputs={name: inp.rev or inp.narHash for name, inp in sorted(env.inputs.items())},
        closure_paths=len(env.closure),
    )
    return {
        "run_id": record.id,
        "command": " ".join(record.command.argv),
        "tags": list(record.tags),
        "seed": record.seed,
        "deterministic": record.deterministic,
        "dev": record.dev,
        "parent": record.parent,
        "group": record.group,
        "repeat_index": record.repeat_index,
        "stage": record.stage.name if record.stage else None,
        "code": to_plain(record.code),
        "environment": environment,
        "host": to_plain(record.host),
        "cuda": to_plain(record.cuda),
        "facts": to_plain(record.facts),
        "data": {"inputs": to_plain(record.data.inputs), "outputs": to_plain(record.data.outputs)},
        "remote": remote_location(remote, record.id),
    }


_KEY_CHARS = re.compile(r"[^\w./ :-]")  # what MLflow takes in a tag or param name


def flat(record: RunRecord, value_max: int = 8000, remote: str | None = None) -> dict[str, str]:
    """:func:`provenance` as ``nixrepro.code.commit``-style keys: nested objects and lists of
    objects become dotted paths (``nixrepro.host.gpus.0.name``), a list of plain values one JSON
    array, ``true``/``false`` for booleans; nothing for a null, an empty string, list or object. A value
    longer than ``value_max`` characters is cut there and ends in ``...``."""
    found: dict[str, str] = {}
    for key, value in _walk(PREFIX, provenance(record, remote)):
        text = value if len(value) <= value_max else value[: value_max - 3] + "..."
        found[_KEY_CHARS.sub("_", key)] = text
    return found


def _walk(path: str, value: Any) -> Iterator[tuple[str, str]]:
    if value is None or value == "" or value == [] or value == {}:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(f"{path}.{key}", item)
    elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        for index, item in enumerate(value):
            yield from _walk(f"{path}.{index}", item)
    elif isinstance(value, list):
        yield path, json.dumps(value, ensure_ascii=False)
    elif isinstance(value, bool):
        yield path, "true" if value else "false"
    else:
        yield path, str(value)
