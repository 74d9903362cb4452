"""Lineage: which run produced a data version, what it read, and so on back.

Computed from the run records alone (``data.outputs`` says what a run wrote, ``data.inputs`` what
it read, both with version ids), so it works offline and years later. A version no recorded run
produced is a leaf ("external"). Pipeline stages are runs like any other: a stage's inputs are its
upstream stage's outputs, so lineage walks across stages with no special case.

Every walk here keeps its own stack instead of recursing: a chain of thousands of runs (a pipeline
run daily for years) is as deep as the tree gets, and Python's recursion limit is 1,000.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .datastore import DataRef
from .errors import UsageError
from .record import DataRecord, DataVersion, RunRecord

SCHEMA = "nixrepro.lineage/1"


@dataclass(frozen=True)
class LineageNode:
    """One data version, the run that produced it (None: external) and that run's inputs."""

    version: DataVersion
    run: RunRecord | None
    inputs: list[LineageNode] = field(default_factory=list)
    repeated: bool = False  # already shown above in this tree (a diamond); not expanded again


class Lineage:
    """An index of the run store: (uri, version id) -> the run that wrote it.

    Made from each run's data alone (``RunStore.values("data")``: the listing index parses that
    field only); the few runs a tree shows are read when it is built (``load``).
    """

    def __init__(self, data: Iterable[tuple[str, str, DataRecord]],
                 load: Callable[[str], RunRecord | None]) -> None:
        # Oldest first, so the latest producer of a URI wins in `by_uri`.
        self.data = sorted(data, key=operator.itemgetter(0, 1))
        self.load = load
        # None: a run whose record could no longer be read when its tree was built, shown as a
        # listing made then would show it (left out: what it wrote reads as external)
        self.loaded: dict[str, RunRecord | None] = {}
        self.by_version: dict[tuple[str, str | None], tuple[str, DataVersion]] = {}
        self.by_uri: dict[str, tuple[str, DataVersion]] = {}
        for _, run_id, data_record in self.data:
            for output in data_record.outputs:
                self.by_version[(output.uri, output.version_id)] = (run_id, output)
                self.by_uri[output.uri] = (run_id, output)

    @classmethod
    def of_records(cls, records: Iterable[RunRecord]) -> Lineage:
        """The index of runs already in memory (the web view's summaries)."""
        by_id = {record.id: record for record in records}
        return cls([(r.started_at, r.id, r.data) for r in by_id.values()], by_id.__getitem__)

    def _run(self, run_id: str) -> RunRecord | None:
        if run_id not in self.loaded:
            self.loaded[run_id] = self.load(run_id)
        return self.loaded[run_id]

    def trace(self, ref: DataRef) -> LineageNode:
        """The lineage tree of ``ref``; an unknown version is a usage error naming the remedy."""
        if ref.version_id is None:
            found = self.by_uri.get(ref.uri)
        else:
            found = self.by_version.get((ref.uri, ref.version_id))
        if found is None:
            readers = [data for _, _, data in self.data
                       if any(self._same(i, ref) for i in data.inputs)]
            if readers:  # read by recorded runs but produced outside them: an external source
                version = next(i for i in readers[-1].inputs if self._same(i, ref))
                return LineageNode(version, None)
            raise UsageError(
                f"no recorded run wrote or read {ref}; `nixrepro data versions {ref.uri}` lists "
                "its versions."
            )
        run_id, version = found
        top: list[LineageNode] = []
        self._grow([(version, self._run(run_id), top)], seen=set())
        return top[0]

    def _grow(self, todo: list[tuple[DataVersion, RunRecord | None, list[LineageNode]]],
              seen: set[str]) -> None:
        """Build the trees of ``todo`` (version, its producer, the list its node goes into),
        depth first: a run met again (a diamond) is marked repeated, not expanded twice."""
        todo.reverse()  # a stack: the first entry is taken first
        while todo:
            version, run, into = todo.pop()
            if run is None:
                into.append(LineageNode(version, None))
                continue
            if run.id in seen:
                into.append(LineageNode(version, run, repeated=True))
                continue
            seen.add(run.id)
            node = LineageNode(version, run)
            into.append(node)
            # reversed, so the run's first input is expanded first, as the tree prints it
            todo.extend((item, self._producer(item), node.inputs)
                        for item in reversed(run.data.inputs))

    def _producer(self, item: DataVersion) -> RunRecord | None:
        found = self.by_version.get((item.uri, item.version_id))
        return self._run(found[0]) if found else None

    def trace_run(self, run: RunRecord) -> list[LineageNode]:
        """The lineage of each input ``run`` read (for ``nixrepro lineage RUN``)."""
        inputs: list[LineageNode] = []
        self._grow([(item, self._producer(item), inputs) for item in run.data.inputs],
                   seen={run.id})
        return inputs

    @staticmethod
    def _same(version: DataVersion, ref: DataRef) -> bool:
        return version.uri == ref.uri and ref.version_id in (None, version.version_id)


# --- output ---------------------------------------------------------------------------------------


def _version_text(version: DataVersion) -> str:
    at = f"@{version.version_id}" if version.version_id else ""
    at = "@(pending upload)" if version.pending else at
    sha = f"  sha256 {version.sha256[:12]}" if version.sha256 else ""
    return f"{version.uri}{at}{sha}"


