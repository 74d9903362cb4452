"""The paths every run record must have (docs/record.md), for any test to check.

    from tests.record_paths import missing_paths
    assert missing_paths(json.loads(record_file.read_text())) == []

Path syntax: ``a.b`` is key ``b`` of object ``a``; ``<name>`` stands for every key of an object
(``environment.inputs.<name>.rev``: every input has a ``rev``); ``x[]`` is a list whose every item
must have the keys that follow. A key must be present; its value may be null. An empty object or
list satisfies the paths below it, but must itself be there with the right type.
"""

from __future__ import annotations

from typing import Any

REQUIRED_PATHS: tuple[str, ...] = (
    "id", "schema", "status", "dev", "started_at", "ended_at",
    "exit_code", "signal", "duration_s", "parent", "name", "tags",
    "command.argv", "command.cwd", "params", "seed",
    "code.commit", "code.branch", "code.remote", "code.dirty", "code.diff_sha256",
    "environment.flake_lock_sha256",
    "environment.inputs.<name>.type", "environment.inputs.<name>.url",
    "environment.inputs.<name>.rev", "environment.inputs.<name>.narHash",
    "environment.env_path", "environment.system", "environment.nix_version",
    "environment.closure_hash",
    "environment.closure[].path", "environment.closure[].narHash", "environment.closure[].narSize",
    "host.os", "host.kernel", "host.arch", "host.cpu", "host.cpu_count", "host.memory_bytes",
    "host.gpus[].name", "host.gpus[].uuid", "host.gpus[].memory_bytes", "host.gpus[].compute_capability",
    "host.nvidia_driver", "host.cuda_driver",
    "data.inputs[].uri", "data.inputs[].version_id", "data.inputs[].sha256", "data.inputs[].size",
    "data.outputs[].uri", "data.outputs[].version_id", "data.outputs[].sha256", "data.outputs[].size",
    "metrics", "env_vars", "record_sha256",
)


def missing_paths(doc: Any) -> list[str]:
    """The required paths ``doc`` lacks, spelled concretely (``host.gpus[1].uuid``); [] if none."""
    missing: list[str] = []
    for path in REQUIRED_PATHS:
        missing.extend(_missing(doc, path.split("."), ""))
    return list(dict.fromkeys(missing))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _missing(node: Any, segments: list[str], where: str) -> list[str]:
    if not segments:
        return []
    segment, rest = segments[0], segments[1:]
    if segment == "<name>":
        if not isinstance(node, dict):
            return [_join(where, "<name>")]
        found: list[str] = []
        for key, value in node.items():
            found.extend(_missing(value, rest, _join(where, key)))
        return found
    is_list = segment.endswith("[]")
    key = segment[:-2] if is_list else segment
    here = _join(where, key)
    if not isinstance(node, dict) or key not in node:
        return [here + ("[]" if is_list else "")]
    value = node[key]
    if not is_list:
        return _missing(value, rest, here)
    if not isinstance(value, list):
        return [here + "[]"]
    found = []
    for index, item in enumerate(value):
        found.extend(_missing(item, rest, f"{here}[{index}]"))
    return found
