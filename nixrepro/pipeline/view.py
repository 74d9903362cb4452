"""How a pipeline reads: its graph as text and as Graphviz dot."""

from __future__ import annotations

from .stages import Pipeline


def graph_text(pipeline: Pipeline) -> str:
    lines = []
    for name in pipeline.order():
        stage = pipeline.stages[name]
        ups = sorted(pipeline.upstream[name])
        lines.append(f"{name}" + (f"  <- {', '.join(ups)}" if ups else ""))
        for uri in stage.inputs:
            source = f"  (from {pipeline.producer[uri]})" if uri in pipeline.producer else ""
            lines.append(f"    in   {uri}{source}")
        for out in stage.outputs:
            lines.append(f"    out  {out.uri}  ({out.local})")
    return "\n".join(lines)


def graph_dot(pipeline: Pipeline) -> str:
    def quoted(name: str) -> str:  # a stage name is any TOML key, quotes and backslashes included
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph pipeline {", "  rankdir=LR;", "  node [shape=box];"]
    for name in pipeline.order():
        lines.append(f"  {quoted(name)};")
        for up in sorted(pipeline.upstream[name]):
            lines.append(f"  {quoted(up)} -> {quoted(name)};")
    lines.append("}")
    return "\n".join(lines)
