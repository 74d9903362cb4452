"""``nixrepro report RUN... -o report.html``: one HTML file that opens offline, anywhere.

The viewer's sections for each run with the lineage graph of what it read (and, for two runs or
more, the comparison: overlaid curves, repeat groups' mean ± SEM, params and metrics side by side,
``nixrepro diff``), with uPlot, the page's script and its styles inline. The file loads nothing:
its Content-Security-Policy allows no network request at all, and links between its runs are
anchors within it. A RUN not in the local store is read from the remote run store, verified as
``nixrepro pull`` verifies it, into a temporary directory (nixrepro.ui.remote): never written here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..errors import UsageError
from .html import Assets, el, encode, page, render, section
from .lineage_svg import lineage_svg
from .pages import comparison
from .readonly import RunIndex
from .remote import LocalThenRemote, RemoteRuns
from .sections import Links, run_sections


def build_report(store_root: Path, refs: list[str],
                 remote: Callable[[], RemoteRuns | None] | None = None) -> str:
    """The report's HTML for the runs and repeat groups ``refs`` names (each run once). With
    ``remote`` (it opens the project's remote run store, or gives None), a RUN not found in the
    local store is looked up there and pulled, verified, into a temporary directory only."""
    index = LocalThenRemote(RunIndex(store_root), remote or (lambda: None))
    try:
        return _report(index, store_root, refs)
    finally:
        index.close()


def _report(index: LocalThenRemote, store_root: Path, refs: list[str]) -> str:
    from ..git import GitRepo
    from ..lineage import Lineage

    records = index.resolve_many(refs)
    if not records:
        raise UsageError("name at least one run to report on; `nixrepro runs` lists them.")
    links = Links(server=False, in_page=frozenset(r.id for r in records))
    dirs = {r.id: index.run_dir(r.id) for r in records}
    children: dict[str, list[str]] = {}
    summaries = index.summaries()
    for r in summaries:
        if r.parent:
            children.setdefault(r.parent, []).append(r.id)
    by_id = {r.id: r for r in summaries}
    contents = el("ul", [el("li", el("a", r.short_id, href=f"#run-{r.id}"), " ", r.name or "",
                            " ", el("span", r.status, class_=f"status status-{r.status}"))
                         for r in records], class_="contents")
    parts = [el("h1", f"nixrepro report: {len(records)} run" + ("s" if len(records) != 1 else "")),
             el("p", f"Made by nixrepro {__version__} from the run records; it loads nothing from the "
                     "network.", class_="note"), contents]
    if len(records) >= 2:
        parts.append(el("article", el("h1", "Comparison"),
                        comparison(records, None, links, prefix="cmp", run_dirs=dirs,
                                   repo=GitRepo(store_root.parent)), id="comparison"))
    trace = Lineage.of_records(summaries)
    for i, record in enumerate(records):
        kids = [by_id[c] for c in children.get(record.id, []) if c in by_id]
        graphs = [el("div", lineage_svg(tree, links), class_="lineage") for tree in trace.trace_run(record)]
        parts.append(el("article", el("h1", "run ", el("code", record.id), " ", record.name or ""),
                        run_sections(record, dirs[record.id], links, prefix=f"r{i}", children=kids),
                        section("Lineage of what it read", graphs) if graphs else None,
                        id=f"run-{record.id}", class_="run-report", data_run=record.id))
    title = "nixrepro report: " + ", ".join(r.short_id for r in records[:6])
    return page(title, render(parts), assets=Assets(inline=True), nav=False)


def write_report(store_root: Path, refs: list[str], output: Path,
                 remote: Callable[[], RemoteRuns | None] | None = None) -> int:
    """Write the report to ``output``; its size in bytes."""
    from ..fsutil import atomic_write

    data = encode(build_report(store_root, refs, remote))
    atomic_write(output, data)
    return len(data)
