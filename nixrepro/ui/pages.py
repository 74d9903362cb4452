"""The viewer's pages, each a function of the run index and the query: (HTTP status, HTML).

``/`` the runs (filter by status, name, tag and commit; sort by any column; 100 a page),
``/run/ID`` one run, ``/table`` the experiment table with a scatter of each param against a
metric, ``/compare?run=A&run=B`` two or more runs (a group id adds its runs), ``/lineage?ref=URI``
where a data version came from. Nothing here writes anything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import NixreproError
from ..filters import STATUSES, RunFilter
from ..present import human_duration
from ..record import RunRecord
from ..table import Column, Columns, Condition, parse_where, sort_records
from . import charts
from .html import Assets, Markup, chart, el, page, render, run_href, section, url
from .lineage_svg import lineage_svg
from .readonly import Runs
from .sections import Links, diff_sections, link, run_link, run_sections, side_by_side, status_badge

PER_PAGE = 100
ASSETS = Assets(inline=False)
LINKS = Links(server=True)
Query = Mapping[str, list[str]]


def first(query: Query, key: str, default: str = "") -> str:
    values = query.get(key)
    return values[0] if values else default


def error_page(status: int, message: str) -> tuple[int, str]:
    body = el("div", el("h1", "Not here" if status == 404 else "Cannot show this"),
              el("p", message, class_="error"), el("p", el("a", "all runs", href="/")))
    return status, page("nixrepro: " + message[:60], body, assets=ASSETS)


# --- the runs table ---------------------------------------------------------------------------------


FILTERS = ("status", "name", "tag", "commit", "since", "user", "host")  # as `nixrepro runs` has them


def _sort(records: list[RunRecord], columns: Columns, query: Query) -> tuple[list[RunRecord], str, bool]:
    """``records`` sorted as ``sort=COL`` (``-COL`` or ``desc=1``: descending) asks, with the
    column's key and the direction; an unknown column leaves them as they are (newest first)."""
    key, desc = first(query, "sort"), first(query, "desc") == "1"
    if key.startswith("-"):
        key, desc = key[1:], True
    if not key:
        return records, "", False
    try:
        found = columns.resolve(key)
    except NixreproError:
        return records, "", False
    if len(found) != 1:
        return records, "", False
    return sort_records(records, found[0], desc), found[0].key, desc


def _sort_link(path: str, key: str, sorted_by: str, desc: bool, **state: Any) -> str:
    """The header link: sort by ``key``, or the other way when it is the sorted column."""
    return url(path, **state, sort=("" if desc or sorted_by != key else "-") + key)