def _run_text(run: RunRecord) -> str:
    name = f" ({run.stage.name if run.stage else run.name})" if (run.stage or run.name) else ""
    return (f"run {run.short_id}{name} {run.status} {run.started_at[:19].replace('T', ' ')}, "
            f"commit {run.code.commit[:12]}, closure {run.environment.closure_hash[:16]}")


def render_text(node: LineageNode) -> str:
    """A tree: each version, the run that produced it, and indented below it what that run read."""
    lines: list[str] = []
    todo: list[tuple[LineageNode, str, bool, bool]] = [(node, "", True, True)]
    while todo:
        n, prefix, last, top = todo.pop()
        branch = "" if top else ("└─ " if last else "├─ ")
        lines.append(prefix + branch + _version_text(n.version))
        inner = prefix + ("" if top else ("   " if last else "│  "))
        if n.run is None:
            lines.append(inner + "   external: no recorded run produced it")
            continue
        lines.append(inner + "   produced by " + _run_text(n.run)
                     + (" (shown above)" if n.repeated else ""))
        count = len(n.inputs)
        todo.extend((child, inner, i == count - 1, False)
                    for i, child in reversed(list(enumerate(n.inputs))))
    return "\n".join(lines)


def render_run_text(run: RunRecord, inputs: list[LineageNode]) -> str:
    """``nixrepro lineage RUN``: the run, what it wrote, and the lineage of what it read."""
    lines = [_run_text(run)]
    lines += [f"  wrote {_version_text(v)}" for v in run.data.outputs]
    if not inputs:
        lines.append("  read no recorded data")
    for node in inputs:
        lines.append("  read:")
        lines += ["    " + line for line in render_text(node).splitlines()]
    return "\n".join(lines)


def _run_json(run: RunRecord) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "status": run.status, "started_at": run.started_at,
            "commit": run.code.commit, "closure_hash": run.environment.closure_hash,
            "stage": run.stage.name if run.stage else None}


def _version_json(version: DataVersion) -> dict[str, Any]:
    doc: dict[str, Any] = codec.encode(version)
    return doc


def _node_json(node: LineageNode) -> dict[str, Any]:
    top: list[dict[str, Any]] = []
    todo: list[tuple[LineageNode, list[dict[str, Any]]]] = [(node, top)]
    while todo:
        n, into = todo.pop()
        doc = {**_version_json(n.version), "run": _run_json(n.run) if n.run else None,
               "repeated": n.repeated, "inputs": []}
        into.append(doc)
        todo.extend((child, doc["inputs"]) for child in reversed(n.inputs))
    return top[0]


def to_json(node: LineageNode) -> dict[str, Any]:
    return {"schema": SCHEMA, "root": _node_json(node)}


def run_to_json(run: RunRecord, inputs: list[LineageNode]) -> dict[str, Any]:
    return {"schema": SCHEMA, "run": _run_json(run),
            "outputs": [_version_json(v) for v in run.data.outputs],
            "inputs": [_node_json(n) for n in inputs]}


def render_dot(node: LineageNode) -> str:
    """Graphviz: data versions as ellipses, runs as boxes, edges in the direction data flows."""
    nodes: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()

    def data_id(v: DataVersion) -> str:
        key = f"d:{v.uri}@{v.version_id}"
        nodes.setdefault(key, f'[shape=ellipse, label="{_dot_escape(_version_text(v))}"]')
        return key

    def run_id(r: RunRecord) -> str:
        key = f"r:{r.id}"
        nodes.setdefault(key, f'[shape=box, label="{_dot_escape(_run_text(r))}"]')
        return key

    todo = [node]
    while todo:
        n = todo.pop()
        out = data_id(n.version)
        if n.run is None:
            continue
        producer = run_id(n.run)
        edges.add((producer, out))
        for child in n.inputs:
            edges.add((data_id(child.version), producer))
            if not child.repeated:
                todo.append(child)
    body = [f'  "{key}" {attrs};' for key, attrs in sorted(nodes.items())]
    body += [f'  "{a}" -> "{b}";' for a, b in sorted(edges)]
    return "digraph lineage {\n  rankdir=LR;\n" + "\n".join(body) + "\n}"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def json_text(doc: Any) -> str:
    """``doc`` as ``json.dumps(doc, indent=2, sort_keys=True)`` writes it, at any depth.

    json.dumps recurses once per level and a lineage tree nests two levels per run, so a long
    chain raised RecursionError; this writer keeps a stack of the containers it is inside.
    """
    out: list[str] = []
    # one entry per open container: its items still to write, its closing bracket, its depth and
    # how many items it has written (the first needs no comma)
    stack: list[tuple[Iterator[tuple[str | None, Any]], str, int, list[int]]] = []

    def begin(value: Any, depth: int) -> None:
        if isinstance(value, dict) and value:
            out.append("{")
            stack.append((iter([(str(k), value[k]) for k in sorted(value)]), "}", depth + 1, [0]))
        elif isinstance(value, list) and value:
            out.append("[")
            stack.append((iter([(None, v) for v in value]), "]", depth + 1, [0]))
        else:
            out.append(json.dumps(value))  # a scalar or an empty container

    begin(doc, 0)
    while stack:
        items, closing, depth, written = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            out.append("\n" + "  " * (depth - 1) + closing)
            continue
        key, value = entry
        out.append((",\n" if written[0] else "\n") + "  " * depth
                   + ("" if key is None else json.dumps(key) + ": "))
        written[0] += 1
        begin(value, depth)
    return "".join(out)
