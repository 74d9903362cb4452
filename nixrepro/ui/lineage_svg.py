"""A lineage tree (nixrepro.lineage) as an SVG graph, data flowing left to right.

Each data version is a rounded box, the run that produced it a square box beside it, and that
run's inputs further left; an external version (no recorded run wrote it) has no run box. The
layout is a tidy tree: leaves one row each, a node at the middle of its inputs. Walks keep their
own stack (a chain of thousands of runs is as deep as the tree goes). At most :data:`MAX_NODES`
versions are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lineage import LineageNode
from ..present import clip
from .html import Markup, el, render
from .sections import Links

MAX_NODES = 400
BOX_W, BOX_H, COL_W, ROW_H = 250, 44, 290, 60


@dataclass
class _Placed:
    node: LineageNode
    depth: int
    row: float = 0.0


def layout(root: LineageNode) -> tuple[list[_Placed], list[tuple[int, int]], bool]:
    """The versions with their depth and row; (child, parent) index pairs; whether some were cut."""
    placed: list[_Placed] = []
    edges: list[tuple[int, int]] = []
    children: dict[int, list[int]] = {}
    todo: list[tuple[LineageNode, int, int | None]] = [(root, 0, None)]
    cut = False
    while todo:
        node, depth, parent = todo.pop()
        if len(placed) >= MAX_NODES:
            cut = True
            continue
        index = len(placed)
        placed.append(_Placed(node, depth))
        if parent is not None:
            edges.append((index, parent))
            children.setdefault(parent, []).append(index)
        todo.extend((child, depth + 1, index) for child in reversed(node.inputs))
    next_row = 0.0
    for index, item in enumerate(placed):  # leaves in pre-order: top to bottom as the tree reads
        if index not in children:
            item.row = next_row
            next_row += 1
    # a parent at the middle of its inputs; in pre-order every descendant comes after its node
    for index in range(len(placed) - 1, -1, -1):
        kids = children.get(index)
        if kids:
            placed[index].row = sum(placed[k].row for k in kids) / len(kids)
    return placed, edges, cut


def _version_label(node: LineageNode) -> str:
    v = node.version
    return v.uri + (f"@{v.version_id}" if v.version_id else ("@(pending)" if v.pending else ""))


def lineage_svg(root: LineageNode, links: Links) -> Markup:
    placed, edges, cut = layout(root)
    depth = max(p.depth for p in placed)
    rows = max(p.row for p in placed) + 1
    width = (2 * depth + 2) * COL_W
    height = int(rows * ROW_H + 20)

    def x_version(item: _Placed) -> float:
        return (2 * (depth - item.depth) + 1) * COL_W + 10

    def x_run(item: _Placed) -> float:
        return (2 * (depth - item.depth)) * COL_W + 10

    def y(item: _Placed) -> float:
        return item.row * ROW_H + 10

    shapes = []
    for child, parent in edges:  # a version a run read -> the run
        c, p = placed[child], placed[parent]
        shapes.append(el("line", x1=x_version(c) + BOX_W, y1=y(c) + BOX_H / 2, x2=x_run(p),
                         y2=y(p) + BOX_H / 2, class_="edge"))
    for item in placed:
        node = item.node
        label = _version_label(node)
        box = [el("rect", x=x_version(item), y=y(item), width=BOX_W, height=BOX_H, rx=12,
                  class_="version" + (" external" if node.run is None else "")),
               el("text", clip(label, 38), x=x_version(item) + 10, y=y(item) + 18),
               el("text", (f"sha256 {node.version.sha256[:12]}" if node.version.sha256 else "")
                  + ("  external" if node.run is None else ""), x=x_version(item) + 10,
                  y=y(item) + 34, class_="small"),
               el("title", label)]
        shapes.append(el("g", box, class_="node", data_uri=node.version.uri))
        if node.run is not None:
            run = node.run
            shapes.append(el("line", x1=x_run(item) + BOX_W, y1=y(item) + BOX_H / 2, x2=x_version(item),
                             y2=y(item) + BOX_H / 2, class_="edge"))
            title = f"run {run.short_id} " + (run.stage.name if run.stage else run.name or "")
            detail = f"{run.status} {run.started_at[:10]}" + (" (shown above)" if node.repeated else "")
            text = [el("rect", x=x_run(item), y=y(item), width=BOX_W, height=BOX_H, rx=2,
                       class_=f"run status-{run.status}"),
                    el("text", clip(title, 38), x=x_run(item) + 10, y=y(item) + 18),
                    el("text", detail, x=x_run(item) + 10, y=y(item) + 34, class_="small")]
            href = links.run(run.id)
            shapes.append(el("a", text, href=href, class_="run-node", data_run=run.id) if href
                          else el("g", text, class_="run-node", data_run=run.id))
    note = el("p", f"only the first {MAX_NODES} versions are drawn", class_="note") if cut else None
    svg = el("svg", shapes, xmlns="http://www.w3.org/2000/svg", width=width, height=height,
             viewBox=f"0 0 {width} {height}", role="img", class_="lineage-graph",
             data_nodes=len(placed))
    return render([svg, note])