def runs_page(index: Runs, query: Query) -> tuple[int, str]:
    state = {key: first(query, key).strip() for key in FILTERS}
    # the same filters as `nixrepro runs`: a bad value is its one sentence (400), before the listing
    given = {key: value or None for key, value in state.items()}
    chosen = RunFilter.parse(status=given["status"], name=given["name"], commit=given["commit"],
                             since=given["since"], user=given["user"], host=given["host"],
                             tags=[state["tag"]] if state["tag"] else [])
    everything = index.summaries()
    records = chosen.apply(everything)
    columns = Columns(everything)
    records, sorted_by, descending = _sort(records, columns, query)
    try:
        number = max(1, int(first(query, "page", "1")))
    except ValueError:
        number = 1
    pages = max(1, -(-len(records) // PER_PAGE))
    number = min(number, pages)
    shown = records[(number - 1) * PER_PAGE: number * PER_PAGE]
    extra = columns.varying(records)[:6]

    def header(key: str, label: str) -> Markup:
        mark = (" ▼" if descending else " ▲") if sorted_by == key else ""
        return el("th", el("a", label + mark, href=_sort_link("/", key, sorted_by, descending, **state)))

    heads = [el("th", ""), header("id", "id"), header("status", "status"), header("started", "started"),
             header("duration", "duration"), header("commit", "commit"), header("name", "name"),
             el("th", "tags"), *[header(c.key, c.header) for c in extra]]
    rows = [_run_row(r, extra) for r in shown]
    filters = el("form", [
        el("label", "status ", el("select", el("option", "any", value=""),
                                  [el("option", s, value=s, selected=s == state["status"])
                                   for s in STATUSES], name="status")),
        el("label", "name ", el("input", name="name", value=state["name"], placeholder="contains")),
        el("label", "tag ", el("input", name="tag", value=state["tag"])),
        el("label", "commit ", el("input", name="commit", value=state["commit"], placeholder="prefix")),
        el("label", "since ", el("input", name="since", value=state["since"], placeholder="2d", size=10)),
        el("label", "user ", el("input", name="user", value=state["user"], size=10)),
        el("label", "host ", el("input", name="host", value=state["host"], placeholder="gpu-*", size=10)),
        el("button", "filter", type="submit"),
    ], method="get", action="/", class_="filters")
    nav = _pager(number, pages, len(records),
                 {**state, "sort": ("-" if descending else "") + sorted_by if sorted_by else ""})
    compare = el("form", el("button", "compare selected", type="submit"),
                 el("table", el("thead", el("tr", heads)), el("tbody", rows), class_="runs"),
                 method="get", action="/compare", id="compare-form")
    count = f"{len(records)} of {len(everything)} runs" if len(records) != len(everything) \
        else f"{len(everything)} runs"
    source = index.label
    listed_at = getattr(index, "listed_at", None)  # a remote store's listing (nixrepro.ui.remote)
    when = f" as its index listed them at {time.strftime('%H:%M:%S', time.localtime(listed_at))}" \
        if listed_at else ""
    where = el("p", f"In {source}{when}; a run's page pulls it (verified, into the viewer's own "
                    "directory: nothing is written to this project's store).",
               class_="source") if source else None
    body = [el("h1", "Runs"), where, filters, el("p", count, class_="count", data_total=len(records)),
            compare if records else el("p", "No run matches." if everything else
                                       "No runs recorded yet. Start one with: nixrepro run -- CMD",
                                       class_="none"), nav]
    return 200, page("nixrepro: runs", body, assets=ASSETS)


def _run_row(record: RunRecord, extra: Sequence[Column]) -> Markup:
    group = link(LINKS.group(record.group), record.group[:9], class_="group") if record.group else None
    marks = " ".join(c for c, on in (("dev", record.dev), ("crashed", record.status == "crashed")) if on)
    return el("tr", el("td", el("input", type="checkbox", name="run", value=record.id)),
              el("td", run_link(record, LINKS)), el("td", status_badge(record)),
              el("td", record.started_at[:19].replace("T", " ")),
              el("td", human_duration(record.duration_s)), el("td", el("code", record.code.commit[:8])),
              el("td", record.name or "", group), el("td", ", ".join(record.tags)),
              [el("td", c.text(record)) for c in extra], class_=marks or None, data_run=record.id)


def _pager(number: int, pages: int, total: int, state: dict[str, str]) -> Markup:
    if pages <= 1:
        return Markup("")
    def to(n: int) -> str:
        return url("/", **state, page=n)
    start = (number - 1) * PER_PAGE + 1
    return el("nav", el("a", "← newer", href=to(number - 1)) if number > 1 else None,
              el("span", f" runs {start}-{min(total, number * PER_PAGE)}, page {number} of {pages} "),
              el("a", "older →", href=to(number + 1)) if number < pages else None,
              class_="pager", data_page=number, data_pages=pages)


# --- one run -----------------------------------------------------------------------------------------


def run_page(index: Runs, run_id: str) -> tuple[int, str]:
    record = index.load(run_id)
    children = [r for r in index.summaries() if r.parent == record.id]
    title = f"run {record.short_id}" + (f" {record.name}" if record.name else "")
    body = [el("h1", "run ", el("code", record.id), " ", el("span", record.name or "", class_="run-name")),
            el("p", el("a", "lineage of what it read", href=url("/lineage", run=record.id))
               if record.data.inputs else None,
               " ", el("a", "compare with its parent", href=url("/compare", run=[record.parent, record.id]))
               if record.parent else None),
            run_sections(record, index.run_dir(record.id), LINKS, prefix="run", children=children)]
    return 200, page(f"nixrepro: {title}", body, assets=ASSETS)


# --- the experiment table ---------------------------------------------------------------------------


def table_page(index: Runs, query: Query) -> tuple[int, str]:
    everything = index.summaries()
    columns = Columns(everything)
    wheres = [w for w in query.get("where", []) if w.strip()]
    problems = []
    conditions: list[Condition] = []
    for text in wheres:
        try:
            conditions.append(parse_where(text, columns))
        except NixreproError as exc:
            problems.append(str(exc))
    records = [r for r in everything if all(c(r) for c in conditions)]
    records, sorted_by, descending = _sort(records, columns, query)
    varying = columns.varying(records)
    params = [c for c in varying if c.kind == "param"]
    metrics = [c for c in varying if c.kind == "metric"] or [
        columns.by_key["metrics." + m] for m in columns.metrics]
    chosen = first(query, "metric") or (metrics[0].name if metrics else "")
    form = el("form", [
        el("label", "where ", el("input", name="where", value=wheres[0] if wheres else "",
                                 placeholder="acc>0.9", size=24)),
        el("label", "metric ", el("select", [el("option", m.name, value=m.name, selected=m.name == chosen)
                                             for m in metrics], name="metric")),
        el("button", "show", type="submit"),
    ], method="get", action="/table", class_="filters")
    scatters = []
    for i, param in enumerate(params):
        spec = charts.scatter(records, param.name, chosen) if chosen else None
        if spec is not None:
            scatters.append(chart(f"scatter-{i}", spec))
    shown_records = records[:1000]
    cols = params + [c for c in varying if c.kind == "metric"]

    def head(column: Column) -> Markup:
        mark = (" ▼" if descending else " ▲") if sorted_by == column.key else ""
        return el("th", el("a", column.header + mark, href=_sort_link(
            "/table", column.key, sorted_by, descending, where=wheres, metric=chosen)))

    rows = [el("tr", el("td", el("input", type="checkbox", name="run", value=r.id)),
               el("td", run_link(r, LINKS)), el("td", status_badge(r)),
               [el("td", c.text(r), class_="num" if c.kind == "metric" else None) for c in cols],
               data_run=r.id) for r in shown_records]
    body = [
        el("h1", "Experiment table"), form,
        [el("p", p, class_="error") for p in problems],
        el("p", f"{len(records)} runs; the params and metrics that vary across them"
           + (" (the first 1,000 rows)" if len(records) > 1000 else ""), class_="count",
           data_total=len(records)),
        section(f"Which param mattered for {chosen}" if chosen else "Params against a metric",
                scatters or el("p", "no param varies across two runs or more with this metric",
                               class_="none"), class_="scatters"),
        el("form", el("button", "compare selected", type="submit"),
           el("table", el("thead", el("tr", el("th", ""), head(columns.by_key["id"]), el("th", "status"),
                                      [head(c) for c in cols])),
              el("tbody", rows), class_="runs experiment"), method="get", action="/compare"),
    ]
    return (400 if problems else 200), page("nixrepro: experiment table", body, assets=ASSETS)


# --- comparing runs ----------------------------------------------------------------------------------


def compare_page(index: Runs, query: Query) -> tuple[int, str]:
    refs = [r for r in query.get("run", []) if r.strip()]
    # oldest first: the diff reads as `nixrepro diff` of an older run with a newer one
    records = sorted(index.resolve_many(refs), key=lambda r: (r.started_at, r.id))
    if len(records) < 2:
        return error_page(400, "pick two runs or more to compare (tick them in the runs table), "
                               "or a repeat group.")
    body = [el("h1", f"Comparing {len(records)} runs"),
            comparison(records, index, LINKS, prefix="cmp")]
    return 200, page("nixrepro: compare " + ", ".join(r.short_id for r in records[:4]), body, assets=ASSETS)


def comparison(records: Sequence[RunRecord], index: Runs | None, links: Links, *, prefix: str,
               run_dirs: Mapping[str, Any] | None = None, repo: Any = None) -> Markup:
    """The compare sections (page and report): the runs, overlaid curves, each repeat group's mean
    ± SEM, params and metrics side by side, and ``nixrepro diff`` of the first run with each other."""
    from ..diff import diff_runs, to_json
    from ..git import GitRepo

    dirs = run_dirs if run_dirs is not None else {r.id: index.run_dir(r.id) for r in records} if index else {}
    found = {r.id: charts.plotted(charts.curves(dirs[r.id])) if r.id in dirs else {} for r in records}
    overlays = charts.overlay([(r, found[r.id]) for r in records])
    head = el("table", el("thead", el("tr", [el("th", h) for h in
                                              ("run", "name", "status", "started", "commit", "closure")])),
              el("tbody", [el("tr", el("td", run_link(r, links)), el("td", r.name or ""),
                              el("td", status_badge(r)), el("td", r.started_at[:19].replace("T", " ")),
                              el("td", el("code", r.code.commit[:8])),
                              el("td", el("code", r.environment.closure_hash[:16])), data_run=r.id)
                          for r in records]), class_="runs compared")
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.group:
            groups.setdefault(r.group, []).append(r)
    bands = []
    for gid, members in groups.items():
        if len(members) < 2:
            continue
        names = dict.fromkeys(n for m in members for n in found[m.id])
        for i, name in enumerate(names):
            spec = charts.band_chart(name, gid, [found[m.id][name] for m in members if name in found[m.id]])
            if spec is not None:
                bands.append(chart(f"{prefix}-band-{gid}-{i}", spec))
        bands.append(_group_means(gid, members))
    if repo is None and index is not None:
        repo = GitRepo(index.root.parent)
    diffs = [diff_sections(to_json(diff_runs(records[0], other, repo=repo))) for other in records[1:10]]
    more = (el("p", f"{len(records) - 10} more runs are compared above but not diffed here.", class_="note")
            if len(records) > 10 else None)
    return render([
        section("Runs", head, id_=f"{prefix}-runs"),
        section("Curves", [chart(f"{prefix}-curve-{i}", spec) for i, spec in enumerate(overlays.values())]
                or el("p", "no metric was logged at two steps or more", class_="none"), class_="curves"),
        section("Repeat groups", bands) if bands else None,
        section("Params and metrics", side_by_side(records, links)),
        section("Diff", diffs, more, class_="diffs"),
    ])


def _group_means(gid: str, members: Sequence[RunRecord]) -> Markup:
    from ..groups import format_mean, metric_summaries

    summaries = metric_summaries([m for m in members if m.status == "succeeded"])
    return el("table", el("caption", f"group {gid[:9]}: last values of {len(members)} runs"),
              el("tbody", [el("tr", el("th", name), el("td", format_mean(s)))
                           for name, s in summaries.items()]), class_="group-means", data_group=gid)


# --- lineage -----------------------------------------------------------------------------------------


def lineage_page(index: Runs, query: Query) -> tuple[int, str]:
    from ..datastore import DataRef
    from ..lineage import Lineage

    trace = Lineage.of_records(index.summaries())
    run_ref, ref = first(query, "run"), first(query, "ref")
    if run_ref:
        record = index.resolve(run_ref)
        trees = trace.trace_run(record)
        title = f"lineage of what run {record.short_id} read"
        heading = el("h1", "Lineage of what run ", el("a", record.short_id, href=run_href(record.id)),
                     " read")
    elif ref:
        trees = [trace.trace(DataRef.parse(ref))]
        title = f"lineage of {ref}"
        heading = el("h1", "Lineage of ", el("code", ref))
    else:
        return error_page(400, "give a data version: /lineage?ref=URI[@VERSION] (a run page links "
                               "each version it read or wrote).")
    graphs = [el("div", lineage_svg(tree, LINKS), class_="lineage") for tree in trees]
    body = [heading, graphs or el("p", "it read no recorded data", class_="none")]
    return 200, page("nixrepro: " + title, body, assets=ASSETS)
